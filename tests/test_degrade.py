"""Old-scan degradations (issue 24): repeatable, bounded, only the grey input, and in training and eval."""

import random

import numpy as np
import pytest
import torch
import yaml
from conftest import save
from PIL import Image
from skimage import data

from colorize_batch.degrade import degrade_grey
from colorize_batch.evaluate import evaluate, grey_from_rgb
from colorize_batch.examples import colour_photo
from colorize_batch.inference import Colorizer
from colorize_batch.model import build_generator
from colorize_batch.train import CropDataset
from colorize_batch.weights import load_weights, save_weights


def test_degradation_is_fixed_by_the_seed_and_keeps_shape():
    grey = data.camera()[::2, ::2].copy()
    a = degrade_grey(grey, random.Random(7))
    b = degrade_grey(grey, random.Random(7))
    assert a.dtype == np.uint8 and a.shape == grey.shape
    assert np.array_equal(a, b)
    assert not np.array_equal(a, degrade_grey(grey, random.Random(8)))
    assert np.array_equal(degrade_grey(grey, random.Random(7), strength=0.0), grey)


def test_degradation_changes_the_photo_like_an_old_scan_but_keeps_it_recognisable():
    grey = data.camera()[::2, ::2].copy()
    outs = [degrade_grey(grey, random.Random(seed)).astype(float) for seed in range(40)]
    changed = [np.abs(o - grey).mean() for o in outs]
    assert sum(c > 1.0 for c in changed) >= 30  # most draws degrade something
    correlation = [np.corrcoef(o.ravel(), grey.ravel())[0, 1] for o in outs]
    assert min(correlation) > 0.6  # still the same photo
    stronger = np.mean([np.abs(degrade_grey(grey, random.Random(s), 2.0).astype(float) - grey).mean() for s in range(40)])
    assert stronger > np.mean(changed)  # strength scales the damage


def test_training_crops_carry_a_degraded_grey_and_a_clean_colour_target(tmp_path):
    path = save(tmp_path / "a.png", Image.fromarray(colour_photo("astronaut")[::4, ::4].copy()))
    clean = CropDataset([path], 64)[(0, 123)]
    both = CropDataset([path], 64, degrade=1.0)[(0, 123)]
    assert clean.shape == (3, 64, 64) and both.shape == (4, 64, 64)
    assert torch.equal(both[:3], clean)  # the colour target is the clean crop, the same crop as without degradation
    exact = grey_from_rgb(clean.permute(1, 2, 0).numpy())
    assert not np.array_equal(both[3].numpy(), exact)
    never = CropDataset([path], 64, degrade=1e-9)[(0, 123)]
    assert np.array_equal(never[3].numpy(), exact)  # crops not drawn for degradation get the exact lightness


def test_training_with_degraded_inputs_resumes_exactly(tmp_path, run_cli):
    train = tmp_path / "train"
    base = colour_photo("astronaut")
    for i in range(8):
        save(train / f"{i}.jpg", Image.fromarray(np.ascontiguousarray(base[i * 40 : i * 40 + 96, i * 40 : i * 40 + 96])))
    cfg = tmp_path / "t.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"size": 32}, "train": {
        "preset": "tiny", "crop": 32, "batch_size": 4, "steps": 4, "l1_steps": 4, "checkpoint_every": 2, "val_every": 100,
        "log_every": 1, "workers": 0, "min_chroma": 1.0, "degrade": 0.5}}))
    run_cli("train", train, "--config", cfg, "--out", tmp_path / "a", expect=0)
    run_cli("train", train, "--config", cfg, "--out", tmp_path / "b", "--steps", "2", expect=0)
    run_cli("train", train, "--config", cfg, "--out", tmp_path / "b", "--resume", expect=0)
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)["generator"]
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["generator"]
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)


def test_eval_on_degraded_inputs_scores_the_degraded_grey(tmp_path, tiny_weights):
    val = tmp_path / "val"
    for name in ("coffee", "astronaut"):
        save(val / f"{name}.png", Image.fromarray(colour_photo(name)[::8, ::8].copy()))
    gen, _ = load_weights(tiny_weights)
    colorizer = Colorizer(gen, torch.device("cpu"))
    photos = sorted(val.iterdir())
    clean = evaluate(colorizer, photos, 32).summary()
    worn = evaluate(colorizer, photos, 32, degrade=1.0).summary()
    assert worn["gray"]["psnr"] < clean["gray"]["psnr"]  # the baseline is the degraded grey
    assert worn == evaluate(colorizer, photos, 32, degrade=1.0).summary()  # repeatable


def test_init_from_weights_with_a_hint_branch_trains_the_plain_preset(tmp_path, run_cli):
    """Stage 4 starts the automatic model from the shipped file (which carries a hint branch)."""
    torch.manual_seed(0)
    with_hints = save_weights(tmp_path / "h.pt", build_generator("effnet-lite0-hints", pretrained=False), {"name": "h"})
    from colorize_batch.config import PipelineConfig
    from colorize_batch.train import Trainer

    config = PipelineConfig.model_validate({"train": {"preset": "effnet-lite0", "pretrained": False}})
    trainer = Trainer(config, tmp_path / "run", [], torch.device("cpu"), init_weights=with_hints)
    start, _ = load_weights(with_hints)
    own = trainer.generator.state_dict()
    assert not any(k.startswith("hints.") for k in own)
    assert all(torch.equal(own[k].float(), v.float()) for k, v in start.state_dict().items() if not k.startswith("hints."))
    bad = PipelineConfig.model_validate({"train": {"preset": "tiny"}})
    with pytest.raises(Exception, match="architecture differs"):
        Trainer(bad, tmp_path / "run2", [], torch.device("cpu"), init_weights=with_hints)
