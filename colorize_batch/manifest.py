"""The run's memory under ``OUT/.colorize-batch/``: the manifest of finished work and the lock.

This module owns the state folder and names everything in it (the one place they are
spelled): ``manifest<tag>.jsonl``, ``lock<tag>``, the run reports ``last-run<tag>.json`` and
the review gallery's folder, where ``tag`` is empty or ``.shard-I-of-N``.

State is never followed through a symbolic link: the folders are checked with ``lstat``
and the files opened with ``O_NOFOLLOW`` (:func:`refuse_links`, :func:`open_state`); a link
is refused with :class:`StateLinkError`, one line naming it (exit 2: nothing is done).

A rerun skips a source whose latest manifest record has the same source fingerprint
(size + mtime, or sha256 with ``--checksum``), model hash, pixel-config hash and tool
version, and whose output still exists. Records are appended (and flushed) as files
finish, so an interrupted run loses nothing it completed; the file is compacted at the end.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from . import __version__
from .names import display, to_json
from .writing import atomic_write_text, file_sha256

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


def read_state_text(path: Path, out_root: Path) -> str:
    """A state file's text (UTF-8, undecodable bytes replaced), never through a link."""
    with os.fdopen(open_state(path, out_root, os.O_RDONLY), encoding="utf-8", errors="replace") as fh:
        return fh.read()


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
    return Path(out_root) / STATE_DIR


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
        self.path = state_dir(out_root) / f"{LOCK_STEM}{tag}"
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


def fingerprint(path: Path, checksum: bool = False) -> str:
    st = path.stat()
    if not checksum:
        return f"size={st.st_size};mtime_ns={st.st_mtime_ns}"
    return f"sha256={file_sha256(path)}"


@dataclass(frozen=True)
class RunIdentity:
    """What makes an output current besides its source: model, pixel config, tool version."""

    model_sha256: str
    config_hash: str
    version: str = __version__


def _read_records(path: Path, out_root: Path) -> dict[str, dict]:
    """The records of one manifest file; a damaged line is skipped with a warning naming it
    (its file is simply redone), never a crash. A linked file raises :class:`StateLinkError`."""
    records: dict[str, dict] = {}
    with os.fdopen(open_state(path, out_root, os.O_RDONLY), encoding="utf-8", errors="replace") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                rec = None
            if not isinstance(rec, dict) or not isinstance(rec.get("source"), str):
                log.warning("%s line %d: damaged manifest record skipped (its file will be redone)", display(path), number)
                continue
            records[rec["source"]] = rec
    return records


class Manifest:
    """``manifest<tag>.jsonl``: this run's records. Shards of one run each keep their own file
    (``tag`` = ``.shard-I-of-N``) and read all the others' to know what is already done."""

    def __init__(self, out_root: Path, tag: str = ""):
        self.path = state_dir(out_root) / f"{MANIFEST_STEM}{tag}{MANIFEST_SUFFIX}"
        self.out_root = Path(out_root)
        self.records: dict[str, dict] = {}  # this file's records (compacted on close)
        self.known: dict[str, dict] = {}  # every manifest's records, this file's last
        self._fh: TextIO | None = None
        self.append_failed = False
        folder = state_dir(out_root)
        refuse_links(self.path, self.out_root)
        others = sorted(p for p in folder.glob(f"{MANIFEST_STEM}*{MANIFEST_SUFFIX}") if p != self.path) if folder.is_dir() else []
        for other in others:
            self.known.update(_read_records(other, self.out_root))
        if self.path.is_file():
            self.records = _read_records(self.path, self.out_root)
            self.known.update(self.records)

    def is_current(self, source_rel: str, source_fp: str, ident: RunIdentity) -> bool:
        rec = self.known.get(source_rel)
        if rec is None or rec.get("status") not in ("done", "copied", "skipped_color"):
            return False
        if (rec.get("source_fp"), rec.get("model"), rec.get("config"), rec.get("version")) != (
            source_fp, ident.model_sha256, ident.config_hash, ident.version,
        ):
            return False
        if rec["status"] == "skipped_color":
            return True
        return (self.out_root / rec["output"]).is_file()

    def add(self, source_rel: str, source_fp: str, ident: RunIdentity, status: str, output_rel: str | None = None, output_sha256: str | None = None, reason: str | None = None) -> None:
        rec = {
            "source": source_rel,
            "source_fp": source_fp,
            "output": output_rel,
            "output_sha256": output_sha256,
            "model": ident.model_sha256,
            "config": ident.config_hash,
            "version": ident.version,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "status": status,
        }
        if reason:
            rec["reason"] = reason
        self.records[source_rel] = rec
        self.known[source_rel] = rec
        try:
            if self._fh is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fh = os.fdopen(open_state(self.path, self.out_root, os.O_WRONLY | os.O_APPEND | os.O_CREAT),
                                     "a", encoding="utf-8")
            self._fh.write(to_json(rec) + "\n")
            self._fh.flush()
        except (OSError, StateLinkError) as exc:  # e.g. disk full: the output stands; unrecorded, it is redone next time
            if not self.append_failed:
                log.error("%s: cannot record finished files (%s); they will be redone by the next run",
                          display(self.path), getattr(exc, "strerror", None) or exc)
            self.append_failed = True

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
                atomic_write_text(self.path, "".join(to_json(rec) + "\n" for rec in self.records.values()))
            except (OSError, StateLinkError) as exc:  # e.g. disk full: the appended records are still valid
                log.warning("%s: not compacted (%s); the appended records are kept", display(self.path), exc)

    def outputs(self) -> set[str]:
        """Relative paths of every output a manifest records (this tool wrote them)."""
        return {rec["output"] for rec in self.known.values() if isinstance(rec.get("output"), str)}
