"""Batched sRGB <-> CIE Lab (D65) conversions in torch, run on the pipeline's device.

All functions take and return float tensors shaped ``(B, 3, H, W)`` (or ``(3, H, W)``);
sRGB values are in [0, 1]. The constants follow ``skimage.color`` so the two agree
(tests check a mean ΔE below 0.5 on random images).

The network works on normalised channels, as in the seed prototype:
``L / 50 - 1`` (range [-1, 1]) and ``ab / 110`` (roughly [-1, 1]).
"""

from __future__ import annotations

import functools

import torch

# D65 / 2° white point and the sRGB primaries, as in skimage.color.
WHITE_D65 = (0.95047, 1.0, 1.08883)
XYZ_FROM_RGB = (
    (0.412453, 0.357580, 0.180423),
    (0.212671, 0.715160, 0.072169),
    (0.019334, 0.119193, 0.950227),
)
_EPS = 0.008856  # (6/29)^3 in skimage's rounding
_KAPPA = 7.787
_F_EPS = 0.2068966  # cube root of _EPS

L_SCALE, L_SHIFT, AB_SCALE = 50.0, 1.0, 110.0


def _matrix(rows, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(rows, dtype=like.dtype, device=like.device)


def srgb_to_linear(rgb: torch.Tensor) -> torch.Tensor:
    return torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055).pow(2.4), rgb / 12.92)


def linear_to_srgb(lin: torch.Tensor) -> torch.Tensor:
    lin = lin.clamp(0.0, 1.0)
    return torch.where(lin > 0.0031308, 1.055 * lin.pow(1 / 2.4) - 0.055, lin * 12.92)


def _f(t: torch.Tensor) -> torch.Tensor:
    return torch.where(t > _EPS, t.clamp_min(_EPS).pow(1 / 3), _KAPPA * t + 16 / 116)


def _f_inv(f: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`_f`: cube above the knee, linear below it.

    Written as ``max(f, knee)^3 + min(f - knee, 0) / kappa`` (the two pieces meet at the knee),
    which is two clamps instead of a ``torch.where`` over both branches: cheaper on the CPU.
    """
    return f.clamp_min(_F_EPS).pow_(3).add_((f - _F_EPS).clamp_max_(0).div_(_KAPPA))


def _apply_matrix(m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Multiply each pixel's 3-vector (channel dim -3) by the 3x3 matrix ``m``."""
    return torch.einsum("ij,...jhw->...ihw", m, x)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1] -> Lab (L in [0, 100], a/b roughly [-110, 110])."""
    xyz = _apply_matrix(_matrix(XYZ_FROM_RGB, rgb), srgb_to_linear(rgb))
    white = _matrix(WHITE_D65, rgb).view(3, 1, 1)
    fx, fy, fz = _f(xyz / white).unbind(-3)
    return torch.stack((116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)), dim=-3)


def linear_from_f(fy: torch.Tensor, y: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per pixel f(Y/Yn), Y/Yn and a, b -> linear RGB (not clipped), channels stacked on dim -3.

    Callers that know Y from a lookup table (grey levels) pass it; :func:`lab_to_rgb` derives it from L.
    """
    x = WHITE_D65[0] * _f_inv(fy + a / 500)
    z = WHITE_D65[2] * _f_inv((fy - b / 200).clamp_min(0))
    m = _rgb_from_xyz(fy.dtype, fy.device).tolist()
    return torch.stack([m[i][0] * x + m[i][1] * y + m[i][2] * z for i in range(3)], dim=-3)


def _lab_to_linear(L: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    fy = (L + 16) / 116
    return linear_from_f(fy, _f_inv(fy), a, b)


@functools.lru_cache(maxsize=8)
def _rgb_from_xyz(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.linalg.inv(torch.tensor(XYZ_FROM_RGB, dtype=torch.float64)).to(dtype=dtype, device=device)


def fit_gamut(lin: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Bring out-of-gamut linear RGB into [0, 1] by moving it towards the grey of equal luminance.

    ``lin``: linear RGB (channels on dim -3), ``y``: its luminance (Y/Yn, one channel less).
    Each pixel becomes ``y + s * (lin - y)`` with the largest ``s`` in [0, 1] that fits.
    Luminance is linear in RGB, so lightness is kept exactly; hue is (nearly) kept; only
    the chroma of colours that cannot be shown shrinks. No iterations.
    """
    y = y.unsqueeze(-3)
    d = lin - y
    # how far each channel may move before it leaves [0, 1]: up to 1 when d > 0, down to 0 when
    # d < 0, as a multiple of d (huge where d is ~0, so that channel never limits s)
    tiny = 1e-12
    room = torch.minimum((1 - y) / d.clamp_min(tiny), y / d.neg().clamp_min_(tiny))
    s = room.amin(dim=-3, keepdim=True).clamp_(0, 1)
    return d.mul_(s).add_(y).clamp_(0, 1)


def lab_to_rgb(lab: torch.Tensor, gamut: str = "clip") -> torch.Tensor:
    """Lab -> sRGB in [0, 1].

    gamut="clip" clips each channel like ``skimage.color.lab2rgb`` (hue and lightness may
    shift for out-of-gamut colours). gamut="chroma" uses :func:`fit_gamut` instead, which
    keeps lightness: what recombination uses, since the output's L must be the input's.
    """
    L, a, b = lab.unbind(-3)
    lin = _lab_to_linear(L, a, b)
    if gamut == "chroma":
        lin = fit_gamut(lin, _f_inv((L + 16) / 116))
    elif gamut != "clip":
        raise ValueError(f"gamut must be clip or chroma, not {gamut!r}")
    return linear_to_srgb(lin)


SRGB8_LUT_SIZE = 16384


@functools.lru_cache(maxsize=16)
def _srgb8_lut(device: torch.device, dtype: torch.dtype = torch.uint8) -> torch.Tensor:
    lin = torch.linspace(0, 1, SRGB8_LUT_SIZE, dtype=torch.float64)
    return (linear_to_srgb(lin) * 255).round().to(dtype).to(device)


def linear_to_srgb8(lin: torch.Tensor, dtype: torch.dtype = torch.uint8) -> torch.Tensor:
    """Linear RGB in [0, 1] -> 8-bit sRGB levels through a 16,384-entry table (within ±1 of exact).

    ``dtype=torch.float32`` returns the same levels as floats (saves a conversion when more
    arithmetic follows).
    """
    index = (lin * (SRGB8_LUT_SIZE - 1)).add_(0.5).int()  # int32 + index_select: ~3x faster than take
    return torch.index_select(_srgb8_lut(lin.device, dtype), 0, index.reshape(-1)).view(lin.shape)


@functools.lru_cache(maxsize=8)
def grey_tables(levels: int = 256, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """For every grey level ``0..levels-1`` of an sRGB grey image: (luminance Y/Yn, f(Y)).

    For R=G=B, Y/Yn equals the linear value and Lab L = 116 f(Y) - 16, so full-resolution
    lightness costs one lookup per pixel.
    """
    y = srgb_to_linear(torch.linspace(0, 1, levels, dtype=torch.float64))
    return y.to(torch.float32).to(device), _f(y).to(torch.float32).to(device)


def grey_to_lightness_lut(levels: int = 256, device: str = "cpu") -> torch.Tensor:
    return 116 * grey_tables(levels, device)[1] - 16


def grey_to_lightness(grey: torch.Tensor, levels: int = 256) -> torch.Tensor:
    """Integer grey levels (uint8, or int for 16-bit) -> Lab L as float32, via a lookup table."""
    _, f_y = grey_tables(levels, str(grey.device))
    return 116 * f_y[grey.long()] - 16


def normalize_l(L: torch.Tensor) -> torch.Tensor:
    return L / L_SCALE - L_SHIFT


def denormalize_l(l_norm: torch.Tensor) -> torch.Tensor:
    return (l_norm + L_SHIFT) * L_SCALE


def normalize_ab(ab: torch.Tensor) -> torch.Tensor:
    return ab / AB_SCALE


def denormalize_ab(ab_norm: torch.Tensor) -> torch.Tensor:
    return ab_norm * AB_SCALE
