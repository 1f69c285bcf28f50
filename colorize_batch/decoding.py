"""Decoding: open one image file with Pillow and turn it into what the pipeline needs.

For every input this yields the full-resolution grey levels (uint8, or uint16 for 16-bit
scans), the small square the network sees, a colour statistic for RGB sources, and the
metadata worth carrying to the output. Failures become :class:`DecodeError` with a short
reason; the caller reports them with the file's path.

:class:`~colorize_batch.batch_transport.DecodeDataset` runs :func:`decode` inside torch
``DataLoader`` worker processes and packs the results for the trip to the engine.
"""

from __future__ import annotations

import io
import math
import os
import re
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageCms, ImageFile, PngImagePlugin, TiffImagePlugin, UnidentifiedImageError

from .color import rgb_to_lab

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated scan is reported, never half-coloured

GREY_16_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}
ALPHA_MODES = {"LA", "La", "RGBA", "RGBa", "PA"}
CHROMA_THUMB = 64
# A PNG's compressed text and ICC chunks (zTXt, iTXt, iCCP) may inflate to at most this much each, and
# all of them together to PNG_TEXT_TOTAL. Pillow's 1 MiB per chunk refuses real scans (an XMP packet
# holding Photoshop's edit history, a large ICC profile) and would fail the whole photo for its
# metadata; a chunk beyond this is a decompression bomb and fails the photo, saying so.
PNG_TEXT_CHUNK = 32 * 2**20
PNG_TEXT_TOTAL = 64 * 2**20
PngImagePlugin.MAX_TEXT_CHUNK = PNG_TEXT_CHUNK
PngImagePlugin.MAX_TEXT_MEMORY = PNG_TEXT_TOTAL
ANIMATED_FORMATS = {"GIF", "WEBP", "PNG"}  # frames of one animation (TIFF pages: input.tiff_pages; MPO: previews)


class DecodeError(Exception):
    """The file cannot be used as an input; the message is the reason, without the path."""


@dataclass
class Decoded:
    grey: np.ndarray  # (H, W) uint8, or uint16 when bits == 16
    net_input: np.ndarray  # (size, size) uint8
    bits: int = 8
    chroma: float | None = None  # colour spread of RGB sources (Lab units), None for grey modes
    mode: str = "L"
    meta: dict = field(default_factory=dict)  # exif (bytes), dpi, source format, pages
    notes: list[str] = field(default_factory=list)  # decoder warnings and damaged metadata, for the report

    @property
    def levels(self) -> int:
        return 1 << self.bits


def chroma_spread(rgb: np.ndarray) -> float:
    """How much colour varies across an RGB image, in Lab ab units.

    A grey scan gives ~0; a sepia or cyanotype toned scan has colour, but one hue, so its
    ab values barely spread (low); a colour photograph spreads widely. Standard deviation
    of (a, b) around their mean: sqrt(var(a) + var(b)).
    """
    t = torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1).float().div_(255)
    lab = rgb_to_lab(t)
    return float(lab[1:].flatten(1).var(dim=1, unbiased=False).sum().sqrt())


def _flatten_alpha(im: Image.Image) -> Image.Image:
    rgba = im.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def _cmyk_to_rgb(im: Image.Image, notes: list[str]) -> Image.Image:
    icc = im.info.get("icc_profile")
    if icc:
        try:
            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            converted = ImageCms.profileToProfile(im, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
            if converted is not None:
                return converted
        except Exception as exc:  # noqa: BLE001 - a damaged profile costs the colour management, not the photo
            notes.append(f"damaged ICC profile ignored ({type(exc).__name__}: {exc})")
    return im.convert("RGB")


def min_is_white(im: Image.Image) -> bool:
    """Whether ``im`` (as opened, before turning) is a 16-bit grey TIFF stored MinIsWhite (Photometric 0:
    level 0 is white). Pillow inverts 1- and 8-bit MinIsWhite pages while decoding, 16-bit ones not."""
    return im.format == "TIFF" and im.mode.startswith("I;16") and getattr(im, "tag_v2", {}).get(262) == 0


def grey16(im: Image.Image, inverted: bool = False) -> np.ndarray:
    """The 16-bit levels of a 16- or 32-bit grey image (modes I;16*, I), ``inverted`` for a MinIsWhite
    TIFF (:func:`min_is_white`). A 32-bit level outside 0-65535 (a signed TIFF's negatives, a 32-bit
    integer TIFF's large values) is refused, never clipped: clipped, the photo would come out washed out."""
    arr = np.asarray(im)
    if arr.dtype != np.uint16:
        low, high = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
        if low < 0 or high > 65535:
            raise DecodeError(f"integer grey levels {low}..{high} are outside 0-65535 (signed or 32-bit samples)")
        arr = arr.astype(np.uint16)
    return 65535 - arr if inverted else arr


def _to_grey(im: Image.Image, notes: list[str], inverted: bool = False) -> tuple[np.ndarray, int, float | None]:
    """Pillow image (already loaded, oriented) -> grey array, bit depth, chroma statistic; ``inverted``:
    16-bit levels stored MinIsWhite (:func:`min_is_white` of the image as opened)."""
    mode = im.mode
    if mode in GREY_16_MODES:
        return grey16(im, inverted), 16, None
    if mode == "F":
        return _float_grey(np.asarray(im), notes), 16, None
    if mode == "L":
        return np.asarray(im), 8, None
    if mode == "1":
        return np.asarray(im.convert("L")), 8, None
    if mode == "P":
        im = _flatten_alpha(im) if "transparency" in im.info else im.convert("RGB")
    elif mode in ALPHA_MODES:
        im = _flatten_alpha(im)
    elif mode == "CMYK":
        im = _cmyk_to_rgb(im, notes)
    elif mode in ("YCbCr", "LAB", "HSV"):
        im = im.convert("RGB")
    elif mode != "RGB":
        raise DecodeError(f"unsupported image mode {mode}")
    thumb = im.copy()
    thumb.thumbnail((CHROMA_THUMB, CHROMA_THUMB))
    chroma = chroma_spread(np.asarray(thumb))
    return np.asarray(im.convert("L")), 8, chroma


def _float_grey(levels: np.ndarray, notes: list[str]) -> np.ndarray:
    """32-bit float grey (mode F: HDR scanners, scientific TIFF) -> 16-bit levels: 0-1 is the
    usual range (scaled), 0-65535 is read as 16-bit levels; anything else is refused."""
    if not np.isfinite(levels).all():
        raise DecodeError("32-bit float grey with NaN or infinite levels")
    low, high = (float(levels.min()), float(levels.max())) if levels.size else (0.0, 0.0)
    if low < 0 or high > 65535:
        raise DecodeError(f"32-bit float grey levels {low:g}..{high:g} are outside 0-1 and 0-65535")
    scale = 65535.0 if high <= 1.0 else 1.0
    notes.append(f"32-bit float grey (levels {low:g}..{high:g}) read as 16-bit")
    return np.rint(levels.astype(np.float64) * scale).astype(np.uint16)


def _jpeg_chroma(path: Path, orientation: int) -> float:
    """Colour statistic of an RGB JPEG from a 1/8-scale draft decode (cheap), turned upright by
    the ``orientation`` already read (its EXIF is not parsed again: a damaged block would fail here)."""
    with Image.open(path) as im:
        im.draft("RGB", (CHROMA_THUMB, CHROMA_THUMB))
        im = im.convert("RGB")
        if orientation in ORIENTATION_TRANSPOSE:
            im = im.transpose(ORIENTATION_TRANSPOSE[orientation])
        im.thumbnail((CHROMA_THUMB, CHROMA_THUMB))
        return chroma_spread(np.asarray(im))


def _jpeg_luma(path: Path, orientation: int) -> np.ndarray | None:
    """The luma (grey levels) of a grey or YCbCr JPEG, turned upright.

    Decoded by simplejpeg (libjpeg-turbo's TurboJPEG API): the same pixels as Pillow's
    luma-only decode, in about half the time, since Pillow copies the image through its own
    line buffers. In strict mode libjpeg's warnings are errors: a truncated file, or one whose
    image data is damaged (a segment cut short, a bad code: libjpeg fills the rest with grey), is
    refused, never grey-filled; for any other complaint (old scanners often leave harmless
    "extraneous bytes before marker") ``None`` is returned and Pillow decodes the file.
    """
    import simplejpeg

    try:
        grey = simplejpeg.decode_jpeg(path.read_bytes(), colorspace="GRAY", strict=True)[..., 0]
    except ValueError as exc:
        if "Premature end of JPEG file" in str(exc):
            raise DecodeError(f"truncated file: {exc}") from None
        if JPEG_DAMAGE.search(str(exc)):
            raise DecodeError(f"damaged image data: {exc}") from None
        return None
    if orientation in ORIENTATION_TRANSPOSE:
        grey = np.asarray(Image.fromarray(grey).transpose(ORIENTATION_TRANSPOSE[orientation]))
    return grey


# libjpeg's warnings about the image data itself (JWRN_HIT_MARKER, JWRN_HUFF_BAD_CODE, JWRN_ARITH_BAD_CODE,
# JWRN_MUST_RESYNC): what follows the damage is lost and comes out grey
JPEG_DAMAGE = re.compile(r"premature end of data segment|bad (huffman|arithmetic) code|instead of RST", re.IGNORECASE)


def to_8bit(grey16: np.ndarray) -> np.ndarray:
    """16-bit levels scaled (rounded, never clipped) to 8-bit."""
    return ((grey16.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def network_input(grey: np.ndarray, size: int) -> np.ndarray:
    """Square ``size x size`` uint8 view of the image for the network (aspect is not kept)."""
    if grey.dtype == np.uint16:
        grey = to_8bit(grey)
    im = Image.fromarray(grey)
    if im.size != (size, size):
        im = im.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return np.array(im)


# Descriptive TIFF/EXIF tags carried to outputs. Structural tags (strip offsets, bit depth,
# compression...) are dropped: they describe the source's encoding, not the photograph.
KEPT_TAGS = (0x010E, 0x010F, 0x0110, 0x0112, 0x0131, 0x0132, 0x013B, 0x8298)
KEPT_IFDS = (0x8769, 0x8825)  # Exif (capture fields) and GPS sub-IFDs
INTEROP_IFD = 0xA005  # in the Exif IFD: the offset of the Interoperability IFD in the source's block


def _sub_ifd(src: Image.Exif, ifd: int) -> dict:
    try:
        sub = dict(src.get_ifd(ifd))
    except (KeyError, ValueError, TypeError, OSError):
        return {}
    return {k: v for k, v in sub.items() if not isinstance(v, (bytes, tuple)) or len(v) < 4096}


def _clean_exif(src: Image.Exif) -> Image.Exif:
    out = Image.Exif()
    for tag in KEPT_TAGS:
        if tag in src:
            out[tag] = src[tag]
    for ifd in KEPT_IFDS:
        sub = _sub_ifd(src, ifd)
        if INTEROP_IFD in sub:  # copied as a number it would point into nothing of the new, shorter block
            interop = _sub_ifd(src, INTEROP_IFD)
            if interop:
                sub[INTEROP_IFD] = interop  # written as its own IFD
            else:
                del sub[INTEROP_IFD]
        if sub:
            out[ifd] = sub
    return out


def _read_exif(im: Image.Image, notes: list[str]) -> Image.Exif:
    """The image's EXIF, or an empty one if the block is damaged: that costs the metadata
    (with a note in the report), never the photograph."""
    try:
        exif = im.getexif()
        exif.get(0x0112)  # parsing is lazy: make it fail here if it fails
        raw = im.info.get("exif")
        if not len(exif) and isinstance(raw, bytes) and raw.strip(b"\0"):
            Image.Exif().load(raw)  # Pillow hid a failure at open (e.g. no TIFF header): name it in the note
        return exif
    except Exception as exc:  # noqa: BLE001 - struct.error, SyntaxError("not a TIFF file"), ...
        notes.append(f"damaged EXIF block ignored ({type(exc).__name__}: {exc})")
        return Image.Exif()


MAX_DPI = 1_000_000.0  # beyond any scanner: a larger resolution is damage


def _dpi(info: dict, notes: list[str]) -> tuple[float, float] | None:
    """The resolution to carry to the output, if it is one: two finite numbers in (0, MAX_DPI]."""
    dpi = info.get("dpi")
    if not dpi:
        return None
    try:
        x, y = (float(d) for d in dpi[:2])
        if all(math.isfinite(d) and 0 < d <= MAX_DPI for d in (x, y)):
            return x, y
    except Exception:  # noqa: BLE001 - TypeError, ValueError, ZeroDivisionError of a damaged rational, ...
        pass
    notes.append(f"damaged resolution (DPI) ignored ({dpi!r:.80})")
    return None


def _metadata(im: Image.Image, exif: Image.Exif, notes: list[str]) -> dict:
    meta: dict = {"format": im.format}
    # Pillow says 1 x 1 dpi for a TIFF without resolution tags (its old default): no resolution, not 1 dpi
    unset = im.format == "TIFF" and 282 not in getattr(im, "tag_v2", {})  # 282: XResolution
    dpi = None if unset else _dpi(im.info, notes)
    if dpi:
        meta["dpi"] = dpi
    try:
        exif = _clean_exif(exif)
    except Exception as exc:  # noqa: BLE001
        notes.append(f"damaged EXIF fields ignored ({type(exc).__name__}: {exc})")
        exif = Image.Exif()
    if len(exif):
        meta["exif"] = exif
    return meta


def _exif_bytes(exif: Image.Exif, notes: list[str]) -> bytes | None:
    """The cleaned EXIF as the output will carry it (orientation reset: it was applied to the
    pixels), or ``None`` with a note if a damaged field cannot be written back: checked here,
    the same way the writer loads and re-encodes it, so a damaged field never costs the output
    (and the writer, in the main process, never prints a decoder's warning about it)."""
    try:
        if 0x0112 in exif:
            exif[0x0112] = 1
        data = exif.tobytes()
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # "Corrupt EXIF data" is a damaged block too
            check = Image.Exif()
            check.load(data)
            check.tobytes()
        return data
    except Exception as exc:  # noqa: BLE001 - struct.error, TypeError, ValueError, ...
        notes.append(f"damaged EXIF fields ignored ({type(exc).__name__}: {exc})")
        return None


def _orientation(exif: Image.Exif) -> int:
    value = exif.get(0x0112, 1)
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _page_count(im: Image.Image, notes: list[str]) -> int:
    try:
        return int(getattr(im, "n_frames", 1))
    except Exception as exc:  # noqa: BLE001 - e.g. TypeError "Missing dimensions" from a later TIFF IFD
        notes.append(f"later pages unreadable, first page only ({type(exc).__name__}: {exc})")
        return 1


def decode(path: str | os.PathLike, size: int, page: int = 0, max_pixels: int | None = None) -> Decoded:
    """Open and decode one input file. Raises :class:`DecodeError` with the reason.

    ``max_pixels`` (default: Pillow's ``Image.MAX_IMAGE_PIXELS``) refuses larger images as
    decompression bombs; the guard is never switched off.
    """
    path = Path(path)
    saved_limit = Image.MAX_IMAGE_PIXELS
    if max_pixels is not None:
        Image.MAX_IMAGE_PIXELS = max_pixels
    limit = Image.MAX_IMAGE_PIXELS
    notes: list[str] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            decoded = _decode(path, size, page, notes)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        found = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
        raise DecodeError(f"decompression bomb guard: the image has {pixels}, more than input.max_pixels ({limit:,})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = saved_limit
    decoded.notes = notes + [f"{w.category.__name__}: {w.message}" for w in caught]
    return decoded


def decode_image(im: Image.Image, size: int) -> Decoded:
    """An image already in memory -> :class:`Decoded`, normalised as :func:`decode` does a file.

    EXIF orientation is applied (a no-op for an image already turned upright), 16-bit grey is
    kept, alpha is flattened on white, palette, 1-bit and CMYK are converted. A JPEG file read
    by :func:`decode` gives its luma straight from the decoder, which can differ by a level from
    Pillow's RGB decode converted to grey: pass the path to get exactly what ``run`` sees.
    """
    if not im.width or not im.height:
        raise DecodeError(f"an image of {im.width}x{im.height} pixels: nothing to colorize")
    notes: list[str] = []  # a damaged EXIF block costs the orientation, never the photograph
    orientation = _orientation(_read_exif(im, notes))
    inverted = min_is_white(im)
    try:  # a lazily opened file is read here: a truncated or damaged one fails as decode() fails it
        im.load()
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise DecodeError(f"cannot decode: {exc or type(exc).__name__}") from None
    turned_by_pillow = im.format == "TIFF" and 0x0112 not in getattr(im, "tag_v2", {})  # as in _decode
    upright = im.transpose(ORIENTATION_TRANSPOSE[orientation]) if orientation in ORIENTATION_TRANSPOSE and not turned_by_pillow else im
    grey, bits, chroma = _to_grey(upright, notes, inverted)
    grey = np.array(grey, copy=True, order="C")
    return Decoded(grey=grey, net_input=network_input(grey, size), bits=bits, chroma=chroma, mode=upright.mode)


ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def scrambled_by_pillow(im: Image.Image, orientation: int | None = None) -> bool:
    """Whether Pillow's own decoder would scramble this TIFF page: uncompressed strips under an
    Orientation that swaps the axes (Pillow 13 decodes them with the sizes swapped). Compressed ones
    go through libtiff and come out upright; :func:`libtiff_page` reads these that way too.
    ``orientation``: the EXIF orientation if the caller has read it already."""
    if im.format != "TIFF" or getattr(im, "tag_v2", {}).get(259, 1) != 1:
        return False
    return (_orientation(_read_exif(im, [])) if orientation is None else orientation) in (5, 6, 7, 8)


def libtiff_page(path: str | os.PathLike, page: int = 0) -> Image.Image:
    """One page of a TIFF decoded by libtiff (as Pillow decodes compressed TIFFs): loaded and upright,
    in whatever mode Pillow reads (MinIsWhite, palette, CMYK, alpha, bilevel, 16-bit)."""
    with _LIBTIFF_SWITCH:  # the API may decode in several threads: one flips the switch at a time
        saved = TiffImagePlugin.READ_LIBTIFF
        TiffImagePlugin.READ_LIBTIFF = True  # read as each page is set up (open, seek); another TIFF opened meanwhile
        try:                                 # is decoded by libtiff too, which reads every TIFF right
            with Image.open(path) as im:
                if page:
                    im.seek(page)
                im.load()
                return im.copy()
        finally:
            TiffImagePlugin.READ_LIBTIFF = saved


_LIBTIFF_SWITCH = threading.Lock()


def _decode(path: Path, size: int, page: int, notes: list[str]) -> Decoded:
    try:
        if path.stat().st_size == 0:
            raise DecodeError("empty file (0 bytes)")
        with Image.open(path) as im:
            fmt = im.format
            if page:
                im.seek(page)
            opened = im
            exif = _read_exif(im, notes)
            orientation = _orientation(exif)
            meta = _metadata(im, exif, notes)
            grey, jpeg_chroma = None, None
            if fmt == "JPEG" and im.mode in ("L", "RGB"):
                jpeg_chroma = _jpeg_chroma(path, orientation) if im.mode == "RGB" else None
                grey = _jpeg_luma(path, orientation)
                if grey is None:
                    im.draft("L", im.size)  # Pillow's luma-only decode instead
            if grey is not None:
                bits, mode, chroma = 8, "L", jpeg_chroma
            else:
                inverted = min_is_white(im)
                if scrambled_by_pillow(im, orientation):
                    im = libtiff_page(path, page)
                else:
                    im.load()
                    # Pillow >= 11 turns TIFFs upright while loading and drops the tag from tag_v2
                    if not (fmt == "TIFF" and 0x0112 not in im.tag_v2) and orientation in ORIENTATION_TRANSPOSE:
                        im = im.transpose(ORIENTATION_TRANSPOSE[orientation])
                grey, bits, chroma = _to_grey(im, notes, inverted)
                chroma, mode = chroma if jpeg_chroma is None else jpeg_chroma, im.mode
            pages = _page_count(opened, notes)  # after the pixels: counting seeks through every IFD
    except (DecodeError, Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise
    except UnidentifiedImageError:
        raise DecodeError("not an image (Pillow cannot identify the format)") from None
    except PermissionError:
        raise DecodeError("permission denied") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        msg = str(exc) or type(exc).__name__
        if "MAX_TEXT_CHUNK" in msg or "MAX_TEXT_MEMORY" in msg:
            msg = f"a metadata chunk inflates beyond {PNG_TEXT_CHUNK // 2**20} MiB ({PNG_TEXT_TOTAL // 2**20} MiB in all): decompression bomb guard"
        raise DecodeError(f"cannot decode: {msg}") from None
    except MemoryError:
        raise DecodeError("out of memory while decoding") from None
    except Exception as exc:  # noqa: BLE001 - any decoder bug (TypeError, struct.error, ...) is this file's failure
        raise DecodeError(f"cannot decode: {type(exc).__name__}: {exc}") from None
    meta["pages"] = pages
    if pages > 1 and fmt in ANIMATED_FORMATS:
        notes.append(f"animated {fmt}: {pages} frames, the first is colorized")
    if "exif" in meta:  # orientation was applied to the pixels: reset the tag
        exif_bytes = _exif_bytes(meta.pop("exif"), notes)
        if exif_bytes:
            meta["exif"] = exif_bytes
    if not grey.flags.writeable or not grey.flags.c_contiguous:
        grey = np.array(grey, copy=True, order="C")  # torch wants writable memory
    return Decoded(grey=grey, net_input=network_input(grey, size), bits=bits, chroma=chroma, mode=mode, meta=meta)
