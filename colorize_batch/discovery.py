"""Discovery: walk the input tree and list the images to process, in a stable order.

Recursive, case-insensitive extensions, include/exclude globs on the path relative to the
input root, hidden files and folders skipped, symlinks followed with loop detection, and
an output folder inside the input tree left out of the walk.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

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


def _is_within(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


def check_roots(in_path: Path, out_path: Path) -> None:
    """Refuse OUT == IN and IN inside OUT; OUT inside IN is fine (and skipped by the walk)."""
    if not in_path.exists():
        raise DiscoveryError(f"{in_path}: input does not exist")
    if in_path.is_dir():
        src, dst = in_path.resolve(), out_path.resolve()
        if src == dst:
            raise DiscoveryError(f"{out_path}: the output folder is the input folder; choose another")
        if _is_within(src, dst):
            raise DiscoveryError(f"{in_path}: the input folder lies inside the output folder {out_path}")


def find_images(
    root: Path,
    extensions: Iterable[str] = DEFAULT_EXTENSIONS,
    include: Iterable[str] = ("**",),
    exclude: Iterable[str] = (),
    skip_dirs: Iterable[Path] = (),
    on_warning=None,
) -> list[WorkItem]:
    """All images under ``root`` (or ``root`` itself if it is a file), sorted by relative path."""
    root = Path(root)
    if root.is_file():
        return [WorkItem(root, PurePosixPath(root.name))]
    return list(iter_images(root, extensions, include, exclude, skip_dirs, on_warning))


def iter_images(root, extensions=DEFAULT_EXTENSIONS, include=("**",), exclude=(), skip_dirs=(), on_warning=None) -> Iterator[WorkItem]:
    exts = {e.lower() for e in extensions}
    include, exclude = list(include), list(exclude)
    skip = {Path(d).resolve() for d in skip_dirs}
    seen_dirs: set[tuple[int, int]] = set()
    warn = on_warning or (lambda msg: None)

    def walk(directory: Path, rel: PurePosixPath) -> Iterator[WorkItem]:
        try:
            st = directory.stat()
        except OSError as exc:
            warn(f"{directory}: cannot read folder ({exc.strerror})")
            return
        key = (st.st_dev, st.st_ino)
        if key in seen_dirs:
            warn(f"{directory}: symlink loop, folder already visited; skipped")
            return
        seen_dirs.add(key)
        if directory.resolve() in skip:
            return
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as exc:
            warn(f"{directory}: cannot list folder ({exc.strerror})")
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
            elif entry.is_symlink():
                warn(f"{path}: broken symlink; skipped")

    yield from walk(Path(root), PurePosixPath())


def output_path(item: WorkItem, out_root: Path, fmt: str = "same", single_file: bool = False) -> Path:
    """Where an item's result goes: the mirrored relative path, suffix set by ``fmt``."""
    rel = Path(*item.relative.parts)
    if fmt != "same":
        rel = rel.with_suffix(FORMAT_SUFFIX[fmt])
    return out_root if single_file else out_root / rel
