"""Suggested colours in the static gallery (issue 25): a coarse grid of the model's most likely
distinct colours per image, made with the shipped weights when the gallery is built, carried by
the page, kept under gallery/suggest/ and reused. (The browser side: tests/test_gallery_hints.py.)"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import save
from PIL import Image

from colorize_batch.cli import main
from colorize_batch.color import grey_to_lightness
from colorize_batch.config import DEFAULT_WEIGHTS, load_config
from colorize_batch.decoding import decode
from colorize_batch.examples import grey_photo
from colorize_batch.hints import hex_to_ab
from colorize_batch.manifest import gallery_dir, manifest_path
from colorize_batch.suggestions import GRID_COLOURS, Suggester, SuggestionSource, distinct_colours
from colorize_batch.weights import load_weights, save_weights

pytestmark = pytest.mark.skipif(not DEFAULT_WEIGHTS.is_file(), reason="no shipped weights")

_DATA = re.compile(r'<script type="application/json" id="hint-data">(.*?)</script>', re.S)
_TOKEN = re.compile(r"([0-9a-f]{6})(\d\d)")


@pytest.fixture(scope="module")
def suggester() -> Suggester:
    return Suggester(load_config(None, {}).model)  # the shipped weights, size 256


def _cell(cell: str) -> list[tuple[str, int]]:
    assert re.fullmatch(r"(?:[0-9a-f]{6}\d\d){1,3}", cell), cell
    return [("#" + colour, int(share)) for colour, share in _TOKEN.findall(cell)]


def test_grid_of_a_real_photo(tmp_path, suggester):
    """The cat photo (451x300): an 11x16 grid; each cell's colours are review's distinct colours of
    the model's belief averaged over that cell; the cat comes out warm; the page data stays small."""
    path = save(tmp_path / "chelsea.png", Image.fromarray(grey_photo("chelsea")))
    grid = suggester.grids([SuggestionSource(path), SuggestionSource(tmp_path / "missing.png")])
    assert grid[1] is None  # a file that cannot be decoded has none, and costs nothing else
    data = grid[0]
    assert data is not None
    assert (data["rows"], data["cols"]) == (11, 16) and len(data["cells"]) == 11 * 16
    assert (data["model"], data["size"]) == (suggester.automatic_sha256, 256)  # the automatic model: its grids
    page_bytes = len(json.dumps({k: data[k] for k in ("rows", "cols", "cells")}, separators=(",", ":")))
    print(f"\nsuggested colours of a 451x300 photo: {page_bytes} bytes of page data")
    assert page_bytes < 10_000

    # The same colours as review's distinct_colours (the one rule) over each cell of the model's belief.
    square = torch.from_numpy(decode(path, 256).net_input.copy())[None, None]
    colorizer = suggester.load()
    assert colorizer is not None
    belief = colorizer.bin_probabilities(square)
    assert belief is not None
    probs, bins = belief
    lightness = grey_to_lightness(square[0, 0]).double()
    warm = 0
    for row in range(11):
        for col in range(16):
            cell = _cell(data["cells"][row * 16 + col])
            (top, bottom), (left, right) = _span(row, 11, probs.shape[-2]), _span(col, 16, probs.shape[-1])
            (l_top, l_bottom), (l_left, l_right) = _span(row, 11, 256), _span(col, 16, 256)
            expected = distinct_colours(probs[0, :, top:bottom, left:right].mean(dim=(1, 2)), bins,
                                        float(lightness[l_top:l_bottom, l_left:l_right].mean()), GRID_COLOURS)
            assert [c for c, _ in cell] == [e["color"] for e in expected]
            assert all(abs(s - min(99, e["share"] * 100)) <= 0.5001 for (_, s), e in zip(cell, expected))
            assert all(a >= b >= 2 for a, b in zip([s for _, s in cell], [s for _, s in cell][1:] + [2]))
            a, b = hex_to_ab(cell[0][0])
            warm += b > 5 and a > 0
    assert warm > 0.6 * 11 * 16, warm  # a tabby cat on a brown rug: mostly browns


def _span(index: int, cells: int, side: int) -> tuple[int, int]:
    """Cell ``index`` of ``cells`` over ``side`` pixels, as adaptive average pooling cuts them."""
    return index * side // cells, math.ceil((index + 1) * side / cells)


def _images(index: Path) -> dict[str, dict]:
    match = _DATA.search(index.read_text(encoding="utf-8"))
    assert match
    return {image["rel"]: image for image in json.loads(match.group(1))["images"]}


def test_gallery_command_carries_keeps_and_reuses_suggestions(tmp_path, tiny_weights, monkeypatch):
    src, out = tmp_path / "IN", tmp_path / "OUT"
    save(src / "cats" / "chelsea.png", Image.fromarray(grey_photo("chelsea")))
    save(src / "coffee.jpg", Image.fromarray(grey_photo("coffee")), quality=90)
    runner = CliRunner()
    result = runner.invoke(main, ["run", str(src), str(out), "--workers", "0", "-q"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    calls: list[int] = []  # images each build made suggestions for
    loads: list[str] = []  # models loaded
    grids, load = Suggester.grids, Suggester.load
    monkeypatch.setattr(Suggester, "grids", lambda self, sources: calls.append(len(sources)) or grids(self, sources))
    monkeypatch.setattr(Suggester, "load", lambda self: loads.append(self.model.weights.name) or load(self))

    result = runner.invoke(main, ["gallery", str(out)], catch_exceptions=False)  # default: on (the weights exist)
    assert result.exit_code == 0, result.output
    images = _images(gallery_dir(out) / "index.html")
    assert calls == [2] and set(images) == {"cats/chelsea.png", "coffee.jpg"}
    assert (images["cats/chelsea.png"]["suggest"]["rows"], images["cats/chelsea.png"]["suggest"]["cols"]) == (11, 16)
    assert all(_cell(cell) for image in images.values() for cell in image["suggest"]["cells"])
    kept = gallery_dir(out) / "suggest" / "cats" / "chelsea.png.json"
    assert json.loads(kept.read_text())["cells"] == images["cats/chelsea.png"]["suggest"]["cells"]
    assert "other weights" not in (gallery_dir(out) / "index.html").read_text(encoding="utf-8")

    result = runner.invoke(main, ["gallery", str(out)], catch_exceptions=False)  # nothing changed: all reused
    assert result.exit_code == 0 and calls == [2, 0] and len(loads) == 1  # and no model loaded
    assert _images(gallery_dir(out) / "index.html") == images
    earlier = (src / "cats" / "chelsea.png").stat().st_mtime_ns - 1_000_000_000
    os.utime(kept, ns=(earlier, earlier))  # the scan is now newer than its grid (as after an edit): made again
    assert runner.invoke(main, ["gallery", str(out)], catch_exceptions=False).exit_code == 0 and calls == [2, 0, 1]
    result = runner.invoke(main, ["gallery", str(out), "--size", "128"], catch_exceptions=False)  # another size: all again
    assert result.exit_code == 0 and calls == [2, 0, 1, 2]
    assert runner.invoke(main, ["gallery", str(out), "--size", "128"], catch_exceptions=False).exit_code == 0
    assert calls == [2, 0, 1, 2, 0]
    net, info = load_weights(DEFAULT_WEIGHTS)  # another hint branch, the same automatic model: the grids stand
    with torch.no_grad():
        net.hints.to_logits.weight.mul_(-1.0)
    branch = save_weights(tmp_path / "branch.pt", net, info.provenance)
    result = runner.invoke(main, ["gallery", str(out), "--size", "128", "--weights", str(branch)], catch_exceptions=False)
    assert result.exit_code == 0 and calls == [2, 0, 1, 2, 0, 0], result.output

    # A photo made by other weights: said in the header.
    lines = manifest_path(out).read_text(encoding="utf-8").splitlines()
    record = json.loads(lines[0])
    record["model"] = "00" * 32  # another file with the same automatic model (another hint branch): the same colours
    manifest_path(out).write_text("\n".join([json.dumps(record), *lines[1:]]) + "\n", encoding="utf-8")
    html = (gallery_dir(out) / "index.html")
    assert runner.invoke(main, ["gallery", str(out)], catch_exceptions=False).exit_code == 0
    assert "other weights" not in html.read_text(encoding="utf-8")
    record["automatic"] = "11" * 32
    manifest_path(out).write_text("\n".join([json.dumps(record), *lines[1:]]) + "\n", encoding="utf-8")
    assert runner.invoke(main, ["gallery", str(out)], catch_exceptions=False).exit_code == 0
    assert "The suggested colours come from other weights" in html.read_text(encoding="utf-8")
    assert "than the ones that made 1 of these photos" in html.read_text(encoding="utf-8")

    # Off, and weights without colour bins (pix2pix): no suggestions; asked for without weights: exit 2.
    for args in (["--no-suggest"], ["--weights", str(tiny_weights)]):
        result = runner.invoke(main, ["gallery", str(out), *args], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        assert all("suggest" not in image for image in _images(gallery_dir(out) / "index.html").values())
    result = runner.invoke(main, ["gallery", str(out), "--suggest", "--weights", str(tmp_path / "none.pt")])
    assert result.exit_code == 2 and "none.pt: weights file not found" in result.output
    assert len(result.output.splitlines()) == 1
