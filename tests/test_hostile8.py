"""What the eighth hostile run found, each proved on real files: a 2 kB ``--config`` of nested YAML
aliases (an alias bomb) hung every command that read it; a colour input copied with ``--format
png|jpg|tif`` (``input.color_inputs: copy``) replaced a foreign file in OUT of the source's name;
two shards of a run with ``input.tiff_pages: all`` both wrote ``scan_p2.tif`` (a page of
``scan.tif`` and a scan of that name), the later one replacing the other's output; the gallery made
no thumbnail for a scan named with 252 bytes or more (``name.png.jpg`` is too long a name); ``run
--gallery`` stopped by Ctrl-C or SIGTERM went on to build the whole gallery (thumbnails and a
forward pass per photo); and a further Ctrl-C while the decode workers were being shut down
printed a traceback from torch's ``__del__`` (and was lost)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import grey_image, save
from PIL import Image
from torch.utils.data.dataloader import _MultiProcessingDataLoaderIter

from colorize_batch.exit_codes import ExitCode
from colorize_batch.manifest import gallery_dir, state_dir
from colorize_batch.sharding import shard_of
from colorize_batch.stages import ResultSink

REPO = Path(__file__).resolve().parent.parent


def _records(out: Path) -> list[dict]:
    """Every record of every manifest of OUT (shards included)."""
    return [json.loads(line) for path in sorted(state_dir(out).glob("manifest*.jsonl"))
            for line in path.read_text().splitlines() if line.strip()]


def _outputs(out: Path) -> list[Path]:
    return sorted(p for p in out.rglob("*") if p.is_file() and state_dir(out) not in p.parents)


# ----------------------------------------------------------------------------- config
def test_a_config_of_nested_yaml_aliases_is_refused_at_once_not_walked_for_ever(tmp_path):
    lines = ["l0: &l0 {x: 1, y: 2}"] + [f"l{i}: &l{i} {{a: *l{i - 1}, b: *l{i - 1}}}" for i in range(1, 40)]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n")  # 2 kB; 2^40 values once its aliases are expanded
    looped = tmp_path / "loop.yaml"
    looped.write_text("a: &a [*a]\nmodel: {size: 256}\n")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for config in (bomb, looped):
        proc = subprocess.run([sys.executable, "-m", "colorize_batch", "run", tmp_path, tmp_path / "out", "--config", config,
                               "--print-config"], capture_output=True, text=True, timeout=60, env=env)
        assert proc.returncode == ExitCode.USAGE, proc.stderr
        assert proc.stderr.count("\n") == 1 and str(config) in proc.stderr and "aliases" in proc.stderr, proc.stderr


def test_yaml_aliases_of_an_ordinary_size_still_work(tmp_path, run_cli):
    config = tmp_path / "c.yaml"
    config.write_text("x-size: &size 128\nmodel:\n  size: *size\n")
    result = run_cli("run", tmp_path, tmp_path / "out", "--config", config, "--print-config")
    assert "Extra inputs" in result.output  # read, then validated as usual (x-size is no key of ours)
    config.write_text("model: &m {size: 128}\n")
    assert "size: 128" in run_cli("run", tmp_path, tmp_path / "out", "--config", config, "--print-config", expect=0).output


# ----------------------------------------------------------------------------- colour copies
def test_a_colour_copy_under_another_format_never_replaces_a_foreign_file(tmp_path, run_cli):
    src, out = tmp_path / "in", tmp_path / "out"
    rgb = np.stack([grey_image(seed=1), np.full((64, 96), 200, np.uint8), np.full((64, 96), 30, np.uint8)], -1)
    save(src / "colour.jpg", Image.fromarray(rgb))  # clearly in colour: copied as colour.jpg, whatever --format says
    save(src / "grey.png", Image.fromarray(grey_image()))
    foreign = out / "colour.jpg"
    foreign.parent.mkdir(parents=True)
    foreign.write_bytes(b"someone else's file")
    result = run_cli("run", src, out, "--format", "png", "--color-inputs", "copy", "--workers", "0")
    assert result.exit_code == ExitCode.FAILED, result.output
    assert foreign.read_bytes() == b"someone else's file"
    assert "colour.jpg already exists and was not written by colorize-batch" in result.output
    assert (out / "grey.png").is_file()  # the run went on
    result = run_cli("run", src, out, "--format", "png", "--color-inputs", "copy", "--workers", "0", "--force", expect=0)
    assert foreign.read_bytes() == (src / "colour.jpg").read_bytes()  # --force replaces it, as it does any output
    run_cli("run", src, out, "--format", "png", "--color-inputs", "copy", "--workers", "0", expect=0)  # its own copy now


@pytest.mark.parametrize("fmt", ["png", "same"])
def test_a_colour_copy_a_killed_run_never_recorded_is_still_its_own(tmp_path, run_cli, fmt):
    """A copy carries no mark: killed between writing it and recording it (SIGKILL, power loss), a
    run left a file that every later run called foreign (exit 1 until --force). A file with exactly
    the input's bytes is that copy; replacing it loses nothing."""
    src, out = tmp_path / "in", tmp_path / "out"
    rgb = np.stack([grey_image(seed=1), np.full((64, 96), 200, np.uint8), np.full((64, 96), 30, np.uint8)], -1)
    save(src / "colour.jpg", Image.fromarray(rgb))
    save(src / "grey.png", Image.fromarray(grey_image()))
    args = ("--format", fmt, "--color-inputs", "copy", "--workers", "0")
    run_cli("run", src, out, *args, expect=0)
    assert (out / "colour.jpg").read_bytes() == (src / "colour.jpg").read_bytes()
    for manifest in state_dir(out).glob("manifest*.jsonl"):
        manifest.unlink()  # what the kill left: the files, not their records
    result = run_cli("run", src, out, *args, expect=0)
    assert "not written by colorize-batch" not in result.output
    assert (out / "colour.jpg").read_bytes() == (src / "colour.jpg").read_bytes()
    (out / "colour.jpg").write_bytes((src / "colour.jpg").read_bytes()[:-1] + b"\0")  # not the input's bytes: foreign
    for manifest in state_dir(out).glob("manifest*.jsonl"):
        manifest.unlink()
    assert run_cli("run", src, out, *args).exit_code == ExitCode.FAILED


# ----------------------------------------------------------------------------- shards and TIFF pages
def test_shards_never_both_write_a_page_output_that_is_also_a_scans_output(tmp_path, run_cli):
    src, out = tmp_path / "in", tmp_path / "out"
    stem = next(f"roll{i}" for i in range(100) if shard_of(f"roll{i}.tif", 2) != shard_of(f"roll{i}_p2.tif", 2))
    pages = [Image.fromarray(grey_image(seed=s)) for s in range(3)]
    save(src / f"{stem}.tif", pages[0], save_all=True, append_images=pages[1:])  # -> roll_p1.tif, roll_p2.tif, roll_p3.tif
    save(src / f"{stem}_p2.tif", Image.fromarray(grey_image(seed=9)))  # -> roll_p2.tif as well
    config = tmp_path / "pages.yaml"
    config.write_text("input:\n  tiff_pages: all\n")
    unsharded = run_cli("run", src, tmp_path / "whole", "--config", config, "--workers", "0", "--dry-run").output
    codes = [run_cli("run", src, out, "--config", config, "--workers", "0", "--shard", f"{i}/2").exit_code for i in (0, 1)]
    writers = [rec["source"] for rec in _records(out) if rec["output"] == f"{stem}_p2.tif"]
    assert len(writers) == 1, writers  # one of the two shards, never both (the second replaced the first's)
    assert "is also the output of" in unsharded and ExitCode.FAILED in codes


# ----------------------------------------------------------------------------- gallery
def test_the_gallery_has_thumbnails_for_a_name_of_255_bytes(tmp_path, run_cli):
    src, out = tmp_path / "in", tmp_path / "out"
    name = "n" * 251 + ".png"  # the thumbnail's name.png.jpg would be 259 bytes
    save(src / name, Image.fromarray(grey_image()))
    save(src / "short.png", Image.fromarray(grey_image(seed=1)))
    run_cli("run", src, out, "--workers", "0", "-q", expect=0)
    result = run_cli("gallery", out, "--no-suggest", expect=0)
    assert "no thumbnail" not in result.output
    page = (gallery_dir(out) / "index.html").read_text()
    thumbs = [p for p in (gallery_dir(out) / "thumbs").rglob("*.jpg") if p.name.startswith("nnnn")]
    assert len(thumbs) == 2 and all(f'src="{p.relative_to(gallery_dir(out))}"' in page for p in thumbs)


def _interrupt_at_the_first_result(monkeypatch) -> threading.Event:
    """A Ctrl-C as the run's first file is recorded (it lands in the main thread, as a terminal's does)."""
    first = threading.Event()
    add = ResultSink.add

    def add_then_interrupt(self, result):
        add(self, result)
        if not first.is_set():
            first.set()
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(ResultSink, "add", add_then_interrupt)
    return first


def test_run_gallery_stopped_by_ctrl_c_stops_without_building_the_gallery(tmp_path, run_cli, monkeypatch):
    src, out = tmp_path / "in", tmp_path / "out"
    for i in range(12):
        save(src / f"{i:02d}.png", Image.fromarray(grey_image(seed=i)))
    _interrupt_at_the_first_result(monkeypatch)
    result = run_cli("run", src, out, "--workers", "0", "--batch-size", "1", "--gallery")
    assert result.exit_code == ExitCode.INTERRUPTED, result.output
    assert not gallery_dir(out).exists()
    assert "gallery not updated: the run was interrupted" in result.output


# ----------------------------------------------------------------------------- signals
def test_a_further_ctrl_c_while_decode_workers_shut_down_is_no_traceback(tmp_path, run_cli, monkeypatch):
    src, out = tmp_path / "in", tmp_path / "out"
    for i in range(16):
        save(src / f"{i:02d}.png", Image.fromarray(grey_image(seed=i)))
    unraisable: list = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)  # what prints "Exception ignored in ... __del__"
    first = _interrupt_at_the_first_result(monkeypatch)
    shutdown = _MultiProcessingDataLoaderIter._shutdown_workers

    def interrupted_shutdown(self):
        if first.is_set() and not self._shutdown:
            os.kill(os.getpid(), signal.SIGINT)  # the user presses Ctrl-C again as the workers are being stopped
        shutdown(self)

    monkeypatch.setattr(_MultiProcessingDataLoaderIter, "_shutdown_workers", interrupted_shutdown)
    result = run_cli("run", src, out, "--workers", "1", "--batch-size", "2")
    assert result.exit_code == ExitCode.INTERRUPTED, result.output
    assert unraisable == [], [str(u.exc_value) for u in unraisable]
    recorded = {rec["output"] for rec in _records(out) if rec["output"]}
    assert recorded == {str(p.relative_to(out)) for p in _outputs(out)} and recorded  # every output recorded
