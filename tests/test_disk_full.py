"""A full disk: before the run starts (the lock cannot be created) and in the middle of it."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

from conftest import grey_image, save
from PIL import Image

from colorize_batch import manifest, safe_files
from colorize_batch.manifest import STATE_DIR, lock_path, report_path


def make_tree(root: Path, n: int) -> list[Path]:
    return [save(root / f"img{i:02d}.png", Image.fromarray(grey_image(64, 48, seed=i))) for i in range(n)]


def test_full_disk_mid_run_lists_the_files_never_tried(tmp_path, run_cli, monkeypatch):
    sources = make_tree(tmp_path / "in", 30)
    real_fsync = os.fsync

    def full(fd):  # image outputs only: the run's own state (report, manifest) still fits
        if STATE_DIR in os.readlink(f"/proc/self/fd/{fd}"):
            return real_fsync(fd)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safe_files.os, "fsync", full)
    result = run_cli("run", tmp_path / "in", tmp_path / "out", "--workers", "0", "--batch-size", "2")
    assert result.exit_code == 1
    rep = json.loads(report_path(tmp_path / "out").read_text())
    assert "disk full" in rep["stopped_reason"]
    tried = {f["path"] for f in rep["failures"]}
    assert rep["not_tried"] and not tried & set(rep["not_tried"])
    assert tried | set(rep["not_tried"]) == {str(p) for p in sources}  # every file is accounted for
    assert rep["counts"]["failed"] < 30  # stopped, not failing every remaining file
    left = [p for p in (tmp_path / "out").rglob("*") if p.is_file() and STATE_DIR not in p.parts]
    assert left == []  # nothing partial: no output, no temporary file


def test_full_disk_before_the_run_starts_is_one_line_and_exit_1(tmp_path, run_cli, monkeypatch):
    make_tree(tmp_path / "in", 2)
    real_open = os.open

    def no_space(path, flags, mode=0o777, **kw):
        if Path(path).name == lock_path(tmp_path).name:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, flags, mode, **kw)

    monkeypatch.setattr(manifest.os, "open", no_space)
    result = run_cli("run", tmp_path / "in", tmp_path / "out")
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if "No space left on device" in line]
    assert len(lines) == 1 and "cannot write to the output folder" in lines[0] and str(tmp_path / "out") in lines[0]
