"""What the fourth hostile run noticed and session 11 left (fixed in session 12), each proved on
real files: two job shapes on one OUT are kept apart by the locks; a folder that cannot be read
is a failure (exit 1), not a warning; 32-bit float grey TIFFs are colorized; an animated photo
says that only its first frame was used; a collision only suggests ``--format same`` where that
helps; a non-finite option value names the command line."""

from __future__ import annotations

import fcntl
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import grey_image, save
from PIL import Image
from test_bounded import error_lines

from colorize_batch.exit_codes import ExitCode
from colorize_batch.manifest import lock_path, report_path


def scans(root: Path, n: int = 3) -> Path:
    for i in range(n):
        save(root / f"scan{i}.png", Image.fromarray(grey_image(64, 48, seed=i)))
    return root


def notes_of(out: Path) -> dict[str, str]:
    report = json.loads(report_path(out).read_text())
    return {Path(n["path"]).name: n["message"] for n in report["notes"]}


# ----------------------------------------------------------------------------- one job shape per OUT
class HeldLock:
    """Another run's lock on OUT, held with ``flock`` as a live run holds it."""

    def __init__(self, out: Path, tag: str):
        path = lock_path(out, tag)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT)
        fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def __enter__(self) -> HeldLock:
        return self

    def __exit__(self, *exc) -> None:
        os.close(self.fd)


@pytest.mark.parametrize(("held", "args", "words"), [
    (".shard-1-of-2", [], "a --shard run of 2 shards"),
    ("", ["--shard", "0/2"], "an unsharded run"),
    (".shard-1-of-4", ["--shard", "0/2"], "a --shard run of 4 shards"),
])
def test_a_run_of_another_job_shape_on_the_same_out_is_exit_75(tmp_path, run_cli, held, args, words):
    src, out = scans(tmp_path / "in"), tmp_path / "out"
    with HeldLock(out, held):
        result = run_cli("run", src, out, *args, expect=ExitCode.LOCKED)
    (line,) = [line for line in error_lines(result.output) if line.startswith("Error:")]
    assert words in line and "one job shape per OUT" in line
    assert not any(out.glob("*.png"))  # nothing written beside the other run
    run_cli("run", src, out, *args, "-q", expect=0)  # the other run has ended: this one goes ahead


def test_shards_of_one_job_still_run_side_by_side(tmp_path, run_cli):
    src, out = scans(tmp_path / "in", 8), tmp_path / "out"
    with HeldLock(out, ".shard-1-of-2"):
        run_cli("run", src, out, "--shard", "0/2", "-q", expect=0)
    assert 0 < len(list(out.glob("*.png"))) < 8  # shard 0's share


# ----------------------------------------------------------------------------- a folder that cannot be read
def _folder_beyond_path_max(root: Path) -> Path:
    """Nested folders whose full path is longer than PATH_MAX (made relative to open folders,
    as a deep archive tree is): even root cannot read them by name. Returns the deepest one."""
    root.mkdir(parents=True)
    fd = os.open(root, os.O_RDONLY)
    name = "d" * 200
    depth = 4200 // (len(name) + 1) + 1
    try:
        for _ in range(depth):
            os.mkdir(name, dir_fd=fd)
            inner = os.open(name, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = inner
        photo = os.open("lost.png", os.O_WRONLY | os.O_CREAT, dir_fd=fd)
        with os.fdopen(photo, "wb") as fh:
            Image.fromarray(grey_image(32, 24)).save(fh, format="PNG")
    finally:
        os.close(fd)
    return root.joinpath(*[name] * depth)


def test_a_folder_that_cannot_be_read_is_a_failure_naming_it(tmp_path, run_cli):
    src, out = scans(tmp_path / "in", 2), tmp_path / "out"
    _folder_beyond_path_max(src / "deep")
    result = run_cli("run", src, out, expect=ExitCode.FAILED)
    assert len(list(out.glob("*.png"))) == 2  # the rest of the tree is done
    failures = json.loads(report_path(out).read_text())["failures"]
    (failure,) = failures
    assert failure["path"].startswith(str(src / "deep")) and "cannot read folder" in failure["reason"]
    assert "its photos are not done" in result.output


# ----------------------------------------------------------------------------- 32-bit float grey
def test_float_grey_tiff_in_0_1_is_colorized_as_16_bit_levels(tmp_path, run_cli):
    levels = grey_image(64, 48).astype(np.float32) / 255.0
    save(tmp_path / "in" / "hdr.tif", Image.fromarray(levels, mode="F"))
    run_cli("run", tmp_path / "in", tmp_path / "out", "-q", expect=0)
    with Image.open(tmp_path / "out" / "hdr.tif") as im:
        assert im.size == (64, 48)
    assert "read as 16-bit" in notes_of(tmp_path / "out")["hdr.tif"]


@pytest.mark.parametrize(("values", "reason"), [(np.float32(-3.0), "outside 0-1 and 0-65535"), (np.float32("nan"), "NaN")])
def test_float_grey_tiff_with_levels_that_mean_nothing_is_one_line(tmp_path, run_cli, values, reason):
    levels = grey_image(64, 48).astype(np.float32) / 255.0
    levels[5, 5] = values
    save(tmp_path / "in" / "bad.tif", Image.fromarray(levels, mode="F"))
    scans(tmp_path / "in", 1)
    result = run_cli("run", tmp_path / "in", tmp_path / "out", expect=ExitCode.FAILED)
    assert any("bad.tif" in line and reason in line for line in error_lines(result.output))
    assert (tmp_path / "out" / "scan0.png").exists()


# ----------------------------------------------------------------------------- animated photos
@pytest.mark.parametrize("suffix", [".webp", ".png"])
def test_an_animated_photo_says_only_its_first_frame_was_colorized(tmp_path, run_cli, suffix):
    frames = [Image.fromarray(np.full((24, 32), v, np.uint8)) for v in (40, 200, 120)]
    save(tmp_path / "in" / f"anim{suffix}", frames[0], save_all=True, append_images=frames[1:])
    run_cli("run", tmp_path / "in", tmp_path / "out", "-q", expect=0)
    assert notes_of(tmp_path / "out")[f"anim{suffix}"].endswith("3 frames, the first is colorized")


# ----------------------------------------------------------------------------- collisions
def test_a_collision_suggests_format_same_only_where_it_helps(tmp_path, run_cli):
    src = tmp_path / "in"
    save(src / "a.png", Image.fromarray(grey_image(32, 24)))
    save(src / "a.jpg", Image.fromarray(grey_image(32, 24, seed=1)))
    result = run_cli("run", src, tmp_path / "out", "--format", "png", expect=ExitCode.FAILED)
    assert "rename one or use --format same" in result.output
    save(src / "c.jpg", Image.fromarray(grey_image(32, 24, seed=5)))
    save(src / "c.JPG", Image.fromarray(grey_image(32, 24, seed=6)))  # suffixes apart by case only: --format same helps too
    result = run_cli("run", src, tmp_path / "out", "--format", "png", expect=ExitCode.FAILED)
    assert re.search(r"c\.png is also the output of \S*c\.(jpg|JPG); not overwritten \(rename one or use --format same\)",
                     " ".join(result.output.split())), result.output
    (src / "c.jpg").unlink()
    (src / "c.JPG").unlink()

    pages = [Image.fromarray(grey_image(32, 24, seed=s)) for s in (2, 3)]
    save(src / "b.tif", pages[0], save_all=True, append_images=pages[1:])
    save(src / "b_p2.tif", Image.fromarray(grey_image(32, 24, seed=4)))  # the name b.tif's second page takes
    (src / "a.jpg").unlink()
    all_pages = tmp_path / "pages.yaml"
    all_pages.write_text("input:\n  tiff_pages: all\n")
    result = run_cli("run", src, tmp_path / "out2", "--format", "same", "--config", all_pages, expect=ExitCode.FAILED)
    line = next(line for line in error_lines(result.output) if "is also the output of" in line)
    assert line.endswith("(rename one)")


# ----------------------------------------------------------------------------- options
def test_a_non_finite_option_names_the_command_line(tmp_path, run_cli):
    result = run_cli("run", scans(tmp_path / "in", 1), tmp_path / "out", "--temperature", "nan", expect=ExitCode.USAGE)
    assert "'--temperature': is not a number (nan)" in result.output  # named as the option given (cli.Number)
    assert "pipeline.yaml" not in result.output
