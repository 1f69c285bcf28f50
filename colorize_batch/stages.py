"""The per-file stages both engines run, and the record of what happened to each file.

    stage_batch: triage (decode failures, colour inputs) -> predict_planes (one batch on the device)
        -> render_result (recombine, encode, atomic write) -> FileResult -> ResultSink

Both engines call :func:`stage_batch` for each decoded batch and :func:`render_result` for
each image it leaves to render: the local engine (:mod:`~colorize_batch.local_engine`) from
its lane and writer threads, the Ray engine (:mod:`~colorize_batch.ray_engine`) in its
actors. The runner folds each :class:`FileResult` into the counters, manifest and progress
display with the one :class:`ResultSink` it builds for the run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .config import PipelineConfig
from .batch_transport import DecodedItem
from .hints import Hints, apply_tint, batch_planes
from .inference import Colorizer
from .manifest import Manifest, RunIdentity, Status
from .names import display
from .planning import Job
from .recombination import chroma_planes, recombine, recombine_ycbcr
from .reporting import ProgressDisplay, RunStats
from .encoding import (
    Provenance,
    encode,
    encode_jpeg_ycbcr,
    encode_png16,
    encode_tiff16,
    jpeg_half_chroma,
    output_format,
    wants_16_bit,
)
from .safe_files import WriteError, atomic_write, copy_file, refuse_source

log = logging.getLogger("colorize_batch")


@dataclass
class FileResult:
    """What happened to one job; engines produce these, :class:`ResultSink` records them.

    ``output``: the file written (``job.output``, or for a copied colour input the same name with
    the source's suffix); ``None`` when nothing was written."""

    job: Job
    status: Status
    sha256: str | None = None
    reason: str | None = None
    stage_seconds: dict[str, float] = field(default_factory=dict)
    disk_full: bool = False
    output: Path | None = None


def render(item: DecodedItem, ab: torch.Tensor, planes: tuple[torch.Tensor, torch.Tensor], job: Job,
           config: PipelineConfig, prov: Provenance | None) -> tuple[str, dict[str, float]]:
    """Recombination + encoding + atomic write of one image; returns (sha256, stage seconds)."""
    assert item.grey is not None, "render needs a decoded item"
    t0 = time.perf_counter()
    fmt, opts = output_format(job.output), config.output
    deep = wants_16_bit(fmt, opts, item.bits)
    if fmt == "JPEG" and opts.recombination == "fast":  # JFIF planes straight to the encoder
        ycc = recombine_ycbcr(item.grey, planes, bits=item.bits, half_chroma=jpeg_half_chroma(opts))
        t1 = time.perf_counter()
        data = encode_jpeg_ycbcr(ycc, opts, item.meta, prov)
    else:
        rgb = recombine(item.grey, ab, planes, bits=item.bits, method=opts.recombination,
                        sixteen_bit_out=deep, chroma_gain=config.model.chroma_gain)
        t1 = time.perf_counter()
        if deep:
            assert isinstance(rgb, torch.Tensor)  # 16-bit values
            rgb16 = rgb.numpy().astype(np.uint16)
            data = (encode_png16 if fmt == "PNG" else encode_tiff16)(rgb16, opts, item.meta, prov)
        else:
            assert isinstance(rgb, Image.Image)
            data = encode(rgb, fmt, opts, item.meta, prov)
    t2 = time.perf_counter()
    refuse_source(job.output, job.item.source)  # checked at plan time too; the tree may have changed since
    sha = atomic_write(job.output, data)
    t3 = time.perf_counter()
    return sha, {"recombine": t1 - t0, "encode": t2 - t1, "write": t3 - t2}


def render_result(item: DecodedItem, ab: torch.Tensor, planes: tuple[torch.Tensor, torch.Tensor], job: Job,
                  config: PipelineConfig, model_id: str) -> FileResult:
    """:func:`render` that never raises: a failure becomes a ``failed`` result with its reason."""
    prov = Provenance(model_id, str(job.item.source)) if config.output.metadata else None
    try:
        sha, timings = render(item, ab, planes, job, config, prov)
    except WriteError as exc:
        return FileResult(job, Status.FAILED, reason=str(exc), disk_full=exc.disk_full)
    except Exception as exc:  # noqa: BLE001 - one file must not stop the run
        return FileResult(job, Status.FAILED, reason=f"{type(exc).__name__}: {exc}")
    return FileResult(job, Status.DONE, sha, stage_seconds=timings, output=job.output)


def decode_notes(item: DecodedItem, job: Job) -> list[str]:
    """What the report says of a decoded file that was still done: the decoder's warnings, and the
    pages of a multi-page TIFF that ``input.tiff_pages: first`` leaves out (both engines)."""
    pages = int(item.meta.get("pages", 1)) if item.meta else 1
    if job.pages == 1 and pages > 1 and job.item.source.suffix.lower() in (".tif", ".tiff"):
        return [*item.notes, f"TIFF of {pages} pages: the first is colorized (input.tiff_pages: all for every page)"]
    return list(item.notes)


def triage(item: DecodedItem, job: Job, config: PipelineConfig) -> FileResult | None:
    """Decode failures and colour inputs are settled here; ``None`` means: colorize it."""
    if item.error:
        return FileResult(job, Status.FAILED, reason=item.error)
    chroma = item.chroma
    policy = config.input.color_inputs
    if chroma is None or chroma <= config.input.color_threshold or policy == "recolor":
        return None
    if policy == "skip":
        log.info("%s: already in colour; skipped (input.color_inputs: skip)", display(job.source_name))
        return FileResult(job, Status.SKIPPED_COLOR)
    if job.copy_problem:  # a foreign file where the copy would go (with --format jpg|png|tif: another suffix)
        return FileResult(job, Status.FAILED, reason=job.copy_problem)
    dest = job.copy_output
    try:
        sha = copy_file(job.item.source, dest)
    except WriteError as exc:
        return FileResult(job, Status.FAILED, reason=str(exc), disk_full=exc.disk_full)
    return FileResult(job, Status.COPIED, sha, output=dest)


def _network_square(item: DecodedItem) -> torch.Tensor:
    if item.net is None:
        raise ValueError(f"item {item.index} has no network input ({item.error or 'still packed'})")
    return item.net


def network_squares(items: list[DecodedItem]) -> torch.Tensor:
    """The ``(B, 1, S, S)`` uint8 squares the network sees."""
    return torch.stack([_network_square(it) for it in items])


def network_hints(colorizer: Colorizer, items: list[DecodedItem], hints: Sequence[Hints | None], size: int) -> torch.Tensor | None:
    """The batch's hint planes at the network's ``size`` (each image's points placed on its upright
    shape), or ``None`` when the generator has no hint branch or no image has points."""
    if not colorizer.takes_hints:
        return None
    shapes = [tuple(it.grey.shape[-2:]) if it.grey is not None else (1, 1) for it in items]
    return batch_planes(hints, shapes, size)  # type: ignore[arg-type]


def predict_planes(colorizer: Colorizer, items: list[DecodedItem], config: PipelineConfig,
                   hints: Sequence[Hints | None] = ()) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """One batched forward pass + chroma planes on the device; returns CPU (ab, cb, cr, plane seconds).

    ``hints``: each item's colour hints (its job's), points as extra network inputs and a global
    tint mixed into the prediction; none at all leaves the batch exactly as without hints.
    """
    grey_small = network_squares(items)
    hints = list(hints) or [None] * len(items)
    ab = colorizer.predict(grey_small, on_device=True, hints=network_hints(colorizer, items, hints, grey_small.shape[-1]))
    if any(h is not None and h.tint is not None for h in hints):
        ab = ab.clone()  # predict's result is an inference tensor: not writable outside inference mode
        for i, h in enumerate(hints):
            if h is not None and h.tint is not None:
                ab[i] = apply_tint(ab[i], h.tint)
    t0 = time.perf_counter()
    cb, cr = chroma_planes(grey_small[:, 0].to(ab.device), ab, config.model.chroma_gain)
    ab, cb, cr = ab.cpu(), cb.cpu(), cr.cpu()
    return ab, cb, cr, time.perf_counter() - t0


@dataclass
class PendingRender:
    """One image of a batch that :func:`stage_batch` left to :func:`render_result`."""

    item: DecodedItem
    job: Job
    ab: torch.Tensor
    planes: tuple[torch.Tensor, torch.Tensor]


@dataclass
class StagedBatch:
    """A batch after triage and the forward pass: files already settled, images left to render, and
    the seconds the forward pass (``colorizer.forward_seconds`` grew by) and the chroma planes took."""

    settled: list[FileResult]
    renders: list[PendingRender] = field(default_factory=list)
    forward_seconds: float = 0.0
    plane_seconds: float = 0.0


def stage_batch(colorizer: Colorizer, pairs: Sequence[tuple[DecodedItem, Job]], config: PipelineConfig,
                contain_errors: bool = False) -> StagedBatch:
    """Triage each decoded item of a batch, then one :func:`predict_planes` for those to colorize.

    ``contain_errors``: an error of the forward pass (CUDA out of memory) fails the batch's files
    to colorize instead of propagating (it then stops the whole run).
    """
    settled: list[FileResult] = []
    to_color: list[tuple[DecodedItem, Job]] = []
    for item, job in pairs:
        result = triage(item, job, config)
        if result is None:
            to_color.append((item, job))
        else:
            settled.append(result)
    if not to_color:
        return StagedBatch(settled)
    forward_before = colorizer.forward_seconds
    try:
        ab, cb, cr, plane_seconds = predict_planes(colorizer, [item for item, _ in to_color], config,
                                                   [job.hints for _, job in to_color])
    except Exception as exc:
        if not contain_errors:
            raise
        reason = f"inference failed: {type(exc).__name__}: {exc}".splitlines()[0]
        return StagedBatch(settled + [FileResult(job, Status.FAILED, reason=reason) for _, job in to_color])
    renders = [PendingRender(item, job, ab[i], (cb[i], cr[i])) for i, (item, job) in enumerate(to_color)]
    return StagedBatch(settled, renders, colorizer.forward_seconds - forward_before, plane_seconds)


class ResultSink:
    """Folds :class:`FileResult` rows into the run's counters, manifest and progress display."""

    def __init__(self, stats: RunStats, manifest: Manifest | None, ident: RunIdentity | None, out_root: Path,
                 progress: ProgressDisplay | None = None):
        self.stats = stats
        self.manifest = manifest
        self.ident = ident
        self.out_root = out_root
        self.progress = progress

    def add(self, result: FileResult) -> None:
        stats, job = self.stats, result.job
        stats.settled.add(job.source_key)
        if result.status is Status.FAILED:
            stats.fail(job.source_name, result.reason or "failed")
            if result.disk_full and not stats.stopped_reason:
                stats.stopped_reason = "disk full: run stopped"
                log.error("output disk is full: stopping the run (nothing partial was left)")
        else:
            stats.counts.add(result.status)
        for stage, seconds in result.stage_seconds.items():
            stats.stage_seconds[stage] += seconds
        if self.manifest is not None and self.ident is not None:
            written = result.output if result.status.wrote_output else None
            out_rel = str(written.relative_to(self.out_root)) if written is not None else None
            self.manifest.add(job.source_key, job.fingerprint, self.ident, result.status, out_rel, result.sha256,
                              result.reason, hinted=job.hints is not None)
        if self.progress is not None:
            self.progress.advance()
