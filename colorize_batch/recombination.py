"""Recombination: predicted low-resolution ab + the ORIGINAL full-resolution L -> sRGB.

The network sees a small square; its ab prediction is upsampled bilinearly to the image's
own size and joined with the lightness of the input's own grey levels, so the output keeps
every detail and grey level of the scan. The work is done in horizontal strips so a
100-megapixel scan needs only a few strips' worth of float32 memory.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .color import grey_to_lightness, lab_to_rgb

DEFAULT_STRIP_PIXELS = 4_000_000


def _vertical_taps(out_rows: int, in_rows: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source rows and weights of bilinear (align_corners=False) resampling, as torch does it."""
    scale = in_rows / out_rows
    src = ((torch.arange(out_rows, device=device, dtype=torch.float32) + 0.5) * scale - 0.5).clamp_min(0)
    i0 = src.floor().long().clamp_max(in_rows - 1)
    i1 = (i0 + 1).clamp_max(in_rows - 1)
    return i0, i1, (src - i0).unsqueeze(-1)


def upsample_ab_rows(ab: torch.Tensor, height: int, width: int, row_start: int, row_stop: int) -> torch.Tensor:
    """Rows ``row_start:row_stop`` of ``F.interpolate(ab, (height, width), mode='bilinear')``.

    ``ab`` is ``(2, h, w)``. Separable: horizontal pass on the few source rows, then a lerp
    between two source rows per output row, so memory is proportional to the strip only.
    """
    _, h, w = ab.shape
    wide = F.interpolate(ab.unsqueeze(0), size=(h, width), mode="bilinear", align_corners=False)[0]
    i0, i1, t = _vertical_taps(height, h, ab.device)
    i0, i1, t = i0[row_start:row_stop], i1[row_start:row_stop], t[row_start:row_stop]
    return torch.lerp(wide[:, i0, :], wide[:, i1, :], t)


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
    out_dtype: ``torch.uint8`` (0..255) or ``torch.int32`` holding 16-bit values (0..65535).
    """
    height, width = grey.shape
    ab = ab.float() * chroma_gain if chroma_gain != 1.0 else ab.float()
    peak = 255.0 if out_dtype == torch.uint8 else 65535.0
    out = torch.empty((height, width, 3), dtype=out_dtype, device=grey.device)
    rows_per_strip = max(1, strip_pixels // max(width, 1))
    wide = F.interpolate(ab.unsqueeze(0), size=(ab.shape[1], width), mode="bilinear", align_corners=False)[0]
    i0, i1, t = _vertical_taps(height, ab.shape[1], ab.device)
    for start in range(0, height, rows_per_strip):
        stop = min(height, start + rows_per_strip)
        ab_rows = torch.lerp(wide[:, i0[start:stop], :], wide[:, i1[start:stop], :], t[start:stop])
        L = grey_to_lightness(grey[start:stop], levels).unsqueeze(0)
        rgb = lab_to_rgb(torch.cat([L, ab_rows], dim=0), gamut="chroma")
        out[start:stop] = (rgb.permute(1, 2, 0) * peak).round_().to(out_dtype)
    return out


def strips(height: int, width: int, strip_pixels: int = DEFAULT_STRIP_PIXELS) -> int:
    """Number of strips :func:`colorize_full` will use for an image."""
    return math.ceil(height / max(1, strip_pixels // max(width, 1)))
