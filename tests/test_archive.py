"""Archive-grade behaviour: reruns, locking, interruption, faults, colour inputs, metadata."""

import errno
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import grey_image, save
from PIL import Image

from colorize_batch import local_engine, safe_files
from colorize_batch.manifest import STATE_DIR, RunLock, manifest_path, report_path
from colorize_batch.model import build_generator
from colorize_batch.weights import save_weights


def make_tree(root: Path, n: int = 5, size=(64, 48)) -> list[Path]:
    return [save(root / f"d{i % 2}" / f"img{i}.png", Image.fromarray(grey_image(*size, seed=i))) for i in range(n)]


def report(out: Path) -> dict:
    return json.loads(report_path(out).read_text())


def outputs(out: Path) -> list[Path]:
    return sorted(p for p in out.rglob("*") if p.is_file() and STATE_DIR not in p.parts)


def test_rerun_skips_up_to_date_files_without_loading_the_model(tmp_path, run_cli, monkeypatch):
    make_tree(tmp_path / "in")
    run_cli("run", tmp_path / "in", tmp_path / "out", "--workers", "0", "-q", expect=0)
    assert report(tmp_path / "out")["counts"]["done"] == 5
    mtimes = [p.stat().st_mtime_ns for p in outputs(tmp_path / "out")]

    def no_model(*a, **k):
        raise AssertionError("the model must not be loaded when nothing is to be done")

    monkeypatch.setattr(local_engine, "load_weights", no_model)  # LocalEngine.load loads them
    run_cli("run", tmp_path / "in", tmp_path / "out", "--workers", "2", "-q", expect=0)  # workers do not matter
    rep = report(tmp_path / "out")
    assert rep["counts"]["done"] == 0 and rep["counts"]["skipped_up_to_date"] == 5
    assert [p.stat().st_mtime_ns for p in outputs(tmp_path / "out")] == mtimes


def test_changed_source_weights_or_pixel_config_make_outputs_stale(tmp_path, run_cli, tiny_weights):
    files = make_tree(tmp_path / "in", n=3)
    out = tmp_path / "out"
    run_cli("run", tmp_path / "in", out, "--workers", "0", "-q", expect=0)
    save(files[0], Image.fromarray(grey_image(64, 48, seed=99)))  # edited source
    os.utime(files[0], ns=(time.time_ns(), time.time_ns() + 10**9))
    run_cli("run", tmp_path / "in", out, "--workers", "0", "-q", expect=0)
    assert report(out)["counts"]["done"] == 1
    run_cli("run", tmp_path / "in", out, "--workers", "0", "-q", "--size", "64", expect=0)
    assert report(out)["counts"]["done"] == 3  # inference size changes pixels
    other = save_weights(tmp_path / "other.pt", build_generator("tiny"), {"name": "other"})
    run_cli("run", tmp_path / "in", out, "--workers", "0", "-q", "--size", "64", "--weights", other, expect=0)
    assert report(out)["counts"]["done"] == 3  # new weights
    run_cli("run", tmp_path / "in", out, "--workers", "0", "-q", "--size", "64", "--weights", other, "--force", expect=0)
    assert report(out)["counts"]["done"] == 3  # --force redoes everything


def test_checksum_mode_ignores_touched_but_unchanged_files(tmp_path, run_cli):
    files = make_tree(tmp_path / "in", n=2)
    out = tmp_path / "out"
    run_cli("run", tmp_path / "in", out, "--workers", "0", "-q", "--checksum", expect=0)
    os.utime(files[0], ns=(time.time_ns(), time.time_ns() + 10**9))
    run_cli("run", tmp_path / "in", out, "--workers", "0", "-q", "--checksum", expect=0)
    assert report(out)["counts"]["done"] == 0
    run_cli("run", tmp_path / "in", out, "--workers", "0", "-q", expect=0)  # size+mtime mode sees the touch
    assert report(out)["counts"]["done"] == 2


def test_second_concurrent_run_exits_75(tmp_path, run_cli):
    make_tree(tmp_path / "in", n=1)
    (tmp_path / "out").mkdir()
    with RunLock(tmp_path / "out"):
        result = run_cli("run", tmp_path / "in", tmp_path / "out", "--workers", "0")
    assert result.exit_code == 75 and "lock" in result.output
    run_cli("run", tmp_path / "in", tmp_path / "out", "--workers", "0", "-q", expect=0)  # released


def test_sigint_mid_run_then_rerun_completes(tmp_path, tiny_weights):
    src, out = tmp_path / "in", tmp_path / "out"
    files = make_tree(src, n=40, size=(1200, 900))
    cmd = [sys.executable, "-m", "colorize_batch", "run", str(src), str(out), "--weights", str(tiny_weights),
           "--batch-size", "1", "--workers", "0", "--size", "32", "-q"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    manifest = manifest_path(out)
    deadline = time.time() + 120
    while time.time() < deadline and not (manifest.is_file() and manifest.read_text().count("\n") >= 2):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    output = proc.communicate(timeout=120)[0].decode()
    assert proc.returncode == 130, output
    assert "interrupted" in output
    first = json.loads(report_path(out).read_text())
    assert first["interrupted"] and 2 <= first["counts"]["done"] < 40
    assert not list(out.rglob("*.cb-tmp"))
    for p in outputs(out):  # everything written is complete
        with Image.open(p) as im:
            im.load()
    rerun = subprocess.run(cmd, capture_output=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    second = json.loads(report_path(out).read_text())
    assert second["counts"]["done"] == 40 - first["counts"]["done"]
    assert second["counts"]["skipped_up_to_date"] == first["counts"]["done"]
    assert len(outputs(out)) == len(files)


def test_sigterm_is_handled_like_sigint(tmp_path, tiny_weights):
    src, out = tmp_path / "in", tmp_path / "out"
    make_tree(src, n=30, size=(1200, 900))
    cmd = [sys.executable, "-m", "colorize_batch", "run", str(src), str(out), "--weights", str(tiny_weights),
           "--batch-size", "1", "--workers", "1", "--size", "32", "-q"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    manifest = manifest_path(out)
    deadline = time.time() + 120
    while time.time() < deadline and not manifest.is_file():
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 130
    assert not list(out.rglob("*.cb-tmp"))


def test_stale_temp_files_are_cleaned(tmp_path, run_cli):
    make_tree(tmp_path / "in", n=1)
    stale = tmp_path / "out" / "d0" / ".img0.png.abc123.cb-tmp"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"partial")
    run_cli("run", tmp_path / "in", tmp_path / "out", "--workers", "0", "-q", expect=0)
    assert not stale.exists()


def test_thousand_files_with_one_percent_bad(tmp_path, run_cli):
    src = tmp_path / "in"
    for i in range(1000):
        path = src / f"roll{i // 100}" / f"frame{i:04d}.png"
        if i % 100 == 7:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"\x89PNG\r\n\x1a\n broken")
        else:
            save(path, Image.fromarray(grey_image(32, 24, seed=i % 17)))
    out = tmp_path / "out"
    result = run_cli("run", src, out, "--workers", "2", "--batch-size", "64", "--size", "32")
    assert result.exit_code == 1
    rep = report(out)
    assert rep["counts"]["done"] == 990 and rep["counts"]["failed"] == 10
    assert len(outputs(out)) == 990
    assert all("frame" in f["path"] and f["path"].endswith("07.png") for f in rep["failures"])
    result = run_cli("run", src, out, "--workers", "2", "--batch-size", "64", "--size", "32")
    rep = report(out)
    assert rep["counts"]["done"] == 0 and rep["counts"]["skipped_up_to_date"] == 990 and rep["counts"]["failed"] == 10


def test_read_only_output_reports_each_file(tmp_path, run_cli, monkeypatch):
    make_tree(tmp_path / "in", n=3)

    real_mkstemp = tempfile.mkstemp

    def read_only(*a, dir=None, **k):  # only image writes fail: the run's state folder is writable
        if STATE_DIR in str(dir):
            return real_mkstemp(*a, dir=dir, **k)
        raise OSError(errno.EROFS, "Read-only file system")

    from types import SimpleNamespace

    monkeypatch.setattr(safe_files, "tempfile", SimpleNamespace(mkstemp=read_only))
    result = run_cli("run", tmp_path / "in", tmp_path / "out", "--workers", "0")
    assert result.exit_code == 1
    rep = report(tmp_path / "out")
    assert rep["counts"]["failed"] == 3 and not rep["stopped_reason"]
    assert all("Read-only file system" in f["reason"] for f in rep["failures"])


def test_output_folder_blocked_by_a_file(tmp_path, run_cli):
    make_tree(tmp_path / "in", n=2)  # d0/img0.png, d1/img1.png
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "d0").write_text("a file where a folder should be")
    result = run_cli("run", tmp_path / "in", tmp_path / "out", "--workers", "0")
    assert result.exit_code == 1
    assert (tmp_path / "out" / "d1" / "img1.png").is_file()
    assert "img0.png" in result.output


def test_unreadable_input_is_reported(tmp_path, run_cli, monkeypatch):
    files = make_tree(tmp_path / "in", n=2)
    from colorize_batch import decoding

    real_open = decoding.Image.open

    def guarded(path, *a, **k):
        if Path(path) == files[0]:
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_open(path, *a, **k)

    monkeypatch.setattr(decoding.Image, "open", guarded)
    result = run_cli("run", tmp_path / "in", tmp_path / "out", "--workers", "0")
    assert result.exit_code == 1 and "permission denied" in result.output


def test_decompression_bomb_limit_is_configurable(tmp_path, run_cli):
    save(tmp_path / "in" / "big.png", Image.fromarray(grey_image(200, 150)))
    save(tmp_path / "in" / "small.png", Image.fromarray(grey_image(20, 15)))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"input": {"max_pixels": 10000}}))
    result = run_cli("run", tmp_path / "in", tmp_path / "out", "--workers", "0", "--config", cfg)
    assert result.exit_code == 1 and "decompression bomb" in result.output
    assert (tmp_path / "out" / "small.png").is_file()


@pytest.mark.parametrize("policy", ["skip", "copy", "recolor"])
def test_colour_inputs_policy(tmp_path, run_cli, policy):
    from skimage import data

    colour = save(tmp_path / "in" / "colour.jpg", Image.fromarray(data.astronaut()).resize((128, 128)))
    save(tmp_path / "in" / "grey.jpg", Image.fromarray(grey_image()))
    run_cli("run", tmp_path / "in", tmp_path / "out", "--workers", "0", "-q", "--color-inputs", policy, expect=0)
    rep = report(tmp_path / "out")
    assert (tmp_path / "out" / "grey.jpg").is_file() and rep["counts"]["done"] == (2 if policy == "recolor" else 1)
    out = tmp_path / "out" / "colour.jpg"
    if policy == "skip":
        assert not out.exists() and rep["counts"]["skipped_color"] == 1
    elif policy == "copy":
        assert out.read_bytes() == colour.read_bytes() and rep["counts"]["copied"] == 1
    else:
        assert out.is_file() and out.read_bytes() != colour.read_bytes()


def test_multipage_tiff_first_or_all_pages(tmp_path, run_cli):
    pages = [Image.fromarray(grey_image(40, 30, seed=s)) for s in range(3)]
    pages[0].save(save_dir := tmp_path / "in" / "book.tif", save_all=True, append_images=pages[1:]) if (tmp_path / "in").mkdir() is None else None
    run_cli("run", tmp_path / "in", tmp_path / "first", "--workers", "0", "-q", expect=0)
    assert [p.name for p in outputs(tmp_path / "first")] == ["book.tif"]
    notes = json.loads(report_path(tmp_path / "first").read_text())["notes"]  # the other pages are not lost in silence
    assert [n["message"] for n in notes if n["path"].endswith("book.tif")] == [
        "TIFF of 3 pages: the first is colorized (input.tiff_pages: all for every page)"]
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"input": {"tiff_pages": "all"}}))
    run_cli("run", tmp_path / "in", tmp_path / "all", "--workers", "0", "-q", "--config", cfg, expect=0)
    assert [p.name for p in outputs(tmp_path / "all")] == ["book_p1.tif", "book_p2.tif", "book_p3.tif"]
    assert not any("pages" in n["message"] for n in json.loads(report_path(tmp_path / "all").read_text())["notes"])
    assert save_dir.is_file()


def test_sixteen_bit_outputs(tmp_path, run_cli):
    import tifffile

    arr = (grey_image(48, 32).astype(np.uint16) * 257) + 100
    save(tmp_path / "in" / "deep.tif", Image.fromarray(arr))
    save(tmp_path / "in" / "deep.png", Image.fromarray(arr))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"output": {"bit_depth": "same"}}))
    run_cli("run", tmp_path / "in", tmp_path / "out", "--workers", "0", "-q", "--config", cfg, expect=0)
    rgb16 = tifffile.imread(tmp_path / "out" / "deep.tif")
    assert rgb16.dtype == np.uint16 and rgb16.shape == (32, 48, 3)
    assert len(np.unique(rgb16)) > 256  # real 16-bit precision, not 8-bit scaled
    png = (tmp_path / "out" / "deep.png").read_bytes()
    assert png[24] == 16 and png[25] == 2  # IHDR: bit depth 16, colour type RGB
    with Image.open(tmp_path / "out" / "deep.png") as im:
        assert im.size == (48, 32) and im.getexif().get(0x0131, "").startswith("colorize-batch")


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".tif"])
def test_metadata_and_provenance_survive_round_trip(tmp_path, run_cli, suffix):
    exif = Image.Exif()
    exif[0x013B] = "A. Photographer"  # Artist
    exif[0x0112] = 6  # rotated
    exif.get_ifd(0x8769)[0x9003] = "1931:05:02 10:00:00"  # DateTimeOriginal
    src = save(tmp_path / "in" / f"scan{suffix}", Image.fromarray(grey_image(60, 40)), exif=exif.tobytes(), dpi=(600, 600))
    run_cli("run", tmp_path / "in", tmp_path / "out", "--workers", "0", "-q", expect=0)
    with Image.open(tmp_path / "out" / f"scan{suffix}") as im:
        assert im.size == (40, 60)  # orientation applied
        out_exif = im.getexif()
        assert out_exif.get(0x0112, 1) == 1
        assert out_exif[0x0131].startswith("colorize-batch ")
        assert "machine-generated" in out_exif[0x010E]
        assert out_exif[0x013B] == "A. Photographer"
        if suffix != ".tif":  # Pillow's TIFF writer drops the Exif sub-IFD (known limitation)
            assert out_exif.get_ifd(0x8769).get(0x9003) == "1931:05:02 10:00:00"
        assert im.info["dpi"][0] == pytest.approx(600, abs=0.1)
        from PIL import ImageCms

        icc = ImageCms.ImageCmsProfile(__import__("io").BytesIO(im.info["icc_profile"]))
        assert "sRGB" in ImageCms.getProfileDescription(icc)
        xmp = im.info.get("xmp") or im.info.get("XML:com.adobe.xmp") or out_exif.get(700)
        xmp = xmp.decode() if isinstance(xmp, bytes) else xmp
        assert "compositeWithTrainedAlgorithmicMedia" in xmp and str(src) in xmp


# The CLI in a fresh interpreter whose renders take SLOW_WRITE_S seconds longer (a slow share): the
# second and third SIGINT then surely come while the run waits for the files in flight.
SLOW_WRITES_CLI = """
import os, sys, time
from colorize_batch import local_engine
real = local_engine.render_result
def render_result(*args, **kwargs):
    time.sleep(float(os.environ["SLOW_WRITE_S"]))
    return real(*args, **kwargs)
local_engine.render_result = render_result
from colorize_batch.cli import main
sys.exit(main())
"""


def _interrupted_run(tmp_path: Path, weights: Path, signals: int, slow: float):
    """A run of 24 files with slow renders, sent ``signals`` SIGINTs once two files are recorded."""
    src, out = tmp_path / "in", tmp_path / "out"
    make_tree(src, n=24, size=(320, 240))
    args = ["run", str(src), str(out), "--weights", str(weights), "--batch-size", "8", "--workers", "0",
            "--size", "32", "-q"]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent), SLOW_WRITE_S=str(slow))
    proc = subprocess.Popen([sys.executable, "-c", SLOW_WRITES_CLI, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    manifest = out / ".colorize-batch" / "manifest.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (manifest.is_file() and manifest.read_text().count("\n") >= 2):
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    assert proc.stderr is not None
    seen = [proc.stderr.readline()]  # the first signal's warning: the run is now finishing its files in flight
    while seen[-1] and "SIGINT received" not in seen[-1]:
        seen.append(proc.stderr.readline())
    for _ in range(signals - 1):
        proc.send_signal(signal.SIGINT)
        time.sleep(0.5)
    stderr = "".join(seen) + proc.communicate(timeout=120)[1]
    return proc.returncode, stderr, out, [sys.executable, "-m", "colorize_batch", *args], env


def test_second_ctrl_c_exits_130_and_every_output_on_disk_is_recorded(tmp_path, tiny_weights):
    """Issue 23: the second SIGINT stops at once (no click "Aborted!", exit 130): queued renders are
    dropped, the ones already writing finish and are recorded; the rerun completes the rest."""
    from colorize_batch.manifest import Manifest

    code, stderr, out, cmd, env = _interrupted_run(tmp_path, tiny_weights, signals=2, slow=0.4)
    assert code == 130, stderr
    assert "Aborted!" not in stderr and "Traceback" not in stderr and "interrupted" in stderr, stderr
    rep = report(out)
    assert rep["interrupted"] and rep["exit_code"] == 130
    assert rep["stopped_reason"] == "interrupted twice: stopped at once", (stderr, rep)  # the second signal came mid-run
    on_disk = {p.relative_to(out).as_posix() for p in outputs(out)}
    recorded = Manifest(out).outputs()
    assert on_disk == recorded, (on_disk - recorded, stderr)  # what was written in the last moment is recorded
    assert not list(out.rglob("*.cb-tmp")) and 2 <= len(on_disk) < 24 and len(rep["not_tried"]) == 24 - len(on_disk)
    rerun = subprocess.run(cmd, capture_output=True, timeout=300, env=env)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    counts = report(out)["counts"]
    assert counts["skipped_up_to_date"] == len(recorded) and counts["done"] == 24 - len(recorded)
    assert len(outputs(out)) == 24


def test_third_ctrl_c_says_which_files_may_be_unrecorded_and_the_rerun_redoes_them(tmp_path, tiny_weights):
    from colorize_batch.manifest import Manifest

    code, stderr, out, cmd, env = _interrupted_run(tmp_path, tiny_weights, signals=3, slow=3.0)
    assert code == 130 and "Aborted!" not in stderr and "Traceback" not in stderr, stderr
    said = re.search(r"except (\d+) still being written \(the next run recognises them", stderr)
    assert said and 1 <= int(said.group(1)) <= 2, stderr  # at most one per writer thread
    on_disk = {p.relative_to(out).as_posix() for p in outputs(out)}
    recorded = Manifest(out).outputs()
    assert len(on_disk - recorded) == int(said.group(1)) and recorded <= on_disk  # finished after the manifest closed
    rerun = subprocess.run(cmd, capture_output=True, timeout=300, env=env)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr  # its own unrecorded outputs are redone, not refused
    counts = report(out)["counts"]
    assert counts["skipped_up_to_date"] == len(recorded) and counts["done"] == 24 - len(recorded)
