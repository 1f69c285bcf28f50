"""The safe-file layer: every file this tool writes goes through here.

Every file is written to a temporary file in its own folder, fsynced, given normal
permissions and moved into place with ``os.replace``, so a reader (or a crash) never sees
a partial file. Before an output is written, :func:`target_problem` says why it must not be:
never an input (:func:`same_file`), never through a symlink out of OUT (:func:`leads_outside`),
never over a file this tool did not write (:func:`is_own_output`).
"""

from __future__ import annotations

import contextlib
import errno
import filecmp
import hashlib
import os
import stat
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

from .names import display

TMP_PREFIX, TMP_SUFFIX = ".cb-", ".cb-tmp"  # temporary files: short names, same folder


class WriteError(OSError):
    """An output could not be written; ``disk_full`` stops the whole run. An ``OSError``, so
    callers that handle file-system errors handle it too."""

    def __init__(self, message: str, disk_full: bool = False):
        super().__init__(message)
        self.disk_full = disk_full


def _read_umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


_UMASK = _read_umask()  # read once, at import: reading it means setting it, which would race with other threads


def atomic_write_with(dest: str | os.PathLike, produce: Callable[[BinaryIO], object], mode: int = 0o644,
                      fsync: bool = True) -> Path:
    """Write ``dest`` atomically with ``produce(fh)`` (e.g. ``torch.save(obj, fh)``); return ``dest``.

    The one home of the temp-file + ``os.replace`` pattern: a short temporary name in the
    same folder (``.cb-XXXX.cb-tmp``, so a 255-byte name still fits and
    :func:`clean_stale_temps` knows it), fsynced, the permissions ``mode`` less the umask (as
    any other file the user creates), then moved into place. On any failure the temporary
    file is removed and the error raised as it came (``OSError``s as they are: see
    :func:`atomic_write` for the output files' :class:`WriteError`).
    """
    dest = Path(dest)
    tmp: str | None = None
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=TMP_PREFIX, suffix=TMP_SUFFIX)
        with os.fdopen(fd, "wb") as fh:
            produce(fh)
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.chmod(tmp, mode & ~_UMASK)
        os.replace(tmp, dest)
        tmp = None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
    return dest


def write_named(dest: str | os.PathLike, produce: Callable[[BinaryIO], object]) -> Path:
    """A file the user named on the command line (``--report``, ``--sheet``, ``report merge --output``).

    A new name or a regular file is written atomically (:func:`atomic_write_with`); a symlink is
    followed, so the link stays and its target is written. A character device or a FIFO
    (``/dev/stdout``, ``/dev/full``, a pipe) is written through, never replaced: opened without
    blocking (a FIFO with no reader is an error, not a hang). Anything else is refused
    (``OSError``). Outputs in OUT never come here: :func:`target_problem` guards those.
    """
    dest = Path(dest)
    target = Path(os.path.realpath(dest)) if dest.is_symlink() else dest
    try:
        st = os.stat(target)
    except FileNotFoundError:
        return atomic_write_with(target, produce)
    if stat.S_ISREG(st.st_mode):
        return atomic_write_with(target, produce)
    if not (stat.S_ISCHR(st.st_mode) or stat.S_ISFIFO(st.st_mode)):
        raise OSError(errno.EINVAL, "not a regular file, character device or FIFO")
    with os.fdopen(open_writer(target), "wb") as fh:
        produce(fh)
    return dest


def open_writer(path: str | os.PathLike) -> int:
    """``os.open`` for writing without waiting: a FIFO with no reader is ``OSError`` ("a FIFO with
    no reader") instead of a hang; the descriptor returned blocks again for the writes."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            raise OSError(errno.ENXIO, "a FIFO with no reader") from None
        raise
    os.set_blocking(fd, True)
    return fd


def atomic_write(dest: Path, data: bytes, mode: int = 0o644, fsync: bool = True) -> str:
    """Write ``data`` to ``dest`` atomically (:func:`atomic_write_with`); return its sha256.

    Raises :class:`WriteError` (``disk_full`` for ENOSPC/EDQUOT) with a one-line reason.
    """
    try:
        atomic_write_with(dest, lambda fh: fh.write(data), mode, fsync)
    except OSError as exc:
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        reason = "disk full" if full else (exc.strerror or str(exc))
        raise WriteError(f"cannot write output: {reason}", disk_full=full) from None
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: str | os.PathLike | BinaryIO, chunk: int = 1 << 20) -> str:
    """The sha256 of a file's contents, read in chunks (weights files, ``--checksum`` fingerprints);
    ``path`` may be a file already open for binary reading (read from where it stands)."""
    digest = hashlib.sha256()
    with open(path, "rb") if isinstance(path, (str, os.PathLike)) else contextlib.nullcontext(path) as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def atomic_write_text(dest: Path, text: str, mode: int = 0o644) -> str:
    """:func:`atomic_write` of UTF-8 text (reports, manifests, gallery pages)."""
    return atomic_write(dest, text.encode("utf-8"), mode)


# In the XMP packet of every output written with metadata (encoding.Provenance.xmp writes it).
OWN_MARK = b'xmp:CreatorTool="colorize-batch'
_MARK_WINDOW = 1 << 16


def is_own_output(path: Path) -> bool:
    """Whether ``path`` carries this tool's provenance mark (searched near its start and end)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(_MARK_WINDOW)
            size = os.fstat(fh.fileno()).st_size
            if OWN_MARK in head:
                return True
            if size > _MARK_WINDOW:
                fh.seek(max(_MARK_WINDOW, size - _MARK_WINDOW))
                return OWN_MARK in fh.read()
    except OSError:
        return False
    return False


def same_file(path: Path, other: Path) -> bool:
    """Whether ``path`` exists and is the file ``other`` under any name (device + inode, links followed)."""
    try:
        return os.path.lexists(path) and os.path.samefile(path, other)
    except OSError:
        return False


def same_bytes(path: Path, other: Path) -> bool:
    """Whether the regular files ``path`` and ``other`` hold the same bytes (links not followed)."""
    try:
        a, b = os.lstat(path), os.stat(other)
        return stat.S_ISREG(a.st_mode) and a.st_size == b.st_size and filecmp.cmp(path, other, shallow=False)
    except OSError:
        return False


def _is_the_input(dest: Path) -> str:
    return f"output {display(dest)} is the input file itself; never overwritten"


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def leads_outside(folder: Path, root: Path) -> bool:
    """Whether writing into ``folder`` would land outside ``root`` (a symlinked folder on the way).
    realpath resolves the folders that exist and keeps the rest (still to be made) as written."""
    return not _within(os.path.realpath(folder), os.path.realpath(root))


def target_problem(dest: Path, source: Path, out_root: Path, known_output: bool, overwrite_foreign: bool,
                   may_be_copy: bool = False) -> str | None:
    """Why ``dest`` must not be written, or ``None``. Never an input; never through a symlink
    leading out of OUT; never over a file this tool did not write (unless allowed).

    ``known_output``: the manifest records ``dest`` as this tool's output. ``may_be_copy``: this
    tool copies colour inputs there (``input.color_inputs: copy``); a copy carries no mark, so a
    file with exactly ``source``'s bytes counts as this tool's (a killed run wrote it and never
    recorded it; replacing it loses nothing: the same bytes are the input).
    """
    if same_file(dest, source):
        return _is_the_input(dest)
    if leads_outside(dest.parent, out_root):
        return f"output folder {display(dest.parent)} leads outside the output folder (symlink); not written through"
    if os.path.islink(dest):
        return f"output {display(dest)} is a symlink; not replaced"
    if (os.path.lexists(dest) and not overwrite_foreign and not known_output and not is_own_output(dest)
            and not (may_be_copy and same_bytes(dest, source))):
        return (f"{display(dest)} already exists and was not written by colorize-batch; not replaced "
                "(--force or output.overwrite: foreign replaces it)")
    return None


def refuse_source(dest: Path, source: Path) -> None:
    """Raise :class:`WriteError` if ``dest`` is the file ``source`` (under any name)."""
    if same_file(dest, source):
        raise WriteError(_is_the_input(dest))


def copy_file(src: Path, dest: Path) -> str:
    """Copy ``src`` to ``dest`` atomically (used for colour inputs with ``color_inputs: copy``)."""
    refuse_source(dest, src)
    return atomic_write(dest, Path(src).read_bytes())


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is a temporary file of :func:`atomic_write_with`, which every atomic write
    of this tool goes through (older versions named them ``.<name>.XXXX.cb-tmp``: those too)."""
    return name.startswith(".") and name.endswith(TMP_SUFFIX)


def clean_stale_temps(out_root: Path) -> int:
    """Remove temporary files left by a killed run; returns how many."""
    removed = 0
    if not out_root.is_dir():
        return 0
    for dirpath, _dirnames, filenames in os.walk(out_root):
        for name in filenames:
            if is_temp_name(name):
                try:
                    os.unlink(os.path.join(dirpath, name))
                    removed += 1
                except OSError:
                    pass
    return removed
