"""Hints that respect edges: geodesic distances over the grey photo decide how far a hint reaches.

The hint branch (:class:`colorize_batch.model.HintBranch`) sees the hint planes, not the photo, so
what a hint changes spreads by distance and crosses object edges (blue points on a saucer tint
the table beside it). Here the network runs twice, without and with the hints, and two fields
computed from the network-size lightness L reshape what the hints do (:func:`edge_aware`):

1. **The branch's effect, cut at edges.** ``effect = ab_hinted - ab_auto``; a pixel keeps
   ``KEEP + (1 - KEEP) * exp(-D_edge / EDGE_SCALE)`` of it, where ``D_edge`` is the geodesic
   distance from the nearest hint disc counting only edges: a step between neighbouring pixels
   costs ``max(|ΔL| - EDGE_THRESHOLD, 0)`` (grain and gentle shading are free). ``KEEP`` stays
   everywhere: the branch's far effect (the photo's overall palette that the hints reveal) is
   worth keeping (measured: cutting it all lost 0.7-1 dB with 10 hints).
2. **The hint's own colour, carried along the object.** Each pixel moves
   ``PULL * exp(-D_path / PULL_SCALE)`` of the way to the colour of its geodesically nearest
   hint, where ``D_path`` counts every change of L along the path (its total variation), so
   the colour fills the hint's smooth surroundings and fades across texture and edges.

Both distances come from alternating raster sweeps (down, up, right, left; twice), batched
over the images, in torch; the nearest hint's colour travels with the distance. The constants
were chosen on ``val/sun_hays80`` (``eval --hints 10``) and the README's coffee example together;
weights/README.md has the numbers. Images of a batch without hint points get ``ab_auto`` exactly.
"""

from __future__ import annotations

import torch

from .color import denormalize_ab

EDGE_THRESHOLD = 2.0  # L units per pixel step that do not count as an edge (grain, shading)
EDGE_SCALE = 8.0  # L units of edge over which the branch's effect falls to KEEP + 37% of the rest
KEEP = 0.6  # share of the branch's effect kept however far (the palette the hints reveal)
PULL = 0.5  # how far (0-1) a pixel next to a hint moves to the hint's own colour
PULL_SCALE = 30.0  # L units of path variation over which that pull falls to 37%
ROUNDS = 2  # sweep rounds (down, up, right, left each); paths with more turns are found less well
_FAR = 1e6


def _sweep_down(dist: torch.Tensor, values: torch.Tensor, light: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One top-to-bottom pass: a row takes the row above's distance plus the step's cost, and that
    row's carried values, where this is smaller. ``dist``/``light`` ``(B, H, W)``, ``values`` ``(B, C, H, W)``."""
    step = (light[:, 1:] - light[:, :-1]).abs().sub(threshold).clamp_min(0)
    rows, carried = list(dist.unbind(1)), list(values.unbind(2))
    for i in range(1, len(rows)):
        candidate = rows[i - 1] + step[:, i - 1]
        closer = candidate < rows[i]
        rows[i] = torch.where(closer, candidate, rows[i])
        carried[i] = torch.where(closer.unsqueeze(1), carried[i - 1], carried[i])
    return torch.stack(rows, 1), torch.stack(carried, 2)


def geodesic_nearest(seeds: torch.Tensor, light: torch.Tensor, values: torch.Tensor, threshold: float,
                     rounds: int = ROUNDS) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, H, W)`` bool seeds, ``(B, H, W)`` lightness (Lab L), ``(B, C, H, W)`` values (read at the
    seeds) -> the geodesic distance from the nearest seed ``(B, H, W)`` (0 on seeds, a large number
    in an image without seeds; a step costs ``max(|ΔL| - threshold, 0)``) and that seed's values."""
    light = light.float()
    dist = torch.where(seeds, 0.0, _FAR).to(light.dtype)
    for _ in range(rounds):
        for flip in (False, True):  # down (or right), then up (or left)
            for transpose in (False, True):  # along rows, then along columns
                d, v, g = dist, values, light
                if transpose:
                    d, v, g = d.transpose(1, 2), v.transpose(2, 3), g.transpose(1, 2)
                if flip:
                    d, v, g = d.flip(1), v.flip(2), g.flip(1)
                d, v = _sweep_down(d, v, g, threshold)
                if flip:
                    d, v = d.flip(1), v.flip(2)
                dist, values = (d.transpose(1, 2), v.transpose(2, 3)) if transpose else (d, v)
    return dist.contiguous(), values.contiguous()


def geodesic_distance(seeds: torch.Tensor, light: torch.Tensor, threshold: float = EDGE_THRESHOLD) -> torch.Tensor:
    """The distance part of :func:`geodesic_nearest`."""
    return geodesic_nearest(seeds, light, light.new_zeros(light.shape[0], 0, *light.shape[1:]), threshold)[0]


def edge_aware(ab_auto: torch.Tensor, ab_hinted: torch.Tensor, light: torch.Tensor, hints: torch.Tensor,
               keep: float = KEEP, pull: float = PULL) -> torch.Tensor:
    """``(B, 2, S, S)`` automatic and hinted ab (Lab units), ``(B, S, S)`` lightness, ``(B, 3, S, S)``
    hint planes (:func:`colorize_batch.hints.rasterize`) -> the hinted ab reshaped by the photo's
    edges (module docstring). Images whose planes hold no point get ``ab_auto`` unchanged."""
    seeds = hints[:, 2] > 0
    hint_ab = denormalize_ab(hints[:, :2]).to(ab_auto.dtype)
    edge_dist = geodesic_distance(seeds, light, EDGE_THRESHOLD)
    gate = keep + (1 - keep) * torch.exp(-edge_dist / EDGE_SCALE).unsqueeze(1)
    ab = ab_auto + gate.to(ab_auto.dtype) * (ab_hinted - ab_auto)
    if pull > 0:
        path_dist, nearest_ab = geodesic_nearest(seeds, light, hint_ab, 0.0)
        ab = ab + (pull * torch.exp(-path_dist / PULL_SCALE)).unsqueeze(1).to(ab.dtype) * (nearest_ab - ab)
    has_points = seeds.flatten(1).any(1).view(-1, 1, 1, 1)
    return torch.where(has_points, ab, ab_auto)
