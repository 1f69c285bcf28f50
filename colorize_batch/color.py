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
    return torch.where(f > _F_EPS, f * f * f, (f - 16 / 116) / _KAPPA)


def _apply_matrix(m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Multiply each pixel's 3-vector (channel dim -3) by the 3x3 matrix ``m``."""
    return torch.einsum("ij,...jhw->...ihw", m, x)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1] -> Lab (L in [0, 100], a/b roughly [-110, 110])."""
    xyz = _apply_matrix(_matrix(XYZ_FROM_RGB, rgb), srgb_to_linear(rgb))
    white = _matrix(WHITE_D65, rgb).view(3, 1, 1)
    fx, fy, fz = _f(xyz / white).unbind(-3)
    return torch.stack((116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)), dim=-3)


def _lab_to_linear(L: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Lab channels -> linear RGB (not clipped), channels stacked on dim -3."""
    fy = (L + 16) / 116
    f = torch.stack((fy + a / 500, fy, (fy - b / 200).clamp_min(0)), dim=-3)
    white = torch.tensor(WHITE_D65, dtype=L.dtype, device=L.device).view(3, 1, 1)
    xyz = _f_inv(f) * white
    return _apply_matrix(_rgb_from_xyz(L.dtype, L.device), xyz)


@functools.lru_cache(maxsize=8)
def _rgb_from_xyz(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.linalg.inv(torch.tensor(XYZ_FROM_RGB, dtype=torch.float64)).to(dtype=dtype, device=device)


def lab_to_rgb(lab: torch.Tensor, gamut: str = "clip", steps: int = 8) -> torch.Tensor:
    """Lab -> sRGB in [0, 1].

    gamut="clip" clips each channel like ``skimage.color.lab2rgb`` (hue and lightness may
    shift for out-of-gamut colours). gamut="chroma" instead scales the pixel's (a, b)
    towards grey until it fits (bisection, ``steps`` halvings), so lightness is kept: what
    recombination uses, since the output's L must be the input's.
    """
    L, a, b = lab.unbind(-3)
    lin = _lab_to_linear(L, a, b)
    if gamut == "chroma":
        tol = 1e-5
        outside = ((lin < -tol) | (lin > 1 + tol)).any(dim=-3)
        if bool(outside.any()):
            Lp, ap, bp = L[outside], a[outside], b[outside]
            lo, hi = torch.zeros_like(Lp), torch.ones_like(Lp)
            for _ in range(steps):
                mid = (lo + hi) / 2
                trial = _lab_to_linear(Lp[:, None, None], (mid * ap)[:, None, None], (mid * bp)[:, None, None])
                fits = ((trial >= -tol) & (trial <= 1 + tol)).all(dim=-3).view(-1)
                lo, hi = torch.where(fits, mid, lo), torch.where(fits, hi, mid)
            fixed = _lab_to_linear(Lp[:, None, None], (lo * ap)[:, None, None], (lo * bp)[:, None, None])
            lin = lin.movedim(-3, -1).clone()
            lin[outside] = fixed.view(-1, 3)
            lin = lin.movedim(-1, -3)
    elif gamut != "clip":
        raise ValueError(f"gamut must be clip or chroma, not {gamut!r}")
    return linear_to_srgb(lin)


@functools.lru_cache(maxsize=8)
def grey_to_lightness_lut(levels: int = 256, device: str = "cpu") -> torch.Tensor:
    """Table of Lab L for every grey level ``0..levels-1`` of an sRGB grey image (R=G=B).

    A grey pixel's L depends on its level alone, so full-resolution L costs one lookup.
    """
    grey = torch.linspace(0, 1, levels, dtype=torch.float64)
    y = srgb_to_linear(grey)  # for R=G=B, Y/Yn equals the linear value
    return (116 * _f(y) - 16).to(torch.float32).to(device)


def grey_to_lightness(grey: torch.Tensor, levels: int = 256) -> torch.Tensor:
    """Integer grey levels (uint8, or int for 16-bit) -> Lab L as float32, via a lookup table."""
    lut = grey_to_lightness_lut(levels, str(grey.device))
    return lut[grey.long()]


def normalize_l(L: torch.Tensor) -> torch.Tensor:
    return L / L_SCALE - L_SHIFT


def denormalize_l(l_norm: torch.Tensor) -> torch.Tensor:
    return (l_norm + L_SHIFT) * L_SCALE


def normalize_ab(ab: torch.Tensor) -> torch.Tensor:
    return ab / AB_SCALE


def denormalize_ab(ab_norm: torch.Tensor) -> torch.Tensor:
    return ab_norm * AB_SCALE
