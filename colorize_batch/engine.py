"""The local engine: distributes the stages over one machine.

    discovery -> decoding (DataLoader workers) -> inference (batched, lane threads)
              -> recombination + encoding + writing (thread pool) -> reporting/manifest

It only wires the stage modules together; each stage lives in the module named after it.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torch.utils.data._utils import signal_handling

from .config import PipelineConfig
from .names import display
from .decoding import DecodeDataset, collate_items, unpack_batch
from .discovery import DiscoveryError, WorkItem, check_roots, find_images, output_path
from .inference import Colorizer, Lanes, resolve_lanes, usable_cores
from .manifest import Manifest, RunIdentity, close_inherited_locks, fingerprint, state_dir
from .recombination import chroma_planes, recombine, recombine_ycbcr
from .reporting import ProgressDisplay, RunStats
from .sharding import Shard
from .writing import (
    PIL_FORMAT,
    Provenance,
    WriteError,
    atomic_write,
    copy_file,
    encode,
    encode_jpeg_ycbcr,
    encode_png16,
    encode_tiff16,
    jpeg_half_chroma,
    output_format,
    refuse_source,
    target_problem,
    wants_16_bit,
)

log = logging.getLogger("colorize_batch")


@dataclass
class Job:
    item: WorkItem
    output: Path
    fingerprint: str
    page: int = 0  # TIFF page (input.tiff_pages: all)
    pages: int = 1

    @property
    def source_key(self) -> str:
        return str(self.item.relative) + (f"#p{self.page + 1}" if self.pages > 1 else "")


def tiff_page_count(path: Path) -> int:
    """Pages of a TIFF (1 if it cannot be read here: decoding will report why)."""
    try:
        with Image.open(path) as im:
            return int(getattr(im, "n_frames", 1))
    except Exception:  # noqa: BLE001 - e.g. TypeError from a later IFD without dimensions
        return 1


@dataclass
class Plan:
    in_path: Path
    out_path: Path
    jobs: list[Job] = field(default_factory=list)
    up_to_date: int = 0
    problems: list[tuple[str, str]] = field(default_factory=list)  # (path, reason): fail before decoding

    @property
    def single_file(self) -> bool:
        return self.in_path.is_file()


def resolve_out(in_path: Path, out_path: Path) -> tuple[Path, bool]:
    """For a single input file, OUT may name the output file or a folder to put it in."""
    if in_path.is_file():
        if out_path.suffix.lower() in PIL_FORMAT and not out_path.is_dir():
            return out_path, True
        return out_path, False
    return out_path, False


def plan_run(
    in_path: Path,
    out_path: Path,
    config: PipelineConfig,
    manifest: Manifest | None,
    ident: RunIdentity | None,
    force: bool = False,
    checksum: bool = False,
    shard: Shard | None = None,
) -> Plan:
    """Discover inputs, map outputs, drop what is up to date, flag output collisions.

    With a ``shard``, outputs are still claimed over the whole tree (so collisions are seen
    the same way by every shard) but only the shard's own files become jobs.
    """
    check_roots(in_path, out_path)
    out_file_mode = resolve_out(in_path, out_path)[1]
    inp = config.input
    items = find_images(
        in_path, inp.extensions, inp.include, inp.exclude, skip_dirs=[out_path],
        on_warning=lambda msg: log.warning("%s", msg),
    )
    if out_file_mode or in_path.is_file():
        dest = output_path(items[0], out_path, config.output.format, single_file=out_file_mode)
        try:
            if dest.exists() and os.path.samefile(dest, in_path):
                raise DiscoveryError(f"{display(dest)}: the output would replace the input file; choose another output")
        except OSError:
            pass
    plan = Plan(in_path, out_path)
    claimed: dict[str, str] = {}
    known_outputs = manifest.outputs() if manifest is not None else set()
    overwrite_foreign = force or config.output.overwrite == "foreign"
    all_pages = config.input.tiff_pages == "all"
    for item in items:
        dest = output_path(item, out_path, config.output.format, single_file=out_file_mode)
        if shard is not None and not shard.owns(str(item.relative)):
            claimed.setdefault(str(dest), str(item.source))
            continue
        pages = tiff_page_count(item.source) if all_pages and item.source.suffix.lower() in (".tif", ".tiff") else 1
        try:
            fp = fingerprint(item.source, checksum)
        except OSError as exc:
            plan.problems.append((str(item.source), f"cannot read: {exc.strerror}"))
            continue
        for page in range(pages):
            page_dest = dest.with_name(f"{dest.stem}_p{page + 1}{dest.suffix}") if pages > 1 else dest
            key = str(page_dest)
            if key in claimed:
                plan.problems.append((str(item.source), f"output {page_dest} is also the output of {claimed[key]}; not overwritten (rename one or use --format same)"))
                continue
            claimed[key] = str(item.source)
            job = Job(item, page_dest, fp, page, pages)
            if not force and manifest is not None and ident is not None and manifest.is_current(job.source_key, fp, ident):
                plan.up_to_date += 1
                continue
            rel = os.path.relpath(page_dest, out_path) if not out_file_mode else page_dest.name
            problem = target_problem(page_dest, item.source, out_path if not out_file_mode else page_dest.parent,
                                     rel in known_outputs, overwrite_foreign)
            if problem:
                plan.problems.append((str(item.source), problem))
                continue
            plan.jobs.append(job)
    return plan


def ramped_batches(count: int, batch_size: int) -> list[list[int]]:
    """Indices ``0..count-1`` in order, as batches of 1, 2, 4, ... up to ``batch_size``.

    The network cannot start before its first batch is decoded; a first batch of one image
    gets it going after one decode instead of ``batch_size`` (8 large scans take ~0.3 s on
    2 cores), while the decode worker fills the queue for the full batches that follow.
    """
    batches, start, size = [], 0, 1
    while start < count:
        batches.append(list(range(start, min(count, start + size))))
        start += size
        size = min(batch_size, size * 2)
    return batches


def _die_with_parent() -> None:
    """Linux: the kernel kills this process when its parent dies (kill -9 of a run)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def init_decode_worker(_worker_id: int) -> None:
    """Set up a DataLoader decode worker (a forked child of the run).

    - Its own process group: a terminal's Ctrl-C and a ``kill -TERM -- -PGID`` reach only
      the main process, which decides how to stop; SIGTERM keeps its default action, so
      the main process (or interpreter exit) can always end a worker.
    - It drops its copy of the run lock's descriptor and dies with its parent: a rerun
      right after ``kill -9`` of a run is not locked out by an orphaned worker.
    - C libraries' messages on stderr (libtiff's) are captured per file for the report.
    """
    os.setpgrp()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    close_inherited_locks()
    _die_with_parent()
    info = torch.utils.data.get_worker_info()
    if info is not None:
        info.dataset.capture_stderr()


# Worker deaths are noticed by polling (LOADER_POLL_SECONDS) instead of torch's SIGCHLD handler,
# which raises asynchronously in whatever the main thread is doing at that moment.
signal_handling._SIGCHLD_handler_set = True
LOADER_POLL_SECONDS = 1.0


class LoaderFailure(Exception):
    """A decode worker died or hung; the message says which."""


def _next_batch(it, budget: float, stop) -> dict | None:
    """The loader's next batch (``None`` at the end), waiting at most ``budget`` seconds."""
    waited = 0.0
    while True:
        try:
            return next(it)
        except StopIteration:
            return None
        except (EOFError, OSError) as exc:  # a batch's shared memory lives in its sender: it died before handing it over
            raise LoaderFailure(f"the decode worker died before its batch was received ({type(exc).__name__})") from None
        except RuntimeError as exc:
            if "timed out" not in str(exc):
                raise LoaderFailure(f"the decode worker died: {exc}") from None
            waited += LOADER_POLL_SECONDS
            if stop:
                return None
            if waited >= budget:
                raise LoaderFailure(f"decoding took longer than input.decode_timeout ({budget:g} s)") from None


def _loader(dataset: DecodeDataset, batches: list[list[int]], workers: int, prefetch_factor: int) -> DataLoader:
    return DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=workers,
        collate_fn=collate_items,
        prefetch_factor=prefetch_factor if workers else None,
        worker_init_fn=init_decode_worker if workers else None,
        timeout=LOADER_POLL_SECONDS if workers else 0,
        pin_memory=False,
    )


def _decode_alone(dataset: DecodeDataset, index: int, timeout: float, stop, first_failure: str) -> dict:
    """One file in a fresh worker of its own (the retry after a worker failure)."""
    it = iter(_loader(dataset, [[index]], 1, 1))
    try:
        batch = _next_batch(it, timeout, stop)
    except LoaderFailure as exc:
        batch = collate_items([{"index": index, "error": f"{exc} (retried once in a fresh worker)"}])
    finally:
        del it  # shuts the worker down (SIGTERM if it does not stop)
    if batch is None:  # stopping
        batch = collate_items([{"index": index, "error": f"not decoded: {first_failure}"}])
    return batch


def decoded_batches(dataset: DecodeDataset, batch_size: int, workers: int, prefetch_factor: int, timeout: float,
                    stop) -> Iterator[dict]:
    """Decoded batches of ``dataset`` in order, surviving decode workers that die or hang.

    A worker killed (segfault in a C decoder, the OOM killer) or stuck longer than
    ``timeout`` seconds a file costs only the files of the batch it held: each of those is
    retried once alone in a fresh worker, a file that fails again is failed with the reason,
    and the rest of the run continues in a new DataLoader.
    """
    pending = list(range(len(dataset)))
    if workers == 0:
        yield from _loader(dataset, [[pending[i] for i in b] for b in ramped_batches(len(pending), batch_size)], 0, 1)
        return
    while pending:
        batches = [[pending[i] for i in b] for b in ramped_batches(len(pending), batch_size)]
        it = iter(_loader(dataset, batches, workers, prefetch_factor))
        delivered = 0
        try:
            while delivered < len(batches):
                batch = _next_batch(it, timeout * len(batches[delivered]), stop)
                if batch is None:
                    return
                delivered += 1
                yield batch
            return
        except LoaderFailure as exc:
            failure = str(exc)
        finally:
            del it
        suspects = batches[delivered]
        log.warning("%s; retrying its %d file(s) one by one", failure, len(suspects))
        for index in suspects:
            if stop:
                return
            yield _decode_alone(dataset, index, timeout, stop, failure)
        pending = [i for b in batches[delivered + 1:] for i in b]


class StopFlag:
    """Set by SIGINT/SIGTERM: finish in-flight writes, flush, exit 130."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self._previous: dict = {}

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, _frame) -> None:
        if self.event.is_set():  # a second signal: stop now
            raise KeyboardInterrupt
        log.warning("%s received: finishing in-flight files, then stopping", signal.Signals(signum).name)
        self.event.set()

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def __bool__(self) -> bool:
        return self.event.is_set()


@dataclass
class FileResult:
    """What happened to one job; engines produce these, :class:`ResultSink` records them."""

    job: Job
    status: str  # done | copied | skipped_color | failed
    sha256: str | None = None
    reason: str | None = None
    stage_seconds: dict = field(default_factory=dict)
    disk_full: bool = False


def render(item: dict, ab: torch.Tensor, planes: tuple[torch.Tensor, torch.Tensor], job: Job, config: PipelineConfig,
           prov: Provenance | None) -> tuple[str, dict]:
    """Recombination + encoding + atomic write of one image; returns (sha256, stage seconds)."""
    t0 = time.perf_counter()
    fmt, opts = output_format(job.output), config.output
    deep = wants_16_bit(fmt, opts, item["bits"])
    if fmt == "JPEG" and opts.recombination == "fast":  # JFIF planes straight to the encoder
        ycc = recombine_ycbcr(item["grey"], planes, bits=item["bits"], half_chroma=jpeg_half_chroma(opts))
        t1 = time.perf_counter()
        data = encode_jpeg_ycbcr(ycc, opts, item["meta"], prov)
    else:
        rgb = recombine(item["grey"], ab, planes, bits=item["bits"], method=opts.recombination,
                        sixteen_bit_out=deep, chroma_gain=config.model.chroma_gain)
        t1 = time.perf_counter()
        if deep:
            rgb16 = rgb.numpy().astype(np.uint16)
            data = (encode_png16 if fmt == "PNG" else encode_tiff16)(rgb16, opts, item["meta"], prov)
        else:
            data = encode(rgb, fmt, opts, item["meta"], prov)
    t2 = time.perf_counter()
    refuse_source(job.output, job.item.source)  # checked at plan time too; the tree may have changed since
    sha = atomic_write(job.output, data)
    t3 = time.perf_counter()
    return sha, {"recombine": t1 - t0, "encode": t2 - t1, "write": t3 - t2}


def render_result(item: dict, ab: torch.Tensor, planes: tuple[torch.Tensor, torch.Tensor], job: Job,
                  config: PipelineConfig, model_id: str) -> FileResult:
    """:func:`render` that never raises: a failure becomes a ``failed`` result with its reason."""
    prov = Provenance(model_id, str(job.item.source)) if config.output.metadata else None
    try:
        sha, timings = render(item, ab, planes, job, config, prov)
    except WriteError as exc:
        return FileResult(job, "failed", reason=str(exc), disk_full=exc.disk_full)
    except Exception as exc:  # noqa: BLE001 - one file must not stop the run
        return FileResult(job, "failed", reason=f"{type(exc).__name__}: {exc}")
    return FileResult(job, "done", sha, stage_seconds=timings)


def triage(item: dict, job: Job, config: PipelineConfig) -> FileResult | None:
    """Decode failures and colour inputs are settled here; ``None`` means: colorize it."""
    if item["error"]:
        return FileResult(job, "failed", reason=item["error"])
    chroma = item["chroma"]
    policy = config.input.color_inputs
    if chroma is None or chroma <= config.input.color_threshold or policy == "recolor":
        return None
    if policy == "skip":
        log.info("%s: already in colour; skipped (input.color_inputs: skip)", job.item.source)
        return FileResult(job, "skipped_color")
    dest = job.output.with_suffix(job.item.source.suffix)
    try:
        sha = copy_file(job.item.source, dest)
    except WriteError as exc:
        return FileResult(job, "failed", reason=str(exc), disk_full=exc.disk_full)
    job.output = dest
    return FileResult(job, "copied", sha)


def predict_planes(colorizer: Colorizer, items: list[dict], config: PipelineConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """One batched forward pass + chroma planes on the device; returns CPU (ab, cb, cr, plane seconds)."""
    grey_small = torch.stack([it["net"] for it in items])
    ab = colorizer.predict(grey_small, on_device=True)
    t0 = time.perf_counter()
    cb, cr = chroma_planes(grey_small[:, 0].to(ab.device), ab, config.model.chroma_gain)
    ab, cb, cr = ab.cpu(), cb.cpu(), cr.cpu()
    return ab, cb, cr, time.perf_counter() - t0


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
        if result.status == "failed":
            stats.fail(str(job.item.source), result.reason or "failed")
            if result.disk_full and not stats.stopped_reason:
                stats.stopped_reason = "disk full: run stopped"
                log.error("output disk is full: stopping the run (nothing partial was left)")
        else:
            stats.counts[result.status] += 1
        for stage, seconds in result.stage_seconds.items():
            stats.stage_seconds[stage] += seconds
        if self.manifest is not None and self.ident is not None:
            out_rel = str(job.output.relative_to(self.out_root)) if result.status in ("done", "copied") else None
            self.manifest.add(job.source_key, job.fingerprint, self.ident, result.status, out_rel, result.sha256, result.reason)
        if self.progress is not None:
            self.progress.advance()


POLL_SECONDS = 0.1  # how often a blocked thread looks whether the run is being torn down


def _get(q: queue.Queue, abort: threading.Event):
    """The next item of ``q``, or ``None`` once ``abort`` is set."""
    while not abort.is_set():
        try:
            return q.get(timeout=POLL_SECONDS)
        except queue.Empty:
            pass
    return None


def _put(q: queue.Queue, item, abort: threading.Event) -> bool:
    """Put ``item`` into ``q``; ``False`` if ``abort`` was set first."""
    while not abort.is_set():
        try:
            q.put(item, timeout=POLL_SECONDS)
            return True
        except queue.Full:
            pass
    return False


def _acquire(slots: threading.Semaphore, abort: threading.Event) -> bool:
    while not abort.is_set():
        if slots.acquire(timeout=POLL_SECONDS):
            return True
    return False


class LocalEngine:
    """Decoding in DataLoader worker processes, forward passes in lane threads, rendering in a thread pool.

    The main thread only moves decoded batches from the DataLoader into a short queue. Each
    lane (:func:`~colorize_batch.inference.resolve_lanes`) takes a batch, settles failures and
    colour inputs, runs the forward pass and the chroma planes with its own intra-op threads,
    and hands each image to the writer pool. Results are recorded, under one lock, by
    whichever thread finishes them. Bounded everywhere: ``lanes`` batches queued, one batch in
    each lane, at most ``2 x writer_threads + batch_size`` images waiting for a writer.
    """

    def __init__(self, config: PipelineConfig, colorizer: Colorizer, model_id: str, stats: RunStats,
                 manifest: Manifest | None, ident: RunIdentity | None, quiet: bool = False,
                 lanes: Lanes | None = None):
        self.config = config
        self.colorizer = colorizer
        self.model_id = model_id
        self.stats = stats
        self.manifest = manifest
        self.ident = ident
        self.quiet = quiet
        self.lanes = lanes or resolve_lanes(colorizer.device, config.loader.lanes, config.loader.torch_threads)

    def run(self, plan: Plan, stop: StopFlag) -> None:
        cfg, stats, jobs = self.config, self.stats, plan.jobs
        dataset = DecodeDataset([j.item.source for j in jobs], cfg.model.size, cfg.input.max_pixels, [j.page for j in jobs],
                                timeout=cfg.input.decode_timeout)
        loader = decoded_batches(dataset, cfg.loader.batch_size, cfg.loader.workers, cfg.loader.prefetch_factor,
                                 cfg.input.decode_timeout, stop)
        progress = ProgressDisplay(len(jobs), quiet=self.quiet)
        sink = ResultSink(stats, self.manifest, self.ident, plan.out_path, progress)
        lock = threading.Lock()  # the sink (counters, manifest, progress) and the stage clocks
        abort = threading.Event()  # set when the run is being torn down: nobody waits any more
        failures: list[BaseException] = []  # a lane's or a writer callback's unexpected error, re-raised here
        batches: queue.Queue = queue.Queue(maxsize=self.lanes.count)
        in_flight = threading.Semaphore(cfg.loader.writer_threads * 2 + cfg.loader.batch_size)
        threads_per_writer = max(1, usable_cores() // cfg.loader.writer_threads)  # torch ops in writers share the cores too
        pool = ThreadPoolExecutor(max_workers=cfg.loader.writer_threads, thread_name_prefix="writer",
                                  initializer=torch.set_num_threads, initargs=(threads_per_writer,))

        closed = threading.Event()  # set when run() leaves: late results (after a second Ctrl-C) are dropped

        def record(result: FileResult) -> None:
            with lock:
                if not closed.is_set():  # an unrecorded output is simply redone by the next run
                    sink.add(result)

        def fail(exc: BaseException) -> None:
            failures.append(exc)
            abort.set()

        def rendered(future: Future) -> None:
            try:
                record(future.result())
            except BaseException as exc:  # noqa: BLE001 - surfaced by run(), never lost in a callback
                fail(exc)
            finally:
                in_flight.release()

        def colour(batch: dict) -> None:
            to_color: list[tuple[dict, Job]] = []
            for item in unpack_batch(batch):
                job = jobs[item["index"]]
                with lock:
                    stats.stage_seconds["decode"] += item.get("decode_s", 0.0)
                    for note in item.get("notes") or ():
                        stats.note(str(job.item.source), note)
                settled = triage(item, job, cfg)
                if settled is not None:
                    record(settled)
                else:
                    to_color.append((item, job))
            if not to_color:
                return
            ab, cb, cr, plane_seconds = predict_planes(self.colorizer, [it for it, _ in to_color], cfg)
            with lock:
                stats.stage_seconds["recombine"] += plane_seconds
            for i, (item, job) in enumerate(to_color):
                if not _acquire(in_flight, abort):
                    return
                pool.submit(render_result, item, ab[i], (cb[i], cr[i]), job, cfg, self.model_id).add_done_callback(rendered)

        def lane() -> None:
            torch.set_num_threads(self.lanes.threads)  # this thread's own OpenMP team
            try:
                while (batch := _get(batches, abort)) is not None:
                    if not (stop or stats.stopped_reason):  # stopping: queued batches stay undone
                        colour(batch)
            except BaseException as exc:  # noqa: BLE001 - e.g. CUDA out of memory: stop the run, re-raise below
                fail(exc)

        threads_before = torch.get_num_threads()  # a lane's set_num_threads also sets the default for new threads
        lanes = [threading.Thread(target=lane, name=f"lane-{i}", daemon=True) for i in range(self.lanes.count)]
        for thread in lanes:
            thread.start()
        try:
            for batch in loader:
                if stop or stats.stopped_reason or not _put(batches, batch, abort):
                    break
            for _ in lanes:
                _put(batches, None, abort)  # each lane finishes what is queued, then meets a None
            for thread in lanes:
                thread.join()
        finally:
            loader.close()  # decode workers are shut down now, not when garbage is collected
            try:
                abort.set()
                for thread in lanes:
                    thread.join()
                pool.shutdown(wait=True)  # in-flight writes complete and are recorded
            finally:  # also when a second Ctrl-C interrupts the waiting above
                with lock:
                    closed.set()
                pool.shutdown(wait=False, cancel_futures=True)
                progress.close()
                torch.set_num_threads(threads_before)
        if failures:
            raise failures[0]
        stats.stage_seconds["forward"] += self.colorizer.forward_seconds
        if stop:
            stats.interrupted = True


def report_path_default(out_root: Path, tag: str = "") -> Path:
    return state_dir(out_root) / f"last-run{tag}.json"
