"""gallery: thumbnails at the 8-bit levels decoding gives; one safe-path rule with hints."""

import numpy as np
import pytest
from PIL import Image

from colorize_batch.decoding import decode, to_8bit
from colorize_batch.gallery import THUMB_LONG_SIDE, ThumbJob, _safe_rel, make_thumbnail, thumbnail_image
from colorize_batch.hints import HintError, read_bundle, safe_relative


def _decoding_rendering(path, long_side=THUMB_LONG_SIDE):
    """What run reads of the file, as 8-bit (decoding.to_8bit), reduced like a thumbnail."""
    decoded = decode(path, 32)
    assert decoded.bits == 16
    im = Image.fromarray(to_8bit(decoded.grey))
    im.thumbnail((long_side, long_side), Image.Resampling.LANCZOS, reducing_gap=2.0)
    return np.asarray(im)


@pytest.mark.parametrize("kind", ["dark-32-bit-tiff", "16-bit-png"])
def test_16_bit_thumbnail_equals_decodings_8_bit_rendering(tmp_path, kind):
    rng = np.random.default_rng(3)
    if kind == "dark-32-bit-tiff":  # an underexposed scan: 16-bit levels all below 256 (mode I)
        levels = rng.integers(0, 256, (120, 90)).astype(np.int32)
        path = tmp_path / "dark.tif"
        Image.fromarray(levels, "I").save(path)
    else:  # a large 16-bit gradient with noise (mode I;16): reduced to the thumbnail size
        ramp = np.linspace(0, 65535, 700)[None, :] * np.linspace(0.2, 1, 500)[:, None]
        levels = np.clip(ramp + rng.normal(0, 300, ramp.shape), 0, 65535).astype(np.uint16)
        path = tmp_path / "ramp.png"
        Image.fromarray(levels).save(path)
    with Image.open(path) as im:
        assert im.mode in ("I", "I;16")
        small = thumbnail_image(im)
    assert small.mode == "L"
    assert np.array_equal(np.asarray(small), _decoding_rendering(path))
    # the JPEG on disk is that image (JPEG's own loss aside)
    result = make_thumbnail(ThumbJob(path, tmp_path / "thumbs" / "t.jpg"))
    assert result.made and result.thumb_size == small.size
    with Image.open(tmp_path / "thumbs" / "t.jpg") as written:
        diff = np.abs(np.asarray(written.convert("L"), dtype=int) - np.asarray(small, dtype=int))
    assert diff.mean() < 2


def test_gallery_and_hint_bundles_share_one_safe_path_rule():
    for name in ("a/b.jpg", "\\odd name.jpg", "x/..y.png"):  # '\' and '..y' are name characters
        assert _safe_rel(name) == safe_relative(name)
        assert set(read_bundle({"format": "colorize-batch-hints", "images": {name: {"points": []}}})) == {safe_relative(name)}
    for name in ("../evil.jpg", "/etc/passwd", "a/../../b", "", ".", "nul\x00.jpg", None):
        assert _safe_rel(name) is None
        with pytest.raises(HintError):
            safe_relative(name)
