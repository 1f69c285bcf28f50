"""Never unbounded, never a traceback (issue 23): every file a user names is a regular file under
a stated size limit, read in bounded time; deep nesting, an unwritable --log-file, pickled
checkpoints and files that are not weights each give one line and an exit code."""

from __future__ import annotations

import json
import os
import pickle
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from conftest import grey_image, save
from PIL import Image

from colorize_batch.cli import main
from colorize_batch.reading import BUNDLE_LIMIT, CONFIG_LIMIT, HINTS_LIMIT

REPO = Path(__file__).resolve().parent.parent
NESTED = "[" * 100_000 + "]" * 100_000  # 100,000 nested brackets: a RecursionError in any recursive parser


def tool(*args, timeout: float = 60, preexec_fn=None) -> subprocess.CompletedProcess:
    """The CLI in a fresh interpreter, killed after ``timeout`` s: a hang fails the test, never the suite."""
    return subprocess.run([sys.executable, "-m", "colorize_batch", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, PYTHONPATH=str(REPO)), preexec_fn=preexec_fn)


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def make_scans(root: Path, n: int) -> None:
    for i in range(n):
        save(root / f"scan{i}.png", Image.fromarray(grey_image(64, 48, seed=i)))


# ----------------------------------------------------------------------------- 4. bounded reads
def _named_file(tmp_path: Path, kind: str, limit: int) -> Path:
    if kind == "fifo":
        path = tmp_path / "named.fifo"
        os.mkfifo(path)
        return path
    if kind == "dev-zero":
        return Path("/dev/zero")
    path = tmp_path / "named.big"  # a sparse file one byte over the limit: nothing is read to refuse it
    with open(path, "wb") as fh:
        fh.truncate(limit + 1)
    return path


COMMANDS = {  # what names the file, its limit, and the words the refusal uses for it
    "config": (lambda f, tmp: ["run", tmp / "in", tmp / "out", "--config", f], CONFIG_LIMIT, "config file"),
    "hints check": (lambda f, tmp: ["hints", "check", f], HINTS_LIMIT, "hint file"),
    "hints import": (lambda f, tmp: ["hints", "import", f, tmp / "hints"], BUNDLE_LIMIT, "hint bundle"),
}


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "oversized"])
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_named_files_are_regular_and_bounded(tmp_path, command, kind):
    make_scans(tmp_path / "in", 1)
    argv, limit, what = COMMANDS[command]
    path = _named_file(tmp_path, kind, limit)
    started = time.monotonic()
    proc = tool(*argv(path, tmp_path), timeout=60)
    elapsed = time.monotonic() - started
    lines = error_lines(proc.stdout + proc.stderr)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert len(lines) == 1 and str(path) in lines[0], lines
    if kind == "oversized":
        assert f"over the {limit // 1_000_000} MB limit for a {what}" in lines[0], lines
    else:
        expected = "a FIFO" if kind == "fifo" else "a character device"
        assert f"not a regular file ({expected})" in lines[0], lines
    assert elapsed < 30 and not (tmp_path / "hints").exists() and not (tmp_path / "out").exists()


def test_weights_and_checkpoints_are_bounded_too(tmp_path, run_cli):
    make_scans(tmp_path / "in", 1)
    fifo = tmp_path / "w.pt"
    os.mkfifo(fifo)
    result = run_cli("run", tmp_path / "in", tmp_path / "out", "--weights", fifo)  # in-process: it must not block
    assert result.exit_code == 2 and "not a regular file (a FIFO): a weights file must be a regular file" in result.output
    (tmp_path / "run").mkdir()
    os.mkfifo(tmp_path / "run" / "checkpoint.pt")
    result = run_cli("export", tmp_path / "run", tmp_path / "x.pt")
    assert result.exit_code == 2 and "not a regular file (a FIFO): a checkpoint must be" in result.output
    assert len(error_lines(result.output)) == 1


def test_a_regular_file_under_the_limit_still_reads(tmp_path):
    from colorize_batch.reading import FileLimitError, read_user_file

    path = tmp_path / "a.yaml"
    path.write_bytes(b"x" * 1000)
    assert read_user_file(path, 1000, "config file") == b"x" * 1000
    with pytest.raises(FileLimitError, match="1,001 bytes, over the 1,000 bytes limit for a config file"):
        path.write_bytes(b"x" * 1001)
        read_user_file(path, 1000, "config file")
    link = tmp_path / "link.yaml"  # a symlink to a regular file is that file
    link.symlink_to(path)
    assert len(read_user_file(link, 2000, "config file")) == 1001


# ----------------------------------------------------------------------------- 6. deep nesting
def test_a_deeply_nested_hint_file_fails_its_scan_alone(tmp_path, run_cli):
    make_scans(tmp_path / "in", 3)
    (tmp_path / "in" / "scan1.hints.json").write_text(NESTED)
    result = run_cli("run", tmp_path / "in", tmp_path / "out", "--workers", "0")
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert (tmp_path / "out" / "scan0.png").is_file() and (tmp_path / "out" / "scan2.png").is_file()
    assert not (tmp_path / "out" / "scan1.png").exists()
    failures = json.loads((tmp_path / "out" / ".colorize-batch" / "last-run.json").read_text())["failures"]
    assert len(failures) == 1 and "scan1.hints.json" in failures[0]["reason"] and "nested too deeply" in failures[0]["reason"]
    logged = [line for line in result.output.splitlines() if "ERROR" in line]  # the summary table repeats it, wrapped
    assert len(logged) == 1 and "scan1.png: hint file" in logged[0] and "nested too deeply" in logged[0], result.output


@pytest.mark.parametrize("command", ["hints check", "hints import", "config"])
def test_deeply_nested_documents_are_one_line_errors(tmp_path, command):
    make_scans(tmp_path / "in", 1)
    if command == "config":
        path = tmp_path / "deep.yaml"
        path.write_text("model: " + "[" * 5000 + "]" * 5000 + "\n")
        argv = ["run", tmp_path / "in", tmp_path / "out", "--config", path]
    elif command == "hints check":
        path = tmp_path / "deep.hints.json"
        path.write_text(NESTED)
        argv = ["hints", "check", path]
    else:
        path = tmp_path / "bundle.json"
        path.write_text('{"format": "colorize-batch-hints", "images": {"a.jpg": ' + NESTED + "}}")
        argv = ["hints", "import", path, tmp_path / "hints"]
    result = CliRunner().invoke(main, [str(a) for a in argv])
    assert result.exit_code == 2 and result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = error_lines(result.output)
    assert len(lines) == 1 and str(path) in lines[0] and "nested too deeply" in lines[0], lines
    assert not (tmp_path / "hints").exists() and not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- 7. --log-file on a full disk
@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full")
def test_a_log_file_that_cannot_be_written_is_said_once_and_exits_1(tmp_path, tiny_weights):
    make_scans(tmp_path / "in", 2)
    proc = tool("run", tmp_path / "in", tmp_path / "out", "--weights", tiny_weights, "--workers", "0",
                "--log-file", "/dev/full", timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "Logging error" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    said = [line for line in proc.stderr.splitlines() if "/dev/full" in line]
    assert said == ["Error: /dev/full: cannot write the log file (No space left on device); no more lines were written to it"]
    assert (tmp_path / "out" / "scan0.png").is_file() and (tmp_path / "out" / "scan1.png").is_file()  # the run itself went on


# ----------------------------------------------------------------------------- 8. pickles and non-weights
class Payload:
    """Unpickled with pickle's defaults, this would run a shell command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def evil_run(tmp_path):
    import torch

    marker = tmp_path / "PWNED"
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    torch.save({"step": 1, "config": {"preset": "tiny"}, "generator": Payload(marker)}, run_dir / "checkpoint.pt")
    assert b"system" in (run_dir / "checkpoint.pt").read_bytes() and not marker.exists()
    with pytest.raises(pickle.UnpicklingError):  # the payload is real: only weights_only stops it
        torch.load(run_dir / "checkpoint.pt", weights_only=True)
    return run_dir, marker


def _colour_dir(root: Path) -> Path:
    for i in range(4):
        save(root / f"c{i}.png", Image.fromarray(grey_image(48, 48, seed=i)).convert("RGB"))
    return root


def test_export_and_resume_refuse_a_pickled_checkpoint_in_one_line(tmp_path, evil_run, run_cli):
    run_dir, marker = evil_run
    result = run_cli("export", run_dir, tmp_path / "w.pt")
    assert result.exit_code == 2, result.output
    lines = error_lines(result.output)
    assert len(lines) == 1 and "checkpoint.pt: not a colorize-batch checkpoint" in lines[0], lines
    assert "weights_only" not in lines[0] and not (tmp_path / "w.pt").exists()
    cfg = tmp_path / "train.yaml"
    cfg.write_text(yaml.safe_dump({"train": {"preset": "tiny", "crop": 32, "workers": 0, "steps": 1}}))
    result = run_cli("train", _colour_dir(tmp_path / "photos"), "--config", cfg, "--out", run_dir, "--resume")
    assert result.exit_code == 2, result.output
    lines = error_lines(result.output)
    assert len(lines) == 1 and "checkpoint.pt: not a colorize-batch checkpoint" in lines[0], lines
    assert not marker.exists()


@pytest.mark.parametrize("what", ["text", "pickle"])
def test_train_init_with_a_file_that_is_not_weights(tmp_path, evil_run, run_cli, what):
    run_dir, marker = evil_run
    init = run_dir / "checkpoint.pt"
    if what == "text":
        init = tmp_path / "notes.pt"
        init.write_text("these are not weights\n")
    cfg = tmp_path / "train.yaml"
    cfg.write_text(yaml.safe_dump({"train": {"preset": "tiny", "crop": 32, "workers": 0, "steps": 1}}))
    result = run_cli("train", _colour_dir(tmp_path / "photos"), "--config", cfg, "--out", tmp_path / "ft", "--init", init)
    assert result.exit_code == 2, result.output
    lines = error_lines(result.output)
    assert len(lines) == 1 and lines[0].startswith(f"Error: --init: {init}: not a"), lines
    assert not marker.exists()


# ----------------------------------------------------------------------------- 5. too few file descriptors
def _needed(workers: int) -> int:
    from colorize_batch.config import PipelineConfig
    from colorize_batch.local_engine import fds_needed

    config = PipelineConfig()
    config.loader.workers = workers
    return fds_needed(config.loader, lanes=2)  # a CPU run on 2+ cores


def test_too_few_file_descriptors_is_one_line_and_exit_2(tmp_path, tiny_weights):
    make_scans(tmp_path / "in", 2)
    started = time.monotonic()
    proc = tool("run", tmp_path / "in", tmp_path / "out", "--weights", tiny_weights, "--workers", "1",
                timeout=60, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (16, 16)))
    assert proc.returncode == 2, proc.stderr
    assert error_lines(proc.stdout + proc.stderr) == [
        f"Error: too few file descriptors: 16, need {_needed(1)} (raise the limit: ulimit -n {_needed(1)})"]
    assert time.monotonic() - started < 30 and not (tmp_path / "out").exists()


@pytest.mark.parametrize("workers", [1, 2])
def test_the_file_descriptors_asked_for_are_enough(tmp_path, tiny_weights, workers):
    """At exactly the limit fds_needed asks for, a run with decode workers completes (below what it
    really needs it would hang for input.decode_timeout per batch)."""
    make_scans(tmp_path / "in", 40)
    need = _needed(workers)
    proc = tool("run", tmp_path / "in", tmp_path / "out", "--weights", tiny_weights, "--workers", workers, "-q",
                "--batch-size", "4", timeout=120, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (need, need)))
    assert proc.returncode == 0, proc.stderr
    assert len(list((tmp_path / "out").glob("*.png"))) == 40


def test_a_low_soft_limit_is_raised_to_the_hard_one(tmp_path, tiny_weights):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < _needed(1):
        pytest.skip(f"the hard limit here ({hard}) is below what a run needs")
    make_scans(tmp_path / "in", 2)
    proc = tool("run", tmp_path / "in", tmp_path / "out", "--weights", tiny_weights, "--workers", "1", "-q",
                timeout=120, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (16, hard)))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / "scan0.png").is_file() and (tmp_path / "out" / "scan1.png").is_file()


@pytest.mark.parametrize("kind", ["fifo", "nested"])
def test_report_merge_and_gallery_read_reports_bounded(tmp_path, kind):
    from colorize_batch.manifest import MANIFEST_STEM, MANIFEST_SUFFIX, report_path, state_dir

    state_dir(tmp_path / "out").mkdir(parents=True)
    (state_dir(tmp_path / "out") / (MANIFEST_STEM + MANIFEST_SUFFIX)).write_text("")  # a run happened, nothing done
    shard = state_dir(tmp_path / "out") / "last-run.shard-0-of-1.json"
    if kind == "fifo":
        os.mkfifo(shard)
        os.mkfifo(report_path(tmp_path / "out"))
    else:
        shard.write_text(NESTED)
        report_path(tmp_path / "out").write_text(NESTED)
    proc = tool("report", "merge", tmp_path / "out", "--output", tmp_path / "merged.json", timeout=60)
    lines = error_lines(proc.stdout + proc.stderr)
    assert proc.returncode == 2 and str(shard) in lines[-1] and "Traceback" not in proc.stderr, proc.stderr
    assert ("not a regular file (a FIFO)" if kind == "fifo" else "not a run report") in lines[-1]
    gallery = tool("gallery", tmp_path / "out", timeout=60)  # the last report is only a hint: ignored with a warning
    assert gallery.returncode == 0 and "Traceback" not in gallery.stderr, gallery.stderr
    assert kind == "fifo" or "ignoring unreadable" in gallery.stderr  # a FIFO is not even opened
