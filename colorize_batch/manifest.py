"""The run's memory under ``OUT/.colorize-batch/``: the manifest of finished work and the lock.

This module owns the state folder and names everything in it (the one place they are
spelled): ``manifest<tag>.jsonl``, ``lock<tag>``, the run reports ``last-run<tag>.json`` and
the review gallery's folder, where ``tag`` is empty or ``.shard-I-of-N``. It also spells the
words stored there: :class:`Status`, what became of a file, and :class:`ManifestRecord`, one
line of the manifest (read and written here only).

State is never followed through a symbolic link: the folders are checked with ``lstat``
and the files opened with ``O_NOFOLLOW`` (:func:`refuse_links`, :func:`open_state`); a link
is refused with :class:`StateLinkError`, one line naming it (exit 2: nothing is done).

A rerun skips a source whose latest manifest record has the same source fingerprint
(size + mtime, or sha256 with ``--checksum``), model hash, pixel-config hash and tool
version, and whose output still exists. Records are appended (and flushed) as files
finish, so an interrupted run loses nothing it completed; the file is compacted at the end.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import logging
import os
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, TextIO

from . import __version__
from .names import display, to_json
from .safe_files import atomic_write_text, file_sha256

STATE_DIR = ".colorize-batch"
MANIFEST_STEM, MANIFEST_SUFFIX = "manifest", ".jsonl"
LOCK_STEM = "lock"
REPORT_STEM, REPORT_SUFFIX = "last-run", ".json"
GALLERY_DIR = "gallery"
SHARD_TAG = ".shard-{index}-of-{count}"  # in every state file name of one shard of a job array
SHARD_REPORT_GLOB = f"{REPORT_STEM}.shard-*{REPORT_SUFFIX}"
log = logging.getLogger("colorize_batch")


class LockedError(Exception):
    pass


class StateError(Exception):
    """``OUT/.colorize-batch/`` cannot be made or written (read-only, full disk, not a folder)."""


class StateLinkError(StateError):
    """A state folder or file is a symbolic link: refused, never followed (a usage error, exit 2)."""


def _link_message(path: Path) -> str:
    return (f"{display(path)}: is a symbolic link; colorize-batch never reads or writes its state through a link "
            "(remove it)")


def refuse_links(path: Path, out_root: Path) -> None:
    """Raise :class:`StateLinkError` if ``path`` or a folder between ``out_root`` and it is a
    symbolic link (``lstat``: nothing is followed). OUT itself may be a link."""
    current = Path(out_root)
    for part in Path(path).relative_to(current).parts:
        current = current / part
        if current.is_symlink():
            raise StateLinkError(_link_message(current))


def open_state(path: Path, out_root: Path, flags: int, mode: int = 0o644) -> int:
    """``os.open`` a state file with ``O_NOFOLLOW``, its folders checked by :func:`refuse_links`."""
    refuse_links(path.parent, out_root)
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise StateLinkError(_link_message(path)) from None
        raise


def check_state_links(out_root: Path, tag: str = "") -> None:
    """Before a run touches OUT: refuse a linked ``.colorize-batch`` folder or a linked lock,
    manifest or report of this run (:class:`StateLinkError`)."""
    folder = state_dir(out_root)
    for path in (folder / f"{LOCK_STEM}{tag}", folder / f"{MANIFEST_STEM}{tag}{MANIFEST_SUFFIX}", report_path(out_root, tag)):
        refuse_links(path, out_root)


HELD_LOCK_FDS: set[int] = set()  # closed in decode workers (forked: they would keep the lock alive)


def close_inherited_locks() -> None:
    """In a forked child: drop this process's copies of the run locks' descriptors."""
    for fd in list(HELD_LOCK_FDS):
        try:
            os.close(fd)
        except OSError:
            pass
    HELD_LOCK_FDS.clear()


def state_dir(out_root: Path) -> Path:
    """``OUT/.colorize-batch/``: the run's memory."""
    return Path(out_root) / STATE_DIR


def manifest_path(out_root: Path, tag: str = "") -> Path:
    """``OUT/.colorize-batch/manifest<tag>.jsonl``: the records of finished files (of one shard)."""
    return state_dir(out_root) / f"{MANIFEST_STEM}{tag}{MANIFEST_SUFFIX}"


def lock_path(out_root: Path, tag: str = "") -> Path:
    """``OUT/.colorize-batch/lock<tag>``: the run lock (of one shard)."""
    return state_dir(out_root) / f"{LOCK_STEM}{tag}"


def report_path(out_root: Path, tag: str = "") -> Path:
    """``OUT/.colorize-batch/last-run<tag>.json``: the report of the latest run (of one shard)."""
    return state_dir(out_root) / f"{REPORT_STEM}{tag}{REPORT_SUFFIX}"


def shard_tag(index: int, count: int) -> str:
    """The state-file tag of shard ``index`` of ``count`` (``.shard-0-of-4``)."""
    return SHARD_TAG.format(index=index, count=count)


def shard_report_paths(out_root: Path) -> list[Path]:
    """The shard reports ``last-run.shard-*.json`` of OUT, sorted."""
    return sorted(state_dir(out_root).glob(SHARD_REPORT_GLOB))


def gallery_dir(out_root: Path) -> Path:
    """``OUT/.colorize-batch/gallery/``: the review gallery's pages and thumbnails."""
    return state_dir(out_root) / GALLERY_DIR


class RunLock:
    """Exclusive ``flock`` on ``OUT/.colorize-batch/lock``; released when the process dies."""

    def __init__(self, out_root: Path, tag: str = ""):
        self.path = lock_path(out_root, tag)
        self.tag = tag
        self.fd: int | None = None

    def __enter__(self) -> RunLock:
        out_root = self.path.parent.parent
        check_state_links(out_root, self.tag)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.fd = open_state(self.path, out_root, os.O_RDWR | os.O_CREAT)
        except OSError as exc:
            raise StateError(f"{display(self.path.parent.parent)}: cannot write to the output folder ({exc.strerror or exc})") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            self.fd = None
            raise LockedError(f"{display(self.path.parent.parent)}: another colorize-batch run holds the lock on this output folder") from None
        HELD_LOCK_FDS.add(self.fd)
        # Runs of another job shape split OUT differently, so they would write the same files:
        # checked after our own lock is taken, so of two runs that start together at least one sees the other.
        clash = [other for other in held_lock_tags(out_root, self.tag) if _shard_count(other) != _shard_count(self.tag)]
        if clash:
            self.__exit__()
            raise LockedError(f"{display(out_root)}: {_shape_words(clash[0])} holds a lock on this output folder "
                              f"(one job shape per OUT: {_shape_words(self.tag)} would write the same files)")
        try:  # the pid is informational: a full disk must not stop a run that has nothing new to write
            os.ftruncate(self.fd, 0)
            os.write(self.fd, f"{os.getpid()}\n".encode())
        except OSError:
            pass
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            HELD_LOCK_FDS.discard(self.fd)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def held_lock_tags(out_root: Path, tag: str = "") -> list[str]:
    """The tags of the other runs (shards of a job array, or the whole job) that hold a lock on
    OUT now, sorted: probed with a shared non-blocking ``flock``, nothing waited for."""
    folder = state_dir(out_root)
    own = lock_path(out_root, tag)
    held = []
    for path in sorted(folder.glob(f"{LOCK_STEM}*")) if folder.is_dir() else ():
        if path == own:
            continue
        try:
            fd = open_state(path, out_root, os.O_RDONLY | os.O_NONBLOCK)
        except (OSError, StateLinkError):
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            held.append(path.name[len(LOCK_STEM):])
        except OSError:
            continue
        finally:
            os.close(fd)  # closing drops the probe's own shared lock
    return held


def other_run_holds_a_lock(out_root: Path, tag: str = "") -> bool:
    """Whether another run holds a lock on OUT now: its temporary files are in flight, and only
    a run that is alone may remove temporary files."""
    return bool(held_lock_tags(out_root, tag))


def has_manifest(out_root: Path) -> bool:
    """Whether a run (whole or a shard of one) left a manifest in OUT, even an empty one."""
    folder = state_dir(out_root)
    return folder.is_dir() and any(folder.glob(f"{MANIFEST_STEM}*{MANIFEST_SUFFIX}"))


def sharded_job(out_root: Path) -> int | None:
    """The shard count of the job whose manifests OUT holds, when only ``--shard`` runs of one count
    made it (``manifest.shard-I-of-N.jsonl`` files and no ``manifest.jsonl``); otherwise ``None``."""
    folder = state_dir(out_root)
    if not folder.is_dir() or manifest_path(out_root).exists():
        return None
    tags = [p.name[len(MANIFEST_STEM):-len(MANIFEST_SUFFIX)] for p in folder.glob(f"{MANIFEST_STEM}.shard-*{MANIFEST_SUFFIX}")]
    counts = {_shard_count(tag) for tag in tags}
    return int(counts.pop()) if len(counts) == 1 and next(iter(counts)).isdigit() else None


def _shard_count(tag: str) -> str:
    """The job shape a state tag belongs to: ``""`` for the whole job, ``"N"`` for a shard of N (``.shard-I-of-N``)."""
    return tag.rpartition("-of-")[2] if tag else ""


def _shape_words(tag: str) -> str:
    return f"a --shard run of {_shard_count(tag)} shards" if tag else "an unsharded run"


def fingerprint(path: Path, checksum: bool = False) -> str:
    st = path.stat()
    if not checksum:
        return f"size={st.st_size};mtime_ns={st.st_mtime_ns}"
    return f"sha256={file_sha256(path)}"


@dataclass(frozen=True)
class RunIdentity:
    """What makes an output current besides its source: model, pixel config, tool version.

    A photo with hints depends on the whole weights file (``model_sha256``); one without hints
    only on its automatic model (``automatic_sha256``, :func:`~colorize_batch.weights.automatic_sha256`),
    so a file whose hint branch alone changed leaves the photos without hints up to date.
    """

    model_sha256: str
    config_hash: str
    version: str = __version__
    automatic_sha256: str = ""  # "": not known (every photo then depends on the whole file)

    def made_by(self, rec: ManifestRecord, hinted: bool) -> bool:
        """Whether ``rec``'s output came from this model (for a photo with or without hints)."""
        if rec.model == self.model_sha256:
            return True
        return not hinted and bool(self.automatic_sha256) and rec.automatic == self.automatic_sha256


class Status(str, Enum):
    """What became of one job: the manifest's ``status`` words, and the report's counters of the same name."""

    DONE = "done"  # colorized and written
    COPIED = "copied"  # a colour input copied unchanged (input.color_inputs: copy)
    SKIPPED_COLOR = "skipped_color"  # a colour input left alone (input.color_inputs: skip)
    FAILED = "failed"  # see the reason

    def __str__(self) -> str:
        return self.value

    @property
    def wrote_output(self) -> bool:
        return self in (Status.DONE, Status.COPIED)

    @property
    def is_kept(self) -> bool:
        """A rerun keeps this result while nothing it depends on changed (a failure is retried)."""
        return self is not Status.FAILED


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


@dataclass(frozen=True)
class ManifestRecord:
    """One line of ``manifest.jsonl``: what became of one source (its manifest key, see
    :func:`~colorize_batch.planning.source_key`) under which model, settings and tool version."""

    source: str
    status: Status
    source_fp: str | None = None  # size + mtime, or sha256 (--checksum); + the hint file's hash
    output: str | None = None  # relative to OUT, for the statuses that wrote one
    output_sha256: str | None = None
    model: str | None = None  # sha256 of the weights file
    config: str | None = None  # hash of the settings that change pixels
    version: str | None = None  # the tool's
    time: str | None = None  # %Y-%m-%dT%H:%M:%S%z
    reason: str | None = None  # why it failed
    automatic: str | None = None  # a photo without hints: the sha256 of the weights' automatic model (RunIdentity)

    def to_json(self) -> dict[str, Any]:
        rec: dict[str, Any] = {
            "source": self.source, "source_fp": self.source_fp, "output": self.output,
            "output_sha256": self.output_sha256, "model": self.model, "config": self.config,
            "version": self.version, "time": self.time, "status": self.status.value,
        }
        if self.reason:
            rec["reason"] = self.reason
        if self.automatic:
            rec["automatic"] = self.automatic
        return rec

    @classmethod
    def from_json(cls, data: object) -> ManifestRecord | None:
        """The record a decoded line holds, or ``None`` when it is not one (no source, unknown status)."""
        if not isinstance(data, dict) or not isinstance(data.get("source"), str):
            return None
        try:
            status = Status(data.get("status"))
        except ValueError:
            return None
        return cls(data["source"], status, *(_text(data.get(k)) for k in (
            "source_fp", "output", "output_sha256", "model", "config", "version", "time", "reason", "automatic")))


def _read_records(path: Path, out_root: Path) -> dict[str, ManifestRecord]:
    """The records of one manifest file; a damaged line is skipped with a warning naming it
    (its file is simply redone), never a crash. A linked file raises :class:`StateLinkError`."""
    records: dict[str, ManifestRecord] = {}
    with os.fdopen(open_state(path, out_root, os.O_RDONLY), encoding="utf-8", errors="replace") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = ManifestRecord.from_json(json.loads(line))
            except (ValueError, RecursionError):  # RecursionError: [[[[... nested deeper than the parser goes
                rec = None
            if rec is None:
                log.warning("%s line %d: damaged manifest record skipped (its file will be redone)", display(path), number)
                continue
            records[rec.source] = rec
    return records


class Manifest:
    """``manifest<tag>.jsonl``: this run's records. Shards of one run each keep their own file
    (``tag`` = ``.shard-I-of-N``) and read all the others' to know what is already done."""

    def __init__(self, out_root: Path, tag: str = ""):
        self.path = manifest_path(out_root, tag)
        self.out_root = Path(out_root)
        self.records: dict[str, ManifestRecord] = {}  # this file's records (compacted on close)
        self.known: dict[str, ManifestRecord] = {}  # every manifest's records, this file's last
        self._fh: TextIO | None = None
        self.append_failed = False
        self.unsaved = False  # an append failed and no compaction has saved the records since
        folder = state_dir(out_root)
        refuse_links(self.path, self.out_root)
        others = sorted(p for p in folder.glob(f"{MANIFEST_STEM}*{MANIFEST_SUFFIX}") if p != self.path) if folder.is_dir() else []
        for other in others:
            self.known.update(_read_records(other, self.out_root))
        if self.path.is_file():
            self.records = _read_records(self.path, self.out_root)
            self.known.update(self.records)

    def is_current(self, source_rel: str, source_fp: str, ident: RunIdentity, *, hinted: bool) -> bool:
        """Whether the recorded result of ``source_rel`` stands (``hinted``: the photo has a hint file)."""
        rec = self.known.get(source_rel)
        if rec is None or not rec.status.is_kept:
            return False
        if (rec.source_fp, rec.config, rec.version) != (source_fp, ident.config_hash, ident.version):
            return False
        if not ident.made_by(rec, hinted):
            return False
        if not hinted and rec.automatic is None and ident.automatic_sha256 and source_rel in self.records:
            # current by the file's sha256, recorded before records named the automatic model: it gains
            # it (saved when the manifest is compacted), so a later file with another hint branch finds it current
            self.records[source_rel] = self.known[source_rel] = dataclasses.replace(rec, automatic=ident.automatic_sha256)
        if not rec.status.wrote_output:
            return True
        return rec.output is not None and (self.out_root / rec.output).is_file()

    def add(self, source_rel: str, source_fp: str, ident: RunIdentity, status: Status, output_rel: str | None = None,
            output_sha256: str | None = None, reason: str | None = None, *, hinted: bool) -> None:
        rec = ManifestRecord(source_rel, Status(status), source_fp, output_rel, output_sha256, ident.model_sha256,
                             ident.config_hash, ident.version, time.strftime("%Y-%m-%dT%H:%M:%S%z"), reason,
                             None if hinted else ident.automatic_sha256 or None)
        self.records[source_rel] = rec
        self.known[source_rel] = rec
        try:
            if self._fh is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fh = os.fdopen(open_state(self.path, self.out_root, os.O_WRONLY | os.O_APPEND | os.O_CREAT),
                                     "a", encoding="utf-8")
            self._fh.write(to_json(rec.to_json()) + "\n")
            self._fh.flush()
        except (OSError, StateLinkError) as exc:  # e.g. disk full: the output stands; unrecorded, it is redone next time
            if not self.append_failed:
                log.error("%s: cannot record finished files (%s); they will be redone by the next run",
                          display(self.path), getattr(exc, "strerror", None) or exc)
            self.append_failed = self.unsaved = True

    def close(self, compact: bool = True) -> None:
        if self._fh is not None:
            try:
                self._fh.close()
            except OSError:  # the failed append was reported already
                pass
            self._fh = None
        if compact and self.records:
            try:
                refuse_links(self.path, self.out_root)
                atomic_write_text(self.path, "".join(to_json(rec.to_json()) + "\n" for rec in self.records.values()))
                self.unsaved = False
            except (OSError, StateLinkError) as exc:  # e.g. disk full: the appended records are still valid
                log.warning("%s: not compacted (%s); the appended records are kept", display(self.path), exc)

    def outputs(self) -> set[str]:
        """Relative paths of every output a manifest records (this tool wrote them)."""
        return {rec.output for rec in self.known.values() if rec.output is not None}
