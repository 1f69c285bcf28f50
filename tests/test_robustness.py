"""One malformed file must never crash or hang a run (issue 16): dying and hanging decode
workers, and a seeded fuzz run over corrupted JPEG/PNG/TIFF/BMP/WebP files."""

from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import grey_image, save
from PIL import Image, ImageFile

from colorize_batch.manifest import report_path

REPO = Path(__file__).resolve().parent.parent

# Runs the CLI in a fresh interpreter; a file whose name contains POISON misbehaves inside the
# decode worker the way a broken C decoder would (HOW: kill = dies by SIGKILL, hang = spins where
# no Python signal handler can run).
HOOKED_CLI = """
import os, signal, sys, time
from colorize_batch import decoding
HOW = os.environ.get("POISON_HOW")
real = decoding.decode
def decode(path, *args, **kwargs):
    if "POISON" in str(path):
        if HOW == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if HOW == "hang":
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
            time.sleep(1000)
    return real(path, *args, **kwargs)
decoding.decode = decode
from colorize_batch.cli import main
sys.exit(main())
"""


def run_tool(args: list, timeout: float, how: str | None = None, **popen) -> subprocess.CompletedProcess:
    env = dict(os.environ, POISON_HOW=how or "", PYTHONPATH=str(REPO))
    code = HOOKED_CLI if how else "import sys; from colorize_batch.cli import main; sys.exit(main())"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env, **popen)


def make_tree(root: Path, n: int, side: int = 96) -> None:
    for i in range(n):
        save(root / f"{i:03d}.png", Image.fromarray(grey_image(side, side * 3 // 4, seed=i)))


def report(out: Path) -> dict:
    return json.loads(report_path(out).read_text())


@pytest.mark.parametrize("how", ["kill", "hang"])
def test_a_file_that_kills_or_hangs_its_worker_fails_alone(tmp_path, tiny_weights, how):
    make_tree(tmp_path / "in", 12)
    save(tmp_path / "in" / "005-POISON.png", Image.fromarray(grey_image(seed=99)))
    args = ["run", tmp_path / "in", tmp_path / "out", "--weights", tiny_weights, "--workers", "1", "--batch-size", "4"]
    cfg = tmp_path / "c.yaml"  # pipeline.yaml with a short time limit (decode_timeout does not change pixels)
    data = yaml.safe_load((REPO / "pipeline.yaml").read_text())
    data["input"]["decode_timeout"] = 2
    cfg.write_text(yaml.safe_dump(data))
    started = time.monotonic()
    proc = run_tool(args + ["--config", cfg], timeout=120, how=how)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and time.monotonic() - started < 60
    rep = report(tmp_path / "out")
    assert rep["counts"]["done"] == 12 and rep["counts"]["failed"] == 1, rep
    failure = rep["failures"][0]
    assert "POISON" in failure["path"] and "retried once in a fresh worker" in failure["reason"]
    assert ("died" if how == "kill" else "decode_timeout") in failure["reason"]
    proc = run_tool(args, timeout=120)  # without the poison the rerun completes just that file
    assert proc.returncode == 0, proc.stderr
    counts = report(tmp_path / "out")["counts"]
    assert (counts["done"], counts["skipped_up_to_date"], counts["failed"]) == (1, 12, 0)


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            kids += [int(k) for k in (task / "children").read_text().split()]
        except OSError:
            pass
    return kids


def test_killing_a_decode_worker_mid_run(tmp_path, tiny_weights):
    make_tree(tmp_path / "in", 120, side=256)
    args = ["run", tmp_path / "in", tmp_path / "out", "--weights", tiny_weights, "--workers", "1", "--batch-size", "4"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "colorize_batch", *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed = None
    deadline = time.monotonic() + 60
    while killed is None and time.monotonic() < deadline and proc.poll() is None:
        out = tmp_path / "out"
        if out.is_dir() and any(out.glob("*.png")):  # mid-run: some files written already
            for child in _children(proc.pid):
                os.kill(child, signal.SIGKILL)
                killed = child
                break
        time.sleep(0.02)
    stdout, stderr = proc.communicate(timeout=120)
    assert killed is not None, "the run ended before a worker could be killed"
    assert proc.returncode in (0, 1) and "Traceback" not in stderr, stderr
    rep = report(tmp_path / "out")
    assert rep["counts"]["done"] + rep["counts"]["failed"] == 120
    assert "decode worker died" in stderr
    rerun = run_tool(args, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    counts = report(tmp_path / "out")["counts"]
    assert counts["done"] + counts["skipped_up_to_date"] == 120 and counts["failed"] == 0


# ----------------------------------------------------------------------------- fuzz
def _seeds() -> dict[str, bytes]:
    grey = Image.fromarray(grey_image(64, 48, seed=7))
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x011A] = (300, 1)  # XResolution
    exif[0x0131] = "scanner"
    files = {}
    for fmt, ext, kwargs in [("JPEG", ".jpg", {"exif": exif.tobytes(), "quality": 90}), ("PNG", ".png", {}),
                             ("TIFF", ".tif", {"compression": "tiff_lzw"}), ("BMP", ".bmp", {}),
                             ("WEBP", ".webp", {"quality": 80})]:
        buf = io.BytesIO()
        grey.save(buf, fmt, **kwargs)
        files[ext] = buf.getvalue()
    buf = io.BytesIO()  # a multi-page TIFF: later IFDs are broken below
    grey.save(buf, "TIFF", save_all=True, append_images=[grey.rotate(90), grey.rotate(180)])
    files["-pages.tif"] = buf.getvalue()
    return files


def _variants(rng: random.Random) -> list[tuple[str, bytes]]:
    out: list[tuple[str, bytes]] = []
    for ext, data in _seeds().items():
        n = len(data)
        for cut in sorted(rng.sample(range(1, n), 8)):  # truncated at many lengths
            out.append((f"trunc-{cut}{ext}", data[:cut]))
        for region, lo, hi in (("head", 0, min(n, 64)), ("data", min(n, 64), n)):
            for k in range(5):  # random bytes flipped in the header and in the data
                b = bytearray(data)
                for _ in range(rng.randint(1, 6)):
                    b[rng.randrange(lo, hi)] = rng.randrange(256)
                out.append((f"flip-{region}-{k}{ext}", bytes(b)))
        if ext == ".jpg":  # EXIF block cut short or garbled (the APP1 segment follows SOI)
            app1 = data.find(b"Exif\0\0")
            for k, damage in enumerate([b"XXXX", b"\0" * 12, b"II*\0\xff\xff\xff\x7f", b"MM\0*\0\0\0\x08\0\xff"]):
                b = bytearray(data)
                b[app1 + 6: app1 + 6 + len(damage)] = damage
                out.append((f"exif-{k}{ext}", bytes(b)))
        if ext == "-pages.tif":  # later IFDs pointed at garbage or made to lose their dimensions
            for k in range(6):
                b = bytearray(data)
                ifd = int.from_bytes(b[4:8], "little")
                count = int.from_bytes(b[ifd:ifd + 2], "little")
                nxt = ifd + 2 + 12 * count
                second = int.from_bytes(b[nxt:nxt + 4], "little")
                if k < 3:
                    b[second + 2 + 12 * k: second + 2 + 12 * k + 2] = b"\xff\xff"  # an entry's tag garbled
                else:
                    b[nxt:nxt + 4] = rng.randrange(8, n).to_bytes(4, "little")  # next IFD offset garbage
                out.append((f"ifd-{k}{ext}", bytes(b)))
    return out


def pillow_opens(path: Path) -> bool:
    assert not ImageFile.LOAD_TRUNCATED_IMAGES
    try:
        with Image.open(path) as im:
            im.load()
            np.asarray(im.convert("L"))
        return True
    except Exception:  # noqa: BLE001
        return False


def test_fuzz_corrupted_files_never_crash_or_hang(tmp_path, tiny_weights):
    rng = random.Random(1234)
    variants = _variants(rng)
    src = tmp_path / "in"
    src.mkdir()
    for name, data in variants:
        (src / name).write_bytes(data)
    openable = {name for name, _ in variants if pillow_opens(src / name)}
    started = time.monotonic()
    proc = run_tool(["run", src, tmp_path / "out", "--weights", tiny_weights, "--workers", "1", "--color-inputs", "recolor"],
                    timeout=300)
    elapsed = time.monotonic() - started
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "Warning:" not in proc.stderr and "TIFF" not in proc.stderr.replace(".tif", "")  # notes go to the report
    rep = report(tmp_path / "out")
    written = {name for name, _ in variants if (tmp_path / "out" / name).is_file()}
    failed = {Path(f["path"]).name: f["reason"] for f in rep["failures"]}
    missing = openable - written
    assert not missing, {m: failed.get(m) for m in missing}
    assert len(written) + len(failed) == len(variants) and all(failed.values())
    print(f"fuzz: {len(variants)} variants, {len(openable)} Pillow-openable, {len(written)} written, "
          f"{len(failed)} failed with a reason, 0 tracebacks, {elapsed:.1f} s")


def test_rerun_right_after_kill_9_is_not_locked_out(tmp_path, tiny_weights):
    """The orphaned decode worker used to hold the lock's descriptor for seconds (exit 75)."""
    make_tree(tmp_path / "in", 120, side=256)
    args = ["run", tmp_path / "in", tmp_path / "out", "--weights", tiny_weights, "--workers", "1", "--batch-size", "4"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "colorize_batch", *map(str, args)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if (tmp_path / "out").is_dir() and any((tmp_path / "out").glob("*.png")) and _children(proc.pid):
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    workers = _children(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    rerun = run_tool(args, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    for pid in workers:  # the workers died with their parent
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
