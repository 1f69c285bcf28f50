"""Reading the files a user names: configs, hint files, hint bundles, reports, weights, checkpoints.

Every such file must be a regular file under a stated size limit, so reading it takes bounded
time and memory: a FIFO given as ``--config`` would block forever, ``/dev/zero`` would grow
without end, a 30 MB YAML costs minutes. The file is checked with ``stat`` before it is
opened, opened with ``O_NONBLOCK`` (a FIFO swapped in after the check cannot block the open)
and checked again on the open descriptor; at most ``limit`` bytes are read. Images are not
read through here: decoding has its own guards (``decoding``, ``input.max_pixels``).

The limits (one home): generous for real files, small enough to answer in seconds.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

from .names import display

CONFIG_LIMIT = 1_000_000  # a --config YAML (pipeline.yaml is 9 kB)
HINTS_LIMIT = 1_000_000  # one photo.hints.json (1000 points are ~70 kB)
BUNDLE_LIMIT = 64_000_000  # a hint bundle from the review gallery (thousands of images)
REPORT_LIMIT = 64_000_000  # a run report (last-run*.json), read by `gallery` and `report merge`
WEIGHTS_LIMIT = 2_000_000_000  # a weights file or training checkpoint (the shipped weights are 7.5 MB)

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


class FileLimitError(OSError):
    """A named file that is not a regular file or is over its size limit. ``reason`` is the
    problem without the path (for callers that name the file themselves); ``str()`` has both.
    An ``OSError``, so callers that report unreadable files report this one too."""

    def __init__(self, path: str | os.PathLike, reason: str):
        super().__init__(f"{display(path)}: {reason}")
        self.path = Path(path)
        self.reason = reason
        self.strerror = reason


def _megabytes(size: int) -> str:
    return f"{size / 1e9:g} GB" if size >= 1e9 else f"{size / 1e6:.3g} MB" if size >= 1e5 else f"{size:,} bytes"


def _check(path: str | os.PathLike, st: os.stat_result, limit: int, what: str) -> None:
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _KINDS if test(st.st_mode)), "not a plain file")
        raise FileLimitError(path, f"not a regular file ({kind}): a {what} must be a regular file")
    if st.st_size > limit:
        raise FileLimitError(path, f"{_megabytes(st.st_size)}, over the {_megabytes(limit)} limit for a {what}")


def check_user_file(path: str | os.PathLike, limit: int, what: str) -> None:
    """Raise :class:`FileLimitError` unless ``path`` is a regular file of at most ``limit`` bytes
    (``OSError`` as it comes if it cannot be found or examined)."""
    _check(path, os.stat(path), limit, what)


def open_user_file(path: str | os.PathLike, limit: int, what: str) -> BinaryIO:
    """``path`` opened for binary reading, once it is known to be a regular file of at most
    ``limit`` bytes; ``what`` names it in the errors ("config file", "hint file", ...)."""
    check_user_file(path, limit, what)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        _check(path, os.fstat(fd), limit, what)  # the file the descriptor holds, not the name checked above
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_user_file(path: str | os.PathLike, limit: int, what: str) -> bytes:
    """All bytes of a named file (see :func:`open_user_file`); a file that grows past ``limit``
    while it is read is refused too."""
    with open_user_file(path, limit, what) as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise FileLimitError(path, f"grew past the {_megabytes(limit)} limit for a {what} while it was read")
    return data
