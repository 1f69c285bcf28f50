"""The GPU campaign's tools on the CPU: pack_train.py shrinks a training tree to WebP, campaign.py
trains two runs on the same batches for a wall-clock budget, then their hint branches."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import torch
import yaml
from conftest import save
from PIL import Image

from colorize_batch.examples import colour_photo
from colorize_batch.model import PRESETS, build_generator
from colorize_batch.weights import load_weights, save_weights

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_pack_and_two_runs_on_one_stream_of_batches(tmp_path):
    rng = np.random.default_rng(0)
    base = colour_photo("astronaut")
    for root in ("people", "scenes"):
        for i in range(6):
            y, x = rng.integers(0, 512 - 200, 2)
            save(tmp_path / "train" / root / f"{i}.jpg", Image.fromarray(np.ascontiguousarray(base[y : y + 200, x : x + 160])))
    assert _script("pack_train").main([str(tmp_path / "train"), str(tmp_path / "pack"), "--side", "96",
                                       "--limit", "scenes=4", "--workers", "1"]) == 0
    packed = {root: sorted((tmp_path / "pack" / root).glob("*.webp")) for root in ("people", "scenes")}
    assert len(packed["people"]) == 6 and len(packed["scenes"]) == 4
    with Image.open(packed["people"][0]) as im:
        assert im.format == "WEBP" and min(im.size) == 96 and im.mode == "RGB"

    init = save_weights(tmp_path / "init.pt", build_generator("effnet-lite0"), {"name": "init"})
    configs = {}
    for preset in ("effnet-lite0", "effnet-lite0-hints", "effnet-lite0-wide", "effnet-lite0-wide-hints"):
        train = {"data": [{"path": str(tmp_path / "pack" / r)} for r in packed], "preset": preset, "crop": 64,
                 "batch_size": 2, "steps": 1000, "l1_steps": 100000, "lr": 1e-4, "lr_schedule": "cosine", "lr_warmup": 2,
                 "min_chroma": 0.0, "degrade": 0.5, "seed": 1}
        if preset.endswith("hints"):
            train.update(freeze_base=True)
        configs[preset] = tmp_path / f"{preset}.yaml"
        configs[preset].write_text(yaml.safe_dump({"model": {"size": 64}, "train": train}))
    out = tmp_path / "out"
    code = _script("campaign").main([
        "--minutes", "0.02", "--hint-minutes", "0.01", "--export", str(out), "--out", str(tmp_path / "runs"),
        "--workers", "0", "--device", "cpu",
        "--run", "base", str(configs["effnet-lite0"]), str(init), str(configs["effnet-lite0-hints"]),
        "--run", "wide", str(configs["effnet-lite0-wide"]), f"encoder:{init}", str(configs["effnet-lite0-wide-hints"]),
    ])
    assert code == 0
    auto_base, info = load_weights(out / "base-auto.pt")
    hints_wide, wide_info = load_weights(out / "wide-hints.pt")
    assert info.provenance["campaign"]["crops"] >= 2 and info.provenance["campaign"]["phase"] == "auto"
    assert wide_info.architecture == PRESETS["effnet-lite0-wide-hints"]
    assert load_weights(out / "wide-auto.pt")[1].provenance["steps"] == load_weights(out / "base-auto.pt")[1].provenance["steps"]
    # the hint phase froze the automatic model: without hints the hinted file gives the automatic file's colours
    hints_base, _ = load_weights(out / "base-hints.pt")
    grey = torch.rand(1, 1, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.equal(auto_base.eval()(grey), hints_base.eval()(grey))
    assert hints_wide.config.decoder_channels == (256, 192, 96, 64)


def test_soup_averages_every_float_tensor_and_keeps_the_first_files_extra_branch(tmp_path):
    """benchmarks/soup.py: the mean of two files' tensors (batch-norm statistics included); a hint
    branch only the first file has comes from it alone; a file that does not fit is refused."""
    soup = _script("soup")
    torch.manual_seed(0)
    a = build_generator("effnet-lite0-hints", pretrained=False)
    b = build_generator("effnet-lite0", pretrained=False)
    for module in b.modules():  # give b batch statistics of its own, so the mean is not one of them
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
    pa = save_weights(tmp_path / "a.pt", a, {"name": "a"})
    pb = save_weights(tmp_path / "b.pt", b, {"name": "b"})
    assert soup.main([str(pa), str(pb), "--out", str(tmp_path / "s.pt")]) == 0
    mixed, info = load_weights(tmp_path / "s.pt")
    sa, sb, sm = load_weights(pa)[0].state_dict(), load_weights(pb)[0].state_dict(), mixed.state_dict()
    averaged = only_a = 0
    for name, tensor in sm.items():
        if not tensor.is_floating_point():
            continue
        if name in sb:
            expected = (sa[name] + sb[name]) / 2
            averaged += 1
        else:
            expected = sa[name]
            only_a += 1
        assert torch.allclose(tensor, expected.half().float(), atol=1e-3), name
    assert averaged > 100 and only_a > 0
    assert not torch.equal(sm[next(n for n in sb if "running_mean" in n)], sa[next(n for n in sb if "running_mean" in n)])
    assert info.provenance["soup"] == [str(pa), str(pb)] and info.provenance["name"] == "s"
    assert soup.main([str(pb), str(pa), "--out", str(tmp_path / "bad.pt")]) == 2  # b lacks a's hint branch
    assert not (tmp_path / "bad.pt").exists()
