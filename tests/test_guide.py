"""Hints at the encoder's input (model.GuideEncoder): exactness without hints, start from a
trained file, training only the guide and the branch, folding, weights files."""

from __future__ import annotations

import numpy as np
import torch
import yaml
from PIL import Image

from colorize_batch.color import normalize_ab, normalize_l, rgb_to_lab
from colorize_batch.examples import colour_photo
from colorize_batch.hints import HintPoint, rasterize
from colorize_batch.model import build_generator, fused_for_inference
from colorize_batch.objectives import Batch
from colorize_batch.weights import load_weights, save_weights


def _planes(batch: int, size: int, with_points: tuple[int, ...]) -> torch.Tensor:
    planes = torch.zeros(batch, 3, size, size)
    for i in with_points:
        planes[i] = rasterize([HintPoint(0.3 + 0.1 * i, 0.5, 60.0, -40.0, 0.08),
                               HintPoint(0.7, 0.2, -30.0, 50.0, 0.05)], size, size, size)
    return planes


def _trained_guide(seed: int = 0) -> torch.nn.Module:
    """A guided generator as if trained: the guide's zero-initialised parts no longer zero."""
    torch.manual_seed(seed)
    net = build_generator("effnet-lite0-guided").eval()
    with torch.no_grad():
        net.guide.hint_in.weight.normal_(0.0, 0.3)
        for conv in net.guide.zero:
            conv.weight.normal_(0.0, 0.05)
            conv.bias.normal_(0.0, 0.05)
    return net


def test_a_new_guide_starts_as_the_encoder_and_adds_nothing():
    torch.manual_seed(0)
    net = build_generator("effnet-lite0-guided").eval()
    plain = build_generator("effnet-lite0-hints").eval()
    plain.load_state_dict({k: v for k, v in net.state_dict().items() if not k.startswith("guide.")})
    assert all(torch.equal(a, b) for a, b in zip(net.guide.encoder.state_dict().values(), net.encoder.state_dict().values()))
    x = torch.rand(2, 1, 64, 64) * 2 - 1
    planes = _planes(2, 64, (0, 1))
    with torch.no_grad():
        assert torch.equal(net(x, planes), plain(x, planes))


def test_images_without_hints_get_exactly_the_automatic_model():
    net = _trained_guide()
    x = torch.rand(3, 1, 64, 64) * 2 - 1
    planes = _planes(3, 64, (1,))
    with torch.no_grad():  # logits: an untrained classifier's colours are all near grey
        automatic = net.logits(x)
        guided = net.logits(x, planes)
        assert torch.equal(net.logits(x, torch.zeros_like(planes)), automatic)
        fused = fused_for_inference(net).logits(x, planes)
    assert torch.equal(guided[0], automatic[0]) and torch.equal(guided[2], automatic[2])
    assert float((guided[1] - automatic[1]).abs().max()) > 1e-3  # the guide does act on the hinted photo
    assert torch.allclose(fused, guided, atol=1e-3)  # both encoders' batch norms fold


def test_weights_file_carries_the_guide(tmp_path):
    net = _trained_guide(1)
    path = save_weights(tmp_path / "g.pt", net, {"name": "guide-test"})
    loaded, info = load_weights(path, torch.device("cpu"))
    assert info.architecture.guide and info.architecture.hint_channels
    x = torch.rand(1, 1, 64, 64) * 2 - 1
    planes = _planes(1, 64, (0,))
    with torch.no_grad():
        assert torch.allclose(loaded.eval()(x, planes), net(x, planes), atol=2e-2)


def test_guide_training_from_a_hinted_file_leaves_the_automatic_model(tmp_path):
    """--init from a file without a guide: the guide starts as a copy of that file's encoder;
    freeze_base trains the guide and the branch only, and the exported file answers photos
    without hints exactly as the file it started from."""
    from colorize_batch.config import load_config
    from colorize_batch.train import Trainer

    torch.manual_seed(0)
    start = build_generator("effnet-lite0-hints")
    start_path = save_weights(tmp_path / "hinted.pt", start, {"name": "hinted"})
    data = tmp_path / "photos"
    data.mkdir()
    for i, name in enumerate(("astronaut", "coffee", "chelsea", "rocket")):
        Image.fromarray(np.ascontiguousarray(colour_photo(name))).resize((96, 80)).save(data / f"p{i}.png")
    cfg_path = tmp_path / "guided.yaml"
    cfg_path.write_text(yaml.safe_dump({"train": {
        "data": [{"path": str(data), "weight": 1.0}], "preset": "effnet-lite0-guided", "freeze_base": True,
        "crop": 64, "batch_size": 4, "steps": 3, "l1_steps": 3, "lr": 0.01, "encoder_lr_scale": 0.3, "workers": 0,
        "min_chroma": 0.0, "checkpoint_every": 100, "val_every": 100000, "log_every": 1, "pretrained": False,
        "hint_recolour": 0.5}}))
    trainer = Trainer(load_config(cfg_path), tmp_path / "run", [], torch.device("cpu"), init_weights=start_path)
    gen = trainer.generator
    lab = rgb_to_lab(torch.from_numpy(np.stack([colour_photo(n)[:64, :64] for n in ("coffee", "chelsea", "rocket", "astronaut")] * 2))
                     .permute(0, 3, 1, 2).float() / 255)
    batch = Batch(normalize_l(lab[:, :1]), normalize_ab(lab[:, 1:]), lab[:, 1:])
    shown, planes = trainer.objective.training_hints(batch, step=0)  # hint_recolour: the loss's truth changes with the hints
    recoloured = (shown.lab_ab - batch.lab_ab).flatten(1).abs().amax(1) > 1e-3
    assert 0 < int(recoloured.sum()) < 8 and torch.allclose(shown.ab, normalize_ab(shown.lab_ab))
    assert torch.equal(shown.lightness, batch.lightness) and bool((planes[:, 2].flatten(1).sum(1) > 0).all())
    assert all(torch.equal(a, b) for a, b in zip(gen.guide.encoder.state_dict().values(), gen.encoder.state_dict().values()))
    assert sorted(g["lr_scale"] for g in trainer.opt_g.param_groups) == [0.3, 1.0]  # the copied encoder learns slower
    before = {k: v.clone() for k, v in gen.state_dict().items()}
    trainer.fit()
    after = gen.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("guide.") for k in changed)
    assert all(k.startswith(("guide.", "hints.")) for k in changed), sorted(changed)[:5]
    assert not any(k.startswith("guide.") and "running_" in k for k in changed)  # its batch norms keep the encoder's statistics
    exported, info = load_weights(tmp_path / "run" / "generator.pt", torch.device("cpu"))
    first, _ = load_weights(start_path, torch.device("cpu"))
    assert info.architecture.guide
    x = torch.rand(2, 1, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.equal(exported.eval()(x), first.eval()(x))
