"""Hints that stop at edges (colorize_batch/hint_edges.py): the geodesic gate on synthetic
images, and the Colorizer with it on the shipped weights (no hints: bit for bit as without it)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import grey_image, save
from PIL import Image

from colorize_batch.config import DEFAULT_WEIGHTS
from colorize_batch.examples import colour_photo
from colorize_batch.hint_edges import KEEP, PULL, PULL_SCALE, PULL_SPREAD, edge_aware, geodesic_distance, geodesic_nearest
from colorize_batch.hints import HintPoint, rasterize
from colorize_batch.inference import Colorizer
from colorize_batch.weights import load_weights

S = 64


def two_regions(dark: float = 25.0, light: float = 75.0) -> torch.Tensor:
    """``(1, S, S)`` lightness: a left half and a right half, each with gentle shading and grain."""
    gen = torch.Generator().manual_seed(0)
    rows = torch.linspace(0, 8, S).view(S, 1)  # 8 L units of shading top to bottom
    img = torch.where(torch.arange(S) < S // 2, dark, light).float().view(1, S).expand(S, S) + rows
    return (img + torch.rand(S, S, generator=gen)).unsqueeze(0)


def hint_planes(x: float, y: float, a: float = 0.0, b: float = -50.0) -> torch.Tensor:
    return rasterize([HintPoint(x, y, a, b, 0.05)], S, S, S)[None]


def test_a_hint_in_one_region_does_not_move_the_other():
    """Left and right halves split by a 50-unit edge. The branch's effect (a field of 30 spread
    over everything) stays in the hinted half: with its far share off (keep 0) the other half
    does not move; with the shipped share it gets exactly KEEP of it. The hint's own colour
    fills its half around it and fades across the edge by at least exp(-edge / PULL_SCALE)."""
    light = two_regions()
    auto = torch.zeros(1, 2, S, S)
    bleed = torch.full((1, 2, S, S), 30.0)
    left, right = (slice(None, S // 2 - 1), slice(S // 2 + 1, None))
    for x, mine, other, around in ((0.2, left, right, slice(8, 18)), (0.8, right, left, slice(46, 56))):
        planes = hint_planes(x, 0.5, a=0.0, b=-50.0)
        cut = edge_aware(auto, bleed, light, planes, keep=0.0, pull=0.0)
        assert float(cut[0, :, :, other].abs().max()) < 0.1  # across the edge: under 0.3% of the effect
        assert float(cut[0, :, :, mine].min()) > 29.0  # its own half (shading and grain included): all of it
        floor = edge_aware(auto, bleed, light, planes, pull=0.0, keep_range=math.inf)  # a floor the same everywhere
        assert torch.allclose(floor[0, :, :, other], torch.full_like(floor[0, :, :, other], 30 * KEEP), atol=0.1)
        ranged = edge_aware(auto, bleed, light, planes, pull=0.0, keep_range=60.0)  # the floor fades with length
        across = ranged[0, 0, 32, other]
        across = across if x < 0.5 else across.flip(0)  # nearest the edge first
        assert bool((across.diff() < 0).all()) and float(across[0]) < 30 * KEEP
        fade = math.exp(-(len(across) - 1) / 60.0)  # one pixel of length per pixel along the row
        assert float(across[-1] / across[0]) == pytest.approx(fade, rel=0.02)
        pulled = -edge_aware(auto, auto, light, planes)[0, 1] / 50  # share of the way to the hint's colour
        assert float(pulled[:, other].max()) < PULL * math.exp(-45 / PULL_SCALE)
        assert float(pulled[28:36, around].min()) > PULL * math.exp(-12 / PULL_SCALE)  # around the hint


def test_the_distance_follows_paths_around_edges_not_straight_lines():
    light = torch.full((1, S, S), 50.0)
    light[0, :, 30:34] = 90.0  # a bright wall down the middle...
    light[0, 54:, 30:34] = 50.0  # ...with a gap at the bottom
    seeds = torch.zeros(1, S, S, dtype=torch.bool)
    seeds[0, 5, 5] = True
    dist = geodesic_distance(seeds, light)
    assert float(dist[0, 5, 60]) == 0.0  # behind the wall, reached through the gap at no cost
    light[0, 54:, 30:34] = 90.0  # close the gap
    dist = geodesic_distance(seeds, light)
    assert float(dist[0, 5, 60]) > 70.0  # now every path climbs the wall and comes down (2 x 40, less the threshold)
    assert float(dist[0, 60, 5]) == 0.0


def test_images_without_points_keep_the_automatic_ab_exactly():
    light = two_regions().expand(2, S, S)
    auto, hinted = torch.randn(2, 2, S, S), torch.randn(2, 2, S, S)
    planes = torch.cat([hint_planes(0.2, 0.5), torch.zeros(1, 3, S, S)])
    out = edge_aware(auto, hinted, light, planes)
    assert torch.equal(out[1], auto[1])
    under = hinted[0, :, 32, 12] + PULL * (torch.tensor([0.0, -50.0]) - hinted[0, :, 32, 12])
    assert torch.allclose(out[0, :, 32, 12], under, atol=1e-3)  # under the hint: half way from the branch's ab to the hint's


def test_the_nearest_hint_colour_travels_with_the_distance():
    light = two_regions()
    seeds = torch.zeros(1, S, S, dtype=torch.bool)
    seeds[0, 10, 10] = seeds[0, 50, 50] = True
    values = torch.zeros(1, 2, S, S)
    values[0, :, 10, 10] = torch.tensor([1.0, 2.0])
    values[0, :, 50, 50] = torch.tensor([3.0, 4.0])
    dist, nearest = geodesic_nearest(seeds, light, values, 2.0)
    assert nearest[0, :, 60, 5].tolist() == [1.0, 2.0] and nearest[0, :, 3, 60].tolist() == [3.0, 4.0]  # each half its own
    assert float(dist[0, 60, 5]) == 0.0 and float(dist[0, 3, 60]) == 0.0


@pytest.fixture(scope="module")
def shipped():
    if not DEFAULT_WEIGHTS.is_file():
        pytest.skip("no shipped weights")
    return load_weights(DEFAULT_WEIGHTS)[0]


def coffee_square(size: int = 128) -> torch.Tensor:
    grey = np.asarray(Image.fromarray(colour_photo("coffee")).convert("L").resize((size, size)))
    return torch.from_numpy(np.array(grey))[None, None]


def test_the_colorizer_without_hints_is_bit_for_bit_the_same(shipped):
    grey = torch.cat([coffee_square(), coffee_square().flip(-1)])
    plain, edges = Colorizer(shipped, torch.device("cpu")), Colorizer(shipped, torch.device("cpu"), hint_edges=True)
    automatic = plain.predict(grey)
    assert torch.equal(edges.predict(grey), automatic)
    planes = torch.cat([rasterize([HintPoint(0.3, 0.7, 0.0, -60.0, 0.05)], 128, 600, 400)[None], torch.zeros(1, 3, 128, 128)])
    mixed = edges.predict(grey, hints=planes)
    assert torch.equal(mixed[1], automatic[1])  # the batch's image without points: untouched
    assert float((mixed[0] - automatic[0]).abs().max()) > 5.0  # the hinted one: the hint works
    assert not torch.equal(mixed[0], plain.predict(grey, hints=planes)[0])  # and the gate changed it


def test_on_a_featureless_photo_the_hint_colour_fades_with_distance():
    light = torch.full((1, S, S), 50.0)
    auto = torch.zeros(1, 2, S, S)
    pulled = -edge_aware(auto, auto, light, hint_planes(0.1, 0.5))[0, 1, 32] / 50  # along the hint's row
    assert bool((pulled[10:].diff() < 0).all())  # fading all the way
    assert float(pulled[60]) < PULL * math.exp(-PULL_SPREAD * 50 / PULL_SCALE) + 1e-4


def test_a_finite_reach_keeps_an_effect_local_on_a_photo_without_edges():
    light = torch.full((1, S, S), 50.0)
    auto, bleed = torch.zeros(1, 2, S, S), torch.full((1, 2, S, S), 30.0)
    planes = hint_planes(0.1, 0.5)
    assert torch.allclose(edge_aware(auto, bleed, light, planes, pull=0.0), bleed)  # shipped: no edge, no cut
    row = edge_aware(auto, bleed, light, planes, pull=0.0, keep=0.0, reach=20.0)[0, 0, 32]
    assert bool((row[10:].diff() < 0).all())
    assert float(row[60] / row[20]) == pytest.approx(math.exp(-40 / 20.0), rel=0.02)


def test_through_run_unhinted_photos_are_the_same_bytes_and_toggling_redoes_only_hinted_ones(tmp_path, run_cli, shipped):
    for i, name in enumerate(("plain.png", "hinted.png")):
        save(tmp_path / "in" / name, Image.fromarray(grey_image(96, 64, seed=i)))
    (tmp_path / "in" / "hinted.hints.json").write_text(json.dumps(
        {"points": [{"x": 0.3, "y": 0.5, "color": "#1f4fb0", "radius": 0.05}]}), encoding="utf-8")
    (tmp_path / "off.yaml").write_text("model:\n  hint_edges: false\n", encoding="utf-8")
    args = ("--weights", DEFAULT_WEIGHTS, "--size", "64", "--workers", "0", "-q")
    run_cli("run", tmp_path / "in", tmp_path / "on", *args, expect=0)
    run_cli("run", tmp_path / "in", tmp_path / "off", *args, "--config", tmp_path / "off.yaml", expect=0)
    assert (tmp_path / "on" / "plain.png").read_bytes() == (tmp_path / "off" / "plain.png").read_bytes()
    assert (tmp_path / "on" / "hinted.png").read_bytes() != (tmp_path / "off" / "hinted.png").read_bytes()
    run_cli("run", tmp_path / "in", tmp_path / "on", *args, "--config", tmp_path / "off.yaml", expect=0)
    counts = json.loads((tmp_path / "on" / ".colorize-batch" / "last-run.json").read_text())["counts"]
    assert counts["done"] == 1 and counts["skipped_up_to_date"] == 1
    assert (tmp_path / "on" / "hinted.png").read_bytes() == (tmp_path / "off" / "hinted.png").read_bytes()
