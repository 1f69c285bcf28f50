"""The fourth hostile run's findings (session 11), each proved on real files: files the user
names are written through (devices, FIFOs) or via their link, never replaced; state that cannot
be written is exit 1; damaged weights are one line; a FIFO log file never hangs; Ctrl-C or
SIGTERM before colorizing starts is exit 130; a shard never removes another live shard's
temporary files; ``hints import`` is all or nothing."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import stat
import threading
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import grey_image, save
from PIL import Image
from test_bounded import error_lines, tool

from colorize_batch import cli as cli_mod
from colorize_batch.cli import main
from colorize_batch.manifest import lock_path, manifest_path, report_path
from colorize_batch.safe_files import TMP_PREFIX, TMP_SUFFIX


def scans(root: Path, n: int = 3) -> Path:
    for i in range(n):
        save(root / f"scan{i}.png", Image.fromarray(grey_image(64, 48, seed=i)))
    return root


def read_fifo(path: Path, into: list[bytes]) -> threading.Thread:
    def reader() -> None:
        with open(path, "rb") as fh:
            into.append(fh.read())

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    return thread


# ----------------------------------------------------------------------------- --report, --sheet
def test_report_into_a_fifo_is_written_through_and_the_fifo_stays(tmp_path, run_cli):
    fifo = tmp_path / "report.fifo"
    os.mkfifo(fifo)
    got: list[bytes] = []
    thread = read_fifo(fifo, got)
    run_cli("run", scans(tmp_path / "in"), tmp_path / "out", "--report", fifo, "-q", expect=0)
    thread.join(10)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)  # not replaced by a regular file
    assert json.loads(got[0])["counts"]["done"] == 3


def test_report_through_a_symlink_writes_its_target_and_keeps_the_link(tmp_path, run_cli):
    target = tmp_path / "reports" / "nightly.json"
    target.parent.mkdir()
    target.write_text("old")
    link = tmp_path / "report.json"
    link.symlink_to(target)
    run_cli("run", scans(tmp_path / "in"), tmp_path / "out", "--report", link, "-q", expect=0)
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert json.loads(target.read_text())["counts"]["done"] == 3


def test_report_into_a_fifo_without_reader_fails_in_one_line_without_hanging(tmp_path, tiny_weights):
    fifo = tmp_path / "nobody.fifo"
    os.mkfifo(fifo)
    done = tool("run", scans(tmp_path / "in"), tmp_path / "out", "--weights", tiny_weights, "--report", fifo, "-q")
    assert done.returncode == 1, done.stderr
    assert [line for line in error_lines(done.stderr) if "report" in line] == [
        line for line in error_lines(done.stderr) if "no reader" in line]
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert len(list((tmp_path / "out").glob("*.png"))) == 3  # the photos themselves were done


def device_node(path: Path, minor: int) -> Path:
    """A private copy of /dev/null (minor 3) or /dev/full (7): a test never points at the system's own
    nodes, since the code under test, were it wrong, would replace them."""
    try:
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, minor))
    except PermissionError:
        pytest.skip("creating device nodes is not permitted here")
    return path


def test_eval_report_and_sheet_into_character_devices_leave_them_devices(tmp_path, tiny_weights):
    colour = tmp_path / "colour"
    save(colour / "a.png", Image.fromarray(grey_image(64, 48)).convert("RGB"))
    report, sheet = device_node(tmp_path / "null1", 3), device_node(tmp_path / "null2", 3)
    result = CliRunner().invoke(main, ["eval", str(colour), "--weights", str(tiny_weights), "--report", str(report),
                                       "--sheet", str(sheet)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    for node in (report, sheet):
        assert stat.S_ISCHR(os.lstat(node).st_mode) and os.lstat(node).st_rdev == os.makedev(1, 3)


def test_eval_report_to_a_full_device_is_exit_1_in_one_line(tmp_path, tiny_weights):
    colour = tmp_path / "colour"
    save(colour / "a.png", Image.fromarray(grey_image(64, 48)).convert("RGB"))
    full = device_node(tmp_path / "full", 7)
    result = CliRunner().invoke(main, ["eval", str(colour), "--weights", str(tiny_weights), "--report", str(full)],
                                catch_exceptions=False)
    assert result.exit_code == 1
    assert f"{full}: cannot write" in result.output and "Traceback" not in result.output
    assert stat.S_ISCHR(os.lstat(full).st_mode)


# ----------------------------------------------------------------------------- state that cannot be written
def test_a_manifest_that_cannot_be_written_is_exit_1_not_0(tmp_path, run_cli):
    src, out = scans(tmp_path / "in"), tmp_path / "out"
    run_cli("run", src, out, "-q", expect=0)
    manifest = manifest_path(out)
    manifest.unlink()
    manifest.mkdir()  # neither appended to nor replaced
    for path in src.iterdir():
        os.utime(path, (1, 1))  # changed inputs: work to record
    result = run_cli("run", src, out, "-q")
    assert result.exit_code == 1, result.output
    assert "cannot record finished files" in result.output
    assert "will be redone by the next run" in result.output


def test_a_run_report_that_cannot_be_written_into_the_state_is_exit_1(tmp_path, run_cli):
    src, out = scans(tmp_path / "in"), tmp_path / "out"
    run_cli("run", src, out, "-q", expect=0)
    report = report_path(out)
    report.unlink()
    report.mkdir()
    result = run_cli("run", src, out, "-q")
    assert result.exit_code == 1 and "cannot write the run report" in result.output


# ----------------------------------------------------------------------------- damaged weights
def test_weights_with_nan_are_refused_in_one_line(tmp_path, tiny_weights):
    payload = torch.load(tiny_weights, weights_only=True)
    for tensor in payload["state_dict"].values():
        if tensor.is_floating_point():
            tensor.fill_(float("nan"))
    bad = tmp_path / "diverged.pt"
    torch.save(payload, bad)
    for args in (["run", scans(tmp_path / "in"), tmp_path / "out", "--weights", bad], ["info", "--weights", bad]):
        done = tool(*args)
        assert done.returncode == 2, done.stderr
        assert "NaN or infinite values" in done.stderr and "Traceback" not in done.stderr
        assert len(error_lines(done.stderr)) == 1
    assert not list((tmp_path / "out").glob("*.png"))


# ----------------------------------------------------------------------------- --log-file FIFO
def test_log_file_fifo_without_reader_is_refused_at_once(tmp_path, tiny_weights):
    fifo = tmp_path / "log.fifo"
    os.mkfifo(fifo)
    done = tool("run", scans(tmp_path / "in"), tmp_path / "out", "--weights", tiny_weights, "--log-file", fifo, timeout=60)
    assert done.returncode == 2 and "a FIFO with no reader" in done.stderr
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.png"))


# ----------------------------------------------------------------------------- early signals
@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_a_signal_before_colorizing_starts_is_exit_130(tmp_path, monkeypatch, tiny_weights, how):
    """Here the signal lands while ``info`` reads the weights (as it would while a run walks IN or
    loads the model): exit 130 and one line, not click's "Aborted!" (1) or SIGTERM's bare 143."""
    import colorize_batch.weights as weights_mod

    def interrupted(*_args, **_kwargs):
        if how == "ctrl-c":
            raise KeyboardInterrupt
        os.kill(os.getpid(), signal.SIGTERM)  # the handler the group installs turns it into the same stop
        raise AssertionError("SIGTERM was not handled")

    monkeypatch.setattr(weights_mod, "describe_weights", interrupted)
    before = signal.getsignal(signal.SIGTERM)
    result = CliRunner().invoke(main, ["info", "--weights", str(tiny_weights)])
    assert result.exit_code == 130, result.output
    assert "interrupted" in result.output and "Aborted" not in result.output
    assert signal.getsignal(signal.SIGTERM) == before  # restored after the command
    assert cli_mod.ToolGroup.invoke  # the mechanism under test


# ----------------------------------------------------------------------------- shards and temporary files
def test_a_shard_leaves_another_live_shards_temporary_files_alone(tmp_path, run_cli):
    src, out = scans(tmp_path / "in", 4), tmp_path / "out"
    out.mkdir()
    in_flight = out / f"{TMP_PREFIX}other{TMP_SUFFIX}"  # shard 1's output being written right now
    in_flight.write_bytes(b"half a photo")
    other = lock_path(out, ".shard-1-of-2")
    other.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(other, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # shard 1 is running
        run_cli("run", src, out, "--shard", "0/2", "-q", expect=0)
        assert in_flight.read_bytes() == b"half a photo"
    finally:
        os.close(fd)  # shard 1 ends (or is killed): its leftovers are stale now
    for path in src.iterdir():
        os.utime(path, (2, 2))
    run_cli("run", src, out, "--shard", "0/2", "-q", expect=0)
    assert not in_flight.exists()


# ----------------------------------------------------------------------------- hints import
def _bundle(tmp_path: Path, images: dict) -> Path:
    path = tmp_path / "bundle.json"
    path.write_text(json.dumps({"format": "colorize-batch-hints", "version": 1, "images": images}))
    return path


POINT = {"points": [{"x": 0.5, "y": 0.5, "color": "#ff0000"}]}


def test_hints_import_checks_every_write_before_the_first(tmp_path):
    dest = tmp_path / "hints"
    dest.mkdir()
    (dest / "ok.jpg").write_bytes(b"a scan, not a folder")
    (dest / "z.hints.json").mkdir()
    for images, words in (({"a.jpg": POINT, "ok.jpg/x.jpg": POINT}, "is a file, not a folder"),
                          ({"a.jpg": POINT, "z.jpg": POINT}, "is not a regular file"),
                          ({"q.jpg": POINT, "q.png": {"points": []}}, "both have the hint file")):
        result = CliRunner().invoke(main, ["hints", "import", str(_bundle(tmp_path, images)), str(dest)])
        assert result.exit_code == 2, result.output
        assert words in result.output and "nothing written" in result.output
        assert sorted(p.name for p in dest.iterdir()) == ["ok.jpg", "z.hints.json"]  # not a.hints.json, not q.hints.json
    shutil.rmtree(dest / "z.hints.json")
    result = CliRunner().invoke(main, ["hints", "import", str(_bundle(tmp_path, {"a.jpg": POINT})), str(dest)])
    assert result.exit_code == 0 and json.loads((dest / "a.hints.json").read_text())["points"][0]["color"] == "#ff0000"
