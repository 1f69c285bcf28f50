"""The local engine: every stage of a run on this machine.

    decode (DataLoader worker processes) -> stage_batch: triage + forward pass + chroma planes
        (lane threads) -> render_result: recombine + encode + write (writer thread pool)
        -> the runner's ResultSink (under one lock)

The stages themselves live in :mod:`~colorize_batch.stages` (shared with the Ray engine);
this module only distributes them over processes and threads, and survives decode workers
that die or hang.
"""

from __future__ import annotations

import logging
import os
import queue
import resource
import signal
import threading
import time
from collections.abc import Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from torch.utils.data._utils import signal_handling

from .config import LoaderSection, PipelineConfig
from .batch_transport import DecodedBatch, DecodedItem, DecodeDataset, collate_items, unpack_batch
from .engine import EngineError
from .inference import Colorizer, Lanes, resolve_device, resolve_lanes, usable_cores
from .manifest import close_inherited_locks
from .planning import Job, Plan
from .signals import StopFlag
from .stages import FileResult, PendingRender, ResultSink, decode_notes, render_result, stage_batch
from .weights import WeightsInfo, load_weights

log = logging.getLogger("colorize_batch")


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
    dataset = info.dataset if info is not None else None
    if isinstance(dataset, DecodeDataset):
        dataset.capture_stderr()


# Worker deaths are noticed by polling (LOADER_POLL_SECONDS) instead of torch's SIGCHLD handler,
# which raises asynchronously in whatever the main thread is doing at that moment.
signal_handling._SIGCHLD_handler_set = True
LOADER_POLL_SECONDS = 1.0


class LoaderFailure(Exception):
    """A decode worker died or hung; the message says which."""


def _next_batch(it: Iterator[DecodedBatch], budget: float, stop: StopFlag) -> DecodedBatch | None:
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


def _decode_alone(dataset: DecodeDataset, index: int, timeout: float, stop: StopFlag, first_failure: str) -> DecodedBatch:
    """One file in a fresh worker of its own (the retry after a worker failure)."""
    it = iter(_loader(dataset, [[index]], 1, 1))
    try:
        batch = _next_batch(it, timeout, stop)
    except LoaderFailure as exc:
        batch = collate_items([DecodedItem(index, error=f"{exc} (retried once in a fresh worker)")])
    finally:
        del it  # shuts the worker down (SIGTERM if it does not stop)
    if batch is None:  # stopping
        batch = collate_items([DecodedItem(index, error=f"not decoded: {first_failure}")])
    return batch


def decoded_batches(dataset: DecodeDataset, batch_size: int, workers: int, prefetch_factor: int, timeout: float,
                    stop: StopFlag) -> Generator[DecodedBatch, None, None]:
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


POLL_SECONDS = 0.1  # how often a blocked thread looks whether the run is being torn down


def pending_writes(loader: LoaderSection) -> int:
    """Images handed to the writer pool and not yet written, at most (memory and descriptors)."""
    return loader.writer_threads * 2 + loader.batch_size


# File descriptors the main process (it holds the most) needs open at once, at most:
# - FD_BASE: stdio, the lock, the manifest, a log file, torch's and Python's own;
# - per writer thread: its temporary output file and the folder it fsyncs;
# - per decode worker: its index queue (a pipe), its process sentinel, its share of the result queue;
# - per decoded batch alive in the main process: its two shared-memory storages (the grey levels'
#   buffer and the network squares), each an open descriptor for as long as it lives (torch's
#   file_descriptor sharing). Batches alive: those decoded ahead (prefetch x workers), the one the
#   loop holds, one queued per lane, and those in the lanes or waiting for writers.
# Measured (CPU, 2 lanes): the least limit a run of 48 small PNGs completes under (below it, it
# hangs) is 9 with 0 workers, 27 with 1, 32 with 2, 36 with 4, 27 with 2 at batch size 32
# (fds_needed: 20, 52, 64, 88, 64); the main process's peak over 160 640x480 JPEGs is 26 with 1
# worker, 33 with 2, 43 with 2 workers, 4 lanes and batch size 2 (fds_needed: 70).
FD_BASE, FD_PER_WRITER, FD_PER_WORKER, FD_PER_BATCH = 16, 2, 8, 2


def fds_needed(loader: LoaderSection, lanes: int) -> int:
    """Descriptors a local run with these loader settings and ``lanes`` lanes needs (``RLIMIT_NOFILE``)."""
    need = FD_BASE + FD_PER_WRITER * loader.writer_threads
    if loader.workers == 0:  # batches stay in this process: no shared memory, no pipes
        return need
    pending = pending_writes(loader)
    ramp = 3  # the ramp's first batches (1, 2, 4 images) spread pending images over more batches
    behind = min(pending, lanes + -(-pending // loader.batch_size) + ramp)  # in lanes or waiting for writers
    batches = loader.prefetch_factor * loader.workers + 1 + lanes + behind
    return need + FD_PER_WORKER * loader.workers + FD_PER_BATCH * batches


def _get(q: queue.Queue, abort: threading.Event) -> Any:
    """The next item of ``q``, or ``None`` once ``abort`` is set."""
    while not abort.is_set():
        try:
            return q.get(timeout=POLL_SECONDS)
        except queue.Empty:
            pass
    return None


def _put(q: queue.Queue, item: Any, abort: threading.Event) -> bool:
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


def _wait_for(threads: list[threading.Thread]) -> None:
    """Wait until ``threads`` have ended, by polling: a ``Thread.join()`` that a Ctrl-C interrupts
    marks a thread that is still running as ended (CPython 3.11, the fix of bpo-45274), and the
    interpreter then exits under it without waiting."""
    for thread in threads:
        while thread.is_alive():
            time.sleep(0.01)


def _finish_writes(pool: ThreadPoolExecutor, lanes: list[threading.Thread], pending: set[Future],
                   abort: threading.Event, at_once: bool) -> None:
    """Let the lanes stop and the renders complete and be recorded before run() leaves: every
    one queued, or with ``at_once`` (a second Ctrl-C) only those already writing (at most one
    per writer thread)."""
    abort.set()
    if at_once:
        pool.shutdown(wait=False, cancel_futures=True)  # never started: nothing of them is on disk
    _wait_for(lanes)  # with abort set, a lane leaves after its current step
    wait(list(pending))  # an Event wait: a Ctrl-C interrupts it harmlessly
    pool.shutdown(wait=True)  # the writer threads, idle now, end at once


def ensure_fd_limit(needed: int) -> str | None:
    """Make sure this process may open ``needed`` file descriptors: the soft ``RLIMIT_NOFILE`` is
    raised to the hard one when that is enough; otherwise the problem, in one line. Too few
    descriptors would not fail cleanly: decoded batches would wait for their shared memory until
    ``input.decode_timeout``, twice per batch."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return None
    if hard == resource.RLIM_INFINITY or hard >= needed:
        for target in (hard, needed):  # the hard limit itself may be refused (above the kernel's nr_open)
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            except (ValueError, OSError):
                continue
            log.debug("file descriptor limit raised from %d to %d", soft, target)
            return None
    available = soft if hard == resource.RLIM_INFINITY else max(soft, hard)
    return f"too few file descriptors: {available}, need {needed} (raise the limit: ulimit -n {needed})"


class LocalEngine:
    """Decoding in DataLoader worker processes, forward passes in lane threads, rendering in a thread pool.

    The main thread only moves decoded batches from the DataLoader into a short queue. Each
    lane (:func:`~colorize_batch.inference.resolve_lanes`) takes a batch, runs
    :func:`~colorize_batch.stages.stage_batch` on it (failures and colour inputs settled, the
    forward pass and the chroma planes with its own intra-op threads), and hands each image to
    the writer pool. Results go to the sink, under one lock, from whichever thread finishes
    them. Bounded everywhere: ``lanes`` batches queued, one batch in each lane, at most
    ``2 x writer_threads + batch_size`` images waiting for a writer.
    """

    def __init__(self, config: PipelineConfig, quiet: bool = False, lanes: Lanes | None = None):
        """``quiet`` is part of the engines' constructor (:func:`~colorize_batch.runner.make_engine`);
        this engine says nothing of its own. Raises ``InferenceError`` for a device that is not there."""
        self.config = config
        self.device = resolve_device(config.model.device)
        self.lanes = lanes or resolve_lanes(self.device, config.loader.lanes, config.loader.torch_threads)
        self.description = str(self.device)
        self.colorizer: Colorizer | None = None
        self.model_id = ""

    def check(self) -> None:
        problem = ensure_fd_limit(fds_needed(self.config.loader, self.lanes.count))
        if problem:
            raise EngineError(problem)

    def load(self, weights: Path, sha256: str) -> WeightsInfo:
        generator, info = load_weights(weights, self.device, sha256)
        self.colorizer = Colorizer.for_model(generator, self.device, self.config.model)
        self.model_id = info.model_id
        return info

    def run(self, plan: Plan, sink: ResultSink, stop: StopFlag) -> None:
        assert self.colorizer is not None, "load() comes before run()"
        _LocalRun(self, self.colorizer, plan, sink, stop).execute()
        sink.stats.stage_seconds["forward"] += self.colorizer.forward_seconds
        if stop:
            sink.stats.interrupted = True


class _LocalRun:
    """One :meth:`LocalEngine.run`: the threads, queues and bounds it shares, and their steps."""

    def __init__(self, engine: LocalEngine, colorizer: Colorizer, plan: Plan, sink: ResultSink, stop: StopFlag):
        cfg = self.config = engine.config
        self.colorizer, self.model_id, self.lanes_wanted = colorizer, engine.model_id, engine.lanes
        self.jobs, self.sink, self.stats, self.stop = plan.jobs, sink, sink.stats, stop
        self.lock = threading.Lock()  # the sink (counters, manifest, progress) and the stage clocks
        self.abort = threading.Event()  # set when the run is being torn down: nobody waits any more
        self.closed = threading.Event()  # set when run() leaves: late results (after a third Ctrl-C) are dropped
        self.failures: list[BaseException] = []  # a lane's or a writer callback's unexpected error, re-raised by execute()
        self.batches: queue.Queue = queue.Queue(maxsize=engine.lanes.count)
        self.in_flight = threading.Semaphore(pending_writes(cfg.loader))
        self.writing = 0  # renders started and not yet recorded
        self.pending: set[Future] = set()  # renders submitted and not yet settled
        threads_per_writer = max(1, usable_cores() // cfg.loader.writer_threads)  # torch ops in writers share the cores too
        self.pool = ThreadPoolExecutor(max_workers=cfg.loader.writer_threads, thread_name_prefix="writer",
                                       initializer=torch.set_num_threads, initargs=(threads_per_writer,))
        self.lanes: list[threading.Thread] = []

    # ------------------------------------------------------------------ results
    def record(self, result: FileResult) -> None:
        with self.lock:
            if not self.closed.is_set():  # an unrecorded output is simply redone by the next run
                self.sink.add(result)

    def fail(self, exc: BaseException) -> None:
        self.failures.append(exc)
        self.abort.set()

    def render(self, pending: PendingRender) -> FileResult:
        with self.lock:
            self.writing += 1
        return render_result(pending.item, pending.ab, pending.planes, pending.job, self.config, self.model_id)

    def rendered(self, future: Future) -> None:
        with self.lock:
            self.pending.discard(future)
        if future.cancelled():  # cancelled by a second Ctrl-C before it started: nothing written
            self.in_flight.release()
            return
        try:
            self.record(future.result())
        except BaseException as exc:  # noqa: BLE001 - surfaced by execute(), never lost in a callback
            self.fail(exc)
        finally:
            with self.lock:
                self.writing -= 1
            self.in_flight.release()

    # ------------------------------------------------------------------ lanes
    def decoded(self, batch: DecodedBatch) -> list[tuple[DecodedItem, Job]]:
        """The batch's items with their jobs; their decode seconds and notes go to the stats."""
        pairs = [(item, self.jobs[item.index]) for item in unpack_batch(batch)]
        with self.lock:
            for item, job in pairs:
                self.stats.stage_seconds["decode"] += item.decode_s
                for note in decode_notes(item, job):
                    self.stats.note(job.source_name, note)
        return pairs

    def colour(self, batch: DecodedBatch) -> None:
        staged = stage_batch(self.colorizer, self.decoded(batch), self.config)
        for result in staged.settled:
            self.record(result)
        with self.lock:
            self.stats.stage_seconds["recombine"] += staged.plane_seconds
        for pending in staged.renders:
            if not self.submit(pending):
                return

    def submit(self, pending: PendingRender) -> bool:
        """Hand one image to the writer pool; ``False`` when the run is being torn down."""
        if not _acquire(self.in_flight, self.abort):
            return False
        try:
            future = self.pool.submit(self.render, pending)
        except RuntimeError:  # the pool was shut down by a second Ctrl-C
            self.in_flight.release()
            return False
        with self.lock:
            self.pending.add(future)
        future.add_done_callback(self.rendered)  # after the add: its discard comes after it
        return True

    def stopping(self) -> bool:
        return bool(self.stop or self.stats.stopped_reason)

    def lane(self) -> None:
        torch.set_num_threads(self.lanes_wanted.threads)  # this thread's own OpenMP team
        try:
            while (batch := _get(self.batches, self.abort)) is not None:
                if not self.stopping():  # stopping: queued batches stay undone
                    self.colour(batch)
        except BaseException as exc:  # noqa: BLE001 - e.g. CUDA out of memory: stop the run, re-raise below
            self.fail(exc)

    # ------------------------------------------------------------------ the main thread
    def feed(self, loader: Iterator[DecodedBatch]) -> None:
        """Move decoded batches into the lanes' queue until the end or a stop, then end the lanes."""
        for batch in loader:
            if self.stopping() or not _put(self.batches, batch, self.abort):
                break
        for _ in self.lanes:
            _put(self.batches, None, self.abort)  # each lane finishes what is queued, then meets a None
        _wait_for(self.lanes)

    def loader(self) -> Generator[DecodedBatch, None, None]:
        cfg, jobs = self.config, self.jobs
        dataset = DecodeDataset([j.item.source for j in jobs], cfg.model.size, cfg.input.max_pixels, [j.page for j in jobs],
                                timeout=cfg.input.decode_timeout)
        return decoded_batches(dataset, cfg.loader.batch_size, cfg.loader.workers, cfg.loader.prefetch_factor,
                               cfg.input.decode_timeout, self.stop)

    def execute(self) -> None:
        loader = self.loader()
        threads_before = torch.get_num_threads()  # a lane's set_num_threads also sets the default for new threads
        self.lanes = [threading.Thread(target=self.lane, name=f"lane-{i}", daemon=True) for i in range(self.lanes_wanted.count)]
        for thread in self.lanes:
            thread.start()
        at_once = False  # a second Ctrl-C: queued renders are dropped, not waited for
        try:
            self.feed(loader)
        except KeyboardInterrupt:  # a second Ctrl-C: stop at once (below: only the writes already running finish)
            at_once = True
            raise
        finally:
            with self.stop.holding():  # a Ctrl-C meanwhile is raised below, not inside torch's worker shutdown
                loader.close()  # decode workers are shut down now, not when garbage is collected
            at_once = at_once or self.stop.held
            try:
                self.finish(at_once)
            finally:
                torch.set_num_threads(threads_before)
        if self.stop.held:  # a second Ctrl-C while the decode workers were shut down: stopped at once
            raise KeyboardInterrupt
        if self.failures:
            raise self.failures[0]

    def finish(self, at_once: bool) -> None:
        """Wait for the renders in flight (all, or with ``at_once`` those already writing), even
        through more Ctrl-C's, and leave no lane inside torch."""
        try:
            try:
                _finish_writes(self.pool, self.lanes, self.pending, self.abort, at_once)
            except KeyboardInterrupt:
                if at_once:  # a third Ctrl-C: the files being written are left to finish unrecorded
                    raise
                _finish_writes(self.pool, self.lanes, self.pending, self.abort, at_once=True)  # a second Ctrl-C while waiting for them all
                raise
        finally:  # also when a third Ctrl-C interrupts the waiting above
            self.pool.shutdown(wait=False, cancel_futures=True)
            with self.lock:
                self.closed.set()
                self.stats.unrecorded = self.writing  # still being written: they finish, unrecorded
            _wait_for(self.lanes)  # aborted, each leaves after its current step: none may be inside torch at exit
