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
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .manifest import SHARD_REPORT_GLOB, read_state_text, shard_report_paths, shard_tag


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
    digest = hashlib.sha256(relative.encode("utf-8")).digest()
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
    with ``--shard-count`` (or COLORIZE_SHARD_COUNT). ``None``: no sharding."""
    env = os.environ if env is None else env
    if option:
        return parse_shard(option)
    if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
        task, count = int(env["SLURM_ARRAY_TASK_ID"]), int(env["SLURM_ARRAY_TASK_COUNT"])
        first = int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
        shard = Shard(task - first, count, "SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT")
    elif "JOB_COMPLETION_INDEX" in env:
        given = shard_count or (int(env["COLORIZE_SHARD_COUNT"]) if "COLORIZE_SHARD_COUNT" in env else None)
        if not given:
            raise ShardError("JOB_COMPLETION_INDEX is set: give --shard-count N (the Job's completions)")
        count = given
        shard = Shard(int(env["JOB_COMPLETION_INDEX"]), count, "JOB_COMPLETION_INDEX")
    else:
        return None
    if not 0 <= shard.index < shard.count:
        raise ShardError(f"{shard.source}: shard {shard.index} is outside 0..{shard.count - 1}")
    return shard


def merge_reports(out_root: Path) -> dict:
    """Combine ``last-run.shard-*.json`` reports into one (counts and failures summed)."""
    parts = shard_report_paths(out_root)
    if not parts:
        raise ShardError(f"{out_root}: no shard reports ({SHARD_REPORT_GLOB}) to merge")
    reports = [json.loads(read_state_text(p, out_root)) for p in parts]  # never through a link
    merged: dict = {k: reports[0].get(k) for k in ("tool", "model", "model_sha256", "config_hash", "input", "output")}
    merged["shards"] = [p.name for p in parts]
    merged["counts"] = {}
    for rep in reports:
        for key, value in rep.get("counts", {}).items():
            merged["counts"][key] = merged["counts"].get(key, 0) + value
    merged["failures"] = [f for rep in reports for f in rep.get("failures", [])]
    merged["interrupted"] = any(rep.get("interrupted") for rep in reports)
    merged["stopped_reason"] = next((rep["stopped_reason"] for rep in reports if rep.get("stopped_reason")), None)
    merged["wall_seconds"] = max(rep.get("wall_seconds", 0) for rep in reports)
    merged["images_per_second"] = round(merged["counts"].get("done", 0) / merged["wall_seconds"], 3) if merged["wall_seconds"] else 0.0
    stages: dict = {}
    for rep in reports:
        for key, value in rep.get("stage_seconds", {}).items():
            stages[key] = round(stages.get(key, 0) + value, 3)
    merged["stage_seconds"] = stages
    merged["exit_code"] = max(rep.get("exit_code", 0) for rep in reports)
    return merged
