"""The Python API: colorize images from a notebook or another pipeline, as ``run`` does.

    >>> import colorize_batch
    >>> colour = colorize_batch.colorize("scan.tif")              # a PIL RGB image
    >>> session = colorize_batch.ColorizeSession(temperature=0.5)  # loads the weights once
    >>> colours = [session.colorize(path) for path in paths]

An image goes through the same stages as one file of a ``run``: the same decoding
(:func:`~colorize_batch.decoding.decode` for a path), the same forward pass
(:func:`~colorize_batch.stages.predict_planes`, hints included) and the same recombination
with the image's own full-resolution grey levels
(:func:`~colorize_batch.recombination.recombine`). The result has the input's pixel size and
grey levels and equals, pixel for pixel, what ``run`` writes for that file as an 8-bit PNG
with the same settings on a CPU (the forward pass uses as many threads as one of ``run``'s
lanes for that: see :meth:`ColorizeSession._lane_threads`); on CUDA, reduced-precision
arithmetic may differ between batch sizes by a level here and there (not tested here). Unlike ``run``, an input that is already in colour is colorized from
its grey levels (``input.color_inputs: recolor``): the caller asked for it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image
from pydantic import ValidationError

from .config import ConfigError, PipelineConfig, format_errors, load_config
from .batch_transport import DecodedItem
from .decoding import Decoded, DecodeError, decode, decode_image
from .hints import HintError, Hints, parse_hints, read_hints
from .inference import Colorizer, resolve_device, resolve_lanes
from .recombination import recombine
from .stages import predict_planes
from .weights import WeightsError, WeightsInfo, check_size, load_weights

__all__ = ["ColorizeSession", "HintsSource", "ImageSource", "colorize"]

log = logging.getLogger("colorize_batch")

ImageSource = Union[str, os.PathLike, Image.Image, np.ndarray]
"""A path to an image file, a PIL image, or an array: ``(H, W)`` uint8 / uint16 grey levels,
or ``(H, W, 3)`` / ``(H, W, 4)`` uint8 RGB / RGBA."""

HintsSource = Union[Hints, Mapping, str, os.PathLike]
"""Colour hints: a parsed :class:`~colorize_batch.hints.Hints`, a hint document (the JSON
object of a ``.hints.json`` file, see ``colorize-batch hints schema``) or the path of a hint file."""


def _array_image(array: np.ndarray) -> Image.Image:
    if array.ndim == 2 and array.dtype == np.uint8:
        return Image.fromarray(array, "L")
    if array.ndim == 2 and array.dtype == np.uint16:
        return Image.fromarray(array)  # I;16: 16-bit grey levels, kept as run keeps them
    if array.ndim == 3 and array.dtype == np.uint8 and array.shape[2] in (3, 4):
        return Image.fromarray(array, "RGB" if array.shape[2] == 3 else "RGBA")
    raise ValueError(f"array of shape {array.shape} and dtype {array.dtype}: expected (H, W) uint8 or uint16 "
                     "grey levels, or (H, W, 3|4) uint8 RGB(A)")


def _refuse_empty(path: object, error: type[Exception], wanted: str) -> None:
    """An empty path never means the current folder: ``error`` saying what to give instead."""
    if isinstance(path, (str, os.PathLike)) and not os.fspath(path):
        raise error(f"an empty path: give {wanted}")


def _decoded(image: ImageSource, size: int, max_pixels: int) -> Decoded:
    """The image as ``run`` decodes a file; :class:`DecodeError` names the file and the problem."""
    if isinstance(image, Image.Image):
        try:
            return decode_image(image, size)
        except DecodeError as exc:
            name = getattr(image, "filename", "")  # an image opened from a file (Image.open) names it
            raise DecodeError(f"{os.fsdecode(name)}: {exc}" if name else str(exc)) from None
    if isinstance(image, np.ndarray):
        return decode_image(_array_image(image), size)
    if isinstance(image, (str, os.PathLike)):
        _refuse_empty(image, DecodeError, "an image file")
        try:
            return decode(image, size, max_pixels=max_pixels)
        except DecodeError as exc:
            raise DecodeError(f"{os.fsdecode(image)}: {exc}") from None
    raise TypeError(f"cannot colorize a {type(image).__name__}: give a path, a PIL image or a numpy array")


def _hints(hints: HintsSource | None) -> Hints | None:
    """Parsed hints; :class:`~colorize_batch.hints.HintError` names the file (if any) and the problem."""
    if hints is None or isinstance(hints, Hints):
        return hints
    if isinstance(hints, Mapping):
        return parse_hints(dict(hints))
    if not isinstance(hints, (str, os.PathLike)):
        raise TypeError(f"hints of type {type(hints).__name__}: give a hint file's path, a hint document (dict) or Hints")
    _refuse_empty(hints, HintError, "a hint file")
    try:
        return read_hints(Path(hints))[0]
    except HintError as exc:
        raise HintError(f"{os.fsdecode(hints)}: {exc}") from None


def _session_config(config: PipelineConfig | str | os.PathLike | None, weights: str | os.PathLike | None,
                    temperature: float | None, device: str | None) -> PipelineConfig:
    """``config`` (a loaded configuration, a YAML file overlaying the built-in ``pipeline.yaml``, or
    the built-in one) with the given settings replacing its own; a relative ``weights`` path is
    relative to the current folder."""
    if weights is not None and not isinstance(weights, (str, os.PathLike)):
        raise TypeError(f"weights of type {type(weights).__name__}: give the weights file's path")
    if config is not None and not isinstance(config, (str, os.PathLike, PipelineConfig)):
        raise TypeError(f"config of type {type(config).__name__}: give a YAML file's path or a PipelineConfig")
    _refuse_empty(weights, WeightsError, "a weights file, or None for the shipped one")
    _refuse_empty(config, ConfigError, "a YAML file, or None for the built-in pipeline.yaml")
    base = config if isinstance(config, PipelineConfig) else load_config(None if config is None else Path(config))
    overrides: dict[str, object] = {}
    if weights is not None:
        overrides["weights"] = Path(weights).absolute()
    if temperature is not None:
        overrides["temperature"] = temperature
    if device is not None:
        overrides["device"] = device
    try:
        model = type(base.model).model_validate({**base.model.model_dump(), **overrides})  # validated like a config file
    except ValidationError as exc:
        raise ConfigError(format_errors(exc, "ColorizeSession")) from None
    return base.model_copy(update={"model": model}, deep=True)


class ColorizeSession:
    """The weights loaded once, for colorizing many images with the same settings.

    ``weights``: a weights file (default: ``model.weights`` of the configuration, the shipped
    ``colorize-effnet-lite0.pt``); ``temperature``: ``model.temperature``; ``device``: ``auto``,
    ``cpu``, ``cuda`` or ``cuda:N`` (``model.device``); ``config``: a :class:`PipelineConfig` or the
    path of a YAML file like ``pipeline.yaml`` for every other setting (network size, precision,
    ``model.chroma_gain``, ``output.recombination``, ``input.max_pixels``, ``loader.batch_size``).

    Raises :class:`~colorize_batch.weights.WeightsError` for a weights file that cannot be used,
    :class:`~colorize_batch.config.ConfigError` for bad settings and
    :class:`~colorize_batch.inference.InferenceError` for a device that is not there.
    :meth:`colorize` may be called from several threads at once.
    """

    def __init__(self, weights: str | os.PathLike | None = None, *, temperature: float | None = None,
                 device: str | None = None, config: PipelineConfig | str | os.PathLike | None = None):
        self.config = _session_config(config, weights, temperature, device)
        model = self.config.model
        on = resolve_device(model.device)
        generator, self.weights_info = load_weights(model.weights, on)
        problem = check_size(model.size, self.weights_info, "model.size")
        if problem:
            raise WeightsError(problem)
        self.colorizer = Colorizer.for_model(generator, on, model)
        loader = self.config.loader
        self.lanes = resolve_lanes(on, loader.lanes, loader.torch_threads)

    @property
    def info(self) -> WeightsInfo:
        """The loaded weights: path, sha256, architecture, provenance (``info.model_id`` names them)."""
        return self.weights_info

    def colorize(self, image: ImageSource, hints: HintsSource | None = None) -> Image.Image:
        """One image in colour: a PIL RGB image of the input's size whose grey levels are the input's.

        A 16-bit input gives an 8-bit result (its levels scaled as ``run`` scales them for 8-bit
        outputs). Raises :class:`~colorize_batch.decoding.DecodeError` for an image that cannot be
        read and :class:`~colorize_batch.hints.HintError` for unusable hints.
        """
        return self.colorize_many([image], [hints])[0]

    def colorize_many(self, images: Sequence[ImageSource], hints: Sequence[HintsSource | None] | None = None) -> list[Image.Image]:
        """Several images in one batched forward pass (``hints``: one entry, or ``None``, per image)."""
        if isinstance(images, (str, os.PathLike, Image.Image, np.ndarray)):  # a str would be colorized letter by letter
            raise TypeError(f"colorize_many takes a sequence of images, not one {type(images).__name__}: use colorize")
        if isinstance(hints, (str, os.PathLike, Mapping, Hints)):
            raise TypeError(f"colorize_many takes one hints entry (or None) per image, not one {type(hints).__name__}")
        images = list(images)  # a generator or any other iterable, read once
        hints = list(hints) if hints is not None else None
        if hints is not None and len(hints) != len(images):
            raise ValueError(f"{len(images)} images but {len(hints)} hint entries")
        size, max_pixels = self.config.model.size, self.config.input.max_pixels
        items = [DecodedItem.from_decoded(i, _decoded(image, size, max_pixels)) for i, image in enumerate(images)]
        if not items:
            return []
        parsed = [_hints(h) for h in hints] if hints is not None else []
        if not self.colorizer.takes_hints and any(h is not None and h.points for h in parsed):
            log.warning("%s has no hint branch: the hint points are ignored (global tints still apply)",
                        self.weights_info.path)
        with self._lane_threads():
            ab, cb, cr, _ = predict_planes(self.colorizer, items, self.config, parsed)
        return [self._recombine(item, ab[i], (cb[i], cr[i])) for i, item in enumerate(items)]

    def colorize_stream(self, images: Iterable[ImageSource], batch_size: int | None = None) -> Iterator[Image.Image]:
        """Colour images of ``images`` in order, ``batch_size`` (``loader.batch_size``) at a time."""
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"batch_size must be a whole number of at least 1, got {batch_size!r}")
        size = batch_size or self.config.loader.batch_size
        batch: list[ImageSource] = []
        for image in images:
            batch.append(image)
            if len(batch) == size:
                yield from self.colorize_many(batch)
                batch = []
        if batch:
            yield from self.colorize_many(batch)

    @contextlib.contextmanager
    def _lane_threads(self) -> Iterator[None]:
        """On a CPU, the forward pass runs with as many intra-op threads as one of ``run``'s lanes: a
        float sum split over another number of threads can move a colour by a level here and there."""
        if self.colorizer.device.type != "cpu":
            yield
            return
        before = torch.get_num_threads()
        torch.set_num_threads(self.lanes.threads)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    def _recombine(self, item: DecodedItem, ab: torch.Tensor, planes: tuple[torch.Tensor, torch.Tensor]) -> Image.Image:
        assert item.grey is not None
        config = self.config
        rgb = recombine(item.grey, ab, planes, bits=item.bits, method=config.output.recombination,
                        chroma_gain=config.model.chroma_gain)
        assert isinstance(rgb, Image.Image)  # 8-bit output
        return rgb


@functools.lru_cache(maxsize=1)
def _cached_session(weights: Path | None, stamp: tuple[int, int] | None, temperature: float | None) -> ColorizeSession:
    del stamp  # part of the cache key only: a weights file replaced since is loaded again
    return ColorizeSession(weights, temperature=temperature)


def colorize(image: ImageSource, hints: HintsSource | None = None, weights: str | os.PathLike | None = None,
             temperature: float | None = None) -> Image.Image:
    """One image in colour, as ``run`` colours it with the default settings (see :class:`ColorizeSession`).

    The last session used is kept, so calling this in a loop loads the weights once; for other
    settings (device, configuration file) make a :class:`ColorizeSession`.
    """
    _refuse_empty(weights, WeightsError, "a weights file, or None for the shipped one")
    path = Path(weights).absolute() if weights is not None else None
    stamp = None
    if path is not None and path.is_file():
        st = path.stat()
        stamp = (st.st_mtime_ns, st.st_size)
    return _cached_session(path, stamp, temperature).colorize(image, hints)

