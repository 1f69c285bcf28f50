"""train: a few steps on tiny generated photos, resumed exactly; eval metrics; shipped weights."""

import json

import numpy as np
import pytest
import torch
import yaml
from conftest import SHIPPED_WEIGHTS, save
from PIL import Image
from skimage import data

from colorize_batch.decoding import network_input
from colorize_batch.evaluate import ab_auc, colourfulness, grey_from_rgb, psnr
from colorize_batch.examples import colour_photo
from colorize_batch.inference import Colorizer
from colorize_batch.recombination import chroma_planes, recombine
from colorize_batch.weights import load_weights, save_weights


@pytest.fixture
def colour_dirs(tmp_path):
    rng = np.random.default_rng(0)
    train, val = tmp_path / "train", tmp_path / "val"
    base = colour_photo("astronaut")
    for i in range(12):
        y, x = rng.integers(0, 512 - 96, 2)
        save(train / f"{i}.jpg", Image.fromarray(np.ascontiguousarray(base[y : y + 96, x : x + 96])))
    save(train / "grey.png", Image.fromarray(data.camera()[:96, :96]))  # near-grey: dropped from batches
    save(val / "coffee.png", Image.fromarray(colour_photo("coffee")[::8, ::8].copy()))
    return train, val


def _config(tmp_path, val, **train):
    cfg = {
        "model": {"size": 32},
        "train": {"preset": "tiny", "crop": 32, "batch_size": 4, "steps": 6, "l1_steps": 3, "checkpoint_every": 3,
                  "val_every": 6, "log_every": 1, "workers": 0, "val_dir": str(val), "min_chroma": 1.0, **train},
    }
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_train_runs_resumes_exactly_and_writes_files(tmp_path, colour_dirs, run_cli):
    train, val = colour_dirs
    cfg = _config(tmp_path, val)
    run_cli("train", train, "--config", cfg, "--out", tmp_path / "a", expect=0)
    for name in ("checkpoint.pt", "generator.pt", "train_log.jsonl", "val_log.jsonl", "sheet_000006.png"):
        assert (tmp_path / "a" / name).is_file(), name
    log = [json.loads(line) for line in (tmp_path / "a" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 6]
    assert "d" not in log[2] and "d" in log[3]  # the GAN starts after the L1 warm-up
    assert len({r["l1"] for r in log}) > 1  # the loss moves
    # the same run in two halves: 3 steps, then --resume to 6, gives the same weights
    run_cli("train", train, "--config", cfg, "--out", tmp_path / "b", "--steps", "3", expect=0)
    run_cli("train", train, "--config", cfg, "--out", tmp_path / "b", "--resume", expect=0)
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)["generator"]
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["generator"]
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)
    run_cli("export", tmp_path / "a", tmp_path / "w.pt", expect=0)
    gen, info = load_weights(tmp_path / "w.pt")
    assert info.provenance["steps"] == 6 and gen.config.base_channels == 8


def test_fine_tune_from_weights_with_cosine_schedule(tmp_path, colour_dirs, run_cli, tiny_weights):
    train, val = colour_dirs
    cfg = _config(tmp_path, val, steps=4, l1_steps=4, lr_schedule="cosine", val_every=100)
    run_cli("train", train, "--config", cfg, "--out", tmp_path / "ft", "--init", tiny_weights, expect=0)
    tuned, info = load_weights(tmp_path / "ft" / "generator.pt")
    start, _ = load_weights(tiny_weights)
    assert info.provenance["init"] == str(tiny_weights)
    assert not torch.equal(tuned.outermost[1].weight, start.outermost[1].weight)  # it trained from there
    assert (tuned.outermost[1].weight - start.outermost[1].weight).abs().max() < 0.05  # ...and started there


def test_eval_reports_model_gray_truth(tmp_path, colour_dirs, run_cli, tiny_weights):
    _, val = colour_dirs
    report = tmp_path / "eval.json"
    result = run_cli("eval", val, "--weights", tiny_weights, "--size", "32", "--report", report,
                     "--sheet", tmp_path / "sheet.png", expect=0)
    scores = json.loads(report.read_text())
    assert set(scores) >= {"model", "gray", "truth"}
    assert scores["gray"]["cf"] == 0 and scores["truth"]["cf"] > 10
    assert scores["gray"]["delta_cf"] == pytest.approx(scores["truth"]["cf"])
    assert "PSNR" in result.output and (tmp_path / "sheet.png").is_file()


def test_metrics_on_known_cases():
    rgb = colour_photo("astronaut")
    assert psnr(rgb, rgb) == pytest.approx(58.92, abs=0.01)  # identical: the 8-bit ceiling, not infinity
    assert psnr(rgb, rgb) > psnr(rgb, np.clip(rgb.astype(int) + 1, 0, 255).astype(np.uint8)) > 45
    assert colourfulness(np.repeat(grey_from_rgb(rgb)[..., None], 3, 2)) == 0
    assert colourfulness(rgb) > 20
    ab = torch.randn(2, 8, 8) * 30
    assert ab_auc(ab, ab) == pytest.approx(1.0)
    assert ab_auc(ab + 200, ab) == pytest.approx(0.0)
    # error of exactly 75 everywhere: within t for t = 75..150 -> 76/151
    assert ab_auc(ab + torch.tensor([75.0, 0.0]).view(2, 1, 1), ab) == pytest.approx(76 / 151, abs=1e-3)


@pytest.mark.skipif(not SHIPPED_WEIGHTS.is_file(), reason="no shipped weights")
def test_shipped_weights_colour_astronaut_better_than_grey():
    gen, info = load_weights(SHIPPED_WEIGHTS)
    truth = colour_photo("astronaut")
    grey = grey_from_rgb(truth)
    colorizer = Colorizer(gen, torch.device("cpu"))
    small = torch.from_numpy(network_input(grey, 256))[None, None]
    ab = colorizer.predict(small)
    cb, cr = chroma_planes(small[:, 0], ab)
    out = np.asarray(recombine(torch.from_numpy(grey), ab[0], (cb[0], cr[0])))
    grey_rgb = np.repeat(grey[..., None], 3, 2)
    assert colourfulness(out) > 10 + colourfulness(grey_rgb)
    assert psnr(out, truth) > psnr(grey_rgb, truth)


def test_export_step_resaves_a_validation_snapshot_under_its_new_name(tmp_path, run_cli, tiny_weights):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    generator, info = load_weights(tiny_weights)
    save_weights(run_dir / "generator_000004.pt", generator, {**info.provenance, "steps": 4})  # as Trainer.fit writes it
    run_cli("export", run_dir, tmp_path / "best.pt", "--step", "4", expect=0)
    exported, out_info = load_weights(tmp_path / "best.pt")
    assert out_info.provenance["name"] == "best" and out_info.provenance["steps"] == 4
    assert all(torch.equal(exported.state_dict()[k], generator.state_dict()[k]) for k in generator.state_dict())
    result = run_cli("export", run_dir, tmp_path / "none.pt", "--step", "5", expect=2)  # no such snapshot: one line, exit 2
    assert "generator_000005.pt" in result.output and not (tmp_path / "none.pt").exists()


def test_weight_average_is_exported_and_resumes_exactly(tmp_path, colour_dirs, run_cli):
    """train.ema: the exported weights are the moving average (not the last step's), which the
    checkpoint keeps, so a run in two halves exports the same average as one run."""
    train, val = colour_dirs
    cfg = _config(tmp_path, val, ema=0.5, val_every=100)
    run_cli("train", train, "--config", cfg, "--out", tmp_path / "a", expect=0)
    state = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    trained, averaged = state["generator"], state["ema"]
    assert int(averaged["n_averaged"]) == 6
    exported, info = load_weights(tmp_path / "a" / "generator.pt")
    assert info.provenance["ema"] == 0.5
    key = "outermost.1.weight"
    assert not torch.allclose(trained[key], averaged[f"module.{key}"])  # an average, not the last step
    assert torch.allclose(exported.state_dict()[key].float(), averaged[f"module.{key}"].float(), atol=2e-3)  # fp16 file
    run_cli("train", train, "--config", cfg, "--out", tmp_path / "b", "--steps", "3", expect=0)
    run_cli("train", train, "--config", cfg, "--out", tmp_path / "b", "--resume", expect=0)
    resumed = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["ema"]
    assert all(torch.allclose(averaged[k].float(), resumed[k].float(), atol=1e-5) for k in averaged)


def test_weight_average_from_a_later_step_equals_one_added_at_a_checkpoint_made_without_it(tmp_path, colour_dirs, run_cli):
    """train.ema_start 3 in one run, and a run without train.ema to step 3 resumed with it, give
    the same average (of steps 4-6): a run can take up averaging at its last checkpoint."""
    train, val = colour_dirs
    (tmp_path / "one").mkdir()
    run_cli("train", train, "--config", _config(tmp_path / "one", val, ema=0.9, ema_start=3, val_every=100),
            "--out", tmp_path / "a", expect=0)
    run_cli("train", train, "--config", _config(tmp_path, val, val_every=100), "--out", tmp_path / "b", "--steps", "3", expect=0)
    (tmp_path / "two").mkdir()
    run_cli("train", train, "--config", _config(tmp_path / "two", val, ema=0.9, ema_start=3, val_every=100),
            "--out", tmp_path / "b", "--resume", expect=0)
    a, b = (torch.load(tmp_path / run / "checkpoint.pt", weights_only=True) for run in ("a", "b"))
    assert int(a["ema"]["n_averaged"]) == int(b["ema"]["n_averaged"]) == 3 and b["step"] == 6
    assert all(torch.allclose(a["ema"][k].float(), b["ema"][k].float(), atol=1e-5) for k in a["ema"])
    assert not torch.allclose(a["ema"]["module.outermost.1.weight"], a["generator"]["outermost.1.weight"])
