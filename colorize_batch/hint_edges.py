"""Hints that respect edges: geodesic distances over the grey photo decide how far a hint reaches.

The hint branch (:class:`colorize_batch.model.HintBranch`) sees the hint planes, not the photo, so
what a hint changes spreads by distance and crosses object edges (blue points on a saucer tint
the table beside it). Here the network runs twice, without and with the hints, and two fields
computed from the network-size lightness L reshape what the hints do (:func:`edge_aware`):

1. **The hints' effect, cut at edges.** ``effect = ab_hinted - ab_auto``; a pixel keeps
   ``F + (1 - F) * exp(-D_edge / EDGE_SCALE - length / REACH)`` of it, where ``D_edge`` is the
   geodesic distance from the nearest hint disc counting only edges: a step between neighbouring
   pixels costs ``max(|ΔL| - EDGE_THRESHOLD, 0)`` (grain and gentle shading are free), and
   ``length`` the distance in pixels. The floor ``F = KEEP * exp(-length / KEEP_RANGE)`` keeps
   part of the effect across edges: the palette the hints reveal is worth keeping (measured:
   cutting it all lost 0.7-1 dB with 10 hints). With the shipped branch both ranges are
   infinite; a network that reads the hints with the photo (:class:`colorize_batch.model.GuideEncoder`)
   changes far parts of the photo more, and finite ranges keep its hints local (weights/README.md).
2. **The hint's own colour, carried along the object.** Each pixel moves
   ``PULL * exp(-D_path / PULL_SCALE)`` of the way to the colour of its geodesically nearest
   hint, where ``D_path`` counts every change of L along the path (its total variation) plus
   ``PULL_SPREAD`` per pixel, so the colour fills the hint's smooth surroundings and fades
   across texture, edges and distance (on a featureless photo it stays near the hint).

Both distances come from alternating raster sweeps (down, right, up, left; twice), batched
over the images, in torch; the nearest hint's colour travels with the distance. The constants
were chosen on ``val/sun_hays80`` (``eval --hints 10``) and the README's coffee example together;
weights/README.md has the numbers. Images of a batch without hint points get ``ab_auto`` exactly.
"""

from __future__ import annotations

import math

import torch

from .color import denormalize_ab

EDGE_THRESHOLD = 2.0  # L units per pixel step that do not count as an edge (grain, shading)
EDGE_SCALE = 8.0  # L units of edge over which the branch's effect falls to KEEP + 37% of the rest
KEEP = 0.6  # share of the hints' effect kept across edges (the palette the hints reveal) ...
KEEP_RANGE = math.inf  # ... near the hints: that share can fade as exp(-length / KEEP_RANGE) (network pixels)
REACH = math.inf  # and the rest as exp(-length / REACH): a hint stays local on a photo without edges
PULL = 0.6  # how far (0-1) a pixel next to a hint moves to the hint's own colour
PULL_SCALE = 40.0  # L units of path variation over which that pull falls to 37%
PULL_SPREAD = 0.4  # and each pixel of path (at the network size) counts as this many L units
ROUNDS = 2  # sweep rounds (down, right, up, left each); paths with more turns are found less well
_FAR = 1e6


def _sweep_down(state: torch.Tensor, light: torch.Tensor, threshold: torch.Tensor, spread: torch.Tensor) -> torch.Tensor:
    """One top-to-bottom pass over ``state`` ``(B, 1 + C, H, W)``: channel 0 the distance, the rest
    the carried values. A row takes the row above's distance plus the step's cost, with that row's
    values, where this is smaller. ``light`` ``(B, H, W)``, ``threshold`` and ``spread`` ``(B, 1, 1)``."""
    step = (light[:, 1:] - light[:, :-1]).abs().sub(threshold).clamp_min(0).add(spread)
    step = torch.cat([step.unsqueeze(1), step.new_zeros(step.shape[0], state.shape[1] - 1, *step.shape[1:])], 1)
    rows, steps = list(state.unbind(2)), step.unbind(2)
    for i in range(1, len(rows)):
        candidate = rows[i - 1] + steps[i - 1]
        rows[i] = torch.where(candidate[:, :1] < rows[i][:, :1], candidate, rows[i])
    return torch.stack(rows, 2)


def geodesic_nearest(seeds: torch.Tensor, light: torch.Tensor, values: torch.Tensor, threshold: float | torch.Tensor,
                     spread: float | torch.Tensor = 0.0, rounds: int = ROUNDS) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, H, W)`` bool seeds, ``(B, H, W)`` lightness (Lab L), ``(B, C, H, W)`` values (read at the
    seeds) -> the geodesic distance from the nearest seed ``(B, H, W)`` (0 on seeds, a large number
    in an image without seeds; a step costs ``max(|ΔL| - threshold, 0) + spread``, each one number
    or one per image) and that seed's values. The sweeps' Python loop is the cost: batch the work."""
    light = light.float()
    threshold, spread = (torch.as_tensor(v, dtype=light.dtype, device=light.device).expand(light.shape[0]).view(-1, 1, 1)
                         for v in (threshold, spread))
    state = torch.cat([torch.where(seeds, 0.0, _FAR).to(light.dtype).unsqueeze(1), values.to(light.dtype)], 1)
    for _ in range(rounds):
        for flip in (False, True):  # down (or right), then up (or left)
            for transpose in (False, True):  # along rows, then along columns
                st, g = (state.transpose(2, 3), light.transpose(1, 2)) if transpose else (state, light)
                if flip:
                    st, g = st.flip(2), g.flip(1)
                st = _sweep_down(st, g, threshold, spread)
                if flip:
                    st = st.flip(2)
                state = st.transpose(2, 3) if transpose else st
    state = state.contiguous()
    return state[:, 0], state[:, 1:]


def geodesic_distance(seeds: torch.Tensor, light: torch.Tensor, threshold: float = EDGE_THRESHOLD) -> torch.Tensor:
    """The distance part of :func:`geodesic_nearest`."""
    return geodesic_nearest(seeds, light, light.new_zeros(light.shape[0], 0, *light.shape[1:]), threshold)[0]


def edge_aware(ab_auto: torch.Tensor, ab_hinted: torch.Tensor, light: torch.Tensor, hints: torch.Tensor,
               keep: float = KEEP, pull: float = PULL, keep_range: float = KEEP_RANGE, reach: float = REACH) -> torch.Tensor:
    """``(B, 2, S, S)`` automatic and hinted ab (Lab units), ``(B, S, S)`` lightness, ``(B, 3, S, S)``
    hint planes (:func:`colorize_batch.hints.rasterize`) -> the hinted ab reshaped by the photo's
    edges (module docstring). Images whose planes hold no point get ``ab_auto`` unchanged."""
    seeds = hints[:, 2] > 0
    batch = seeds.shape[0]
    hint_ab = denormalize_ab(hints[:, :2]).float()
    # the distances in one pass: over edges only, over all variation of L + length, and (for a
    # finite range) over length only
    kinds = 3 if math.isfinite(keep_range) or math.isfinite(reach) else 2
    thresholds = torch.tensor([EDGE_THRESHOLD, 0.0, _FAR][:kinds], device=light.device).repeat_interleave(batch)
    spreads = torch.tensor([0.0, PULL_SPREAD, 1.0][:kinds], device=light.device).repeat_interleave(batch)
    dist, nearest = geodesic_nearest(seeds.repeat(kinds, 1, 1), light.repeat(kinds, 1, 1), hint_ab.repeat(kinds, 1, 1, 1),
                                     thresholds, spreads)
    edge_dist, path_dist = dist[:batch], dist[batch:2 * batch]
    length = dist[2 * batch:] if kinds == 3 else torch.zeros_like(edge_dist)
    nearest_ab = nearest[batch:2 * batch].to(ab_auto.dtype)
    floor = keep * torch.exp(-length / keep_range)
    gate = (floor + (1 - floor) * torch.exp(-edge_dist / EDGE_SCALE - length / reach)).unsqueeze(1)
    ab = ab_auto + gate.to(ab_auto.dtype) * (ab_hinted - ab_auto)
    if pull > 0:
        ab = ab + (pull * torch.exp(-path_dist / PULL_SCALE)).unsqueeze(1).to(ab.dtype) * (nearest_ab - ab)
    has_points = seeds.flatten(1).any(1).view(-1, 1, 1, 1)
    return torch.where(has_points, ab, ab_auto)
