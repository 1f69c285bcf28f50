"""Colour hints through `colorize-batch run`: found, used, keyed in the manifest, failed alone when bad."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import grey_image, save
from PIL import Image

from colorize_batch.hints import Hints, parse_hints
from colorize_batch.manifest import report_path
from colorize_batch.model import build_generator
from colorize_batch.weights import save_weights


@pytest.fixture(scope="module")
def hint_weights(tmp_path_factory) -> Path:
    """A weights file with a hint branch whose projections are not zero (as if trained)."""
    torch.manual_seed(0)
    net = build_generator("effnet-lite0-hints")
    with torch.no_grad():
        for proj in (net.hints.to32, net.hints.to16, net.hints.to8, net.hints.to4, net.hints.to_logits):
            proj.weight.normal_(0.0, 0.3)
    return save_weights(tmp_path_factory.mktemp("w") / "hints.pt", net, {"name": "hints-test"})


def tree(root: Path) -> list[Path]:
    return [save(root / rel, Image.fromarray(grey_image(96, 64, seed=i))) for i, rel in enumerate(["a.png", "sub/b.png", "c.png"])]


def hint_file(path: Path, colour: str = "#1f2a44", x: float = 0.5) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"points": [{"x": x, "y": 0.5, "color": colour, "radius": 0.2}]}))
    return path


def last_run(out: Path) -> dict:
    return json.loads(report_path(out).read_text())


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).astype(int)


def test_a_hint_file_beside_the_scan_changes_only_its_image(tmp_path, run_cli, hint_weights):
    tree(tmp_path / "in")
    args = ("--weights", hint_weights, "--size", "64", "--workers", "0")
    run_cli("run", tmp_path / "in", tmp_path / "plain", *args, expect=0)
    hint_file(tmp_path / "in" / "sub" / "b.hints.json")
    run_cli("run", tmp_path / "in", tmp_path / "out", *args, expect=0)
    assert last_run(tmp_path / "out")["counts"]["with_hints"] == 1
    for rel in ("a.png", "c.png"):  # no hints: exactly the automatic colours
        assert np.array_equal(pixels(tmp_path / "plain" / rel), pixels(tmp_path / "out" / rel))
    assert np.abs(pixels(tmp_path / "plain" / "sub/b.png") - pixels(tmp_path / "out" / "sub/b.png")).max() > 3
    assert not (tmp_path / "out" / "sub" / "b.hints.json").exists()  # hint files are not images


def test_editing_hints_redoes_exactly_those_images(tmp_path, run_cli, hint_weights):
    tree(tmp_path / "in")
    hints = hint_file(tmp_path / "in" / "a.hints.json")
    args = ("--weights", hint_weights, "--size", "64", "--workers", "0")
    run_cli("run", tmp_path / "in", tmp_path / "out", *args, expect=0)
    first = pixels(tmp_path / "out" / "a.png")
    run_cli("run", tmp_path / "in", tmp_path / "out", *args, expect=0)
    assert last_run(tmp_path / "out")["counts"]["done"] == 0
    hint_file(hints, colour="#c03020")
    run_cli("run", tmp_path / "in", tmp_path / "out", *args, expect=0)
    rep = last_run(tmp_path / "out")
    assert rep["counts"]["done"] == 1 and rep["counts"]["skipped_up_to_date"] == 2
    assert not np.array_equal(first, pixels(tmp_path / "out" / "a.png"))
    hints.unlink()  # removing the hints is an edit too
    run_cli("run", tmp_path / "in", tmp_path / "out", *args, expect=0)
    assert last_run(tmp_path / "out")["counts"]["done"] == 1


def test_a_bad_hint_file_fails_its_image_alone(tmp_path, run_cli, hint_weights):
    tree(tmp_path / "in")
    (tmp_path / "in" / "c.hints.json").write_text('{"points": [{"x": 0.5, "y": 7, "color": "#000000"}]}')
    result = run_cli("run", tmp_path / "in", tmp_path / "out", "--weights", hint_weights, "--size", "64", "--workers", "0")
    assert result.exit_code == 1
    rep = last_run(tmp_path / "out")
    assert rep["counts"]["done"] == 2 and rep["counts"]["failed"] == 1
    (failure,) = rep["failures"]
    assert failure["path"].endswith("c.png")
    assert "c.hints.json" in failure["reason"] and "point 1: y = 7 is outside 0-1" in failure["reason"]
    assert "Traceback" not in result.output


def test_a_hints_folder_and_hints_only(tmp_path, run_cli, hint_weights):
    tree(tmp_path / "in")
    hint_file(tmp_path / "in" / "a.hints.json")  # beside the scan: not read when --hints is given
    hint_file(tmp_path / "hints" / "sub" / "b.hints.json")
    args = ("--weights", hint_weights, "--size", "64", "--workers", "0", "--hints", tmp_path / "hints")
    run_cli("run", tmp_path / "in", tmp_path / "out", *args, "--hints-only", expect=0)
    rep = last_run(tmp_path / "out")
    assert rep["counts"]["done"] == 1 and rep["counts"]["with_hints"] == 1 and rep["counts"]["left_out_without_hints"] == 2
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.png")) == ["sub/b.png"]
    run_cli("run", tmp_path / "in", tmp_path / "out", *args, expect=0)  # now the rest, the hinted one stays done
    rep = last_run(tmp_path / "out")
    assert rep["counts"]["done"] == 2 and rep["counts"]["skipped_up_to_date"] == 1


def test_weights_without_a_hint_branch_warn_and_colour_automatically(tmp_path, run_cli, tiny_weights):
    tree(tmp_path / "in")
    hint_file(tmp_path / "in" / "a.hints.json")
    result = run_cli("run", tmp_path / "in", tmp_path / "out", "--workers", "0", expect=0)
    assert "have hint points but" in result.output and "no hint branch" in result.output


def test_hints_travel_to_ray_actors_losslessly():
    hints = parse_hints({"points": [{"x": 0.1, "y": 0.9, "color": "#123456", "radius": 0.05}], "global": {"tint": "#704214"}})
    assert Hints.from_json(hints.to_json()) == hints
    assert Hints.from_json(Hints().to_json()) == Hints()


def test_a_retrained_hint_branch_redoes_only_the_photos_with_hints(tmp_path, run_cli, hint_weights):
    """The manifest keys a photo without hints to the weights' automatic model alone: a new file
    that differs only in its hint branch (a retrained branch, the same automatic colours bit for
    bit) leaves those photos up to date and redoes the hinted ones; any other change redoes all."""
    from colorize_batch.manifest import manifest_path
    from colorize_batch.weights import load_weights, read_weights_info

    tree(tmp_path / "in")
    hint_file(tmp_path / "in" / "a.hints.json")
    out = tmp_path / "out"
    args = ("--size", "64", "--workers", "0")
    run_cli("run", tmp_path / "in", out, "--weights", hint_weights, *args, expect=0)
    first = {rel: pixels(out / rel) for rel in ("a.png", "sub/b.png", "c.png")}
    lines = [json.loads(line) for line in manifest_path(out).read_text().splitlines()]  # as an older version wrote it:
    manifest_path(out).write_text("".join(json.dumps({k: v for k, v in r.items() if k != "automatic"}) + "\n" for r in lines))
    run_cli("run", tmp_path / "in", out, "--weights", hint_weights, *args, expect=0)  # nothing to do, the records gain it
    assert last_run(out)["counts"]["done"] == 0

    net, info = load_weights(hint_weights)
    with torch.no_grad():
        net.hints.to_logits.weight.mul_(-1.5)  # "retrained": another hint branch, the same automatic model
    branch = save_weights(tmp_path / "branch.pt", net, info.provenance)
    assert read_weights_info(branch).sha256 != info.sha256
    assert read_weights_info(branch).automatic_sha256 == info.automatic_sha256
    run_cli("run", tmp_path / "in", out, "--weights", branch, *args, expect=0)
    rep = last_run(out)
    assert rep["counts"]["done"] == 1 and rep["counts"]["skipped_up_to_date"] == 2  # a.png alone: it has hints
    assert not np.array_equal(first["a.png"], pixels(out / "a.png"))
    records = {r["source"]: r for r in map(json.loads, manifest_path(out).read_text().splitlines())}
    assert records["a.png"]["model"] == read_weights_info(branch).sha256 and "automatic" not in records["a.png"]
    assert records["c.png"]["automatic"] == info.automatic_sha256
    fresh = tmp_path / "fresh"  # the photos it left alone are what the new file makes of them
    run_cli("run", tmp_path / "in", fresh, "--weights", branch, *args, expect=0)
    for rel in ("sub/b.png", "c.png"):
        assert np.array_equal(pixels(fresh / rel), pixels(out / rel)) and np.array_equal(first[rel], pixels(out / rel))

    with torch.no_grad():
        next(p for name, p in net.named_parameters() if not name.startswith("hints.")).add_(0.01)
    base = save_weights(tmp_path / "base.pt", net, info.provenance)  # the automatic model changed too
    assert read_weights_info(base).automatic_sha256 != info.automatic_sha256
    run_cli("run", tmp_path / "in", out, "--weights", base, *args, expect=0)
    assert last_run(out)["counts"]["done"] == 3
