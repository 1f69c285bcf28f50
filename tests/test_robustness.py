"""One malformed file must never crash or hang a run (issue 16): dying and hanging decode
workers, and a seeded fuzz run over corrupted JPEG/PNG/TIFF/BMP/WebP files."""

from __future__ import annotations

import io
import json
import os
import random
import re
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


# ----------------------------------------------------------------------------- damaged metadata (issue 23)
# Each item of metadata (EXIF, DPI, ICC, XMP, orientation) is damaged alone, inside a container
# that stays valid (segment lengths, chunk CRCs and sizes fixed up), in JPEG, PNG, TIFF and WebP.
XMP = (b'<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?><x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
       b'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description rdf:about="" '
       b'xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/></rdf:RDF></x:xmpmeta><?xpacket end="w"?>')
TIFF_TYPES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 7: 1}  # BYTE, ASCII, SHORT, LONG, RATIONAL, UNDEFINED: bytes per value


def _metadata_seed(fmt: str, mode: str = "RGB") -> bytes:
    from PIL import ImageCms, PngImagePlugin

    grey = Image.fromarray(grey_image(64, 48, seed=3)).convert(mode)
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x011A], exif[0x011B], exif[0x0128] = 300.0, 300.0, 2
    exif[0x0131] = "scanner"
    exif[0x8769] = {0x9003: "1931:05:04 10:00:00"}
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    kwargs: dict = {"icc_profile": icc, "dpi": (300, 300)}
    if fmt == "PNG":
        info = PngImagePlugin.PngInfo()
        info.add_itxt("XML:com.adobe.xmp", XMP.decode())
        kwargs.update(exif=exif.tobytes(), pnginfo=info)
    elif fmt == "TIFF":
        del exif[0x8769]
        exif[700] = XMP
        kwargs.update(exif=exif, compression="tiff_lzw")
    else:
        kwargs.update(exif=exif.tobytes(), xmp=XMP)
    buf = io.BytesIO()
    grey.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _jpeg_segment(data: bytes, prefix: bytes, change) -> bytes:
    i = 2
    while data[i] == 0xFF and data[i + 1] != 0xDA:
        n = int.from_bytes(data[i + 2:i + 4], "big")
        payload = data[i + 4:i + 2 + n]
        if payload.startswith(prefix):
            new = change(payload)
            return data[:i + 2] + (len(new) + 2).to_bytes(2, "big") + new + data[i + 2 + n:]
        i += 2 + n
    raise AssertionError(f"no {prefix!r} segment")


def _png_chunk(data: bytes, kind: bytes, change) -> bytes:
    import zlib

    i = 8
    while i < len(data):
        n = int.from_bytes(data[i:i + 4], "big")
        if data[i + 4:i + 8] == kind:
            new = change(data[i + 8:i + 8 + n])
            chunk = kind + new
            return data[:i] + len(new).to_bytes(4, "big") + chunk + zlib.crc32(chunk).to_bytes(4, "big") + data[i + 12 + n:]
        i += 12 + n
    raise AssertionError(f"no {kind!r} chunk")


def _webp_chunk(data: bytes, kind: bytes, change) -> bytes:
    i = 12
    while i < len(data):
        n = int.from_bytes(data[i + 4:i + 8], "little")
        if data[i:i + 4] == kind:
            new = change(data[i + 8:i + 8 + n])
            body = kind + len(new).to_bytes(4, "little") + new + b"\0" * (len(new) & 1)
            out = data[:i] + body + data[i + 8 + n + (n & 1):]
            return out[:4] + (len(out) - 8).to_bytes(4, "little") + out[8:]
        i += 8 + n + (n & 1)
    raise AssertionError(f"no {kind!r} chunk")


def _tiff_entry(tiff: bytes, tag: int, typ: int | None = None, count: int | None = None, value: bytes | None = None,
                data: bytes | None = None) -> bytes:
    """IFD0's entry for ``tag`` with its type, count or 4-byte value field replaced, or the bytes
    it points at overwritten with ``data``."""
    e = "<" if tiff[:2] == b"II" else ">"
    order = "little" if e == "<" else "big"
    ifd = int.from_bytes(tiff[4:8], order)
    for k in range(int.from_bytes(tiff[ifd:ifd + 2], order)):
        at = ifd + 2 + 12 * k
        if int.from_bytes(tiff[at:at + 2], order) != tag:
            continue
        b = bytearray(tiff)
        if typ is not None:
            b[at + 2:at + 4] = typ.to_bytes(2, order)
        if count is not None:
            b[at + 4:at + 8] = count.to_bytes(4, order)
        if value is not None:
            b[at + 8:at + 12] = value
        if data is not None:
            offset = int.from_bytes(tiff[at + 8:at + 12], order)
            b[offset:offset + len(data)] = data
        return bytes(b)
    raise AssertionError(f"no tag {tag} in IFD0")


def _u32(tiff: bytes, n: int) -> bytes:
    return n.to_bytes(4, "little" if tiff[:2] == b"II" else "big")


def _ifd0(tiff: bytes) -> int:
    return int.from_bytes(tiff[4:8], "little" if tiff[:2] == b"II" else "big")


def _exif_damage() -> dict[str, object]:
    """Damage to a TIFF-structured EXIF block, by item: name -> function(tiff bytes) -> tiff bytes."""
    garbage = bytes(random.Random(5).randrange(256) for _ in range(4096))
    return {
        "exif-notiff": lambda t: b"XXXX" + t[4:],
        "exif-cut10": lambda t: t[:10],
        "exif-cut-half": lambda t: t[:len(t) // 2],
        "exif-cut-end": lambda t: t[:-3],
        "exif-ifd-count": lambda t: t[:_ifd0(t)] + b"\xff\xff" + t[_ifd0(t) + 2:],
        "exif-garbage": lambda t: t[:8] + garbage[:len(t) - 8],
        "exif-subifd": lambda t: _tiff_entry(t, 0x8769, value=_u32(t, len(t) - 2)),
        "dpi-cut": lambda t: _tiff_entry(t, 0x011A, value=_u32(t, len(t) - 4)),
        "dpi-zero": lambda t: _tiff_entry(t, 0x011A, data=_u32(t, 300) + _u32(t, 0)),
        "dpi-count0": lambda t: _tiff_entry(t, 0x011A, count=0),
        "dpi-type": lambda t: _tiff_entry(t, 0x011A, typ=99),
        "dpi-huge": lambda t: _tiff_entry(t, 0x011A, data=_u32(t, 0xFFFFFFFF) + _u32(t, 1)),
        "orientation-9": lambda t: _tiff_entry(t, 0x0112, value=_u32(t, 9)[::-1] if t[:2] == b"MM" else _u32(t, 9)),
        "orientation-count-huge": lambda t: _tiff_entry(t, 0x0112, count=0xFFFF, value=_u32(t, 0xFFFFFF00)),
        "orientation-ascii": lambda t: _tiff_entry(t, 0x0112, typ=2, count=4, value=b"abc\0"),
        "orientation-long": lambda t: _tiff_entry(t, 0x0112, typ=4, count=5, value=_u32(t, 0xFFFFFFF0)),
        "orientation-count0": lambda t: _tiff_entry(t, 0x0112, count=0),
    }


def _in_exif(change):
    """``change`` applied to the TIFF structure inside an EXIF payload (with or without ``Exif\\0\\0``)."""
    def apply(payload: bytes) -> bytes:
        head = b"Exif\0\0" if payload.startswith(b"Exif\0\0") else b""
        return head + change(payload[len(head):])
    return apply


def _item_damage() -> dict[str, object]:
    """Damage to ICC profiles and XMP packets (bytes -> bytes) and to JPEG's JFIF density."""
    rng = random.Random(9)
    return {
        "icc-garbage": lambda b: bytes(rng.randrange(256) for _ in b),
        "icc-cut": lambda b: b[:10],
        "icc-header": lambda b: b"\0" * 40 + b[40:],
        "xmp-garbage": lambda b: bytes(rng.randrange(256) for _ in b),
        "xmp-cut": lambda b: b[:len(b) // 2],
        "xmp-orientation": lambda b: b.replace(b'Orientation="6"', b'Orientation="9"'),
        "xmp-not-utf8": lambda b: b.replace(b"Description", b"Descr\xff\xfeion"),
    }


def _metadata_variants() -> list[tuple[str, bytes]]:
    out: list[tuple[str, bytes]] = []
    exif = {name: _in_exif(f) for name, f in _exif_damage().items()}
    items = _item_damage()
    seeds = {"JPEG": _metadata_seed("JPEG"), "PNG": _metadata_seed("PNG"), "TIFF": _metadata_seed("TIFF"),
             "WEBP": _metadata_seed("WEBP")}
    for name, change in exif.items():  # EXIF, its DPI tags and its orientation
        if name.startswith("dpi"):  # JPEG's JFIF density wins over EXIF's: drop it so that EXIF's is read
            jpeg = _jpeg_segment(seeds["JPEG"], b"JFIF\0", lambda p: p[:7] + b"\0" + p[8:])
        else:
            jpeg = seeds["JPEG"]
        out.append((f"{name}.jpg", _jpeg_segment(jpeg, b"Exif\0\0", change)))
        out.append((f"{name}.png", _png_chunk(seeds["PNG"], b"eXIf", change)))
        out.append((f"{name}.webp", _webp_chunk(seeds["WEBP"], b"EXIF", change)))
        if not name.startswith("exif-cut") and name not in ("exif-notiff", "exif-garbage", "exif-subifd"):  # a TIFF's EXIF is its IFD
            out.append((f"{name}.tif", _exif_damage()[name](seeds["TIFF"])))
    jfif = {"dpi-jfif-zero": b"\x01\0\0\0\0", "dpi-jfif-units": b"\x07\x01\x2c\x01\x2c", "dpi-jfif-huge": b"\x01\xff\xff\xff\xff"}
    for name, density in jfif.items():
        out.append((f"{name}.jpg", _jpeg_segment(seeds["JPEG"], b"JFIF\0", lambda p, d=density: p[:7] + d + p[12:])))
    phys = {"dpi-phys-zero": bytes(9), "dpi-phys-huge": b"\xff" * 8 + b"\x01", "dpi-phys-cut": b"\0\0\x0b"}
    for name, chunk in phys.items():
        out.append((f"{name}.png", _png_chunk(seeds["PNG"], b"pHYs", lambda p, c=chunk: c)))
    for name, change in items.items():
        if name.startswith("icc"):
            out.append((f"{name}.jpg", _jpeg_segment(seeds["JPEG"], b"ICC_PROFILE\0", lambda p, f=change: p[:14] + f(p[14:]))))
            out.append((f"{name}.webp", _webp_chunk(seeds["WEBP"], b"ICCP", change)))
            out.append((f"{name}.png", _png_chunk(seeds["PNG"], b"iCCP", lambda p, f=change: _recompress(p, f))))
            icc = Image.open(io.BytesIO(seeds["TIFF"])).info["icc_profile"]
            out.append((f"{name}.tif", _tiff_entry(seeds["TIFF"], 34675, data=change(icc)[:len(icc)])))
            cmyk = _metadata_seed("JPEG", "CMYK")  # the one mode whose ICC profile is used
            out.append((f"{name}-cmyk.jpg", _jpeg_segment(cmyk, b"ICC_PROFILE\0", lambda p, f=change: p[:14] + f(p[14:]))))
        else:
            out.append((f"{name}.jpg", _jpeg_segment(seeds["JPEG"], b"http://ns.adobe.com/xap/1.0/\0",
                                                     lambda p, f=change: p[:29] + f(p[29:]))))
            out.append((f"{name}.webp", _webp_chunk(seeds["WEBP"], b"XMP ", change)))
            out.append((f"{name}.png", _png_chunk(seeds["PNG"], b"iTXt", lambda p, f=change: p[:22] + f(p[22:]))))
            out.append((f"{name}.tif", _tiff_entry(seeds["TIFF"], 700, data=change(XMP)[:len(XMP)])))
    return out


def _recompress(iccp: bytes, change) -> bytes:
    import zlib

    name_end = iccp.index(b"\0")
    return iccp[:name_end + 2] + zlib.compress(change(zlib.decompress(iccp[name_end + 2:])))


def _metadata_is_sound(path: Path) -> None:
    """What the output carries is readable: no damaged item was passed on."""
    with Image.open(path) as im:
        im.load()
        exif = im.getexif()
        assert exif.get(0x0112, 1) == 1 and exif.get(0x0131, "").startswith("colorize-batch")
        dpi = im.info.get("dpi")
        assert dpi is None or all(0 < float(d) < 1e6 for d in dpi), dpi
        from colorize_batch.encoding import srgb_icc

        assert im.info.get("icc_profile") == srgb_icc()
        assert im.mode == "RGB" and np.ptp(np.asarray(im).astype(int)[..., 0] - np.asarray(im).astype(int)[..., 2]) > 0


def test_damaged_metadata_costs_the_metadata_never_the_picture(tmp_path, tiny_weights):
    variants = _metadata_variants()
    src = tmp_path / "in"
    src.mkdir()
    for name, data in variants:
        (src / name).write_bytes(data)
    openable = {name for name, _ in variants if pillow_opens(src / name)}
    assert {"exif-notiff.jpg", "dpi-cut.jpg", "exif-notiff.png", "icc-garbage.tif", "xmp-garbage.webp"} <= openable
    proc = run_tool(["run", src, tmp_path / "out", "--weights", tiny_weights, "--workers", "1", "--color-inputs", "recolor"],
                    timeout=300)
    assert proc.returncode in (0, 1) and "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
    rep = report(tmp_path / "out")
    failed = {Path(f["path"]).name: f["reason"] for f in rep["failures"]}
    lost = {name: failed.get(name) for name in openable if not (tmp_path / "out" / name).is_file()}
    assert not lost, lost  # every picture Pillow can decode is colorized, whatever its metadata
    for name in sorted(openable):
        _metadata_is_sound(tmp_path / "out" / name)
    notes = {(Path(n["path"]).name, n["message"]) for n in rep["notes"]}
    assert any(name == "exif-notiff.jpg" and "damaged EXIF" in msg and "not a TIFF file" in msg for name, msg in notes)
    assert any(name == "dpi-jfif-zero.jpg" and "DPI" in msg for name, msg in notes)
    gallery = run_tool(["gallery", tmp_path / "out", "--source", src], timeout=300)  # thumbnails of the damaged sources
    assert gallery.returncode == 0 and "Traceback" not in gallery.stderr, gallery.stderr[-3000:]
    no_thumb = [line for line in gallery.stderr.splitlines()
                if (m := re.search(r"no thumbnail for (\S+): ", line)) and Path(m.group(1)).name in openable]
    assert not no_thumb, no_thumb
    print(f"metadata fuzz: {len(variants)} variants, {len(openable)} Pillow-openable, all colorized; "
          f"{len(variants) - len(openable)} that Pillow cannot open: {sorted(set(dict(variants)) - openable)}")
