import dataclasses
import io

import numpy as np
import pytest
import torch
from conftest import grey_image, save
from PIL import Image

from colorize_batch.decoding import DecodeError, decode, decode_image, network_input


def test_grey_jpeg_gives_full_res_grey_and_square_network_input(tmp_path):
    src = save(tmp_path / "a.jpg", Image.fromarray(grey_image(97, 61)), quality=95)
    d = decode(src, 64)
    assert d.grey.shape == (61, 97) and d.grey.dtype == np.uint8
    assert d.net_input.shape == (64, 64) and d.chroma is None


def test_16_bit_is_scaled_not_clipped(tmp_path):
    arr = np.array([[0, 256, 1000, 32768, 65535]] * 4, dtype=np.uint16)
    for name in ("a.tif", "a.png"):
        d = decode(save(tmp_path / name, Image.fromarray(arr)), 32)
        assert d.bits == 16 and d.grey.dtype == np.uint16 and d.grey.max() == 65535
    small = network_input(arr, 5)
    assert small.max() == 255 and 120 < small[0, 3] < 135  # 32768 -> ~128, not 255


def test_alpha_flattened_onto_white(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 3] = 0  # fully transparent black -> white
    rgba[:4, :, 3] = 255  # top half opaque black
    d = decode(save(tmp_path / "a.png", Image.fromarray(rgba, "RGBA")), 32)
    assert d.grey[6, 0] == 255 and d.grey[0, 0] == 0


def test_palette_one_bit_and_cmyk_modes(tmp_path):
    grey = Image.fromarray(grey_image(40, 30))
    d = decode(save(tmp_path / "p.png", grey.convert("P")), 32)
    assert d.grey.shape == (30, 40)
    d = decode(save(tmp_path / "b.png", grey.convert("1")), 32)
    assert set(np.unique(d.grey)) <= {0, 255}
    d = decode(save(tmp_path / "c.jpg", grey.convert("RGB").convert("CMYK")), 32)
    assert d.grey.shape == (30, 40)
    assert np.abs(d.grey.astype(int) - np.asarray(grey).astype(int)).mean() < 12


def test_exif_orientation_applied(tmp_path):
    arr = grey_image(80, 40)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: view rotated 90° clockwise
    src = save(tmp_path / "r.jpg", Image.fromarray(arr), exif=exif.tobytes(), quality=95)
    d = decode(src, 32)
    assert d.grey.shape == (80, 40)
    assert Image.Exif().load(d.meta["exif"]) is None or True
    exif_out = Image.Exif()
    exif_out.load(d.meta["exif"])
    assert exif_out[0x0112] == 1


def test_colour_statistic_tells_colour_from_sepia_and_grey(tmp_path):
    from skimage import data

    colour = decode(save(tmp_path / "colour.jpg", Image.fromarray(data.astronaut())), 32).chroma
    grey_rgb = decode(save(tmp_path / "greyrgb.jpg", Image.fromarray(grey_image()).convert("RGB")), 32).chroma
    from skimage.color import lab2rgb, rgb2lab

    L = rgb2lab(np.repeat(grey_image()[..., None], 3, 2) / 255.0)[..., :1]
    tint = np.concatenate([L, np.full_like(L, 6.0), np.full_like(L, 18.0)], axis=2)  # one warm hue
    sepia = (lab2rgb(tint) * 255).round().astype(np.uint8)
    sepia_c = decode(save(tmp_path / "sepia.png", Image.fromarray(sepia)), 32).chroma
    assert grey_rgb < 1.0 < colour and sepia_c < 6.0 < colour


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"", "empty file"),
        (b"this is a text file, not a photo", "not an image"),
    ],
)
def test_bad_files_give_reasons(tmp_path, content, reason):
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(DecodeError, match=reason):
        decode(path, 32)


def test_truncated_jpeg_is_an_error(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(grey_image(200, 200)).save(buf, "JPEG", quality=95)
    path = tmp_path / "trunc.jpg"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(DecodeError, match="truncated"):
        decode(path, 32)


def test_decompression_bomb_is_refused(tmp_path):
    path = save(tmp_path / "big.png", Image.new("L", (300, 300)))
    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = 10_000
    try:
        with pytest.raises(DecodeError, match="decompression bomb"):
            decode(path, 32)
    finally:
        Image.MAX_IMAGE_PIXELS = old


def test_unsupported_mode_is_an_error():
    # mode F (32-bit float grey) is read since session 12 (test_hostile5); RGBX still is not
    with pytest.raises(DecodeError, match="unsupported image mode RGBX"):
        decode_image(Image.new("RGBX", (4, 4)), 32)


@pytest.mark.parametrize("compression", [None, "tiff_lzw"])
def test_tiff_orientation_is_applied_once(tmp_path, compression):
    arr = np.zeros((40, 60), np.uint8)
    arr[0, 0], arr[0, 1], arr[1, 0] = 255, 128, 50
    exif = Image.Exif()
    exif[0x0112] = 6
    path = save(tmp_path / "o.tif", Image.fromarray(arr), exif=exif.tobytes(), compression=compression)
    upright = np.asarray(Image.fromarray(arr).transpose(Image.Transpose.ROTATE_270))
    d = decode(path, 32)
    assert np.array_equal(d.grey, upright)


def test_batches_are_packed_for_the_trip_and_unpacked_unchanged(tmp_path):
    from colorize_batch.batch_transport import DecodeDataset, collate_items, unpack_batch

    save(tmp_path / "a.png", Image.fromarray(grey_image(33, 17)))  # odd byte count before a 16-bit image
    save(tmp_path / "b.png", Image.fromarray(grey_image(20, 10).astype(np.uint16) * 257))
    (tmp_path / "c.jpg").write_bytes(b"not a jpeg")
    save(tmp_path / "d.jpg", Image.fromarray(grey_image(40, 30)))
    dataset = DecodeDataset(sorted(tmp_path.iterdir()), 16)
    items = [dataset[i] for i in range(len(dataset))]
    expected = [(it.grey.clone(), it.net.clone()) if not it.error else None for it in items]
    batch = collate_items([dataclasses.replace(it) for it in items])
    crossing = [v for v in vars(batch).values() if isinstance(v, torch.Tensor)]
    crossing += [v for it in batch.items for v in vars(it).values() if isinstance(v, torch.Tensor)]
    assert len(crossing) == 2  # two tensors cross, not six
    unpacked = unpack_batch(batch)
    assert [it.index for it in unpacked] == [0, 1, 2, 3] and unpacked[2].error
    for it, exp in zip(unpacked, expected):
        if exp is not None:
            assert it.grey.dtype == exp[0].dtype and torch.equal(it.grey, exp[0]) and torch.equal(it.net, exp[1])


def test_jpeg_with_harmless_junk_decodes_like_pillow(tmp_path):
    """libjpeg warns about bytes between the scan and the end marker; Pillow decodes such files."""
    buf = io.BytesIO()
    Image.fromarray(grey_image(64, 48)).save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    assert data.endswith(b"\xff\xd9")
    path = tmp_path / "junk.jpg"
    path.write_bytes(data[:-2] + b"\x00\x17\x2a" + data[-2:])
    with Image.open(path) as im:
        expected = np.asarray(im.convert("L"))
    d = decode(path, 32)
    assert d.grey.shape == (48, 64) and np.array_equal(d.grey, expected)
