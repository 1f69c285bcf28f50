"""Never destroy a scan: each case a hostile run found, reproduced on real files (issue 12)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import grey_image, save
from PIL import Image

from colorize_batch.manifest import STATE_DIR as STATE
from colorize_batch.manifest import Manifest, manifest_path, report_path, state_dir
from colorize_batch.safe_files import is_temp_name


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_tree(root: Path, n: int = 3) -> list[Path]:
    return [save(root / f"{i}.png", Image.fromarray(grey_image(seed=i))) for i in range(n)]


def is_grey(path: Path) -> bool:
    with Image.open(path) as im:
        return im.mode == "L"


def last_run(out: Path) -> dict:
    return json.loads(report_path(out).read_text())


# -- 1. single-file mode --------------------------------------------------------------------
def test_single_file_onto_itself_or_its_folder_is_refused(tmp_path, run_cli):
    scans = tmp_path / "scans"
    a, b = make_tree(scans, 2)
    before = {p: digest(p) for p in (a, b)}
    result = run_cli("run", a, a)
    assert result.exit_code == 2 and "replace the input" in result.output
    result = run_cli("run", b, scans)
    assert result.exit_code == 2 and "replace the input" in result.output
    assert {p: digest(p) for p in (a, b)} == before and is_grey(a) and is_grey(b)


def test_single_file_does_not_replace_a_foreign_file(tmp_path, run_cli):
    src = save(tmp_path / "photo.png", Image.fromarray(grey_image()))
    other = save(tmp_path / "keep.png", Image.fromarray(grey_image(seed=5)))
    before = digest(other)
    result = run_cli("run", src, other)
    assert result.exit_code == 1 and "not written by colorize-batch" in result.output
    assert digest(other) == before
    run_cli("run", src, tmp_path / "mine.png", "-q", expect=0)
    run_cli("run", src, tmp_path / "mine.png", "-q", expect=0)  # its own output: replaced on a rerun
    run_cli("run", src, other, "-q", "--force", expect=0)
    assert digest(other) != before


# -- 2. OUT == IN under another name ----------------------------------------------------------
@pytest.fixture
def bind_mount(tmp_path):
    mounts = []

    def mount(src: Path, dst: Path) -> Path:
        dst.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(["mount", "--bind", str(src), str(dst)], capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot bind-mount here: {proc.stderr.strip() or proc.returncode}")
        mounts.append(dst)
        return dst

    yield mount
    for dst in reversed(mounts):
        subprocess.run(["umount", str(dst)], capture_output=True)


def test_bind_mounted_out_is_the_input_and_refused(tmp_path, run_cli, bind_mount):
    sources = make_tree(tmp_path / "in")
    before = [digest(p) for p in sources]
    out = bind_mount(tmp_path / "in", tmp_path / "out")
    result = run_cli("run", tmp_path / "in", out)
    assert result.exit_code == 2 and "same device and inode" in result.output
    inside = bind_mount(tmp_path, tmp_path.parent / f"{tmp_path.name}-alias")  # IN inside OUT, via the alias
    result = run_cli("run", tmp_path / "in", inside)
    assert result.exit_code == 2 and "lies inside the output folder" in result.output
    assert [digest(p) for p in sources] == before and all(is_grey(p) for p in sources)


@pytest.mark.parametrize("force", [True, False])
def test_in_bind_mounted_from_inside_out_is_refused_before_anything_is_written(tmp_path, run_cli, bind_mount, force):
    """Issue 23: IN = a bind mount of OUT/in; the output of IN/in/a.png is OUT/in/a.png, the input IN/a.png."""
    out = tmp_path / "out"
    outer = save(out / "in" / "a.png", Image.fromarray(grey_image(seed=1)))
    inner = save(out / "in" / "in" / "a.png", Image.fromarray(grey_image(seed=2)))
    before = {p: digest(p) for p in (outer, inner)}
    inbind = bind_mount(out / "in", tmp_path / "inbind")
    result = run_cli("run", inbind, out, "--workers", "0", *(["--force"] if force else []))
    assert result.exit_code == 2, result.output
    assert "is the input file" in result.output or "into the input folder" in result.output
    assert {p: digest(p) for p in (outer, inner)} == before and is_grey(outer)
    images = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png") if STATE not in p.parts)
    assert images == ["in/a.png", "in/in/a.png"]  # nothing written


def test_in_bind_mounted_from_inside_out_without_a_clash_is_refused(tmp_path, run_cli, bind_mount):
    """No output name equals an input's, but outputs would land in the input folders."""
    out = tmp_path / "out"
    inner = save(out / "in" / "in" / "b.png", Image.fromarray(grey_image(seed=2)))
    inbind = bind_mount(out / "in", tmp_path / "inbind")
    result = run_cli("run", inbind, out, "--workers", "0")
    assert result.exit_code == 2 and "into the input folder" in result.output, result.output
    assert not (out / "in" / "b.png").exists() and is_grey(inner)


def test_out_inside_in_is_still_allowed_by_the_inode_checks(tmp_path, run_cli):
    """The outputs' folders are checked against the input folders: OUT inside IN is not one of them."""
    src = tmp_path / "in"
    save(src / "a.png", Image.fromarray(grey_image()))
    save(src / "sub" / "b.png", Image.fromarray(grey_image(seed=1)))
    run_cli("run", src, src / "out", "--workers", "0", "-q", expect=0)  # OUT made by the run
    run_cli("run", src, src / "out", "--workers", "0", "-q", "--force", expect=0)  # OUT there already
    assert not is_grey(src / "out" / "sub" / "b.png") and is_grey(src / "sub" / "b.png")


def test_output_that_is_a_hard_link_to_an_input_is_refused_even_with_force(tmp_path, run_cli):
    a, b = make_tree(tmp_path / "in", 2)
    (tmp_path / "out").mkdir()
    os.link(a, tmp_path / "out" / "1.png")  # the output name of in/1.png is the file in/0.png
    before = digest(a)
    result = run_cli("run", tmp_path / "in", tmp_path / "out", "--workers", "0", "--force")
    assert result.exit_code == 2 and "is the input file" in result.output and "same device and inode" in result.output
    assert digest(a) == before and is_grey(a) and not (tmp_path / "out" / "0.png").exists()


def test_symlinked_out_is_the_input_and_refused(tmp_path, run_cli):
    sources = make_tree(tmp_path / "in")
    (tmp_path / "out").symlink_to(tmp_path / "in")
    assert run_cli("run", tmp_path / "in", tmp_path / "out").exit_code == 2
    assert all(is_grey(p) for p in sources)


def test_out_is_a_regular_file(tmp_path, run_cli):
    make_tree(tmp_path / "in", 1)
    (tmp_path / "out").write_text("x")
    result = run_cli("run", tmp_path / "in", tmp_path / "out")
    assert result.exit_code == 2 and "not a folder" in result.output and "Traceback" not in result.output


# -- 3. files in OUT this tool did not write ------------------------------------------------------
def test_foreign_file_in_out_is_not_replaced(tmp_path, run_cli):
    make_tree(tmp_path / "in", 2)
    foreign = save(tmp_path / "out" / "0.png", Image.fromarray(grey_image(seed=9)))
    before = digest(foreign)
    result = run_cli("run", tmp_path / "in", tmp_path / "out", "--workers", "0")
    assert result.exit_code == 1
    rep = last_run(tmp_path / "out")
    assert rep["counts"]["done"] == 1 and rep["counts"]["failed"] == 1
    assert "not written by colorize-batch" in rep["failures"][0]["reason"]
    assert digest(foreign) == before
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"output": {"overwrite": "foreign"}}))
    run_cli("run", tmp_path / "in", tmp_path / "out", "--workers", "0", "-q", "--config", cfg, expect=0)
    assert digest(foreign) != before


def test_own_output_unrecorded_after_a_kill_is_redone(tmp_path, run_cli):
    """A kill between the write and the manifest record leaves an output only the mark identifies."""
    make_tree(tmp_path / "in", 2)
    run_cli("run", tmp_path / "in", tmp_path / "out", "--workers", "0", "-q", expect=0)
    for path in state_dir(tmp_path / "out").glob("manifest*.jsonl"):
        path.unlink()
    run_cli("run", tmp_path / "in", tmp_path / "out", "--workers", "0", "-q", expect=0)


def test_never_writes_through_a_symlinked_folder_in_out(tmp_path, run_cli):
    save(tmp_path / "in" / "sub" / "a.png", Image.fromarray(grey_image()))
    elsewhere = tmp_path / "elsewhere"
    victim = save(elsewhere / "a.png", Image.fromarray(grey_image(seed=4)))
    before = digest(victim)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "sub").symlink_to(elsewhere)
    result = run_cli("run", tmp_path / "in", tmp_path / "out", "--workers", "0", "--force")
    assert result.exit_code == 1 and "leads outside the output folder" in result.output
    assert digest(victim) == before and len(list(elsewhere.iterdir())) == 1


# -- 4.-6. names and the manifest -------------------------------------------------------------------
def test_name_that_is_not_utf8_round_trips(tmp_path, run_cli):
    src_dir = tmp_path / "in"
    src_dir.mkdir()
    name = os.fsdecode(b"a\xe9t\xe9.png")
    Image.fromarray(grey_image()).save(os.path.join(src_dir, name))
    save(src_dir / "zz-after.png", Image.fromarray(grey_image(seed=2)))  # sorted after it: must be done too
    out = tmp_path / "out"
    run_cli("run", src_dir, out, "--workers", "0", "-q", expect=0)
    assert os.path.isfile(os.path.join(out, name)) and (out / "zz-after.png").is_file()
    manifest = manifest_path(out)
    manifest.read_bytes().decode("utf-8")  # valid UTF-8 text
    assert name in Manifest(out).records
    assert not [p for p in state_dir(out).iterdir() if is_temp_name(p.name)]
    rerun = run_cli("run", src_dir, out, "--workers", "0", "--report", tmp_path / "r.json", expect=0)
    assert json.loads((tmp_path / "r.json").read_text())["counts"]["skipped_up_to_date"] == 2, rerun.output


def test_failure_of_a_non_utf8_name_is_shown_escaped(tmp_path, run_cli):
    (tmp_path / "in").mkdir()
    bad = os.path.join(tmp_path / "in", os.fsdecode(b"b\xe9.png"))
    Path(bad).write_bytes(b"not an image")
    result = run_cli("run", tmp_path / "in", tmp_path / "out", "--workers", "0")
    assert result.exit_code == 1 and "b\\xe9.png" in result.output
    assert last_run(tmp_path / "out")["failures"][0]["path"] == bad


def test_name_of_255_bytes_is_written(tmp_path, run_cli):
    name = "n" * 251 + ".png"
    save(tmp_path / "in" / name, Image.fromarray(grey_image()))
    run_cli("run", tmp_path / "in", tmp_path / "out", "--workers", "0", "-q", expect=0)
    assert (tmp_path / "out" / name).is_file()


@pytest.mark.parametrize("damage", ["[]\n", "null\n", '{"source": 3}\n', '{"source": "0.png", "sta'])
def test_damaged_manifest_line_is_skipped_with_a_warning(tmp_path, run_cli, damage, caplog):
    make_tree(tmp_path / "in", 2)
    out = tmp_path / "out"
    run_cli("run", tmp_path / "in", out, "--workers", "0", "-q", expect=0)
    manifest = manifest_path(out)
    lines = manifest.read_text().splitlines(keepends=True)
    manifest.write_text(lines[1] + damage)  # the record of 0.png replaced by a damaged line (or a torn last line)
    result = run_cli("run", tmp_path / "in", out, "--workers", "0", "--report", tmp_path / "r.json", expect=0)
    assert "line 2: damaged manifest record skipped" in result.output + caplog.text
    counts = json.loads((tmp_path / "r.json").read_text())["counts"]
    assert counts["done"] == 1 and counts["skipped_up_to_date"] == 1


# -- 7. one-line errors and exit codes --------------------------------------------------------------
def test_read_only_out_is_one_line_and_exit_1(tmp_path, run_cli, bind_mount):
    make_tree(tmp_path / "in", 1)
    (tmp_path / "real").mkdir()
    out = bind_mount(tmp_path / "real", tmp_path / "out")
    if subprocess.run(["mount", "-o", "remount,ro,bind", str(out)], capture_output=True).returncode != 0:
        pytest.skip("cannot remount read-only here")
    result = run_cli("run", tmp_path / "in", out, "--report", tmp_path / "r.json")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "cannot write to the output folder (Read-only file system)" in result.output
    assert "Read-only" in json.loads((tmp_path / "r.json").read_text())["stopped_reason"]


def test_bad_log_file_and_config_are_usage_errors(tmp_path, run_cli):
    make_tree(tmp_path / "in", 1)
    result = run_cli("run", tmp_path / "in", tmp_path / "out", "--log-file", "/nonexistent-dir/x.log")
    assert result.exit_code == 2 and "cannot open the log file" in result.output
    cfg = tmp_path / "bad.yaml"
    cfg.write_bytes(b"model:\n  size: 256 # \xff\xfe\n")
    result = run_cli("run", tmp_path / "in", tmp_path / "out", "--config", cfg)
    assert result.exit_code == 2 and "not UTF-8" in result.output


# -- 8. the lock after kill -9 ----------------------------------------------------------------------
def test_worker_does_not_keep_the_lock(tmp_path):
    from colorize_batch.manifest import HELD_LOCK_FDS, LockedError, RunLock

    with RunLock(tmp_path):
        assert HELD_LOCK_FDS
        pid = os.fork()
        if pid == 0:  # a forked decode worker after its set-up
            from colorize_batch.manifest import close_inherited_locks

            close_inherited_locks()
            import time

            time.sleep(2)
            os._exit(0)
    try:
        with RunLock(tmp_path):  # the parent let go: the child's copy must not hold it
            pass
    except LockedError:
        pytest.fail("the forked child kept the run lock")
    finally:
        os.waitpid(pid, 0)


# -- 10.-12. --------------------------------------------------------------------------------------
def test_bomb_message_quotes_the_configured_limit(tmp_path, run_cli):
    save(tmp_path / "in" / "big.png", Image.fromarray(np.zeros((100, 100), np.uint8)))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"input": {"max_pixels": 1000}}))
    result = run_cli("run", tmp_path / "in", tmp_path / "out", "--workers", "0", "--config", cfg)
    assert result.exit_code == 1
    reason = last_run(tmp_path / "out")["failures"][0]["reason"]
    assert reason == "decompression bomb guard: the image has 10,000 pixels, more than input.max_pixels (1,000)"


def test_report_follows_the_umask(tmp_path, run_cli):
    make_tree(tmp_path / "in", 1)
    old = os.umask(0o022)
    try:
        run_cli("run", tmp_path / "in", tmp_path / "out", "--workers", "0", "-q", expect=0)
    finally:
        os.umask(old)
    assert report_path(tmp_path / "out").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "out" / "0.png").stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".tif"])
def test_outputs_are_byte_reproducible(tmp_path, run_cli, suffix, monkeypatch):
    save(tmp_path / "in" / f"a{suffix}", Image.fromarray(grey_image()))
    from colorize_batch import encoding

    run_cli("run", tmp_path / "in", tmp_path / "o1", "--workers", "0", "-q", expect=0)
    encoding.srgb_icc.cache_clear()  # a later process makes its profile anew (LittleCMS stamps the time)
    import time

    time.sleep(1.1)
    run_cli("run", tmp_path / "in", tmp_path / "o2", "--workers", "0", "-q", expect=0)
    assert digest(tmp_path / "o1" / f"a{suffix}") == digest(tmp_path / "o2" / f"a{suffix}")


# -- 9. gallery names ---------------------------------------------------------------------------
def test_gallery_keeps_backslash_and_non_utf8_names(tmp_path, run_cli):
    from colorize_batch.gallery import build_gallery

    src = tmp_path / "in"
    src.mkdir()
    names = ["back\\slash.png", os.fsdecode(b"caf\xe9.png")]
    for i, name in enumerate(names):
        Image.fromarray(grey_image(seed=i)).save(os.path.join(src, name))
    run_cli("run", src, tmp_path / "out", "--workers", "0", "-q", expect=0)
    index = build_gallery(tmp_path / "out", src)
    html = index.read_text(encoding="utf-8")
    assert "output missing" not in html and "source missing" not in html
    assert "back\\slash.png" in html and "caf\\xe9.png" in html
    assert "back%5Cslash.png" in html and "caf%E9.png" in html  # links to the files' own bytes


# -- issue 23: unsafe weights and --report -------------------------------------------------------
class _Payload:
    """A pickle that would create a file if it were ever unpickled with weights_only=False."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.mark.parametrize("command", ["run", "info"])
def test_unsafe_weights_are_not_our_file_and_never_suggest_weights_only_false(tmp_path, run_cli, command):
    import pickle

    import torch

    marker = tmp_path / "payload-ran"
    torch.save({"format": "colorize-batch-weights/1", "state_dict": _Payload(marker)}, tmp_path / "evil.pt")
    (tmp_path / "plain.pt").write_bytes(pickle.dumps(_Payload(marker)))
    make_tree(tmp_path / "in", 1)
    for weights in ("evil.pt", "plain.pt"):
        args = ["run", tmp_path / "in", tmp_path / "out"] if command == "run" else ["info"]
        result = run_cli(*args, "--weights", tmp_path / weights, weights=None)
        assert result.exit_code == 2, result.output
        assert f"{weights}: not a colorize-batch weights file" in result.output
        assert "weights_only" not in result.output and "trusted source" not in result.output, result.output
    assert not marker.exists()


@pytest.mark.parametrize("where", ["under-a-file", "proc"])
def test_report_to_an_unwritable_place_exits_1(tmp_path, run_cli, where):
    make_tree(tmp_path / "in", 1)
    (tmp_path / "a-file").write_text("x")
    dest = tmp_path / "a-file" / "r.json" if where == "under-a-file" else Path("/proc/colorize-batch-report.json")
    result = run_cli("run", tmp_path / "in", tmp_path / "out", "--workers", "0", "--report", dest)
    assert result.exit_code == 1 and "cannot write the run report" in result.output, result.output
    assert "Traceback" not in result.output and (tmp_path / "out" / "0.png").is_file()  # the files are done
    assert last_run(tmp_path / "out")["counts"]["done"] == 1
