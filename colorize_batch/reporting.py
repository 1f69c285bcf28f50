"""Reporting: counters, progress display, the end-of-run summary and the JSON report.

On a terminal a rich progress bar shows files, images/s and ETA; when stdout is not a
terminal (cron, CI) a plain log line is written every few seconds instead. The run report
(``last-run.json``, ``--report``, the merged report of shards) is a :class:`RunReport`, written
and read here only; its counters are :class:`RunCounts`, spelled as the manifest's
:class:`~colorize_batch.manifest.Status` words.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from .exit_codes import ExitCode
from .manifest import Status
from .names import display, to_json

log = logging.getLogger("colorize_batch")

STAGES = ("decode", "forward", "recombine", "encode", "write")


@dataclass
class RunCounts:
    """How many files ended how: the report's ``counts``. A :class:`Status` counts under its own word."""

    done: int = 0
    skipped_up_to_date: int = 0  # current per the manifest: not redone
    skipped_color: int = 0
    copied: int = 0
    failed: int = 0
    with_hints: int = 0  # planned with a hint file (hints.py)
    left_out_without_hints: int = 0  # input.hints_only

    def add(self, status: Status) -> None:
        setattr(self, status.value, getattr(self, status.value) + 1)

    def __getitem__(self, key: str) -> int:
        """The counter a report key names (``counts["done"]``)."""
        if key not in self.keys():
            raise KeyError(key)
        return int(getattr(self, key))

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    def __add__(self, other: RunCounts) -> RunCounts:
        return RunCounts(**{k: self[k] + other[k] for k in self.keys()})

    @classmethod
    def from_json(cls, data: object) -> RunCounts:
        if not isinstance(data, dict):
            raise ValueError("counts is not an object")
        return cls(**{k: _int(data.get(k, 0), k) for k in cls.keys()})


def _number(value: object, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{key} is not a number")
    return float(value)


def _int(value: object, key: str) -> int:
    return int(_number(value, key))


@dataclass
class RunStats:
    """What happened to every file, plus time spent per stage (seconds, summed over workers)."""

    counts: RunCounts = field(default_factory=RunCounts)
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
        self.counts.failed += 1
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
        return self.counts.done / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def exit_code(self) -> int:
        if self.interrupted:
            return ExitCode.INTERRUPTED
        return ExitCode.FAILED if self.counts.failed or self.stopped_reason else ExitCode.OK


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
        str(c.done), str(c.skipped_up_to_date), str(c.skipped_color), str(c.copied), str(c.failed),
        f"{stats.wall_seconds:.1f}", f"{stats.images_per_second():.2f}",
    )
    return table


def print_summary(stats: RunStats, quiet: bool = False) -> None:
    if quiet:
        return
    console = Console(file=sys.stderr)
    console.print(summary_table(stats))
    for failure in stats.failures[:20]:  # names and reasons as plain text (a name may hold "[/red]"), one line each
        line = Text.assemble(("failed", "red"), f" {display(failure['path'])}: {failure['reason']}")
        console.print(line, highlight=False, soft_wrap=True)
    if len(stats.failures) > 20:
        console.print(f"... and {len(stats.failures) - 20} more failures (see --report)")


@dataclass
class RunReport:
    """A run's report: ``OUT/.colorize-batch/last-run<tag>.json``, ``--report``, and the merged
    report of shards (``shards`` set). Written by :meth:`write`, read by :meth:`read`, only."""

    tool: str
    counts: RunCounts = field(default_factory=RunCounts)
    failures: list[dict] = field(default_factory=list)  # {"path", "reason"}
    notes: list[dict] = field(default_factory=list)  # {"path", "message"}
    interrupted: bool = False
    stopped_reason: str | None = None
    not_tried: list[str] = field(default_factory=list)
    wall_seconds: float = 0.0
    images_per_second: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    exit_code: int = ExitCode.OK
    model: str | None = None  # model id (name@sha256 prefix)
    model_sha256: str | None = None
    config_hash: str | None = None
    input: str | None = None  # IN as given
    output: str | None = None  # OUT as given
    hints_dir: str | None = None  # where the gallery's hint editor looks
    device: str | None = None
    host: str | None = None
    shards: list[str] | None = None  # a merged report: the shard reports' names

    CONTEXT = ("tool", "model", "model_sha256", "config_hash", "input", "output", "hints_dir", "device", "host")

    @classmethod
    def of_run(cls, stats: RunStats, **context: str | None) -> RunReport:
        """The report of a run from its counters; ``context``: the :attr:`CONTEXT` fields."""
        return cls(
            counts=dataclasses.replace(stats.counts), failures=stats.failures, notes=stats.notes,
            interrupted=stats.interrupted, stopped_reason=stats.stopped_reason, not_tried=stats.not_tried,
            wall_seconds=round(stats.wall_seconds, 3), images_per_second=round(stats.images_per_second(), 3),
            stage_seconds={k: round(stats.stage_seconds[k], 3) for k in STAGES}, exit_code=int(stats.exit_code()),
            **context,  # type: ignore[arg-type]
        )

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {k: getattr(self, k) for k in self.CONTEXT}
        if self.shards is not None:
            data["shards"] = self.shards
        data.update({
            "counts": {k: self.counts[k] for k in RunCounts.keys()},
            "failures": self.failures,
            "notes": self.notes,
            "interrupted": self.interrupted,
            "stopped_reason": self.stopped_reason,
            "not_tried": self.not_tried,
            "wall_seconds": self.wall_seconds,
            "images_per_second": self.images_per_second,
            "stage_seconds": self.stage_seconds,
            "exit_code": int(self.exit_code),
        })
        return data

    @classmethod
    def from_json(cls, data: object) -> RunReport:
        """The report a decoded JSON document holds; :class:`ValueError` says what is wrong with it."""
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        text = {k: data[k] if isinstance(data.get(k), str) else None for k in cls.CONTEXT if k != "tool"}
        shards = data.get("shards")
        return cls(
            str(data.get("tool") or "unknown"),
            **text,
            shards=[str(s) for s in shards] if isinstance(shards, list) else None,
            counts=RunCounts.from_json(data.get("counts", {})),
            failures=[f for f in data.get("failures") or [] if isinstance(f, dict)],
            notes=[n for n in data.get("notes") or [] if isinstance(n, dict)],
            interrupted=bool(data.get("interrupted")),
            stopped_reason=data["stopped_reason"] if isinstance(data.get("stopped_reason"), str) else None,
            not_tried=[str(p) for p in data.get("not_tried") or []],
            wall_seconds=_number(data.get("wall_seconds", 0), "wall_seconds"),
            images_per_second=_number(data.get("images_per_second", 0), "images_per_second"),
            stage_seconds={str(k): float(v) for k, v in (data.get("stage_seconds") or {}).items() if isinstance(v, (int, float))},
            exit_code=_int(data.get("exit_code", 0), "exit_code"),
        )

    def write(self, path: Path, named: bool = False) -> None:
        """Atomically, as JSON (file names that are not UTF-8 round-trip: see names.py); ``named``: a
        path the user gave (:func:`~colorize_batch.safe_files.write_named`: /dev/stdout is written
        through, never replaced)."""
        (write_json_named if named else write_json_atomic)(path, self.to_json())

    @classmethod
    def read(cls, path: Path, out_root: Path | None = None) -> RunReport:
        """Raises :class:`OSError` (unreadable; :class:`~colorize_batch.reading.FileLimitError`: not a
        regular file or over the size limit) or :class:`ValueError` (not a report). With ``out_root``
        (a report in OUT's state folder): :class:`~colorize_batch.manifest.StateLinkError` if it or a
        folder on the way from OUT is a link."""
        from .manifest import refuse_links
        from .reading import REPORT_LIMIT, read_user_file

        if out_root is not None:
            refuse_links(Path(path), Path(out_root))
        try:
            data = json.loads(read_user_file(path, REPORT_LIMIT, "run report").decode("utf-8"))
        except RecursionError:
            raise ValueError("nested too deeply") from None
        return cls.from_json(data)


def write_json_atomic(path: Path, data: dict) -> None:
    """A JSON document (a report, ``eval``'s scores), written atomically (file names that are not
    UTF-8 round-trip: see names.py)."""
    from .safe_files import atomic_write_text

    atomic_write_text(Path(path), to_json(data, indent=2) + "\n")


def write_json_named(path: Path, data: dict) -> None:
    """A JSON document to a path the user named (``--report``): see :func:`~colorize_batch.safe_files.write_named`."""
    from .safe_files import write_named

    text = (to_json(data, indent=2) + "\n").encode("utf-8")
    write_named(Path(path), lambda fh: fh.write(text))
