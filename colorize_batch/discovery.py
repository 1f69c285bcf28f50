"""Discovery: walk the input tree and list the images to process, in a stable order.

Recursive, case-insensitive extensions, include/exclude globs on the path relative to the
input root, hidden files and folders skipped, symlinks followed with loop detection, and
an output folder inside the input tree left out of the walk.
"""

from __future__ import annotations

import fnmatch
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .names import display

DEFAULT_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")
FORMAT_SUFFIX = {"jpg": ".jpg", "png": ".png", "tif": ".tif"}


class DiscoveryError(Exception):
    """The input/output roots cannot be used (a usage error, exit code 2)."""


@dataclass(frozen=True)
class WorkItem:
    source: Path  # the input file as found (may be a symlink)
    relative: PurePosixPath  # path relative to the input root, '/'-separated


def _matches(rel: str, patterns: Iterable[str]) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(rel, p) or fnmatch.fnmatchcase(name, p) for p in patterns)


def identity(path: str | os.PathLike, follow: bool = True) -> tuple[int, int] | None:
    """(device, inode) of ``path`` (symlinks followed unless ``follow`` is false), or ``None`` if it
    does not exist."""
    try:
        st = os.stat(path, follow_symlinks=follow)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def folder_chain(path: Path) -> list[tuple[int, int]]:
    """Identities of ``path`` and every folder above it, both as written and as resolved.

    Compared by device + inode, not by name: a bind mount, a share mounted at two paths or a
    volume mounted twice in a container shows one folder under two names.
    """
    chain: list[tuple[int, int]] = []
    for start in (os.path.abspath(path), os.path.realpath(path)):
        current = start
        while True:
            ident = identity(current)
            if ident is not None and ident not in chain:
                chain.append(ident)
            parent = os.path.dirname(current)
            if parent == current:
                break
            current = parent
    return chain


def check_roots(in_path: Path, out_path: Path) -> None:
    """Refuse OUT == IN and IN inside OUT (also through other names of the same folder: bind
    mounts, symlinks); OUT inside IN is fine (the walk skips it). OUT must be a folder (or
    not exist yet) when IN is a folder."""
    if not in_path.exists():
        raise DiscoveryError(f"{display(in_path)}: input does not exist")
    if not in_path.is_dir() and not in_path.is_file():  # never opened: a FIFO would block the run
        raise DiscoveryError(f"{display(in_path)}: not a regular file: {_special_kind(in_path) or 'unknown kind'}")
    if not in_path.is_dir():
        return  # a single file: the output file itself is checked by plan_run
    if out_path.exists() and not out_path.is_dir():
        raise DiscoveryError(f"{display(out_path)}: the output exists and is not a folder")
    src, dst = identity(str(in_path)), identity(str(out_path))
    if dst is not None and src == dst:
        raise DiscoveryError(f"{display(out_path)}: the output folder is the input folder (same device and inode); choose another")
    if dst is not None and dst in folder_chain(in_path):
        raise DiscoveryError(f"{display(in_path)}: the input folder lies inside the output folder {display(out_path)}")


def named_file_problem(path: Path, option: str, in_path: Path, extensions: Iterable[str] = DEFAULT_EXTENSIONS) -> str | None:
    """Why a file the user names to be written (``--report``, ``--log-file``, ``eval --sheet``) must
    not be: it is IN itself (one photo), or a photo under IN (a file with a photo's extension in a
    folder under IN, compared by device + inode, through links), which writing it would destroy.
    ``None``: it may be written."""
    real = Path(os.path.realpath(path))
    if not real.is_file():
        return None
    source = identity(str(in_path))
    if in_path.is_file():
        inside = identity(str(real)) == source
    else:
        inside = real.suffix.lower() in {e.lower() for e in extensions} and source in folder_chain(real.parent)
    if not inside:
        return None
    return f"{option} {display(path)}: that is an input photo of {display(in_path)}; it would be overwritten (choose another file)"


def find_images(
    root: Path,
    extensions: Iterable[str] = DEFAULT_EXTENSIONS,
    include: Iterable[str] = ("**",),
    exclude: Iterable[str] = (),
    skip_dirs: Iterable[Path] = (),
    on_warning=None,
    on_problem=None,
) -> list[WorkItem]:
    """All images under ``root`` (or ``root`` itself if it is a file), sorted by relative path."""
    root = Path(root)
    if root.is_file():
        return [WorkItem(root, PurePosixPath(root.name))]
    return list(iter_images(root, extensions, include, exclude, skip_dirs, on_warning, on_problem))


def iter_images(root, extensions=DEFAULT_EXTENSIONS, include=("**",), exclude=(), skip_dirs=(), on_warning=None,
                on_problem=None) -> Iterator[WorkItem]:
    """Walk ``root`` in name order and yield its photos. ``on_warning(message)`` hears of entries
    skipped for what they are (links to nowhere, FIFOs, loops); ``on_problem(path, reason)`` of
    folders that cannot be read or listed, whose photos are then missing (a failure: exit 1).
    Without ``on_problem`` those are warnings too."""
    exts = {e.lower() for e in extensions}
    include, exclude = list(include), list(exclude)
    skip = {ident for d in skip_dirs if (ident := identity(str(d))) is not None}
    seen_dirs: set[tuple[int, int]] = set()
    warn = on_warning or (lambda msg: None)
    problem = on_problem or (lambda path, reason: warn(f"{path}: {reason}"))

    def walk(directory: Path, rel: PurePosixPath) -> Iterator[WorkItem]:
        try:
            st = directory.stat()
        except OSError as exc:
            problem(directory, f"cannot read folder ({exc.strerror}); its photos are not done")
            return
        key = (st.st_dev, st.st_ino)
        if key in seen_dirs:
            warn(f"{directory}: symlink loop, folder already visited; skipped")
            return
        seen_dirs.add(key)
        if key in skip:  # the output folder, under whatever name it is reached
            return
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as exc:
            problem(directory, f"cannot list folder ({exc.strerror}); its photos are not done")
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            child_rel = rel / entry.name
            path = Path(entry.path)
            try:
                is_dir = entry.is_dir(follow_symlinks=True)
                is_file = not is_dir and entry.is_file(follow_symlinks=True)
            except OSError:
                is_dir = is_file = False
            if is_dir:
                yield from walk(path, child_rel)
            elif is_file:
                if os.path.splitext(entry.name)[1].lower() not in exts:
                    continue
                rel_s = str(child_rel)
                if _matches(rel_s, include) and not _matches(rel_s, exclude):
                    yield WorkItem(path, child_rel)
            else:
                kind = _special_kind(path)  # lstat/stat only: a FIFO is never opened (that would block)
                if kind is None:
                    warn(f"{path}: broken symlink; skipped")
                elif kind and os.path.splitext(entry.name)[1].lower() in exts:
                    warn(f"{path}: not a regular file: {kind}; skipped")

    yield from walk(Path(root), PurePosixPath())


SPECIAL_KINDS = ((stat.S_ISFIFO, "FIFO"), (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
                 (stat.S_ISSOCK, "socket"))


def _special_kind(path: Path) -> str | None:
    """What a folder entry that is neither a file nor a folder is: ``None`` for a broken symlink,
    ``"FIFO"``, ``"character device"``, ... (followed through a symlink), ``""`` if unknown."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None if os.path.islink(path) else ""
    return next((name for test, name in SPECIAL_KINDS if test(mode)), "")


def output_path(item: WorkItem, out_root: Path, fmt: str = "same", single_file: bool = False) -> Path:
    """Where an item's result goes: the mirrored relative path, suffix set by ``fmt``."""
    rel = Path(*item.relative.parts)
    if fmt != "same":
        rel = rel.with_suffix(FORMAT_SUFFIX[fmt])
    return out_root if single_file else out_root / rel
