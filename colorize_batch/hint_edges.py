"""Hints that stop at edges: a hint's effect gated by the geodesic distance from it over the photo's L.

The hint branch (:class:`colorize_batch.model.HintBranch`) sees the hint planes, not the photo, so
what a hint changes spreads by distance and crosses object edges (blue points on a saucer tint
the table beside it). Here the network runs twice, without and with the hints; the difference of
the two is the hints' *effect field*, and every pixel keeps only the share of it that a path from
the nearest hint can reach without crossing an edge of the grey photo::

    ab = ab_auto + exp(-G / strength) * (ab_hinted - ab_auto)

``G`` is the geodesic distance from the hint discs (the planes' mask) over the network-size
lightness: a step between neighbouring pixels costs ``max(|ΔL| - threshold, 0)`` Lab L units (a
gentle shading ramp costs nothing, an object's outline its contrast), plus ``spread`` per pixel
of distance. It is computed by alternating raster sweeps (down, up, right, left; twice),
batched over the images, in torch. Inside the hinted region nothing changes; across an edge of
``strength`` L units the effect falls to 37%.

Images of a batch without hint points get the automatic ab exactly (the same tensor values).
"""

from __future__ import annotations

import torch

THRESHOLD = 2.0  # L units per pixel step that count as no edge (shading, grain)
SPREAD = 0.0  # cost per pixel of distance (0: distance alone never cuts a hint's effect)
ROUNDS = 2  # sweep rounds (down, up, right, left each); paths with more turns are found less well
_FAR = 1e6


def _sweep_down(dist: torch.Tensor, light: torch.Tensor, threshold: float, spread: float) -> torch.Tensor:
    """One top-to-bottom pass: each row takes the row above's distance plus the step's cost where smaller."""
    step = (light[:, 1:] - light[:, :-1]).abs().sub(threshold).clamp_min(0).add(spread)
    rows = list(dist.unbind(1))
    for i in range(1, len(rows)):
        rows[i] = torch.minimum(rows[i], rows[i - 1] + step[:, i - 1])
    return torch.stack(rows, 1)


def geodesic_distance(seeds: torch.Tensor, light: torch.Tensor, threshold: float = THRESHOLD, spread: float = SPREAD,
                      rounds: int = ROUNDS) -> torch.Tensor:
    """``(B, H, W)`` bool seeds, ``(B, H, W)`` lightness (Lab L) -> ``(B, H, W)`` geodesic distance
    from the nearest seed (0 on seeds; a large number in an image without seeds)."""
    light = light.float()
    dist = torch.where(seeds, 0.0, _FAR).to(light.dtype)
    for _ in range(rounds):
        for flip in (False, True):  # down then up
            for transpose in (False, True):  # along rows, then along columns
                d, g = dist, light
                if transpose:
                    d, g = d.transpose(1, 2), g.transpose(1, 2)
                if flip:
                    d, g = d.flip(1), g.flip(1)
                d = _sweep_down(d, g, threshold, spread)
                if flip:
                    d = d.flip(1)
                dist = d.transpose(1, 2) if transpose else d
    return dist.contiguous()


def edge_aware(ab_auto: torch.Tensor, ab_hinted: torch.Tensor, light: torch.Tensor, hints: torch.Tensor,
               strength: float, threshold: float = THRESHOLD, spread: float = SPREAD) -> torch.Tensor:
    """``(B, 2, S, S)`` automatic and hinted ab, ``(B, S, S)`` lightness, ``(B, 3, S, S)`` hint planes
    -> the hinted ab with each hint's effect cut at the photo's edges (module docstring).
    ``strength`` (L units) > 0; images whose planes hold no point get ``ab_auto`` unchanged."""
    seeds = hints[:, 2] > 0
    gate = torch.exp(-geodesic_distance(seeds, light, threshold, spread) / strength).unsqueeze(1)
    out = ab_auto + gate.to(ab_auto.dtype) * (ab_hinted - ab_auto)
    has_points = seeds.flatten(1).any(1).view(-1, 1, 1, 1)
    return torch.where(has_points, out, ab_auto)
