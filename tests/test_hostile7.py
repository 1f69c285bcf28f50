"""What the seventh hostile run found, each proved on real files: ``export`` onto a FIFO or device
(``os.replace`` put the weights file in its place: as root, ``/dev/full`` became a regular file),
into a folder that cannot be made (a traceback) or onto an empty name; a hint file or bundle holding
a number of thousands of digits (Python's integer limit: a traceback that stopped the whole ``run``);
a bundle name holding a lone surrogate (``"\\ud800"``: a traceback) or too long for the file system
(exit 1, no name given); a manifest line nested deeper than the JSON parser goes (a traceback in
``gallery``, ``run`` and ``review``); ``review`` of an OUT whose state folder, manifest or gallery is a
link (a traceback, or exit 1 instead of 2); ``review``'s accept of a photo whose scan was deleted
since the review started (the hint file written, its folder made again) and through a folder of
``--hints DIR`` that links out of it (``hints import`` refuses both); and the Python API's bad
arguments (pydantic's multi-line ``ValidationError`` instead of ``ConfigError``, a 0x0 image failing
deep in torch, ``colorize_many("scan.png")`` decoding each letter, hints or weights of the wrong type
failing inside pathlib, ``colorize_stream(batch_size=0)`` accepted)."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
from conftest import grey_image, save
from PIL import Image

from colorize_batch.config import ConfigError, load_config
from colorize_batch.decoding import DecodeError
from colorize_batch.exit_codes import ExitCode
from colorize_batch.manifest import Manifest, RunLock
from colorize_batch.review import BadRequest, Reviewer

POINT = {"x": 0.5, "y": 0.5, "color": "#2040c0", "radius": 0.02}
HUGE = "1" + "0" * 5000  # past Python's 4300-digit limit for int(str)


def bundle(images: dict) -> str:
    return json.dumps({"format": "colorize-batch-hints", "version": 1, "images": images})


def finished_run(tmp_path: Path, run_cli, names=("a.png", "sub/b.png")) -> tuple[Path, Path]:
    src, out = tmp_path / "IN", tmp_path / "OUT"
    for i, name in enumerate(names):
        save(src / name, Image.fromarray(grey_image(64, 48, seed=i)))
    run_cli("run", src, out, "--size", "64", "--workers", "0", "-q", expect=0)
    return src, out


# ----------------------------------------------------------------------------- export
def test_export_never_puts_the_weights_in_place_of_a_fifo_or_device(tmp_path, run_cli, tiny_weights):
    run_dir = tmp_path / "training"
    run_dir.mkdir()
    shutil.copy(tiny_weights, run_dir / "generator_000005.pt")
    fifo = tmp_path / "weights.pt"
    os.mkfifo(fifo)
    result = run_cli("export", run_dir, fifo, "--step", "5", expect=ExitCode.USAGE)
    assert result.output == f"Error: {fifo}: not a regular file; a weights file is never written over it\n"
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    (tmp_path / "plain").write_text("")  # a folder that cannot be made: one line, exit 1
    result = run_cli("export", run_dir, tmp_path / "plain" / "w.pt", "--step", "5", expect=ExitCode.FAILED)
    assert result.output.startswith(f"Error: {tmp_path}/plain/w.pt: cannot write the weights file (")
    assert result.output.count("\n") == 1
    result = run_cli("export", run_dir, "", "--step", "5", expect=ExitCode.USAGE)
    assert "is empty (an unset variable in a script?)" in result.output
    run_cli("export", run_dir, tmp_path / "w.pt", "--step", "5", expect=0)


# ----------------------------------------------------------------------------- hint files and bundles
def test_a_number_of_thousands_of_digits_fails_that_hint_file_alone(tmp_path, run_cli):
    src = tmp_path / "in"
    save(src / "a.png", Image.fromarray(grey_image(64, 48)))
    save(src / "b.png", Image.fromarray(grey_image(64, 48, seed=1)))
    (src / "a.hints.json").write_text('{"points": [{"x": %s, "y": 0.5, "color": "#2040c0"}]}' % HUGE)
    reason = "not a usable hint document (a number of thousands of digits)"
    result = run_cli("hints", "check", src / "a.hints.json", expect=ExitCode.USAGE)
    assert result.output == f"{src}/a.hints.json: {reason}\n"
    result = run_cli("run", src, tmp_path / "out", "--size", "64", "--workers", "0", expect=ExitCode.FAILED)
    assert f"failed {src}/a.png: hint file {src}/a.hints.json: {reason}" in result.output
    assert (tmp_path / "out" / "b.png").is_file()
    (tmp_path / "bundle.json").write_text('{"format": "colorize-batch-hints", "version": %s, "images": {}}' % HUGE)
    result = run_cli("hints", "import", tmp_path / "bundle.json", tmp_path / "dest", expect=ExitCode.USAGE)
    assert result.output == f"Error: {tmp_path}/bundle.json: cannot read the bundle: {reason}\n"


def test_a_bundle_name_that_is_no_file_name_or_too_long_writes_nothing(tmp_path, run_cli):
    dest = tmp_path / "dest"
    dest.mkdir()
    surrogate = tmp_path / "surrogate.json"
    surrogate.write_text(bundle({"a.png": {"points": [POINT]}, "\ud800.png": {"points": [POINT]}}),
                         encoding="utf-8", errors="surrogatepass")
    result = run_cli("hints", "import", surrogate, dest, expect=ExitCode.USAGE)
    assert result.output == f"Error: {surrogate}: image name '\\ud800.png' is not a file name (a lone surrogate)\n"
    long_name = "z" * 300 + ".png"
    (tmp_path / "long.json").write_text(bundle({"a.png": {"points": [POINT]}, long_name: {"points": [POINT]}}))
    result = run_cli("hints", "import", tmp_path / "long.json", dest, expect=ExitCode.USAGE)
    assert result.output.endswith(f"{long_name}: {dest}/{'z' * 300}.hints.json: name too long for the file system; nothing written\n")
    assert list(dest.iterdir()) == []


# ----------------------------------------------------------------------------- the run's state
def test_a_manifest_line_nested_too_deeply_is_skipped_as_a_damaged_one(tmp_path, run_cli):
    _, out = finished_run(tmp_path, run_cli)
    with open(out / ".colorize-batch" / "manifest.jsonl", "a") as fh:
        fh.write("[" * 100_000 + "]" * 100_000 + "\n")
    assert sorted(Manifest(out).records) == ["a.png", "sub/b.png"]  # the line skipped (with a warning), not a crash
    run_cli("gallery", out, "--no-suggest", expect=0)
    assert "a.png" in (out / ".colorize-batch" / "gallery" / "index.html").read_text()


@pytest.mark.parametrize("linked", [".colorize-batch", ".colorize-batch/manifest.jsonl", ".colorize-batch/gallery"])
def test_review_of_an_out_whose_state_is_a_link_is_a_usage_error(tmp_path, run_cli, linked):
    _, out = finished_run(tmp_path, run_cli)
    state, target = out / linked, tmp_path / "elsewhere"
    if state.exists():  # the run's own folder or manifest, moved away and linked back
        shutil.move(state, target)
    else:  # no gallery yet: a linked one
        target.mkdir()
    state.symlink_to(target)
    result = run_cli("review", out, expect=ExitCode.USAGE)
    assert result.output == (f"Error: {out / linked}: is a symbolic link; colorize-batch never reads or writes its state "
                             "through a link (remove it)\n")


# ----------------------------------------------------------------------------- review: accept
def reviewer(out: Path, src: Path, weights: Path, hints_dir: Path | None = None) -> Reviewer:
    overrides = {"model.weights": str(weights), "model.size": 64}
    if hints_dir is not None:
        overrides["input.hints_dir"] = str(hints_dir)
    return Reviewer(out, load_config(None, overrides), source_dir=src)


def test_accept_after_the_scan_was_deleted_writes_nothing(tmp_path, run_cli, tiny_weights):
    src, out = finished_run(tmp_path, run_cli)
    with RunLock(out):
        review = reviewer(out, src, tiny_weights)
        try:
            review.preview("sub/b.png", [POINT])  # the photo is open in the editor
            shutil.rmtree(src / "sub")
            with pytest.raises(BadRequest, match=r"^sub/b\.png: the scan is no longer at .*/IN/sub/b\.png "
                                                 r"\(moved or deleted\); nothing written$"):
                review.accept("sub/b.png", [POINT])
        finally:
            review.close()
    assert not (src / "sub").exists()
    assert sorted(p.name for p in src.iterdir()) == ["a.png"]


def test_accept_never_writes_a_hint_file_through_a_link_out_of_the_hints_folder(tmp_path, run_cli, tiny_weights):
    src, out = finished_run(tmp_path, run_cli)
    hints, elsewhere = tmp_path / "hints", tmp_path / "elsewhere"
    hints.mkdir()
    elsewhere.mkdir()
    (hints / "sub").symlink_to(elsewhere)
    (tmp_path / "victim.txt").write_text("keep")
    (hints / "a.hints.json").symlink_to(tmp_path / "victim.txt")
    with RunLock(out):
        review = reviewer(out, src, tiny_weights, hints)
        try:
            with pytest.raises(BadRequest, match="leads outside .* \\(symlink\\); nothing written"):
                review.accept("sub/b.png", [POINT])
            with pytest.raises(BadRequest, match=r"a\.hints\.json is a symlink; not replaced, nothing written"):
                review.accept("a.png", [POINT])
        finally:
            review.close()
    assert list(elsewhere.iterdir()) == []
    assert (hints / "a.hints.json").is_symlink() and (tmp_path / "victim.txt").read_text() == "keep"


# ----------------------------------------------------------------------------- the Python API
def test_the_api_says_what_is_wrong_with_its_arguments(tmp_path, tiny_weights):
    from colorize_batch.api import ColorizeSession

    with pytest.raises(ConfigError, match=r"(?s)ColorizeSession: 1 problem.*temperature: Input should be greater"):
        ColorizeSession(tiny_weights, temperature=-1)
    with pytest.raises(TypeError, match="config of type dict: give a YAML file's path or a PipelineConfig"):
        ColorizeSession(tiny_weights, config={"model": {}})
    with pytest.raises(TypeError, match="weights of type int"):
        ColorizeSession(5)
    session = ColorizeSession(tiny_weights, config=None)
    grey = grey_image(64, 48)
    for empty in (np.zeros((0, 0), np.uint8), Image.new("L", (0, 0))):
        with pytest.raises(DecodeError, match="an image of 0x0 pixels: nothing to colorize"):
            session.colorize(empty)
    with pytest.raises(DecodeError, match="an empty path"):
        session.colorize("")
    path = save(tmp_path / "scan.png", Image.fromarray(grey))
    with pytest.raises(TypeError, match="colorize_many takes a sequence of images, not one str: use colorize"):
        session.colorize_many(str(path))
    with pytest.raises(TypeError, match="hints of type list: give a hint file's path, a hint document"):
        session.colorize(grey, hints=[POINT])
    with pytest.raises(ValueError, match="batch_size must be a whole number of at least 1, got 0"):
        list(session.colorize_stream([grey], batch_size=0))
    assert session.colorize(path).size == (64, 48)
