"""Suggested colours: the model's most likely distinct colours, at a point or over a coarse grid.

The review server (:mod:`~colorize_batch.review`) asks at a clicked point: :func:`distinct_colours`
of the bins' probabilities there. The static gallery (:mod:`~colorize_batch.gallery`) has no
model when it is viewed, so it asks when it is built: :class:`Suggester` decodes each image as
``run`` does, runs the model once and keeps a coarse grid (:func:`suggestion_grid`: at most
:data:`GRID_CELLS` cells on the long side, the :data:`GRID_COLOURS` most likely distinct colours
of each) that the page carries, about 5-7 KB per image.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .color import grey_to_lightness, lab_to_rgb
from .config import ModelSection
from .decoding import decode
from .inference import Colorizer, resolve_device
from .model import EffUNetGenerator
from .names import display
from .weights import WeightsError, automatic_sha256_of, check_size, file_sha256, load_weights

log = logging.getLogger("colorize_batch")

SUGGESTIONS = 6  # distinct colours offered at a point
SUGGEST_MIN_SHARE = 0.02  # a colour the model gives less than this (with its neighbour bins) is not offered
SUGGEST_SEPARATION = 25.0  # Lab ab units between two offered colours
SWATCH_LIGHTNESS = (45.0, 75.0)  # a swatch shows its colour at the point's lightness, kept in this range
GRID_CELLS = 16  # the gallery's grid: cells on the image's long side (the short side in proportion)
GRID_COLOURS = 3  # distinct colours kept per grid cell
GRID_VERSION = 1  # of the grid's format (a cached grid of another version is made again)


def distinct_colours(probs: torch.Tensor, bins: torch.Tensor, lightness: float, count: int = SUGGESTIONS,
                     grid: float = 10.0) -> list[dict]:
    """The most likely distinct colours of one point: ``probs`` ``(Q,)`` over the ab ``bins`` ``(Q, 2)``.

    Each bin's share is merged with its grid neighbours' (the model often splits one colour
    over adjacent bins); the best merged bin is taken (its colour: the probability-weighted
    mean of the merged bins), bins closer than :data:`SUGGEST_SEPARATION` to it are dropped,
    and so on while a colour has at least :data:`SUGGEST_MIN_SHARE`. Returns
    ``[{"color": "#rrggbb", "share": p}]``, most likely first; the hex colour is the ab at the
    point's ``lightness`` (:func:`swatch_hex`).
    """
    picks = _picks(probs.double().numpy(), _Bins.of(bins, grid), count)
    colours = _swatch_hexes([(lightness, a, b) for a, b, _ in picks])
    return [{"color": colour, "share": round(share, 4)} for colour, (_, _, share) in zip(colours, picks)]


@dataclass(frozen=True)
class _Bins:
    """The ab bins (``(Q, 2)``, Lab units) with their distances and grid neighbourhoods, computed once."""

    ab: np.ndarray
    distance: np.ndarray  # (Q, Q)
    near: np.ndarray  # (Q, Q) 1.0 for a bin and its (up to 8) neighbours on the grid

    @classmethod
    def of(cls, bins: torch.Tensor, grid: float) -> _Bins:
        ab = bins.double().numpy()
        distance = np.sqrt(((ab[:, None, :] - ab[None, :, :]) ** 2).sum(-1))
        return cls(ab, distance, (distance <= grid * 1.5).astype(np.float64))


def _picks(p: np.ndarray, bins: _Bins, count: int) -> list[tuple[float, float, float]]:
    """:func:`distinct_colours`' choice for probabilities ``p`` ``(Q,)``: ``(a, b, share)`` of each colour."""
    merged = bins.near @ p
    available = np.ones(len(p), dtype=bool)
    out: list[tuple[float, float, float]] = []
    while len(out) < count:
        best = int(np.where(available, merged, -1.0).argmax())
        if not available[best] or merged[best] < SUGGEST_MIN_SHARE:
            break
        weights = p * bins.near[best]
        a, b = (weights[:, None] * bins.ab).sum(0) / weights.sum()
        out.append((float(a), float(b), float(merged[best])))
        available &= bins.distance[best] > SUGGEST_SEPARATION
    return out


def swatch_hex(lightness: float, a: float, b: float) -> str:
    """sRGB hex of Lab ``(lightness, a, b)``, the lightness kept within :data:`SWATCH_LIGHTNESS` (a
    swatch of a black or white point still shows its hue), desaturated into the gamut as
    recombination does."""
    return _swatch_hexes([(lightness, a, b)])[0]


def _swatch_hexes(colours: Sequence[tuple[float, float, float]]) -> list[str]:
    """:func:`swatch_hex` of many Lab colours in one conversion."""
    if not colours:
        return []
    lab = torch.tensor(colours, dtype=torch.float64).T.reshape(3, 1, -1)
    lab[0] = lab[0].clamp(*SWATCH_LIGHTNESS)
    rgb = (lab_to_rgb(lab, gamut="chroma").reshape(3, -1).T * 255).round().int().tolist()
    return ["#" + "".join(f"{v:02x}" for v in pixel) for pixel in rgb]


def grid_shape(height: int, width: int, cells: int = GRID_CELLS) -> tuple[int, int]:
    """(rows, cols) of the grid over an upright image: ``cells`` on its long side, the short side in proportion."""
    if width >= height:
        return max(1, round(cells * height / width)), cells
    return cells, max(1, round(cells * width / height))


def suggestion_grid(probs: torch.Tensor, bins: torch.Tensor, lightness: torch.Tensor, shape: tuple[int, int],
                    grid: float = 10.0) -> dict:
    """The gallery's suggestions for one image: ``probs`` ``(Q, h, w)`` (the model's bin
    probabilities over its network square, which is the whole upright image), ``lightness``
    (L of that square, any resolution), ``shape`` the upright image's (height, width).

    The probabilities are averaged over each cell of :func:`grid_shape` and the cell's
    :data:`GRID_COLOURS` :func:`distinct_colours` kept, at the cell's mean lightness. Returns
    ``{"rows", "cols", "cells"}``: ``cells`` row by row, each a string of up to
    :data:`GRID_COLOURS` tokens ``rrggbbPP`` (hex colour, then its share in percent, 02-99),
    most likely first.
    """
    rows, cols = grid_shape(*shape)
    pooled = F.adaptive_avg_pool2d(probs.double()[None], (rows, cols))[0]
    light = F.adaptive_avg_pool2d(lightness.double()[None, None], (rows, cols))[0, 0]
    table = _Bins.of(bins, grid)
    picks = [_picks(p, table, GRID_COLOURS) for p in pooled.reshape(len(pooled), -1).T.numpy()]
    hexes = iter(_swatch_hexes([(float(lv), a, b) for lv, cell in zip(light.flatten(), picks) for a, b, _ in cell]))
    cells = ["".join(f"{next(hexes)[1:]}{min(99, round(share * 100)):02d}" for _, _, share in cell) for cell in picks]
    return {"rows": rows, "cols": cols, "cells": cells}


@dataclass(frozen=True)
class SuggestionSource:
    """One image to make suggestions for: its file and page (0-based page of a multi-page TIFF)."""

    path: Path
    page: int = 0


class Suggester:
    """The model of ``model`` (weights, size, device) making :func:`suggestion_grid` for images
    decoded as ``run`` decodes them. It is loaded on first need, once: a gallery build whose grids
    are all kept from an earlier one loads none.

    The automatic model's sha256, ``size`` and :data:`GRID_VERSION` say which grids are its own (a
    kept grid made by another automatic model or at another size is made again). Weights without colour bins (the
    pix2pix family predicts one colour: nothing to choose from) make no grids.
    """

    def __init__(self, model: ModelSection, max_pixels: int | None = None, batch_size: int = 8):
        self.model = model
        self.size = model.size
        self.model_sha256 = file_sha256(model.weights)  # OSError: no such file
        self.max_pixels = max_pixels
        self.batch_size = batch_size
        self._colorizer: Colorizer | None = None
        self._ab_grid = 10.0  # the bins' spacing (Lab units), from the weights
        self._loaded = False

    def load(self) -> Colorizer | None:
        """The colorizer (loaded on the first call), ``None`` for weights without colour bins. Raises
        :class:`~colorize_batch.weights.WeightsError`, or ``InferenceError`` for the device."""
        if not self._loaded:
            device = resolve_device(self.model.device)
            generator, info = load_weights(self.model.weights, device, self.model_sha256)
            problem = check_size(self.size, info, "model.size")
            if problem:
                raise WeightsError(problem)
            if isinstance(generator, EffUNetGenerator):
                self._colorizer = Colorizer.for_model(generator, device, self.model)
                self._ab_grid = float(generator.config.ab_grid)
            else:
                log.info("suggested colours: %s has no colour bins, none offered", self.model.weights.name)
            self._loaded = True
        return self._colorizer

    @functools.cached_property
    def automatic_sha256(self) -> str:
        """The sha256 of the weights' automatic model (the part suggestions come from), "" if it does not load."""
        return automatic_sha256_of(self.model.weights, self.model_sha256)

    def key(self) -> dict:
        """What a cached grid must carry to be this suggester's (grids come from the automatic model:
        weights that differ only in the hint branch keep them)."""
        return {"version": GRID_VERSION, "model": self.automatic_sha256 or self.model_sha256, "size": self.size}

    def grids(self, sources: Sequence[SuggestionSource]) -> list[dict | None]:
        """Each source's grid (with :meth:`key`), or ``None`` where it cannot be decoded (logged);
        forward passes in batches of ``batch_size`` (automatic colours: no hint points)."""
        colorizer = self.load() if sources else None
        if colorizer is None:
            return [None] * len(sources)
        out: list[dict | None] = []
        for start in range(0, len(sources), self.batch_size):
            chunk = sources[start: start + self.batch_size]
            squares: list[torch.Tensor] = []
            shapes: list[tuple[int, int] | None] = []
            for source in chunk:
                try:
                    decoded = decode(source.path, self.size, source.page, self.max_pixels)
                except Exception as exc:  # noqa: BLE001 - one bad file must not stop the gallery
                    log.warning("suggested colours: %s: %s", display(source.path), exc)
                    shapes.append(None)
                    continue
                squares.append(torch.from_numpy(decoded.net_input.copy())[None])
                shapes.append((int(decoded.grey.shape[0]), int(decoded.grey.shape[1])))
            if not squares:
                out.extend([None] * len(chunk))
                continue
            batch = torch.stack(squares)
            belief = colorizer.bin_probabilities(batch)
            assert belief is not None  # load() keeps only weights with bins
            probs, bins = belief
            lightness = grey_to_lightness(batch[:, 0])
            done = iter(range(len(squares)))
            for shape in shapes:
                if shape is None:
                    out.append(None)
                    continue
                i = next(done)
                out.append({**self.key(), **suggestion_grid(probs[i], bins, lightness[i], shape, self._ab_grid)})
        return out
