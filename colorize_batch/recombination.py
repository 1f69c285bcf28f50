"""Recombination: predicted low-resolution ab + the ORIGINAL full-resolution grey -> sRGB.

The network sees a small square; its colour is upsampled to the image's own size and
joined with the input's own grey levels, so the output keeps every detail of the scan.
Two methods, chosen by ``output.recombination``:

- ``fast`` (default): the colour is turned into YCbCr chroma at the network's resolution
  (exact Lab maths on the small square), the Cb/Cr planes are upsampled, and the scan's own
  grey levels are the luma Y. This is how JPEG itself stores colour; it costs a few ms per
  megapixel in Pillow's C code, and converting the output back to grey (luma) returns the
  input's grey levels exactly. Lab L differs from the exact method by a fraction of a unit
  on average (tested).
- ``exact``: per-pixel Lab -> sRGB at full resolution with the predicted ab bilinearly
  upsampled and L taken from the input's grey levels; out-of-gamut colours are desaturated
  towards their own grey so Lab L is kept. Used for 16-bit outputs. Done in strips, so a
  100-megapixel scan needs only a strip's worth of float32 memory.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from PIL import Image

from .color import fit_gamut, grey_tables, linear_from_f, linear_to_srgb, linear_to_srgb8
from .decoding import to_8bit

DEFAULT_STRIP_PIXELS = 1_000_000


def _vertical_taps(out_rows: int, in_rows: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source rows and weights of bilinear (align_corners=False) resampling, as torch does it."""
    scale = in_rows / out_rows
    src = ((torch.arange(out_rows, device=device, dtype=torch.float32) + 0.5) * scale - 0.5).clamp_min(0)
    i0 = src.floor().long().clamp_max(in_rows - 1)
    i1 = (i0 + 1).clamp_max(in_rows - 1)
    return i0, i1, (src - i0).unsqueeze(-1)


def grey_ab_to_linear(grey: torch.Tensor, ab: torch.Tensor, levels: int = 256) -> torch.Tensor:
    """Grey levels ``(..., h, w)`` + ab ``(..., 2, h, w)`` -> linear RGB ``(..., 3, h, w)`` in gamut.

    Lightness comes from the grey level through lookup tables; out-of-gamut colours are
    desaturated towards their own grey (:func:`~colorize_batch.color.fit_gamut`).
    """
    y_lut, f_lut = grey_tables(levels, str(grey.device))
    index = grey.long()
    y, fy = y_lut[index], f_lut[index]
    return fit_gamut(linear_from_f(fy, y, ab.select(-3, 0), ab.select(-3, 1)), y)


def colorize_full(
    grey: torch.Tensor,
    ab: torch.Tensor,
    levels: int = 256,
    out_dtype: torch.dtype = torch.uint8,
    chroma_gain: float = 1.0,
    strip_pixels: int = DEFAULT_STRIP_PIXELS,
) -> torch.Tensor:
    """Join full-resolution grey levels with predicted ab; return sRGB ``(H, W, 3)``.

    grey: ``(H, W)`` integer levels (uint8, or int32 holding 16-bit values with ``levels=65536``).
    ab: ``(2, h, w)`` float, in Lab units (not normalised), any small size.
    out_dtype: ``torch.uint8`` (0..255, via a lookup table) or ``torch.int32`` holding
    16-bit values (0..65535, exact formula).
    """
    height, width = grey.shape
    ab = ab.float() * chroma_gain if chroma_gain != 1.0 else ab.float()
    out = torch.empty((height, width, 3), dtype=out_dtype, device=grey.device)
    rows_per_strip = max(1, strip_pixels // max(width, 1))
    wide = F.interpolate(ab.unsqueeze(0), size=(ab.shape[1], width), mode="bilinear", align_corners=False)[0]
    i0, i1, t = _vertical_taps(height, ab.shape[1], ab.device)
    for start in range(0, height, rows_per_strip):
        stop = min(height, start + rows_per_strip)
        ab_rows = torch.lerp(wide[:, i0[start:stop], :], wide[:, i1[start:stop], :], t[start:stop])
        lin = grey_ab_to_linear(grey[start:stop], ab_rows, levels)
        if out_dtype == torch.uint8:
            out[start:stop] = linear_to_srgb8(lin).permute(1, 2, 0)
        else:
            out[start:stop] = (linear_to_srgb(lin) * 65535).round_().to(out_dtype).permute(1, 2, 0)
    return out


def chroma_planes(grey_small: torch.Tensor, ab: torch.Tensor, chroma_gain: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact colour of the network's squares as 8-bit JFIF Cb, Cr planes (batched, on ab's device).

    grey_small: ``(..., h, w)`` uint8 levels the network saw; ab: ``(..., 2, h, w)`` Lab units.
    """
    ab = ab.float() * chroma_gain if chroma_gain != 1.0 else ab.float()
    rgb = linear_to_srgb8(grey_ab_to_linear(grey_small, ab)).float()
    r, g, b = rgb.unbind(-3)
    cb = 128 - 0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 128 + 0.5 * r - 0.418688 * g - 0.081312 * b
    return cb.round().clamp(0, 255).to(torch.uint8), cr.round().clamp(0, 255).to(torch.uint8)


def colorize_fast(grey: Image.Image, cb: torch.Tensor, cr: torch.Tensor) -> Image.Image:
    """Full-resolution grey (Pillow mode L) as luma + small Cb/Cr planes upsampled -> RGB image."""
    size = grey.size
    planes = [Image.fromarray(p.cpu().numpy()).resize(size, Image.Resampling.BILINEAR) for p in (cb, cr)]
    return Image.merge("YCbCr", (grey, *planes)).convert("RGB")


def recombine(grey: torch.Tensor, ab: torch.Tensor, planes: tuple[torch.Tensor, torch.Tensor] | None = None,
              bits: int = 8, method: str = "fast", sixteen_bit_out: bool = False,
              chroma_gain: float = 1.0) -> Image.Image | torch.Tensor:
    """One image's output: a Pillow RGB image, or an ``(H, W, 3)`` int32 tensor of 16-bit values.

    ``planes`` are the image's (Cb, Cr) from :func:`chroma_planes`, needed by the fast method.
    """
    levels = 65536 if bits == 16 else 256
    if sixteen_bit_out:
        return colorize_full(grey, ab, levels=levels, out_dtype=torch.int32, chroma_gain=chroma_gain)
    if method == "exact":
        return Image.fromarray(colorize_full(grey, ab, levels=levels, chroma_gain=chroma_gain).numpy(), "RGB")
    if planes is None:
        raise ValueError("the fast recombination needs the chroma planes")
    grey8 = grey.numpy() if bits == 8 else to_8bit(grey.numpy())
    return colorize_fast(Image.fromarray(grey8, "L"), *planes)
