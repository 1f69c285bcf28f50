"""Inference: batched forward passes of the generator on the run's device.

CUDA runs under autocast (fp16, or bf16 where supported) with pinned, non-blocking copies;
the CPU runs in float32. Everything is under ``torch.inference_mode()``.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from dataclasses import dataclass

import torch

from .color import denormalize_ab, grey_to_lightness, normalize_l
from .config import ModelSection
from .hint_edges import edge_aware
from .model import EffUNetGenerator, UNetGenerator, fused_for_inference


class InferenceError(Exception):
    pass


HEAP_REUSE_BYTES = 256 << 20


@functools.cache
def tune_allocator() -> bool:
    """Let glibc reuse freed heap memory for large tensors instead of fresh ``mmap`` pages.

    By default glibc serves blocks above 128 KB-32 MB with ``mmap`` and returns them on free,
    so every forward pass page-faults its activations in again (a batch of 8 at 256² makes
    33 MB tensors). Raising the threshold keeps them in the heap (forward-only speed on the
    2-core CPU: benchmarks/RESULTS.md). Memory stays bounded by the largest working set.
    No effect (and ``False``) where the C library has no ``mallopt`` (not glibc).
    """
    try:
        import ctypes

        return bool(ctypes.CDLL(None).mallopt(-3, HEAP_REUSE_BYTES))  # -3: M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present; an unavailable CUDA request is an error, not a silent CPU run."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InferenceError(f"--device {name}: CUDA is not available on this machine (use auto or cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InferenceError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) present")
    return device


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    if device.type != "cuda" or precision == "fp32":
        return torch.float32
    if precision == "bf16" or (precision == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. a container's or taskset's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class Lanes:
    """How the forward passes are spread: ``count`` inference threads, each running batches
    with ``threads`` intra-op (OpenMP) threads of its own."""

    count: int
    threads: int


def resolve_lanes(device: torch.device, lanes: int = 0, torch_threads: int = 0, cores: int | None = None) -> Lanes:
    """Defaults for ``loader.lanes`` and ``loader.torch_threads`` (0 = auto).

    On a CPU the auto setting is two lanes that split the cores. One forward pass using all
    cores stalls whenever a decode or writer thread takes a core from one of its OpenMP
    threads (the others wait at the next barrier); with two lanes the other lane keeps
    computing, and a lane also does its batch's chroma planes while the other runs the
    network. Measured on 2 cores (batch 8 at 256²): forward passes alone 50 images/s with
    2 lanes x 1 thread against 44 with 1 lane x 2 threads. On CUDA one lane feeds the GPU.
    """
    cores = cores or usable_cores()
    count = lanes or (2 if device.type == "cpu" and cores >= 2 else 1)
    return Lanes(count, torch_threads or max(1, cores // count))


class Colorizer:
    """Wraps a generator: grey uint8 squares in, ab (Lab units, float32) out.

    :meth:`predict` may be called from several threads at once (the engine's lanes): the
    generator is in eval mode under inference mode, so its weights are only read.
    """

    def __init__(self, generator: UNetGenerator | EffUNetGenerator, device: torch.device, precision: str = "auto",
                 temperature: float | None = None, hint_edges: bool = False):
        self.device = device
        self.hint_edges = hint_edges  # hints reshaped by the photo's edges (hint_edges.edge_aware), else as the branch gives them
        if temperature is not None and isinstance(generator, EffUNetGenerator):
            generator.temperature = temperature  # annealed-mean decode of the classification-head family
        self.dtype = resolve_precision(precision, device)
        if device.type == "cpu":
            tune_allocator()
        # the caller's generator is moved to the device, put in eval mode and given the temperature
        self.generator: UNetGenerator | EffUNetGenerator = generator.to(device).eval()
        if isinstance(self.generator, EffUNetGenerator):  # BN folded into the convolutions of a copy
            self.generator = fused_for_inference(self.generator)
        if device.type == "cuda":
            self.generator = self.generator.to(memory_format=torch.channels_last)
        self.multiple = generator.config.multiple
        self.takes_hints = bool(getattr(generator.config, "hint_channels", ()))
        self.forward_seconds = 0.0  # summed over lanes (threads calling predict)
        self.images = 0
        self._count_lock = threading.Lock()

    @classmethod
    def for_model(cls, generator: UNetGenerator | EffUNetGenerator, device: torch.device, model: ModelSection) -> Colorizer:
        """The colorizer a run uses for ``model``'s settings (precision, temperature, hint_edges): the
        one place that reads them, so ``run``, its engines, ``eval``, ``review`` and the API agree."""
        return cls(generator, device, model.precision, model.temperature, model.hint_edges)

    @torch.inference_mode()
    def predict(self, grey_batch: torch.Tensor, on_device: bool = False, hints: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, 1, S, S)`` uint8 grey levels -> ``(B, 2, S, S)`` float32 ab in Lab units.

        ``hints``: ``(B, 3, S, S)`` colour-hint planes (:func:`colorize_batch.hints.rasterize`) for a
        generator with a hint branch; ``None`` (or all-zero planes) gives the automatic colours.
        With ``hint_edges`` the generator also runs without them, and the hints' effect is cut at
        the grey photo's edges and their colour carried along it (:func:`colorize_batch.hint_edges.edge_aware`).
        The result is on the CPU, or left on the run's device with ``on_device=True``.
        """
        side = grey_batch.shape[-1]
        if side % self.multiple or grey_batch.shape[-2] % self.multiple:
            raise InferenceError(f"input size {tuple(grey_batch.shape[-2:])} is not a multiple of {self.multiple}")
        start = time.perf_counter()
        x = grey_batch.to(self.device, non_blocking=True)
        l_norm = normalize_l(grey_to_lightness(x))
        planes = None if hints is None or not self.takes_hints else hints.to(self.device, non_blocking=True)
        ab = self._forward(l_norm, planes)
        if planes is not None and self.hint_edges:
            ab = edge_aware(self._forward(l_norm, None), ab, grey_to_lightness(x[:, 0]), planes)
        ab = ab if on_device else ab.cpu()
        with self._count_lock:
            self.forward_seconds += time.perf_counter() - start
            self.images += grey_batch.shape[0]
        return ab

    def _forward(self, l_norm: torch.Tensor, planes: torch.Tensor | None) -> torch.Tensor:
        """The generator's ab in Lab units (float32, on the device) for normalised L (+ hint planes)."""
        extra = {} if planes is None else {"hints": planes}
        if self.device.type == "cuda":
            l_norm = l_norm.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=self.dtype, enabled=self.dtype != torch.float32):
                ab = self.generator(l_norm, **extra)
            ab = torch.nan_to_num(ab.float(), nan=0.0, posinf=1.0, neginf=-1.0)  # an fp16 overflow must not become NaN colour
        else:
            ab = self.generator(l_norm, **extra)
        return denormalize_ab(ab)

    @torch.inference_mode()
    def bin_probabilities(self, grey_batch: torch.Tensor, hints: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The model's belief over colours: ``(B, Q, S/4, S/4)`` probabilities of its ab bins
        (softmax at temperature 1, not the annealed decode that :meth:`predict` returns) and the
        bins' ab centres ``(Q, 2)`` in Lab units, on the CPU. ``None`` for a generator that
        predicts ab directly (the pix2pix family has no bins)."""
        if not isinstance(self.generator, EffUNetGenerator):
            return None
        l_norm = normalize_l(grey_to_lightness(grey_batch.to(self.device)))
        extra = None if hints is None or not self.takes_hints else hints.to(self.device)
        logits = self.generator.logits(l_norm, extra)
        return torch.softmax(logits.float(), dim=1).cpu(), self.generator.ab_bins.float().cpu()
