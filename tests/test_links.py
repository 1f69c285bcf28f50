"""Never through a link (issue 23): state files, hint imports and inputs that are not regular files.

Each test points a link at a foreign file or folder and checks that the foreign bytes are
exactly what they were afterwards, and that the refusal is one line naming the link.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import grey_image, save
from PIL import Image

from colorize_batch.manifest import STATE_DIR

REPO = Path(__file__).resolve().parent.parent
STATE_FILES = {"lock": "lock", "manifest": "manifest.jsonl", "report": "last-run.json"}


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with the sha256 of its bytes."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def make_tree(root: Path, n: int = 2) -> list[Path]:
    return [save(root / f"{i}.png", Image.fromarray(grey_image(seed=i))) for i in range(n)]


@pytest.fixture
def foreign(tmp_path) -> Path:
    """A folder of someone else's files, named like state files."""
    folder = tmp_path / "foreign"
    folder.mkdir()
    for name in ("victim.txt", "manifest.jsonl", "last-run.json", "lock", "index.html"):
        (folder / name).write_text(f"not yours: {name}\n")
    return folder


def assert_one_line_refusal(result, link: Path) -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if "symbolic link" in line]
    assert len(lines) == 1 and str(link) in lines[0] and "Traceback" not in result.output, result.output


# -- 2. state files ------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", sorted(STATE_FILES))
@pytest.mark.parametrize("first_run", [False, True])
def test_a_linked_state_file_is_refused_and_its_target_untouched(tmp_path, run_cli, foreign, kind, first_run):
    make_tree(tmp_path / "in")
    out = tmp_path / "out"
    if first_run:  # a folder with real state: the link replaces one of its files
        run_cli("run", tmp_path / "in", out, "--workers", "0", "-q", expect=0)
        (out / STATE_DIR / STATE_FILES[kind]).unlink(missing_ok=True)
    (out / STATE_DIR).mkdir(parents=True, exist_ok=True)
    link = out / STATE_DIR / STATE_FILES[kind]
    link.symlink_to(foreign / "victim.txt")
    before = snapshot(foreign)
    result = run_cli("run", tmp_path / "in", out, "--workers", "0", "--force")
    assert_one_line_refusal(result, link)
    assert snapshot(foreign) == before and link.is_symlink()
    assert not (out / "0.png").exists() or first_run  # nothing colorized


def test_a_linked_state_folder_is_refused_and_its_target_untouched(tmp_path, run_cli, foreign):
    make_tree(tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    (out / STATE_DIR).symlink_to(foreign)
    before = snapshot(foreign)
    result = run_cli("run", tmp_path / "in", out, "--workers", "0")
    assert_one_line_refusal(result, out / STATE_DIR)
    assert snapshot(foreign) == before and not (out / "0.png").exists()
    result = run_cli("run", tmp_path / "in", out, "--workers", "0", "--dry-run")
    assert_one_line_refusal(result, out / STATE_DIR)
    result = run_cli("gallery", out)
    assert_one_line_refusal(result, out / STATE_DIR)
    assert snapshot(foreign) == before


@pytest.mark.parametrize("linked", ["gallery", "gallery/index.html", "gallery/thumbs", "gallery/thumbs/out"])
def test_a_linked_gallery_is_refused_and_its_target_untouched(tmp_path, run_cli, foreign, linked):
    make_tree(tmp_path / "in")
    out = tmp_path / "out"
    run_cli("run", tmp_path / "in", out, "--workers", "0", "-q", expect=0)
    link = out / STATE_DIR / linked
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(foreign / "index.html" if linked.endswith(".html") else foreign)
    before = snapshot(foreign)
    assert_one_line_refusal(run_cli("gallery", out), link)
    assert snapshot(foreign) == before
    result = run_cli("run", tmp_path / "in", out, "--workers", "0", "--force", "--gallery")
    assert_one_line_refusal(result, link)  # refused before the run: nothing redone
    assert snapshot(foreign) == before and link.is_symlink()


def test_a_linked_thumbnail_folder_is_refused(tmp_path, run_cli, foreign):
    save(tmp_path / "in" / "sub" / "a.png", Image.fromarray(grey_image()))
    out = tmp_path / "out"
    run_cli("run", tmp_path / "in", out, "--workers", "0", "-q", expect=0)
    link = out / STATE_DIR / "gallery" / "thumbs" / "out" / "sub"
    link.parent.mkdir(parents=True)
    link.symlink_to(foreign)
    before = snapshot(foreign)
    assert_one_line_refusal(run_cli("gallery", out), link)
    assert snapshot(foreign) == before


def test_a_linked_shard_report_is_not_merged(tmp_path, run_cli, foreign):
    make_tree(tmp_path / "in")
    out = tmp_path / "out"
    run_cli("run", tmp_path / "in", out, "--workers", "0", "-q", "--shard", "0/2", expect=0)
    report = out / STATE_DIR / "last-run.shard-0-of-2.json"
    (foreign / "victim.json").write_text(report.read_text())
    report.unlink()
    report.symlink_to(foreign / "victim.json")
    before = snapshot(foreign)
    result = run_cli("report", "merge", out)
    assert result.exit_code == 2 and "symbolic link" in result.output and str(report) in result.output
    assert snapshot(foreign) == before


def test_a_manifest_linked_during_a_run_is_not_appended_through(tmp_path, foreign):
    """The check at the start is not the only guard: the append itself opens with O_NOFOLLOW."""
    from colorize_batch.manifest import Manifest, RunIdentity

    out = tmp_path / "out"
    manifest = Manifest(out)
    (out / STATE_DIR).mkdir(parents=True)
    manifest.path.symlink_to(foreign / "victim.txt")
    before = snapshot(foreign)
    manifest.add("a.png", "size=1", RunIdentity("m", "c"), "done", "a.png", hinted=False)
    manifest.close()
    assert manifest.append_failed and snapshot(foreign) == before


# -- 3. hints import -----------------------------------------------------------------------------
def _import(bundle: Path, dest: Path):
    from click.testing import CliRunner

    from colorize_batch.cli import main

    return CliRunner().invoke(main, ["hints", "import", str(bundle), str(dest)])


def test_hints_import_never_writes_through_a_link_out_of_dest(tmp_path, foreign):
    doc = {"points": [{"x": 0.5, "y": 0.5, "color": "#aa0000"}]}
    bundle = tmp_path / "bundle.json"
    bundle.write_text(json.dumps({"format": "colorize-batch-hints", "version": 1,
                                  "images": {"a.jpg": doc, "link/x.jpg": doc}}))
    dest = tmp_path / "hints"
    dest.mkdir()
    (dest / "link").symlink_to(foreign)
    before = snapshot(foreign)
    result = _import(bundle, dest)
    assert result.exit_code == 2 and len(result.output.splitlines()) == 1, result.output
    assert "link/x.jpg" in result.output and "leads outside" in result.output
    assert snapshot(foreign) == before and not (dest / "a.hints.json").exists()  # nothing written at all
    (dest / "link").unlink()
    (dest / "real").mkdir()
    (dest / "link").symlink_to(dest / "real")  # a link that stays inside DEST is fine
    result = _import(bundle, dest)
    assert result.exit_code == 0, result.output
    assert json.loads((dest / "real" / "x.hints.json").read_text()) == doc


def test_hints_import_does_not_replace_a_linked_hint_file(tmp_path, foreign):
    bundle = tmp_path / "bundle.json"
    bundle.write_text(json.dumps({"format": "colorize-batch-hints", "version": 1, "images": {"a.jpg": {"points": []}}}))
    dest = tmp_path / "hints"
    dest.mkdir()
    (dest / "a.hints.json").symlink_to(foreign / "victim.txt")
    before = snapshot(foreign)
    result = _import(bundle, dest)
    assert result.exit_code == 2 and "is a symlink" in result.output, result.output
    assert snapshot(foreign) == before and (dest / "a.hints.json").is_symlink()


# -- 11. inputs that are not regular files ---------------------------------------------------------
def _run_tool(args: list, timeout: float = 120) -> subprocess.CompletedProcess:
    """The CLI in a fresh interpreter, with a time limit: a FIFO opened for reading would hang it."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "colorize_batch", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_fifo_and_device_inputs_are_named_not_opened(tmp_path, tiny_weights):
    src = tmp_path / "in"
    make_tree(src, 1)
    os.mkfifo(src / "scan.jpg")
    (src / "zero.jpg").symlink_to("/dev/zero")
    (src / "broken.jpg").symlink_to(tmp_path / "missing.jpg")
    (src / "fifo-without-image-suffix").symlink_to(src / "scan.jpg")  # not an image name: left alone, like any other file
    proc = _run_tool(["run", src, tmp_path / "out", "--weights", tiny_weights, "--workers", "0"])
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert [line for line in lines if "scan.jpg" in line][0].endswith(f"{src / 'scan.jpg'}: not a regular file: FIFO; skipped")
    assert [line for line in lines if "zero.jpg" in line][0].endswith(
        f"{src / 'zero.jpg'}: not a regular file: character device; skipped")
    assert any(line.endswith(f"{src / 'broken.jpg'}: broken symlink; skipped") for line in lines)
    assert "fifo-without-image-suffix" not in proc.stderr and "Traceback" not in proc.stderr
    assert (tmp_path / "out" / "0.png").is_file()
    proc = _run_tool(["run", src / "scan.jpg", tmp_path / "one.jpg", "--weights", tiny_weights])  # named as IN
    assert proc.returncode == 2 and "scan.jpg: not a regular file: FIFO" in proc.stderr, proc.stderr
