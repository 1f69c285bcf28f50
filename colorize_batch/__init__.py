"""colorize-batch: colorize folders of black-and-white photographs.

The default model is a U-Net on an EfficientNet-Lite0 encoder that predicts a distribution over
ab colour bins (CIE Lab: the scan's lightness in, colour out); the older pix2pix family (U-Net +
PatchGAN) still loads and trains. The colour is predicted at low resolution and joined with each
photo's original full-resolution grey levels.

Command line: ``colorize-batch run IN OUT`` (:mod:`colorize_batch.cli`). Python:
:func:`colorize` for one image, :class:`ColorizeSession` to load the weights once for many
(:mod:`colorize_batch.api`, imported on first use so that ``import colorize_batch`` stays cheap).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["ColorizeSession", "__version__", "colorize"]

# Idle OpenMP threads sleep instead of spinning (GNU OpenMP spins ~300k iterations after each
# parallel region by default). Between the forward pass's parallel regions the spinning thread
# would take the core from the decode worker and the writer threads: measured on 2 cores, the
# pipeline's non-network CPU time fell by a third, forward-only speed did not change. It has
# to be in the environment before torch loads libgomp, so it is set here, on first import;
# a value the user exported wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

if TYPE_CHECKING:
    from .api import ColorizeSession, colorize

_API_NAMES = ("ColorizeSession", "colorize")


def __getattr__(name: str) -> Any:
    """The Python API's names, imported (with torch) only when first used."""
    if name in _API_NAMES:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
