"""Colour hints: the file format, rasterising, the model's hint branch and its training."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from skimage.color import rgb2lab

from colorize_batch.color import denormalize_ab
from colorize_batch.examples import colour_photo
from colorize_batch.hints import (
    HintError,
    apply_tint,
    HintPoint,
    _disc,
    hex_to_ab,
    hint_count,
    parse_hints,
    rasterize,
    read_hints,
    revealed_planes,
    sample_points,
    training_hint_planes,
)
from colorize_batch.model import build_generator, fused_for_inference
from colorize_batch.objectives import recoloured_regions
from colorize_batch.weights import load_weights, save_weights


PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field")


def photo(i: int, w: int, h: int) -> Image.Image:
    """A real colour photo (scikit-image's samples), resized."""
    return Image.fromarray(np.ascontiguousarray(colour_photo(PHOTOS[i % len(PHOTOS)]))).resize((w, h))


def test_hex_colour_to_lab_ab_agrees_with_skimage():
    for hex_colour in ("#1f2a44", "#ff0000", "#2e8b57", "#808080", "#fafad2"):
        v = int(hex_colour[1:], 16)
        rgb = np.array([[[(v >> 16) & 255, (v >> 8) & 255, v & 255]]], dtype=np.float64) / 255
        ref = rgb2lab(rgb)[0, 0]
        a, b = hex_to_ab(hex_colour)
        assert abs(a - ref[1]) < 0.05 and abs(b - ref[2]) < 0.05, hex_colour


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ([], "JSON object"),
        ({"points": {}}, "must be a list"),
        ({"points": [{"x": 0.5, "y": 0.5}]}, "point 1: no 'color'"),
        ({"points": [{"x": 1.5, "y": 0.5, "color": "#112233"}]}, "point 1: x = 1.5 is outside 0-1"),
        ({"points": [{"x": 0.5, "y": "top", "color": "#112233"}]}, "point 1: y must be a number"),
        ({"points": [{"x": 0.5, "y": 0.5, "color": "navy"}]}, "not an sRGB hex colour"),
        ({"points": [{"x": 0.5, "y": 0.5, "color": "#112233"}, {"x": 0.5, "y": 0.5, "color": "#112233", "size": 3}]},
         "point 2: unknown keys ['size']"),
        ({"pointz": []}, "unknown keys ['pointz']"),
    ],
)
def test_bad_hint_documents_name_the_problem(document, message):
    with pytest.raises(HintError, match=None) as info:
        parse_hints(document)
    assert message in str(info.value)


def test_read_hints_gives_points_and_the_file_hash(tmp_path):
    path = tmp_path / "a.hints.json"
    path.write_text(json.dumps({"points": [{"x": 0.25, "y": 0.75, "color": "#ff0000", "radius": 0.02}]}))
    hints, digest = read_hints(path)
    points = hints.points
    assert [(p.x, p.y, p.radius) for p in points] == [(0.25, 0.75, 0.02)] and hints.tint is None
    assert points[0].a > 70 and points[0].b > 60  # sRGB red
    path.write_text(json.dumps({"points": [{"x": 0.25, "y": 0.75, "color": "#ff0001", "radius": 0.02}]}))
    assert read_hints(path)[1] != digest
    (tmp_path / "bad.hints.json").write_bytes(b"{\"points\": [")
    with pytest.raises(HintError, match="not valid JSON"):
        read_hints(tmp_path / "bad.hints.json")


def test_a_global_tint_moves_the_whole_prediction():
    hints = parse_hints({"global": {"tint": "#704214", "strength": 0.25}})
    assert hints.points == () and hints.tint is not None
    ab = torch.zeros(2, 4, 4)
    ab[0] = 40.0
    out = apply_tint(ab, hints.tint)
    assert torch.allclose(out[0], torch.tensor(0.75 * 40 + 0.25 * hints.tint.a))
    assert torch.allclose(out[1], torch.tensor(0.25 * hints.tint.b))
    assert apply_tint(ab, None) is ab
    with pytest.raises(HintError, match="global: strength = 2 is outside 0-1"):
        parse_hints({"global": {"tint": "#704214", "strength": 2}})


def test_rasterize_places_discs_in_relative_coordinates():
    # A 200 x 100 photo on a 64 x 64 network input: a circle of radius 0.1 x 100 px = 10 px
    # is an ellipse of 3.2 x 6.4 input pixels around (0.25, 0.5).
    planes = rasterize([HintPoint(0.25, 0.5, 40.0, -20.0, 0.1)], 64, 200, 100)
    mask = planes[2] > 0
    ys, xs = torch.nonzero(mask, as_tuple=True)
    assert abs(xs.float().mean().item() + 0.5 - 16) < 0.6 and abs(ys.float().mean().item() + 0.5 - 32) < 0.6
    assert 5 <= int(xs.max() - xs.min()) + 1 <= 7 and 11 <= int(ys.max() - ys.min()) + 1 <= 13
    assert torch.allclose(planes[0][mask], torch.tensor(40 / 110)) and torch.allclose(planes[1][mask], torch.tensor(-20 / 110))
    assert float(planes[:, ~mask].abs().sum()) == 0.0
    tiny = rasterize([HintPoint(0.99, 0.99, 10.0, 10.0, 0.0005)], 64, 64, 64)
    assert int((tiny[2] > 0).sum()) == 1 and float(tiny[2, 63, 63]) == 1.0


def test_sampled_points_carry_the_true_colour_of_their_disc():
    truth = torch.zeros(2, 64, 64)
    truth[0, :, 32:] = 50.0  # right half: a = 50
    g = torch.Generator().manual_seed(1)
    points = sample_points(truth, 40, g, (1.0, 2.0))
    assert len(points) == 40
    for p in points:
        if p.x > 0.56:
            assert p.a == pytest.approx(50.0)
        elif p.x < 0.44:
            assert p.a == pytest.approx(0.0)
    counts = [hint_count(torch.Generator().manual_seed(s), 1 / 8) for s in range(400)]
    assert min(counts) >= 1 and max(counts) <= 24 and 5 < np.mean(counts) < 9


def test_batched_training_planes_equal_the_point_by_point_ones():
    """revealed_planes (training, batched on the device) paints what sample_points + rasterize paint
    for the same points: each disc's mean truth, later points over earlier ones, none where unused."""
    torch.manual_seed(0)
    truth = torch.randn(3, 2, 48, 48) * 30
    g = torch.Generator().manual_seed(5)
    centres, radii = torch.rand(3, 6, 2, generator=g), 1.0 + 3.5 * torch.rand(3, 6, generator=g)
    valid = torch.tensor([[True] * 6, [True, True, False, False, False, False], [False] * 6])
    batched = revealed_planes(truth, centres, radii, valid)
    for i in range(3):
        points = []
        for k in range(6):
            if valid[i, k]:
                probe = HintPoint(float(centres[i, k, 0]), float(centres[i, k, 1]), 0.0, 0.0, float(radii[i, k]) / 48)
                mask = _disc(probe, 48, 48, 48)
                a, b = truth[i][:, mask].mean(1).tolist()
                points.append(HintPoint(probe.x, probe.y, a, b, probe.radius))
        assert torch.allclose(batched[i], rasterize(points, 48, 48, 48), atol=1e-5)
    assert float(batched[2].abs().sum()) == 0.0
    planes = training_hint_planes(truth, torch.Generator().manual_seed(1), 8.0)
    again = training_hint_planes(truth, torch.Generator().manual_seed(1), 8.0)
    assert planes.shape == (3, 3, 48, 48) and torch.equal(planes, again) and bool((planes[:, 2].flatten(1).sum(1) > 0).all())
    some_free = training_hint_planes(torch.randn(64, 2, 16, 16), torch.Generator().manual_seed(2), 8.0, hint_free=0.5)
    free = int((some_free[:, 2].flatten(1).sum(1) == 0).sum())
    assert 16 <= free <= 48  # about half the photos shown without hints


def _quadrants(size: int = 48, noise: float = 1.5) -> tuple[torch.Tensor, torch.Tensor]:
    """A grey photo whose left and right halves differ in lightness (40 / 65) and whose top and
    bottom differ only in colour: L ``(1, 1, S, S)`` and ab ``(1, 2, S, S)`` with a little texture."""
    g = torch.Generator().manual_seed(3)
    light = torch.full((1, 1, size, size), 40.0)
    light[..., size // 2:] = 65.0
    ab = torch.zeros(1, 2, size, size)
    ab[:, 0, : size // 2], ab[:, 1, : size // 2] = 25.0, 15.0
    ab[:, 0, size // 2:], ab[:, 1, size // 2:] = -15.0, 30.0
    return light, ab + noise * torch.randn(1, 2, size, size, generator=g)


def test_recoloured_region_is_one_object_with_a_new_colour_and_a_point_in_it():
    """hint_recolour's regions: grown from the seed, stopped by an edge in the grey photo (left /
    right) and by a change of true colour at equal lightness (top / bottom), never cut in the
    middle of a flat area: each region is exactly the seed's quadrant. Inside it the colour
    moves and the texture stays; outside nothing changes; the first hint point lies in it and
    carries the new colour; a share of 0 changes nothing."""
    size = 48
    light, ab = _quadrants(size)
    light, ab = light.expand(8, -1, -1, -1), ab.expand(8, -1, -1, -1)
    new, anchors = recoloured_regions(light, ab, torch.Generator().manual_seed(7), share=1.0, chroma=(10.0, 20.0))  # in gamut
    again, _ = recoloured_regions(light, ab, torch.Generator().manual_seed(7), share=1.0, chroma=(10.0, 20.0))
    assert torch.equal(new, again)
    half = size // 2
    for i in range(8):
        x, y = (anchors[i] * size).long().tolist()
        quadrant = torch.zeros(size, size, dtype=torch.bool)
        quadrant[(y // half) * half:(y // half + 1) * half, (x // half) * half:(x // half + 1) * half] = True
        changed = (new[i] - ab[i]).abs().amax(0) > 1e-3
        assert torch.equal(changed, quadrant), f"crop {i}: region is not the seed's quadrant"
        inside_before, inside_after = ab[i][:, quadrant], new[i][:, quadrant]
        texture = torch.corrcoef(torch.stack([inside_before[0], inside_after[0]]))[0, 1]
        assert float(texture) > 0.9  # the texture survives the new mean
        assert 9.0 < float(inside_after.mean(1).norm()) < 21.0  # the new mean: a chroma from (10, 20)
    planes = training_hint_planes(new, torch.Generator().manual_seed(1), 4.0, radius_px=(1.0, 1.0), anchors=anchors)
    for i in range(8):
        x, y = (anchors[i] * size).long().tolist()
        assert float(planes[i, 2, y, x]) == 1.0
        assert torch.allclose(denormalize_ab(planes[i, :2, y, x]), new[i, :, y, x], atol=3.0)  # a disc's mean of the new colour
    same, none = recoloured_regions(light, ab, torch.Generator().manual_seed(7), share=0.0, chroma=(10.0, 20.0))
    assert same is ab and bool(none.isnan().all())
    free = training_hint_planes(new, torch.Generator().manual_seed(1), 4.0, hint_free=1.0, anchors=anchors)
    assert bool((free[:, 2].flatten(1).sum(1) > 0).all())  # an anchored crop always gets its point


@pytest.fixture(scope="module")
def hint_model() -> torch.nn.Module:
    torch.manual_seed(0)
    net = build_generator("effnet-lite0-hints").eval()
    with torch.no_grad():  # as if trained: the projections out of the branch are no longer zero
        for proj in (net.hints.to32, net.hints.to16, net.hints.to8, net.hints.to4, net.hints.to_logits):
            proj.weight.normal_(0.0, 0.2)
    return net


def test_no_hints_give_exactly_the_automatic_model(hint_model):
    base = build_generator("effnet-lite0").eval()
    missing, unexpected = base.load_state_dict(hint_model.state_dict(), strict=False)
    assert not missing and all(k.startswith("hints.") for k in unexpected)
    x = torch.rand(3, 1, 64, 64) * 2 - 1
    planes = torch.zeros(3, 3, 64, 64)
    planes[1] = rasterize([HintPoint(0.5, 0.5, 60.0, 50.0, 0.1)], 64, 64, 64)
    with torch.no_grad():
        automatic = base(x)
        assert torch.equal(hint_model(x), automatic)
        assert torch.equal(hint_model(x, torch.zeros_like(planes)), automatic)
        guided = hint_model(x, planes)
        fused = fused_for_inference(hint_model)(x, planes)
    assert torch.equal(guided[0], automatic[0]) and torch.equal(guided[2], automatic[2])  # images without hints
    assert float((guided[1] - automatic[1]).abs().max()) > 1e-3
    assert torch.allclose(fused, guided, atol=1e-4)


def test_a_new_branch_adds_nothing_even_with_hints():
    torch.manual_seed(0)
    net = build_generator("effnet-lite0-hints").eval()
    x = torch.rand(1, 1, 64, 64) * 2 - 1
    planes = rasterize([HintPoint(0.5, 0.5, 60.0, 50.0, 0.2)], 64, 64, 64)[None]
    with torch.no_grad():
        assert torch.equal(net(x, planes), net(x))


def test_weights_file_carries_the_hint_branch(tmp_path, hint_model):
    path = save_weights(tmp_path / "h.pt", hint_model, {"name": "hints-test"})
    loaded, info = load_weights(path, torch.device("cpu"))
    assert info.architecture.hint_channels == (32, 64, 96, 128)
    planes = rasterize([HintPoint(0.3, 0.6, -40.0, 30.0, 0.1)], 64, 64, 64)[None]
    x = torch.rand(1, 1, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(loaded.eval()(x, planes), hint_model(x, planes).float(), atol=2e-2)


def test_hint_training_changes_only_the_branch(tmp_path):
    """freeze_base: a few steps from a base weights file leave every base weight and batch-norm
    statistic as it was, train the branch, and the exported file answers no hints exactly as the base."""
    from colorize_batch.config import load_config
    from colorize_batch.train import Trainer

    torch.manual_seed(0)
    base = build_generator("effnet-lite0")
    base_path = save_weights(tmp_path / "base.pt", base, {"name": "base"})
    data = tmp_path / "photos"
    data.mkdir()
    for i in range(6):
        photo(i, 96, 80).save(data / f"p{i}.png")
    cfg_path = tmp_path / "hints.yaml"
    cfg_path.write_text(yaml.safe_dump({"train": {
        "data": [{"path": str(data), "weight": 1.0}], "preset": "effnet-lite0-hints", "freeze_base": True,
        "crop": 64, "batch_size": 4, "steps": 3, "l1_steps": 3, "lr": 0.01, "workers": 0, "min_chroma": 0.0,
        "checkpoint_every": 100, "val_every": 100000, "log_every": 1, "pretrained": False}}))
    trainer = Trainer(load_config(cfg_path), tmp_path / "run", [], torch.device("cpu"), init_weights=base_path)
    before = {k: v.clone() for k, v in trainer.generator.state_dict().items()}
    trainer.fit()
    after = trainer.generator.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("hints.") for k in changed), sorted(changed)[:5]
    exported, _ = load_weights(tmp_path / "run" / "generator.pt", torch.device("cpu"))
    start, _ = load_weights(base_path, torch.device("cpu"))
    x = torch.rand(2, 1, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.equal(exported.eval()(x), start.eval()(x))
        planes = rasterize([HintPoint(0.5, 0.5, 50.0, 50.0, 0.1)], 64, 64, 64)[None].expand(2, -1, -1, -1)
        assert not torch.equal(exported(x, planes), start(x))


def test_freeze_base_needs_a_hint_preset(tmp_path):
    from colorize_batch.config import load_config
    from colorize_batch.train import Trainer, TrainingError

    cfg_path = tmp_path / "bad.yaml"
    cfg_path.write_text(yaml.safe_dump({"train": {"preset": "effnet-lite0", "freeze_base": True, "pretrained": False}}))
    with pytest.raises(TrainingError, match="freeze_base needs a preset with a hint branch"):
        Trainer(load_config(cfg_path), tmp_path / "run", [], torch.device("cpu"))


def test_eval_with_hints_uses_the_revealed_truth(tmp_path, hint_model, run_cli):
    photos = tmp_path / "val"
    photos.mkdir()
    for i in range(3):
        photo(i, 80, 64).save(photos / f"v{i}.png")
    weights = save_weights(tmp_path / "h.pt", hint_model, {"name": "hints-test"})
    scores = {}
    for n in (0, 5):
        report = tmp_path / f"r{n}.json"
        run_cli("eval", photos, "--weights", weights, "--size", "64", "--hints", str(n), "--report", report, expect=0)
        scores[n] = json.loads(report.read_text())
        assert scores[n]["hints"] == n
    assert scores[0]["model"]["psnr"] != scores[5]["model"]["psnr"]
    plain = save_weights(tmp_path / "plain.pt", build_generator("tiny"), {"name": "tiny"})
    result = run_cli("eval", photos, "--weights", plain, "--size", "64", "--hints", "3")
    assert result.exit_code == 2 and "has no hint branch" in result.output


SCHEMA = Path(__file__).resolve().parent.parent / "schemas" / "hints.schema.json"


@pytest.mark.parametrize(
    "document",
    [
        {"points": [{"x": 0.42, "y": 0.31, "color": "#1f2a44", "radius": 0.01}]},
        {"version": 1, "comment": "coat: navy (catalogue)", "points": [{"x": 0, "y": 1, "color": "AABBCC"}]},
        {"points": []},
        {"points": [{"x": 0.5, "y": 0.5}]},
        {"points": [{"x": 0.5, "y": 0.5, "color": "#12345g"}]},
        {"points": [{"x": 0.5, "y": 0.5, "color": "#123456", "radius": 0.9}]},
        {"points": [{"x": 0.5, "y": 0.5, "color": "#123456", "size": 1}]},
        {"points": "none"},
        {"global": {}},
        {"global": {"tint": "#704214"}},
        {"global": {"tint": "#704214", "strength": 0.5}, "points": []},
        {"global": {"tint": "#704214", "strength": 1.5}},
        {"global": {"tint": "sepia"}},
        {"global": {"hue": 3}},
        {"global": []},
        {"version": 2, "points": []},
    ],
)
def test_the_json_schema_and_the_reader_agree(document):
    """The documented schema accepts exactly what the reader accepts."""
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    schema_ok = jsonschema.Draft202012Validator(schema).is_valid(document)
    try:
        parse_hints(document)
        reader_ok = True
    except HintError:
        reader_ok = False
    assert schema_ok == reader_ok


def test_a_bundle_unpacks_into_a_mirrored_hints_tree(tmp_path):
    from colorize_batch.hints import import_bundle

    bundle = tmp_path / "hints-bundle.json"
    bundle.write_text(json.dumps({"format": "colorize-batch-hints", "version": 1, "images": {
        "a/b/photo.jpg": {"points": [{"x": 0.1, "y": 0.2, "color": "#1f2a44"}]},
        "top.tif": {"points": [], "global": {"tint": "#704214"}},
    }}))
    written = import_bundle(bundle, tmp_path / "hints")
    assert written == [tmp_path / "hints/a/b/photo.hints.json", tmp_path / "hints/top.hints.json"]
    assert read_hints(written[0])[0].points[0].x == 0.1
    for images, message in [({"../evil.jpg": {"points": []}}, "leaves the hints folder"),
                            ({"/etc/x.jpg": {"points": []}}, "leaves the hints folder"),
                            ({"ok.jpg": {"points": []}, "bad.jpg": {"points": [{"x": 2, "y": 0, "color": "#000000"}]}},
                             "bad.jpg: point 1: x = 2 is outside 0-1")]:
        bundle.write_text(json.dumps({"format": "colorize-batch-hints", "images": images}))
        with pytest.raises(HintError, match=None) as info:
            import_bundle(bundle, tmp_path / "other")
        assert message in str(info.value)
    assert not (tmp_path / "other").exists()  # nothing written from an invalid bundle
    bundle.write_text(json.dumps({"points": []}))
    with pytest.raises(HintError, match="not a hint bundle"):
        import_bundle(bundle, tmp_path / "other")


def test_hint_files_are_found_beside_the_scan_or_under_the_hints_root(tmp_path):
    from colorize_batch.hints import batch_planes, locate

    scan = tmp_path / "in" / "a" / "photo.jpg"
    scan.parent.mkdir(parents=True)
    scan.write_bytes(b"")
    assert locate(scan, "a/photo.jpg", None) is None
    beside = tmp_path / "in" / "a" / "photo.hints.json"
    beside.write_text("{}")
    assert locate(scan, "a/photo.jpg", None) == beside
    root = tmp_path / "hints"
    assert locate(scan, "a/photo.jpg", root) is None  # a hints root replaces the files beside the scans
    (root / "a").mkdir(parents=True)
    (root / "a" / "photo.hints.json").write_text("{}")
    assert locate(scan, "a/photo.jpg", root) == root / "a" / "photo.hints.json"
    one = parse_hints({"points": [{"x": 0.5, "y": 0.5, "color": "#ff0000"}]})
    assert batch_planes([None, parse_hints({"points": []})], [(10, 20), (10, 20)], 32) is None
    planes = batch_planes([None, one], [(10, 20), (30, 20)], 32)
    assert planes.shape == (2, 3, 32, 32) and float(planes[0].abs().sum()) == 0 and float(planes[1, 2].sum()) > 0


def test_the_shipped_default_serves_both_with_and_without_hints():
    """One weights file: the default has a hint branch (and a guide), and without hints it is
    exactly the automatic model inside it (the branch and the guide stripped off)."""
    from colorize_batch.config import DEFAULT_WEIGHTS

    net, info = load_weights(DEFAULT_WEIGHTS)
    assert net.hints is not None, f"{DEFAULT_WEIGHTS} has no hint branch"
    base = build_generator(dataclasses.replace(net.config, hint_channels=(), guide=False)).eval()
    missing, unexpected = base.load_state_dict(net.state_dict(), strict=False)
    assert not missing and unexpected and all(k.startswith(("hints.", "guide.")) for k in unexpected)
    grey = np.asarray(Image.fromarray(colour_photo("coffee")).convert("L").resize((128, 128)))
    x = torch.from_numpy(grey).float()[None, None] / 127.5 - 1.0  # the network's square, L in [-1, 1]
    planes = rasterize([HintPoint(0.3, 0.7, 0.0, -60.0, 0.05)], 128, 600, 400)[None]
    with torch.no_grad():
        automatic = base(x)
        assert torch.equal(net(x), automatic)
        assert float((net(x, planes) - automatic).abs().max()) > 0.05  # the branch is trained: hints matter
