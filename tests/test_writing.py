"""JPEG outputs encoded straight from YCbCr planes (simplejpeg), checked against Pillow's RGB path."""

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms

from colorize_batch.config import OutputSection
from colorize_batch.decoding import network_input
from colorize_batch.evaluate import ab_of, grey_from_rgb
from colorize_batch.examples import colour_photo
from colorize_batch.recombination import chroma_planes, colorize_fast, ycbcr_planes
from colorize_batch.encoding import Provenance, encode, encode_jpeg_ycbcr, jpeg_half_chroma


@pytest.fixture(scope="module")
def photo():
    truth = colour_photo("astronaut")[:301, :203]  # odd sizes: half-size chroma rounds up
    grey = grey_from_rgb(truth)
    small = torch.from_numpy(network_input(grey, 64))
    ab = ab_of(np.asarray(Image.fromarray(np.ascontiguousarray(truth)).resize((64, 64), Image.Resampling.BILINEAR)))
    return grey, chroma_planes(small, ab)


def _decode(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


@pytest.mark.parametrize("quality", [92, 95])
def test_planes_jpeg_equals_pillow_rgb_jpeg_and_keeps_the_scan_as_luma(photo, quality):
    grey, (cb, cr) = photo
    opts = OutputSection(jpeg_quality=quality, metadata=False)
    planar = _decode(encode_jpeg_ycbcr(ycbcr_planes(grey, cb, cr, half_chroma=jpeg_half_chroma(opts)), opts))
    pillow = _decode(encode(colorize_fast(grey, cb, cr), "JPEG", opts))
    assert planar.size == pillow.size == (203, 301)
    # the same colour image (the two differ only in how chroma is resampled and rounded)
    diff = np.abs(np.asarray(planar, dtype=int) - np.asarray(pillow, dtype=int))
    assert diff.mean() < 1.5 and np.percentile(diff, 99) <= 8
    # converting back to grey gives the scan's grey levels, up to JPEG's own rounding (no worse
    # than Pillow's RGB path)
    luma_error = [np.abs(np.asarray(im.convert("L"), dtype=int) - grey).mean() for im in (planar, pillow)]
    assert luma_error[0] < 1.5 and luma_error[0] <= luma_error[1] + 0.1, luma_error
    # 4:2:0 below quality 95, 4:4:4 from 95 on: (component, h, v, table) of the luma
    assert planar.layer[0][1:3] == ((2, 2) if quality < 95 else (1, 1))
    assert np.asarray(planar.convert("YCbCr"))[..., 1:].std() > 3  # really coloured


def test_planes_jpeg_carries_dpi_exif_icc_and_xmp(photo):
    grey, (cb, cr) = photo
    exif = Image.Exif()
    exif[0x013B] = "A. Photographer"
    exif[0x0112] = 6
    meta = {"dpi": (600.0, 600.0), "exif": exif.tobytes()}
    data = encode_jpeg_ycbcr(ycbcr_planes(grey, cb, cr, half_chroma=True), OutputSection(), meta, Provenance("lite@abc", "/in/scan.jpg"))
    im = _decode(data)
    assert im.info["dpi"] == pytest.approx((600, 600), abs=0.1)
    out = im.getexif()
    assert out[0x013B] == "A. Photographer" and out.get(0x0112, 1) == 1
    assert out[0x0131].startswith("colorize-batch ") and "machine-generated" in out[0x010E]
    icc = ImageCms.ImageCmsProfile(io.BytesIO(im.info["icc_profile"]))
    assert "sRGB" in ImageCms.getProfileDescription(icc)
    xmp = im.info["xmp"].decode()
    assert "compositeWithTrainedAlgorithmicMedia" in xmp and "/in/scan.jpg" in xmp


GUARDED_ENCODE = r"""
import ctypes, mmap, sys
import numpy as np
from colorize_batch.config import OutputSection
from colorize_batch.encoding import encode_jpeg_ycbcr
from colorize_batch.recombination import YCbCrPlanes

libc, page, held = ctypes.CDLL(None, use_errno=True), mmap.PAGESIZE, []

def guarded(array):
    # a copy of array that ends exactly where an unreadable page begins: one byte read past it is a segfault
    pages = (array.nbytes + page - 1) // page + 1
    memory = mmap.mmap(-1, pages * page)
    start = ctypes.addressof((ctypes.c_char * (pages * page)).from_buffer(memory))
    assert libc.mprotect(ctypes.c_void_p(start + (pages - 1) * page), page, 0) == 0
    view = np.frombuffer((ctypes.c_char * array.nbytes).from_address(start + (pages - 1) * page - array.nbytes), np.uint8)
    held.append(memory)
    view = view.reshape(array.shape)
    view[...] = array
    return view

rng = np.random.default_rng(0)
for height, width in [(675, 500), (17, 32), (32, 17), (673, 881)]:
    for quality in (90, 95):  # 4:2:0 and 4:4:4
        side = ((height + 1) // 2, (width + 1) // 2) if quality < 95 else (height, width)
        planes = [guarded(rng.integers(0, 256, shape, dtype=np.uint8)) for shape in ((height, width), side, side)]
        data = encode_jpeg_ycbcr(YCbCrPlanes(*planes), OutputSection(jpeg_quality=quality, metadata=False))
        print(height, width, quality, len(data), flush=True)
"""


def test_a_jpeg_of_odd_size_is_encoded_without_reading_past_the_luma_plane():
    """libjpeg-turbo reads a 4:2:0 luma plane padded to even size: handed a plane of an odd-sized
    photo as it is, it read past its end, and a run over archive_bw died of SIGSEGV about every
    other time. Each plane here ends at an unreadable page, so any read past it kills the child."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", GUARDED_ENCODE], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"the encoder read past a plane (exit {proc.returncode}): {proc.stderr[-500:]}"
    assert len(proc.stdout.splitlines()) == 8
