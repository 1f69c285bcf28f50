"""Image encoders: Pillow encode with metadata, and the 16-bit PNG / TIFF and YCbCr JPEG writers.

Outputs carry the source's EXIF (orientation reset), DPI, an sRGB ICC profile and provenance
(:class:`Provenance`: XMP whose creator tool is what ``safe_files.OWN_MARK`` recognises) marking them as machine-colorized derivatives.
Encoders return bytes; ``safe_files`` puts them on disk.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING
from xml.sax.saxutils import escape, quoteattr

import numpy as np
from PIL import Image, ImageCms, PngImagePlugin

from . import __version__
from .config import OutputSection
from .names import display
from .safe_files import WriteError

if TYPE_CHECKING:
    from .recombination import YCbCrPlanes

PIL_FORMAT = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF", ".bmp": "BMP", ".webp": "WEBP"}
DIGITAL_SOURCE_TYPE = "http://cv.iptc.org/newscodes/digitalsourcetype/compositeWithTrainedAlgorithmicMedia"
TAG_SOFTWARE, TAG_DESCRIPTION, TAG_XMP, TAG_ORIENTATION = 0x0131, 0x010E, 700, 0x0112


@dataclass(frozen=True)
class Provenance:
    model_id: str
    source: str  # path of the source file, as given

    @property
    def software(self) -> str:
        return f"colorize-batch {__version__}"

    @property
    def description(self) -> str:
        return f"Colorized by colorize-batch {__version__}, model {self.model_id}; colours are machine-generated"

    def xmp(self) -> bytes:
        packet = (
            '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
            '<x:xmpmeta xmlns:x="adobe:ns:meta/">\n'
            ' <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">\n'
            '  <rdf:Description rdf:about=""\n'
            '    xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/"\n'
            '    xmlns:xmpMM="http://ns.adobe.com/xap/1.0/mm/"\n'
            '    xmlns:stRef="http://ns.adobe.com/xap/1.0/sType/ResourceRef#"\n'
            '    xmlns:xmp="http://ns.adobe.com/xap/1.0/"\n'
            '    xmlns:dc="http://purl.org/dc/elements/1.1/"\n'
            f"    Iptc4xmpExt:DigitalSourceType={quoteattr(DIGITAL_SOURCE_TYPE)}\n"
            f"    xmp:CreatorTool={quoteattr(self.software)}>\n"
            f"   <xmpMM:DerivedFrom stRef:filePath={quoteattr(display(self.source))}/>\n"
            f'   <dc:description><rdf:Alt><rdf:li xml:lang="x-default">{escape(self.description)}</rdf:li></rdf:Alt></dc:description>\n'
            "  </rdf:Description>\n"
            " </rdf:RDF>\n"
            "</x:xmpmeta>\n"
            '<?xpacket end="w"?>'
        )
        return packet.encode("utf-8")


ICC_DATE = struct.pack(">6H", 2024, 1, 1, 0, 0, 0)  # fixed: LittleCMS stamps the time of creation


@lru_cache(maxsize=1)
def srgb_icc() -> bytes:
    """LittleCMS's sRGB profile with a fixed creation date, so the same input gives the same bytes."""
    icc = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    icc[24:36] = ICC_DATE  # header dateTimeNumber; the profile ID (bytes 84-99) is left unset (zero)
    return bytes(icc)


def output_format(dest: Path) -> str:
    try:
        return PIL_FORMAT[dest.suffix.lower()]
    except KeyError:
        raise WriteError(f"{dest}: no encoder for suffix {dest.suffix!r}") from None


def _exif(meta: dict, prov: Provenance | None) -> Image.Exif:
    exif = Image.Exif()
    if meta.get("exif"):
        exif.load(meta["exif"])
    if TAG_ORIENTATION in exif:
        exif[TAG_ORIENTATION] = 1
    if prov is not None:
        exif[TAG_SOFTWARE] = prov.software
        exif[TAG_DESCRIPTION] = prov.description
    return exif


def encode(rgb: Image.Image | np.ndarray, fmt: str, opts: OutputSection, meta: dict | None = None, prov: Provenance | None = None) -> bytes:
    """Encode an RGB image (Pillow, or an ``(H, W, 3)`` uint8 array) in format ``fmt`` with metadata."""
    meta = meta or {}
    im = rgb if isinstance(rgb, Image.Image) else Image.fromarray(rgb, "RGB")
    kwargs: dict = {}
    if opts.metadata:
        exif = _exif(meta, prov)
        if fmt != "BMP":
            kwargs["icc_profile"] = srgb_icc()
        if meta.get("dpi"):
            kwargs["dpi"] = meta["dpi"]
        if fmt in ("JPEG", "WEBP", "PNG"):
            kwargs["exif"] = exif.tobytes()
        if prov is not None and fmt in ("JPEG", "WEBP"):
            kwargs["xmp"] = prov.xmp()
        if fmt == "PNG" and prov is not None:
            info = PngImagePlugin.PngInfo()
            info.add_itxt("XML:com.adobe.xmp", prov.xmp().decode("utf-8"), zip=False)
            kwargs["pnginfo"] = info
        if fmt == "TIFF":  # Pillow writes top-level tags only: the Exif/GPS sub-IFDs are dropped
            for sub_ifd in (0x8769, 0x8825):
                if sub_ifd in exif:
                    del exif[sub_ifd]
            if prov is not None:
                exif[TAG_XMP] = prov.xmp()
            kwargs["exif"] = exif
    if fmt == "JPEG":
        kwargs.update(quality=opts.jpeg_quality, subsampling=2 if jpeg_half_chroma(opts) else 0)
    elif fmt == "PNG":
        kwargs["compress_level"] = opts.png_compress_level
    elif fmt == "TIFF":
        kwargs["compression"] = {"none": None, "lzw": "tiff_lzw", "deflate": "tiff_adobe_deflate", "jpeg": "jpeg"}[opts.tiff_compression]
    elif fmt == "WEBP":
        kwargs["quality"] = opts.jpeg_quality
    buf = io.BytesIO()
    im.save(buf, fmt, **kwargs)
    return buf.getvalue()


def jpeg_half_chroma(opts: OutputSection) -> bool:
    """JPEG outputs store chroma at half size (4:2:0) below quality 95, full size (4:4:4) from 95."""
    return opts.jpeg_quality < 95


def _jpeg_segment(marker: int, payload: bytes) -> bytes:
    if len(payload) > 65533:
        raise ValueError(f"JPEG APP{marker - 0xE0} segment too long ({len(payload)} bytes)")
    return bytes((0xFF, marker)) + struct.pack(">H", len(payload) + 2) + payload


def _with_jpeg_metadata(jpeg: bytes, meta: dict, prov: Provenance | None) -> bytes:
    """Add EXIF, sRGB ICC, XMP and the JFIF density (DPI) to a bare JFIF stream from simplejpeg."""
    if jpeg[:4] != b"\xff\xd8\xff\xe0" or jpeg[6:11] != b"JFIF\0":
        raise ValueError("the JPEG encoder did not start with a JFIF header")
    app0_end = 4 + struct.unpack(">H", jpeg[4:6])[0]
    app0 = bytearray(jpeg[4:app0_end])
    if meta.get("dpi"):  # JFIF density: units 1 = dots per inch, then X and Y density
        xdpi, ydpi = (min(65535, max(1, round(d))) for d in meta["dpi"][:2])
        app0[9:14] = struct.pack(">BHH", 1, xdpi, ydpi)
    segments = [_jpeg_segment(0xE1, _exif(meta, prov).tobytes()), _jpeg_segment(0xE2, b"ICC_PROFILE\0\x01\x01" + srgb_icc())]
    if prov is not None:
        segments.append(_jpeg_segment(0xE1, b"http://ns.adobe.com/xap/1.0/\0" + prov.xmp()))
    return b"\xff\xd8\xff\xe0" + bytes(app0) + b"".join(segments) + jpeg[app0_end:]


def _luma_for_turbojpeg(y: np.ndarray, half_chroma: bool) -> np.ndarray:
    """The luma plane as libjpeg-turbo reads it. For 4:2:0 it reads a plane of even width and
    height (``tjPlaneWidth``/``tjPlaneHeight``): one byte past each row of an odd width and one row
    past an odd height, so past the end of an array of exactly the photo's size, a segfault
    whenever that crosses into an unmapped page (about every other run over a folder of odd-sized
    JPEGs). So an odd plane is handed over as a view into a copy padded by one edge-replicated row
    and/or column (libjpeg's own padding): every byte it reads is ours, and the JPEG keeps the
    photo's size. 4:4:4 reads the plane as it is."""
    height, width = y.shape
    if not half_chroma or (height % 2 == 0 and width % 2 == 0):
        return y
    return np.pad(y, ((0, height % 2), (0, width % 2)), mode="edge")[:height, :width]


def encode_jpeg_ycbcr(ycc: YCbCrPlanes, opts: OutputSection, meta: dict | None = None, prov: Provenance | None = None) -> bytes:
    """JPEG straight from YCbCr planes: no RGB image is ever made.

    simplejpeg (libjpeg-turbo) encodes the planes as they are: full-size luma (the scan's own
    grey levels) and chroma at half size (4:2:0) or full size (4:4:4). Pillow can only encode
    an RGB or YCbCr image with full-size chroma, which costs an upsample, a merge, a colour
    conversion and the encoder's own downsampling, about 4x the time on a 1024x768 image.
    """
    jpeg = jpeg_from_planes(ycc, opts.jpeg_quality)
    return _with_jpeg_metadata(jpeg, meta or {}, prov) if opts.metadata else jpeg


def jpeg_from_planes(ycc: YCbCrPlanes, quality: int) -> bytes:
    """A bare JFIF stream from the planes (simplejpeg, libjpeg-turbo), chroma subsampling as the
    planes' sizes say; the one place that calls the encoder (``run``'s outputs, ``review``'s previews)."""
    import simplejpeg

    luma = _luma_for_turbojpeg(ycc.y, half_chroma=ycc.cb.shape != ycc.y.shape)
    return simplejpeg.encode_jpeg_yuv_planes(luma, ycc.cb, ycc.cr, quality=quality)


def wants_16_bit(fmt: str, opts: OutputSection, source_bits: int) -> bool:
    """16-bit output only for PNG/TIFF, when asked (16) or when the source was 16-bit (same)."""
    if fmt not in ("PNG", "TIFF"):
        return False
    return opts.bit_depth == 16 or (opts.bit_depth == "same" and source_bits == 16)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)


def encode_png16(rgb16: np.ndarray, opts: OutputSection, meta: dict | None = None, prov: Provenance | None = None) -> bytes:
    """48-bit RGB PNG (Pillow cannot write one), with ICC, DPI, EXIF and XMP chunks."""
    meta = meta or {}
    height, width, _ = rgb16.shape
    chunks = [_png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0))]
    if opts.metadata:
        chunks.append(_png_chunk(b"iCCP", b"sRGB\0\0" + zlib.compress(srgb_icc())))
        if meta.get("dpi"):
            ppm = [round(d / 0.0254) for d in meta["dpi"][:2]]
            chunks.append(_png_chunk(b"pHYs", struct.pack(">IIB", ppm[0], ppm[1], 1)))
        exif = _exif(meta, prov).tobytes()
        chunks.append(_png_chunk(b"eXIf", exif[6:] if exif.startswith(b"Exif\0\0") else exif))
        if prov is not None:
            chunks.append(_png_chunk(b"iTXt", b"XML:com.adobe.xmp\0\0\0\0\0" + prov.xmp()))
    rows = np.zeros((height, 1 + width * 6), dtype=np.uint8)  # filter byte 0 + big-endian samples
    rows[:, 1:] = rgb16.astype(">u2").reshape(height, width * 3).view(np.uint8)
    chunks.append(_png_chunk(b"IDAT", zlib.compress(rows.tobytes(), opts.png_compress_level)))
    chunks.append(_png_chunk(b"IEND", b""))
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunks)


def encode_tiff16(rgb16: np.ndarray, opts: OutputSection, meta: dict | None = None, prov: Provenance | None = None) -> bytes:
    """48-bit RGB TIFF through tifffile (Pillow cannot write one), with ICC, DPI and XMP."""
    import tifffile

    meta = meta or {}
    # tifffile writes LZW and JPEG only with the optional imagecodecs package: 16-bit TIFFs
    # use lossless deflate instead (readable by every TIFF reader).
    compression = None if opts.tiff_compression == "none" else "zlib"
    kwargs: dict = {"photometric": "rgb", "compression": compression, "metadata": None}
    if opts.metadata:
        extratags = [(34675, "B", len(srgb_icc()), srgb_icc(), True)]
        if prov is not None:
            kwargs.update(software=prov.software, description=prov.description)
            xmp = prov.xmp()
            extratags.append((TAG_XMP, "B", len(xmp), xmp, True))
        kwargs["extratags"] = extratags
        if meta.get("dpi"):
            kwargs.update(resolution=tuple(meta["dpi"][:2]), resolutionunit="INCH")
    buf = io.BytesIO()
    tifffile.imwrite(buf, rgb16, **kwargs)
    return buf.getvalue()


