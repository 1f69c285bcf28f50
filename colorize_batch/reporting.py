"""Reporting: counters, progress display, the end-of-run summary and the JSON report.

On a terminal a rich progress bar shows files, images/s and ETA; when stdout is not a
terminal (cron, CI) a plain log line is written every few seconds instead.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from .exit_codes import ExitCode
from .names import display, to_json

log = logging.getLogger("colorize_batch")

STAGES = ("decode", "forward", "recombine", "encode", "write")


@dataclass
class RunStats:
    """What happened to every file, plus time spent per stage (seconds, summed over workers)."""

    counts: Counter = field(default_factory=Counter)  # done, skipped, skipped_color, copied, failed
    failures: list[dict] = field(default_factory=list)
    notes: list[dict] = field(default_factory=list)  # decoder warnings, damaged metadata: the file was still done
    stage_seconds: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    interrupted: bool = False
    stopped_reason: str | None = None
    settled: set[str] = field(default_factory=set)  # job keys with a result (the rest were never tried)
    not_tried: list[str] = field(default_factory=list)  # filled when the run stops early
    unrecorded: int = 0  # files still being written when a third Ctrl-C stopped the run: not in the manifest

    def fail(self, path: str, reason: str) -> None:
        self.counts["failed"] += 1
        self.failures.append({"path": path, "reason": reason})
        log.error("%s: %s", display(path), reason)

    def note(self, path: str, message: str) -> None:
        """A warning that belongs to one file: into the report, on the terminal only with -v."""
        self.notes.append({"path": path, "message": message})
        log.debug("%s: %s", display(path), message)

    @property
    def wall_seconds(self) -> float:
        return (self.finished or time.monotonic()) - self.started

    def images_per_second(self) -> float:
        return self.counts["done"] / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def exit_code(self) -> int:
        if self.interrupted:
            return ExitCode.INTERRUPTED
        return ExitCode.FAILED if self.counts["failed"] or self.stopped_reason else ExitCode.OK


class ProgressDisplay:
    """Rich bar on a TTY, periodic plain lines otherwise; silent when ``quiet``."""

    def __init__(self, total: int, quiet: bool = False, interval: float = 10.0, stream=None):
        self.total = total
        self.quiet = quiet
        self.interval = interval
        self.stream = stream or sys.stdout
        self.done = 0
        self._last = time.monotonic()
        self._start = time.monotonic()
        self._bar: Progress | None = None
        if not quiet and self.stream.isatty():
            self._bar = Progress(
                TextColumn("[bold]colorizing"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[rate]:.1f} img/s"), TimeElapsedColumn(), TimeRemainingColumn(),
                console=Console(file=self.stream),
            )
            self._task = self._bar.add_task("run", total=total, rate=0.0)
            self._bar.start()

    def advance(self, n: int = 1) -> None:
        self.done += n
        elapsed = time.monotonic() - self._start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        if self._bar is not None:
            self._bar.update(self._task, advance=n, rate=rate)
        elif not self.quiet and time.monotonic() - self._last >= self.interval:
            self._last = time.monotonic()
            log.info("progress: %d/%d files, %.1f img/s", self.done, self.total, rate)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def summary_table(stats: RunStats) -> Table:
    table = Table(title="colorize-batch run", show_header=True)
    for col in ("done", "up to date", "colour (skipped)", "copied", "failed", "seconds", "img/s"):
        table.add_column(col, justify="right")
    c = stats.counts
    table.add_row(
        str(c["done"]), str(c["skipped"]), str(c["skipped_color"]), str(c["copied"]), str(c["failed"]),
        f"{stats.wall_seconds:.1f}", f"{stats.images_per_second():.2f}",
    )
    return table


def print_summary(stats: RunStats, quiet: bool = False) -> None:
    if quiet:
        return
    console = Console(file=sys.stderr)
    console.print(summary_table(stats))
    for failure in stats.failures[:20]:
        console.print(f"[red]failed[/red] {display(failure['path'])}: {failure['reason']}", markup=True, highlight=False)
    if len(stats.failures) > 20:
        console.print(f"... and {len(stats.failures) - 20} more failures (see --report)")


def build_report(stats: RunStats, **context) -> dict:
    c = stats.counts
    return {
        **context,
        "counts": {
            "done": c["done"],
            "skipped_up_to_date": c["skipped"],
            "skipped_color": c["skipped_color"],
            "copied": c["copied"],
            "failed": c["failed"],
            "with_hints": c["with_hints"],  # planned with a hint file (hints.py)
            "left_out_without_hints": c["without_hints"],  # input.hints_only
        },
        "failures": stats.failures,
        "notes": stats.notes,
        "interrupted": stats.interrupted,
        "stopped_reason": stats.stopped_reason,
        "not_tried": stats.not_tried,
        "wall_seconds": round(stats.wall_seconds, 3),
        "images_per_second": round(stats.images_per_second(), 3),
        "stage_seconds": {k: round(stats.stage_seconds[k], 3) for k in STAGES},
        "exit_code": stats.exit_code(),
    }


def write_json_atomic(path: Path, data: dict) -> None:
    """The report as JSON, written atomically (file names that are not UTF-8 round-trip: see names.py)."""
    from .writing import atomic_write_text

    atomic_write_text(Path(path), to_json(data, indent=2) + "\n")
