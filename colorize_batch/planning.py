"""Planning: what a run will do, decided before anything is decoded.

:func:`plan_run` walks IN (:mod:`~colorize_batch.discovery`), maps every file (every page of a
multi-page TIFF with ``input.tiff_pages: all``) to its output, drops what the manifest says
is up to date, and turns output collisions and unsafe targets into per-file problems. Each
image's colour hints (:mod:`~colorize_batch.hints`) are read here; their hash joins its
fingerprint. The result, a :class:`Plan` of :class:`Job` rows, is what an engine executes.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from .config import PipelineConfig
from .discovery import DiscoveryError, WorkItem, find_images, identity, output_path
from .hints import HintError, Hints, locate, read_hints
from .manifest import Manifest, RunIdentity, fingerprint
from .names import display
from .sharding import Shard
from .encoding import PIL_FORMAT
from .safe_files import same_file, target_problem

log = logging.getLogger("colorize_batch")


@dataclass
class Job:
    """One output to make: a source file (one page of it) and where its result goes."""

    item: WorkItem
    output: Path
    fingerprint: str
    page: int = 0  # TIFF page (input.tiff_pages: all)
    pages: int = 1
    hints: Hints | None = None  # what the image's hint file says (hints.py); its hash is in ``fingerprint``
    copy_problem: str | None = None  # why ``copy_output`` must not be written (a foreign file there), if it is not ``output``

    @property
    def copy_output(self) -> Path:
        """Where a colour input is copied (``input.color_inputs: copy``): the output's name with the
        source's own suffix, since the bytes are the source's (``output`` itself with ``--format same``)."""
        return self.output.with_suffix(self.item.source.suffix)

    @property
    def source_key(self) -> str:
        """The manifest's key: the relative path, ``#pN`` for a page of a multi-page TIFF."""
        return source_key(str(self.item.relative), self.page, self.pages)

    @property
    def source_name(self) -> str:
        """The input as the log and the report name it: its path, ``#pN`` for a page of a
        multi-page TIFF (``scans/roll.tif#p3``: which page failed, not only which file)."""
        return source_key(str(self.item.source), self.page, self.pages)


_PAGE_KEY = re.compile(r"#p(\d+)$")


def source_key(relative: str, page: int = 0, pages: int = 1) -> str:
    """The manifest key of page ``page`` (0-based) of an input with ``pages`` pages: its relative
    path, with ``#pN`` (N = page + 1) for a page of a multi-page TIFF (``scan.tif#p2``)."""
    return relative + (f"#p{page + 1}" if pages > 1 else "")


def parse_source_key(key: str) -> tuple[str, int]:
    """The relative path and 0-based page of a manifest key (:func:`source_key`'s inverse)."""
    match = _PAGE_KEY.search(key)
    return (key[: match.start()], int(match.group(1)) - 1) if match else (key, 0)


@dataclass
class Plan:
    in_path: Path
    out_path: Path
    jobs: list[Job] = field(default_factory=list)
    up_to_date: int = 0
    without_hints: int = 0  # left out by input.hints_only
    problems: list[tuple[str, str]] = field(default_factory=list)  # (path, reason): fail before decoding


def tiff_page_count(path: Path) -> int:
    """Pages of a TIFF (1 if it cannot be read here: decoding will report why)."""
    try:
        with Image.open(path) as im:
            return int(getattr(im, "n_frames", 1))
    except Exception:  # noqa: BLE001 - e.g. TypeError from a later IFD without dimensions
        return 1


def names_output_file(in_path: Path, out_path: Path) -> bool:
    """Whether OUT names the output file itself: for a single input file, OUT may name the output
    file (an image suffix, not an existing folder) or a folder to put it in."""
    return in_path.is_file() and out_path.suffix.lower() in PIL_FORMAT and not out_path.is_dir()


class InputIndex:
    """Every input file and folder by device + inode, to refuse an output that is one of them.

    Names are not enough: IN reached through a bind mount of a folder inside OUT (or a hard
    link) shows an input under an output's name, where replacing the output replaces the input.
    """

    def __init__(self, in_root: Path, items: list[WorkItem]):
        self.files: dict[tuple[int, int], Path] = {}
        self.folders: dict[tuple[int, int], Path] = {}
        walked: set[Path] = set()
        for item in items:
            for follow in (True, False):  # the file itself and, for a symlink, its entry
                ident = identity(item.source, follow)
                if ident is not None:
                    self.files.setdefault(ident, item.source)
            for rel in item.relative.parents:  # every folder from the file's own up to IN
                folder = in_root.joinpath(*rel.parts)
                if folder in walked:
                    break
                walked.add(folder)
                ident = identity(folder)
                if ident is not None:
                    self.folders.setdefault(ident, folder)
        self._checked: set[Path] = set()

    def check(self, dest: Path, out_root: Path) -> None:
        """Raise :class:`DiscoveryError` if writing ``dest`` would replace an input file or put
        an output into an input folder (IN inside OUT under another name)."""
        ident = identity(dest, follow=False)
        same = self.files.get(ident) if ident is not None else None
        if same is not None:
            raise DiscoveryError(f"output {display(dest)} is the input file {display(same)} (same device and inode: "
                                 "IN lies inside OUT under another name, or a hard link); nothing written, choose another output")
        folder = dest.parent
        while folder not in self._checked:  # the nearest folder that exists is where the output would go
            self._checked.add(folder)
            ident = identity(folder)
            if ident is not None:
                inside = self.folders.get(ident)
                if inside is not None:
                    raise DiscoveryError(f"{display(dest)}: the output would be written into the input folder {display(inside)} "
                                         f"(IN lies inside OUT {display(out_root)} under another name: a bind mount?); "
                                         "nothing written, choose another output")
                break
            if folder == out_root or folder.parent == folder:
                break
            folder = folder.parent


def with_hints(item: WorkItem, fp: str, hints_root: Path | None, edges: bool = False) -> tuple[Hints | None, str]:
    """The image's hints (beside it, or under ``input.hints_dir``) and its fingerprint keyed on the
    hint file's bytes too, so editing, adding or removing hints redoes exactly that image; and on
    ``edges`` (``model.hint_edges``) where it has points, so changing that redoes the hinted images only.
    Raises :class:`~colorize_batch.hints.HintError` naming the hint file."""
    path = locate(item.source, item.relative, hints_root)
    if path is None:
        return None, fp
    try:
        hints, digest = read_hints(path)
    except HintError as exc:
        raise HintError(f"hint file {display(path)}: {exc}") from None
    marks = "+edges" if edges and hints.points else ""
    return hints, f"{fp}{marks}+hints:{digest[:16]}"


def plan_run(
    in_path: Path,
    out_path: Path,
    config: PipelineConfig,
    manifest: Manifest | None,
    ident: RunIdentity | None,
    force: bool = False,
    checksum: bool = False,
    shard: Shard | None = None,
) -> Plan:
    """Discover inputs, map outputs, drop what is up to date, flag output collisions.

    The roots are checked by the caller first (:func:`~colorize_batch.discovery.check_roots`,
    as :func:`~colorize_batch.runner.run_pipeline` does). With a ``shard``, outputs are still
    claimed over the whole tree (so collisions are seen the same way by every shard) but only
    the shard's own files become jobs.
    """
    out_file_mode = names_output_file(in_path, out_path)
    inp = config.input
    plan = Plan(in_path, out_path)
    items = find_images(
        in_path, inp.extensions, inp.include, inp.exclude, skip_dirs=[out_path],
        on_warning=lambda msg: log.warning("%s", msg),
        on_problem=lambda folder, reason: plan.problems.append((str(folder), reason)),
    )
    if out_file_mode or in_path.is_file():
        dest = output_path(items[0], out_path, config.output.format, single_file=out_file_mode)
        if same_file(dest, in_path):
            raise DiscoveryError(f"{display(dest)}: the output would replace the input file; choose another output")
    inputs = InputIndex(in_path, items) if in_path.is_dir() else None
    claimed: dict[str, str] = {}
    known_outputs = manifest.outputs() if manifest is not None else set()
    overwrite_foreign = force or config.output.overwrite == "foreign"
    all_pages = config.input.tiff_pages == "all"
    copies = config.input.color_inputs == "copy"
    for item in items:
        dest = output_path(item, out_path, config.output.format, single_file=out_file_mode)
        if inputs is not None:  # every output, --force or not, before anything is written
            for target in {dest, dest.with_suffix(item.source.suffix)}:  # a colour input is copied under its own suffix
                inputs.check(target, out_path)
        pages = tiff_page_count(item.source) if all_pages and item.source.suffix.lower() in (".tif", ".tiff") else 1
        if shard is not None and not shard.owns(str(item.relative)):
            for page in range(pages):  # another shard's outputs, every page of them: claimed as that shard claims them
                claimed.setdefault(str(page_output(dest, page, pages)), str(item.source))
            continue
        try:
            fp = fingerprint(item.source, checksum)
            hints, fp = with_hints(item, fp, inp.hints_dir, config.model.hint_edges)
        except OSError as exc:
            plan.problems.append((str(item.source), f"cannot read: {exc.strerror}"))
            continue
        except HintError as exc:
            plan.problems.append((str(item.source), str(exc)))
            continue
        if inp.hints_only and hints is None:
            plan.without_hints += pages
            continue
        for page in range(pages):
            page_dest = page_output(dest, page, pages)
            if inputs is not None and pages > 1:
                inputs.check(page_dest, out_path)
            key = str(page_dest)
            if key in claimed:
                other = Path(claimed[key])
                way = ("rename one or use --format same" if config.output.format != "same" and other.suffix != item.source.suffix
                       else "rename one")  # a.jpg and a.JPG keep their names apart with --format same
                plan.problems.append((str(item.source), f"output {page_dest} is also the output of {claimed[key]}; not overwritten ({way})"))
                continue
            claimed[key] = str(item.source)
            job = Job(item, page_dest, fp, page, pages, hints)
            current = manifest is not None and ident is not None and manifest.is_current(job.source_key, fp, ident,
                                                                                          hinted=hints is not None)
            if current and not force:
                plan.up_to_date += 1
                continue
            out_root = out_path if not out_file_mode else page_dest.parent
            problem = target_problem(page_dest, item.source, out_root, _relative(page_dest, out_root) in known_outputs,
                                     overwrite_foreign, may_be_copy=copies)
            if problem:
                plan.problems.append((str(item.source), problem))
                continue
            if copies and job.copy_output != page_dest:  # checked like the output: it is written only if the input is in colour
                job.copy_problem = target_problem(job.copy_output, item.source, out_root,
                                                  _relative(job.copy_output, out_root) in known_outputs, overwrite_foreign,
                                                  may_be_copy=True)
            plan.jobs.append(job)
    return plan


def page_output(dest: Path, page: int, pages: int) -> Path:
    """The output of page ``page`` (0-based) of an input with ``pages`` pages: ``dest`` itself for
    one page, ``name_p2.tif`` for the second of several (``input.tiff_pages: all``)."""
    return dest.with_name(f"{dest.stem}_p{page + 1}{dest.suffix}") if pages > 1 else dest


def _relative(path: Path, root: Path) -> str:
    return os.path.relpath(path, root)
