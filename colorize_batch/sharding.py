"""Sharding for job arrays: each task of a SLURM array or a Kubernetes Indexed Job takes a
stable slice of the file list.

A file belongs to shard ``sha256(relative path) mod N``, so adding files never moves
existing ones between shards, shards never write the same output, and together they cover
the whole tree. Each shard keeps its own manifest, lock and report under
``OUT/.colorize-batch/`` (``*.shard-I-of-N.*``); ``colorize-batch report merge OUT`` combines
the reports.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .exit_codes import ExitCode
from .manifest import SHARD_REPORT_GLOB, shard_report_paths, shard_tag
from .reporting import RunReport
from .reading import FileLimitError


class ShardError(ValueError):
    pass


@dataclass(frozen=True)
class Shard:
    index: int  # 0-based
    count: int
    source: str = "--shard"

    @property
    def tag(self) -> str:
        return shard_tag(self.index, self.count)

    def owns(self, relative: str) -> bool:
        return shard_of(relative, self.count) == self.index


def shard_of(relative: str, count: int) -> int:
    digest = hashlib.sha256(os.fsencode(relative)).digest()  # the name's bytes: UTF-8 or not (a Latin-1 share)
    return int.from_bytes(digest[:8], "big") % count


def parse_shard(text: str) -> Shard:
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match:
        raise ShardError(f"--shard {text!r}: expected I/N with 0 <= I < N, e.g. 0/4")
    index, count = int(match[1]), int(match[2])
    if count < 1 or not 0 <= index < count:
        raise ShardError(f"--shard {text!r}: expected 0 <= I < N")
    return Shard(index, count)


def resolve_shard(option: str | None, shard_count: int | None = None, env: Mapping[str, str] | None = None) -> Shard | None:
    """``--shard`` wins; else SLURM array variables; else Kubernetes' JOB_COMPLETION_INDEX
    with ``--shard-count`` (or COLORIZE_SHARD_COUNT). ``None``: no sharding. A SLURM array with a
    step (``--array=0-10:2``) numbers its tasks 0, 2, 4...: shard = (task - min) / step."""
    env = os.environ if env is None else env
    if option:
        return parse_shard(option)

    def number(name: str, default: str | None = None) -> int:  # a variable that is not a number: one line, exit 2
        text = env.get(name, default)
        try:
            return int(text or "")
        except ValueError:
            raise ShardError(f"{name}={text!r}: expected a whole number") from None

    if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
        task, count = number("SLURM_ARRAY_TASK_ID"), number("SLURM_ARRAY_TASK_COUNT")
        offset, step = task - number("SLURM_ARRAY_TASK_MIN", "0"), number("SLURM_ARRAY_TASK_STEP", "1")
        if step < 1 or offset % step:
            raise ShardError(f"SLURM_ARRAY_TASK_ID={task}: not a task of an array stepping by {step}")
        shard = Shard(offset // step, count, "SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT")
    elif "JOB_COMPLETION_INDEX" in env:
        given = shard_count or (number("COLORIZE_SHARD_COUNT") if "COLORIZE_SHARD_COUNT" in env else None)
        if not given:
            raise ShardError("JOB_COMPLETION_INDEX is set: give --shard-count N (the Job's completions)")
        count = given
        shard = Shard(number("JOB_COMPLETION_INDEX"), count, "JOB_COMPLETION_INDEX")
    else:
        return None
    if not 0 <= shard.index < shard.count:
        raise ShardError(f"{shard.source}: shard {shard.index} is outside 0..{shard.count - 1}")
    return shard


def _shard_count(report: Path) -> int:
    found = re.search(r"\.shard-\d+-of-(\d+)\.json$", report.name)
    return int(found[1]) if found else 0


def written_ns(report: Path) -> int:
    """When a report was last written (ns; 0 if it is gone): what says which report is current."""
    try:
        return report.lstat().st_mtime_ns
    except OSError:
        return 0


def current_shard_reports(out_root: Path) -> list[Path]:
    """The shard reports of OUT's current job shape: those of the shard count of the report written
    last. A job re-sharded (4 shards, then 8) leaves the earlier shape's reports behind; merged with
    the new ones, every file would count twice and an old failure would fail every later merge."""
    parts = shard_report_paths(out_root)
    if not parts:
        return []
    latest = _shard_count(max(parts, key=written_ns))
    return [p for p in parts if _shard_count(p) == latest]


def merge_reports(out_root: Path) -> RunReport:
    """Combine the ``last-run.shard-*.json`` reports of the current job shape (:func:`current_shard_reports`)
    into one (counts, failures, notes and stage times summed; the longest wall time; the worst exit code)."""
    parts = current_shard_reports(out_root)
    if not parts:
        raise ShardError(f"{out_root}: no shard reports ({SHARD_REPORT_GLOB}) to merge")
    reports = []
    for part in parts:
        try:
            reports.append(RunReport.read(part, out_root))  # bounded, never through a link
        except FileLimitError as exc:
            raise ShardError(str(exc)) from None
        except OSError as exc:
            raise ShardError(f"{part}: cannot read the report ({exc.strerror or exc})") from None
        except ValueError as exc:  # not UTF-8, not JSON, nested too deeply, not a report's fields
            raise ShardError(f"{part}: not a run report ({exc})") from None
    first = reports[0]
    counts = sum((rep.counts for rep in reports[1:]), first.counts)
    stages: dict[str, float] = {}
    for rep in reports:
        for key, value in rep.stage_seconds.items():
            stages[key] = round(stages.get(key, 0) + value, 3)
    wall = max(rep.wall_seconds for rep in reports)
    return RunReport(
        tool=first.tool, model=first.model, model_sha256=first.model_sha256, config_hash=first.config_hash,
        input=first.input, output=first.output, hints_dir=first.hints_dir, shards=[p.name for p in parts],
        counts=counts,
        failures=[f for rep in reports for f in rep.failures],
        notes=[n for rep in reports for n in rep.notes],
        interrupted=any(rep.interrupted for rep in reports),
        stopped_reason=next((rep.stopped_reason for rep in reports if rep.stopped_reason), None),
        not_tried=[p for rep in reports for p in rep.not_tried],
        wall_seconds=wall,
        images_per_second=round(counts.done / wall, 3) if wall else 0.0,
        stage_seconds=stages,
        exit_code=int(ExitCode.worst(rep.exit_code for rep in reports)),
    )
