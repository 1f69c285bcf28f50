"""A static HTML review gallery of a finished run: ``OUT/.colorize-batch/gallery/``.

``colorize-batch gallery OUT`` (:func:`build_gallery`) reads the run's memory (``manifest.jsonl`` and, when present,
``last-run.json``) and writes a small offline site that a person opens in any browser to
review the results: every colorized (or copied) file with its grey source beside it, its
relative path, pixel size and a link to the full-resolution output, grouped by folder and
paged so that a 10,000-image run still opens fast. A summary header on every page gives
the counts, the model and the date; the first page also lists the files that failed.

Design points:

* Thumbnails (JPEG, long side 320 px) live in ``gallery/thumbs/out/<output rel>.jpg`` and
  ``gallery/thumbs/src/<source rel>.jpg``. They are made once, in a thread pool (Pillow
  releases the GIL while decoding and resampling), and reused on later builds while they
  are newer than their image. A thumbnail that cannot be made becomes a placeholder text.
* The page, its CSS and its script are Jinja2 templates in ``colorize_batch/templates/``
  (package data), inlined into every page. :func:`collect_site` gathers what the pages show
  and :func:`render_page` renders one; ``colorize-batch review`` (:mod:`~colorize_batch.review`)
  serves the same pages live (pictures by position, its editor instead of the downloads).
* Everything is relative and local: no CDN, fonts or external scripts, so the folder can
  be copied or opened from a NAS. Page, thumbnail and file links are percent-encoded
  relative URLs; every file and folder name goes through Jinja2 with autoescaping, so a
  file called ``<img src=x onerror=alert(1)>.png`` shows as text and never runs.
* The hint editor: a click on a colour result adds a colour hint (:mod:`~colorize_batch.hints`)
  there, in coordinates relative to the upright image (the thumbnails are EXIF-rotated as the
  output shows); the page downloads ``photo.hints.json`` per image or a bundle of every edited
  image for ``colorize-batch hints import``. Each image's input relative path (the bundle's
  key) and its existing hint file's points travel as JSON in a ``<script type="application/json">``
  block (``<``, ``>``, ``&`` escaped, ASCII only), never spliced into the script.
* Suggested colours: with a :class:`~colorize_batch.suggestions.Suggester` (the model, loaded
  only when a grid must be made), each editable image's coarse grid of the model's most likely distinct colours
  travels in that block too; the grids are kept in ``gallery/suggest/<source rel>.json`` and
  reused while newer than the source and made by the same weights at the same size.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import stat
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path, PurePosixPath
from urllib.parse import quote

import jinja2
from markupsafe import Markup
from PIL import Image, ImageOps

from . import __version__
from .decoding import ALPHA_MODES, GREY_16_MODES, grey16, libtiff_page, min_is_white, scrambled_by_pillow, to_8bit
from .hints import BUNDLE_FORMAT, HintError, hints_path_for, locate, read_editor_document, safe_relative
from .manifest import (REPORT_STEM, REPORT_SUFFIX, Manifest, ManifestRecord, Status, gallery_dir, has_manifest, refuse_links,
                       report_path)
from .names import display
from .planning import parse_source_key
from .reporting import RunReport
from .safe_files import atomic_write, atomic_write_text
from .sharding import ShardError, current_shard_reports, merge_reports, written_ns
from .suggestions import Suggester, SuggestionSource

log = logging.getLogger("colorize_batch")

THUMB_DIR = "thumbs"
SUGGEST_DIR = "suggest"  # each image's suggested colours, reused by later builds
MAX_GRID_BYTES = 64 * 1024  # a cached grid file larger than this is not ours: made again
THUMB_LONG_SIDE = 320
THUMB_QUALITY = 82
MAX_FAILURES_SHOWN = 1000
_PAGE_FILE = re.compile(r"page-(\d+)\.html$")
_DIGITS = re.compile(r"(\d+)")


class NoManifestError(FileNotFoundError):
    """The output folder has no ``.colorize-batch/manifest.jsonl``: nothing to show."""


# --------------------------------------------------------------------------- thumbnails


@dataclass(frozen=True)
class ThumbJob:
    image: Path | None  # None: the image's location is unknown (no source folder)
    thumb: Path
    page: int = 0  # 0-based page of a multi-page TIFF


@dataclass(frozen=True)
class ThumbResult:
    image_size: tuple[int, int] | None = None  # pixel size of the full image
    thumb_size: tuple[int, int] | None = None  # None: no thumbnail, show ``error`` instead
    error: str | None = None
    made: bool = False  # written by this build (False: reused or failed)


def _to_8bit(im: Image.Image, inverted: bool = False) -> Image.Image:
    """Something JPEG can store, at the levels ``run`` reads: 16-bit grey (and 32-bit "I") as decoding
    reads it (:func:`decoding.grey16`, ``inverted`` for MinIsWhite) through :func:`decoding.to_8bit`,
    alpha flattened on white."""
    if im.mode in GREY_16_MODES:
        return Image.fromarray(to_8bit(grey16(im, inverted)), "L")
    if im.mode in ("L", "RGB"):
        return im
    if im.mode in ALPHA_MODES or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")  # 1, P, CMYK, YCbCr, LAB, HSV


def thumbnail_image(im: Image.Image, long_side: int = THUMB_LONG_SIDE) -> Image.Image:
    """The 8-bit thumbnail of an open image: upright as browsers show the full file (EXIF), at
    the 8-bit levels decoding gives (:func:`_to_8bit`, before resampling), long side ``long_side``."""
    if im.format == "JPEG":
        im.draft(im.mode if im.mode in ("L", "RGB") else "RGB", (long_side, long_side))
    inverted = min_is_white(im)
    upright = libtiff_page(im.filename, im.tell()) if scrambled_by_pillow(im) else ImageOps.exif_transpose(im)  # type: ignore[attr-defined]
    small = _to_8bit(upright, inverted)
    small.thumbnail((long_side, long_side), Image.Resampling.LANCZOS, reducing_gap=2.0)
    return small


def _oriented_size(im: Image.Image) -> tuple[int, int]:
    """The size a browser shows: width and height swapped for EXIF orientations 5..8."""
    try:
        orientation = im.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block is no reason to fail
        orientation = 1
    return (im.height, im.width) if orientation in (5, 6, 7, 8) else im.size


def _fresh(thumb: Path, image: Path) -> bool:
    try:
        return thumb.stat().st_mtime_ns >= image.stat().st_mtime_ns
    except OSError:
        return False


def make_thumbnail(job: ThumbJob, long_side: int = THUMB_LONG_SIDE) -> ThumbResult:
    """Make (or reuse) one thumbnail; never raises: a failure comes back as ``error``."""
    if job.image is None:
        return ThumbResult(error="source folder unknown (use --source)")
    if not job.image.is_file():
        return ThumbResult(error="file missing")
    try:
        with Image.open(job.image) as im:
            if job.page:
                im.seek(job.page)
            image_size = _oriented_size(im)
            if _fresh(job.thumb, job.image):
                with Image.open(job.thumb) as existing:
                    return ThumbResult(image_size, existing.size)
            small = thumbnail_image(im, long_side)
            job.thumb.parent.mkdir(parents=True, exist_ok=True)
            buf = io.BytesIO()
            small.save(buf, "JPEG", quality=THUMB_QUALITY, optimize=True)
            atomic_write(job.thumb, buf.getvalue(), fsync=False)  # a killed build never leaves a half thumbnail
            return ThumbResult(image_size, small.size, made=True)
    except Exception as exc:  # noqa: BLE001 - one bad file must not stop the gallery
        log.warning("gallery: no thumbnail for %s: %s", display(job.image), exc)
        return ThumbResult(error=f"no thumbnail: {type(exc).__name__}: {exc}")


def make_thumbnails(jobs: Sequence[ThumbJob], workers: int = 2) -> dict[Path, ThumbResult]:
    """All thumbnails through a thread pool of ``workers``; keyed by thumbnail path."""
    unique = list({job.thumb: job for job in jobs}.values())
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="gallery-thumb") as pool:
        results = pool.map(make_thumbnail, unique)
        return {job.thumb: result for job, result in zip(unique, results)}


# --------------------------------------------------------------------------- the model of the site


@dataclass(frozen=True)
class Picture:
    """One side (grey source or colour output) of an item, as the template needs it."""

    thumb_url: str | None
    link_url: str | None
    size: tuple[int, int] | None
    thumb_size: tuple[int, int] | None
    placeholder: str | None  # text shown instead of a thumbnail


@dataclass(frozen=True)
class HintTarget:
    """What the hint editor needs of an image: its input relative path (the bundle's key; the
    exact name, not the display one), the hint file's name, the points it already has."""

    rel: str
    file: str
    document: dict | None  # the existing hint file's points (and global tint), normalised; None: no file
    problem: str | None = None  # the existing hint file cannot be used: why

    @property
    def label(self) -> str:
        """The hint file's name for people (names that are not UTF-8 shown with ``\\xNN``)."""
        return display(self.file)


@dataclass(frozen=True)
class Item:
    key: str  # manifest key (source relative path, "#pN" for TIFF pages)
    status: str
    output_rel: str
    folder: str
    name: str
    source: Picture
    output: Picture
    hint: HintTarget | None = None  # None: no hint editor on this card (not colorized, no thumbnail)


@dataclass(frozen=True)
class Group:
    folder: str
    continued: bool
    items: list[Item]


@dataclass(frozen=True)
class PageLink:
    number: int | None  # None: an ellipsis
    url: str
    current: bool = False


def _natural(text: str) -> tuple:
    return tuple(int(part) if part.isdigit() else part.casefold() for part in _DIGITS.split(text))


def _sort_key(rel: str) -> tuple:
    parts = PurePosixPath(rel).parts
    return (tuple(_natural(p) for p in parts[:-1]), _natural(parts[-1]) if parts else ())


def _safe_rel(rel: object) -> PurePosixPath | None:
    """A manifest path usable under a root (:func:`hints.safe_relative`'s rule), else None."""
    try:
        return safe_relative(rel)
    except HintError:
        return None


def _url(path: str | PurePosixPath) -> str:
    """A percent-encoded relative URL ('#', '?', '%', '<', spaces... all encoded)."""
    return quote(os.fsencode(str(path)), safe="/")  # the name's own bytes: non-UTF-8 names link too


def page_filename(number: int) -> str:
    return "index.html" if number == 1 else f"page-{number}.html"


def _page_links(current: int, total: int, window: int = 3) -> list[PageLink]:
    shown = {1, total, *range(max(1, current - window), min(total, current + window) + 1)}
    links: list[PageLink] = []
    previous = 0
    for number in sorted(shown):
        if number - previous > 1:
            links.append(PageLink(None, ""))
        links.append(PageLink(number, page_filename(number), number == current))
        previous = number
    return links


def _read_last_run(path: Path, out_dir: Path) -> RunReport | None:
    refuse_links(path, out_dir)
    if not path.is_file():
        return None
    try:
        return RunReport.read(path, out_dir)
    except (OSError, ValueError) as exc:
        log.warning("gallery: ignoring unreadable %s: %s", display(path), exc)
        return None


def _source_root(source_dir: Path | None, last_run: RunReport | None) -> tuple[Path | None, str | None]:
    """Where the sources are, and a warning for the header when that is unknown."""
    if source_dir is not None:
        root = Path(source_dir)
    elif last_run and last_run.input is not None:
        root = Path(last_run.input)
    else:
        return None, (f"The source folder is unknown (no {REPORT_STEM}{REPORT_SUFFIX}): pass --source IN_DIR to see the "
                      "grey originals.")
    if root.is_file():  # a single-file run: its manifest key is the file name
        root = root.parent
    if not root.is_dir():
        return None, f"Source folder {root} not found: pass --source IN_DIR to see the grey originals."
    return root.resolve(), None


def _run_date(last_run_path: Path, last_run: RunReport | None, records: Iterable[ManifestRecord]) -> str:
    if last_run is not None:
        try:
            return datetime.fromtimestamp(last_run_path.stat().st_mtime).astimezone().strftime("%Y-%m-%d %H:%M %z")
        except OSError:
            pass
    latest: datetime | None = None
    for rec in records:
        try:
            when = datetime.strptime(rec.time or "", "%Y-%m-%dT%H:%M:%S%z")
        except (TypeError, ValueError):
            continue
        latest = when if latest is None or when > latest else latest
    return latest.strftime("%Y-%m-%d %H:%M %z") if latest else "unknown"


def _model_label(last_run: RunReport | None, records: Iterable[ManifestRecord]) -> str:
    if last_run and last_run.model:
        label, sha = last_run.model, last_run.model_sha256
        return f"{label} (sha256 {sha[:12]})" if sha and sha[:12] not in label else label
    hashes = sorted({rec.model for rec in records if rec.model})
    if not hashes:
        return "unknown"
    return ", ".join(f"sha256 {h[:12]}" for h in hashes)


def _failures(records: Iterable[ManifestRecord], last_run: RunReport | None, input_roots: Sequence[str]) -> list[tuple[str, str]]:
    """(path, reason) of failed files from the manifest and from last-run.json, deduplicated."""
    found: dict[str, str] = {}
    for rec in records:
        if rec.status is Status.FAILED:
            found[rec.source] = rec.reason or "failed"
    for failure in last_run.failures if last_run else []:
        path = str(failure.get("path", "?"))
        for root in input_roots:  # last-run.json has the paths as given on the command line
            try:
                path = Path(path).relative_to(root).as_posix()
                break
            except ValueError:
                continue
        found.setdefault(path, str(failure.get("reason") or "failed"))
    return sorted(found.items(), key=lambda kv: _sort_key(kv[0]))


# --------------------------------------------------------------------------- rendering

# The page, its style sheet and script: colorize_batch/templates/ (package data), inlined into each page.
_ENV = jinja2.Environment(loader=jinja2.PackageLoader("colorize_batch", "templates"), autoescape=True,
                          undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)


def _script_json(data: object) -> Markup:
    """JSON for a ``<script type="application/json">`` block: ASCII (names that are not UTF-8 keep
    their ``\\udcXX`` escapes) and no ``<``, ``>`` or ``&``, so no name can close the block."""
    text = json.dumps(data, ensure_ascii=True, separators=(",", ":"))
    return Markup(text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))


def _hint_target(source_rel: PurePosixPath, src_root: Path | None, hints_root: Path | None) -> HintTarget:
    """The editor's view of an image's hints: the existing file's points, if it has one."""
    rel = source_rel.as_posix()
    target = HintTarget(rel, hints_path_for(rel, Path()).name, None)
    if hints_root is None and src_root is None:
        return target
    try:
        path = locate(src_root / source_rel if src_root else Path(rel), rel, hints_root)
        if path is None:
            return target
        return replace(target, document=read_editor_document(path))
    except (OSError, ValueError) as exc:  # HintError is a ValueError
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return replace(target, problem=f"its hint file cannot be used ({reason}): editing replaces it")


def _hint_data(items: Sequence[Item], files: Sequence[ItemFiles], store: str, live: bool = False,
               suggestions: dict[str, dict] | None = None) -> tuple[Markup, dict[str, int]]:
    """The page's hint JSON (one entry per image: the pages of a TIFF share its one hint file;
    ``key``: the manifest key of its first item on the page, which the review server edits;
    ``suggest``: its suggested colours' grid, when the gallery has them) and each relative
    path's index in it."""
    index: dict[str, int] = {}
    images: list[dict] = []
    for item, where in zip(items, files):
        if item.hint is not None and item.hint.rel not in index:
            index[item.hint.rel] = len(images)
            image = {"rel": item.hint.rel, "key": where.key, "file": item.hint.file, "existing": item.hint.document}
            grid = (suggestions or {}).get(item.hint.rel)
            if grid is not None:
                image["suggest"] = {"rows": grid["rows"], "cols": grid["cols"], "cells": grid["cells"]}
            images.append(image)
    return _script_json({"format": BUNDLE_FORMAT, "version": 1, "store": store, "live": live,
                         "default_radius": 0.02, "images": images}), index


def _write_atomic(path: Path, text: str) -> None:
    refuse_links(path, path.parent)  # a linked page is refused, not replaced (its folders: check_gallery_links)
    atomic_write_text(path, text)


def check_gallery_links(out_dir: Path) -> None:
    """Refuse (:class:`~colorize_batch.manifest.StateLinkError`, nothing written) when the gallery's
    folders or its ``index.html`` are symbolic links: it never writes through a link."""
    gallery = gallery_dir(out_dir)
    for path in (gallery / page_filename(1), gallery / THUMB_DIR / "src", gallery / THUMB_DIR / "out", gallery / SUGGEST_DIR):
        refuse_links(path, Path(out_dir))


def _refuse_linked_folders(files: Iterable[Path], root: Path) -> None:
    """Thumbnails and suggestion grids mirror OUT's folders under ``thumbs/`` and ``suggest/``:
    none of those folders may be a link either."""
    for folder in sorted({path.parent for path in files}):
        refuse_links(folder, root)


def _groups(items: Sequence[Item], previous_folder: str | None) -> list[Group]:
    groups: list[Group] = []
    for item in items:
        if groups and groups[-1].folder == item.folder:
            groups[-1].items.append(item)
        else:
            groups.append(Group(item.folder, continued=not groups and item.folder == previous_folder, items=[item]))
    return groups


def _picture(result: ThumbResult, thumb: Path, gallery: Path, link: Path | None) -> Picture:
    thumb_url = _url(thumb.relative_to(gallery).as_posix()) if result.thumb_size else None
    link_url = _url(Path(os.path.relpath(link, gallery)).as_posix()) if link is not None and link.is_file() else None
    return Picture(thumb_url, link_url, result.image_size, result.thumb_size, None if thumb_url else result.error)


# --------------------------------------------------------------------------- entry point


@dataclass(frozen=True)
class ItemFiles:
    """Where one shown item's files are: what the review server (:mod:`~colorize_batch.review`)
    serves and edits by the item's position, never by a path a client sends."""

    key: str  # the exact manifest key (source relative path, "#pN" for TIFF pages)
    source_rel: PurePosixPath
    page: int  # 0-based page of a multi-page TIFF
    output: Path
    source: Path | None  # None: the source folder is unknown
    thumb_out: Path
    thumb_src: Path


@dataclass
class Site:
    """Everything a gallery page shows, gathered once (:func:`collect_site`): the items in page
    order with their files, and the header shared by all pages."""

    out_dir: Path
    gallery: Path
    items: list[Item]
    files: list[ItemFiles]
    common: dict
    store: str  # this gallery's key for the browser's localStorage
    src_root: Path | None
    hints_root: Path | None
    suggestions: dict[str, dict] = field(default_factory=dict)  # input relative path -> suggested colours' grid

    def pages(self, page_size: int) -> int:
        return max(1, -(-len(self.items) // page_size))

    def refresh(self, index: int) -> None:
        """Item ``index`` after its output and hint file changed: its thumbnail again, and the hint
        points of every item of that source (the pages of a TIFF share one hint file)."""
        files = self.files[index]
        result = make_thumbnail(ThumbJob(files.output, files.thumb_out))
        self.items[index] = replace(self.items[index], output=_picture(result, files.thumb_out, self.gallery, files.output))
        hint = _hint_target(files.source_rel, self.src_root, self.hints_root)
        for i, other in enumerate(self.files):
            if other.source_rel == files.source_rel and self.items[i].hint is not None:
                self.items[i] = replace(self.items[i], hint=hint)


@dataclass(frozen=True)
class RunState:
    """What the gallery reads of a run: its manifest records, its last report, where its sources
    and hint files are, and the warnings for the header so far."""

    out_dir: Path
    records: list[ManifestRecord]
    last_run_path: Path
    last_run: RunReport | None
    src_root: Path | None
    hints_root: Path | None
    warnings: list[str]


@dataclass(frozen=True)
class Entry:
    """A manifest record the gallery shows, with its paths checked (:func:`_safe_rel`)."""

    record: ManifestRecord
    source_rel: PurePosixPath
    output_rel: PurePosixPath
    page: int  # 0-based page of a multi-page TIFF

    def output_thumb(self, thumbs: Path) -> Path:
        return thumbs / "out" / _with_suffix(str(self.output_rel), ".jpg")

    def source_thumb(self, thumbs: Path) -> Path:
        return thumbs / "src" / _with_suffix(self._page_name, ".jpg")

    def suggestion_file(self, folder: Path) -> Path:
        return folder / _with_suffix(self._page_name, ".json")

    @property
    def _page_name(self) -> str:
        return f"{self.source_rel}{f'.p{self.page + 1}' if self.page else ''}"


NAME_MAX = 255  # bytes in one file name (ext4, XFS, Btrfs, NTFS via ntfs-3g...)


def _with_suffix(rel: str, suffix: str) -> str:
    """``rel`` with ``suffix`` added to its file name (``a/b.png`` -> ``a/b.png.jpg``). A name that
    would then be too long for the file system (a scan named with 252 bytes or more) is cut and
    given a hash of its whole name instead, which keeps it apart from every other name."""
    folder, slash, name = rel.rpartition("/")
    if len(os.fsencode(name + suffix)) > NAME_MAX:
        tag = f"~{hashlib.sha256(os.fsencode(name)).hexdigest()[:16]}{suffix}"
        while len(os.fsencode(name + tag)) > NAME_MAX:
            name = name[:-1]
        suffix = tag
    return f"{folder}{slash}{name}{suffix}"


def _read_state(out_dir: Path, source_dir: Path | None, hints_dir: Path | None) -> RunState:
    """The manifest, the last report, the source and hints folders (see :func:`collect_site`)."""
    manifest = Manifest(out_dir)  # read only: it opens its file for writing only on add(); shards' manifests too
    if not has_manifest(out_dir):
        raise NoManifestError(f"{out_dir}: no {manifest.path.relative_to(out_dir)} (not a colorize-batch output folder, or nothing ran yet)")
    last_run_path = report_path(out_dir)
    last_run = _read_last_run(last_run_path, out_dir)
    newest_shard = max(current_shard_reports(out_dir), key=written_ns, default=None)
    if newest_shard and (last_run is None or written_ns(newest_shard) > written_ns(last_run_path)):
        # an OUT made by --shard runs (their reports merged), or one whose `report merge` (last-run.json) is older
        # than the shards' latest run: the shards' reports are the newer account
        try:
            last_run, last_run_path = merge_reports(out_dir), newest_shard
        except ShardError as exc:
            log.warning("gallery: ignoring the shard reports: %s", exc)
    src_root, src_warning = _source_root(source_dir, last_run)
    if hints_dir is None and last_run and last_run.hints_dir is not None:
        hints_dir = Path(last_run.hints_dir)
    hints_root = Path(hints_dir).resolve() if hints_dir is not None else None
    return RunState(out_dir, list(manifest.known.values()), last_run_path, last_run, src_root, hints_root,
                    [src_warning] if src_warning else [])


def _shown_entries(state: RunState) -> list[Entry]:
    """The records that wrote an output, in page order; those with unusable paths left out (with a warning)."""
    entries: list[Entry] = []
    skipped_bad = 0
    for rec in state.records:
        if not rec.status.wrote_output:
            continue
        relative, page = parse_source_key(rec.source)
        source_rel = _safe_rel(relative)
        output_rel = _safe_rel(rec.output)
        if source_rel is None or output_rel is None:
            skipped_bad += 1
            continue
        entries.append(Entry(rec, source_rel, output_rel, page))
    if skipped_bad:
        state.warnings.append(f"{skipped_bad} manifest record(s) with unusable paths were left out.")
    entries.sort(key=lambda e: _sort_key(e.record.source))
    return entries


def _entry_thumbnails(entries: Sequence[Entry], state: RunState, thumbs: Path, workers: int) -> dict[Path, ThumbResult]:
    """Every entry's two thumbnails, made or reused (never through a linked folder)."""
    jobs: list[ThumbJob] = []
    for entry in entries:
        jobs.append(ThumbJob(state.out_dir / entry.output_rel, entry.output_thumb(thumbs)))
        source = state.src_root / entry.source_rel if state.src_root else None
        jobs.append(ThumbJob(source, entry.source_thumb(thumbs), entry.page))
    _refuse_linked_folders((job.thumb for job in jobs), thumbs)
    started = time.monotonic()
    results = make_thumbnails(jobs, workers)
    made = sum(r.made for r in results.values())
    log.info("gallery: %d thumbnail(s) made, %d reused, in %.1fs", made,
             sum(1 for r in results.values() if r.thumb_size and not r.made), time.monotonic() - started)
    return results


def _item(entry: Entry, state: RunState, gallery: Path, results: dict[Path, ThumbResult]) -> tuple[Item, ItemFiles]:
    """One card of the pages and where its files are; a hint file that cannot be used adds a warning."""
    thumbs = gallery / THUMB_DIR
    rec, source_rel, output_rel, page = entry.record, entry.source_rel, entry.output_rel, entry.page
    out_thumb, s_thumb = entry.output_thumb(thumbs), entry.source_thumb(thumbs)
    source_path = state.src_root / source_rel if state.src_root else None
    out_pic = _picture(results[out_thumb], out_thumb, gallery, state.out_dir / output_rel)
    src_pic = _picture(results[s_thumb], s_thumb, gallery, source_path)
    if src_pic.placeholder == "file missing":
        src_pic = Picture(None, None, None, None, "source missing")
    if out_pic.placeholder == "file missing":
        out_pic = Picture(None, None, None, None, "output missing")
    folder = display(str(source_rel.parent)) if str(source_rel.parent) != "." else ""
    name = display(source_rel.name) + (f" (page {page + 1})" if page else "")
    hint = _hint_target(source_rel, state.src_root, state.hints_root) if rec.status is Status.DONE and out_pic.thumb_url else None
    if hint is not None and hint.problem:
        state.warnings.append(f"{display(source_rel.as_posix())}: {hint.problem}")
    item = Item(display(rec.source), rec.status.value, display(output_rel.as_posix()), folder, name, src_pic, out_pic, hint)
    return item, ItemFiles(rec.source, source_rel, page, state.out_dir / output_rel, source_path, out_thumb, s_thumb)


def _cached_grid(path: Path, source: Path, key: dict) -> dict | None:
    """The grid an earlier build wrote at ``path``, if still valid: a regular file (never read
    through a link) newer than ``source`` and made as ``key`` says (weights, size, format)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fh.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_GRID_BYTES or not _fresh(path, source):
            return None
        try:
            grid = json.loads(fh.read(MAX_GRID_BYTES))
        except (OSError, ValueError):
            return None
    return grid if isinstance(grid, dict) and all(grid.get(k) == v for k, v in key.items()) else None


def _suggestions(entries: Sequence[Entry], items: Sequence[Item], state: RunState, gallery: Path,
                 suggester: Suggester | None) -> dict[str, dict]:
    """Each editable image's suggested colours, by input relative path (the pages of a TIFF share
    their first page's): reused from ``gallery/suggest/`` (:func:`_cached_grid`), else made by
    ``suggester`` (one forward pass per image) and written there atomically."""
    if suggester is None or state.src_root is None:
        return {}
    folder = gallery / SUGGEST_DIR
    wanted: dict[str, tuple[Path, Path, int]] = {}  # rel -> (source, grid file, page)
    for entry, item in zip(entries, items):
        source = state.src_root / entry.source_rel
        if item.hint is not None and item.hint.rel not in wanted and source.is_file():
            wanted[item.hint.rel] = (source, entry.suggestion_file(folder), entry.page)
    _refuse_linked_folders((grid_file for _, grid_file, _ in wanted.values()), folder)
    started = time.monotonic()
    key = suggester.key()
    grids = {rel: _cached_grid(grid_file, source, key) for rel, (source, grid_file, _) in wanted.items()}
    missing = [rel for rel, grid in grids.items() if grid is None]
    made = suggester.grids([SuggestionSource(wanted[rel][0], wanted[rel][2]) for rel in missing])
    for rel, grid in zip(missing, made):
        if grid is not None:
            grid_file = wanted[rel][1]
            grid_file.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(grid_file, json.dumps(grid, separators=(",", ":")).encode(), fsync=False)
        grids[rel] = grid
    log.info("gallery: suggested colours for %d image(s) made, %d reused, in %.1fs", sum(g is not None for g in made),
             len(grids) - len(missing), time.monotonic() - started)
    return {rel: grid for rel, grid in grids.items() if grid is not None}


def _suggestion_warning(state: RunState, suggester: Suggester | None) -> str | None:
    """A header line when the suggestions' weights are not the ones that made the photos."""
    if suggester is None:
        return None
    other = sum(1 for rec in state.records if rec.status is Status.DONE and rec.model != suggester.model_sha256
                and not (rec.automatic and rec.automatic == suggester.automatic_sha256))  # same automatic model: same colours
    if not other:
        return None
    return (f"The suggested colours come from other weights (sha256 {suggester.model_sha256[:12]}) than the ones that made "
            f"{other} of these photos: give gallery the run's --weights (or --no-suggest).")


def _summary(state: RunState, shown: int) -> dict:
    """The header every page shares: counts, model, date, warnings, failures, where hints go."""
    records, last_run, src_root, hints_root = state.records, state.last_run, state.src_root, state.hints_root
    statuses = Counter(rec.status for rec in records)
    roots = [str(r) for r in (src_root, last_run.input if last_run else None) if r]
    failures = _failures(records, last_run, roots)
    return {
        "tool": f"colorize-batch {__version__} gallery",
        "last_counts": last_run.counts if last_run else None,
        "totals": {s.value: statuses[s] for s in Status},
        "model": _model_label(last_run, records),
        "date": _run_date(state.last_run_path, last_run, records),
        "warnings": state.warnings,
        "failures": failures[:MAX_FAILURES_SHOWN],
        "failures_total": len(failures),
        "total_items": shown,
        "hints_where": display(hints_root) if hints_root else display(src_root) if src_root else None,
        "hints_beside": hints_root is None,
    }


def collect_site(out_dir: Path, source_dir: Path | None = None, workers: int = 2, hints_dir: Path | None = None,
                 suggester: Suggester | None = None) -> Site:
    """Read the run's manifest and last report and make (or reuse) every thumbnail.

    ``hints_dir``: where the images' hint files are (``input.hints_dir``; default: the one the
    last run used, else beside the scans), to show their points in the hint editor.
    ``suggester``: the model, to offer its suggested colours in the hint editor (made or reused:
    :func:`_suggestions`); ``None``: none offered.
    Raises :class:`NoManifestError` when ``out_dir`` has no manifest, and
    :class:`~colorize_batch.manifest.StateLinkError` when a state file or folder is a link.
    """
    out_dir = Path(out_dir).resolve()
    state = _read_state(out_dir, source_dir, hints_dir)
    gallery = gallery_dir(out_dir)
    check_gallery_links(out_dir)
    gallery.mkdir(parents=True, exist_ok=True)
    entries = _shown_entries(state)
    results = _entry_thumbnails(entries, state, gallery / THUMB_DIR, workers)
    cards = [_item(entry, state, gallery, results) for entry in entries]
    items, files = [item for item, _ in cards], [where for _, where in cards]
    suggestions = _suggestions(entries, items, state, gallery, suggester)
    warning = _suggestion_warning(state, suggester) if suggestions else None
    if warning:
        state.warnings.append(warning)
    store = hashlib.sha256(os.fsencode(str(out_dir))).hexdigest()[:16]  # this gallery's edits in localStorage
    return Site(out_dir, gallery, items, files, _summary(state, len(items)), store, state.src_root, state.hints_root,
                suggestions)


def _live_picture(picture: Picture, index: int, side: str) -> Picture:
    """The review server's URLs of a picture: by the item's position, never by a path."""
    return replace(picture, thumb_url=f"thumb/{index}/{side}" if picture.thumb_url else None,
                   link_url=f"full/{index}/{side}" if picture.link_url else None)


def render_page(site: Site, number: int, page_size: int = 100, live: bool = False) -> str:
    """Page ``number`` (1-based) of the gallery. ``live``: for the review server
    (:mod:`~colorize_batch.review`): its URLs, and its editor instead of the downloads."""
    pages = site.pages(page_size)
    first = (number - 1) * page_size
    chunk = site.items[first: first + page_size]
    if live:
        chunk = [replace(item, source=_live_picture(item.source, first + i, "src"),
                         output=_live_picture(item.output, first + i, "out")) for i, item in enumerate(chunk)]
    previous_folder = site.items[first - 1].folder if number > 1 and chunk else None
    hint_json, hint_index = _hint_data(chunk, site.files[first: first + page_size], site.store, live, site.suggestions)
    return _ENV.get_template("gallery.html").render(
        **site.common,
        page=number,
        pages=pages,
        groups=_groups(chunk, previous_folder),
        prev_url=page_filename(number - 1) if number > 1 else None,
        next_url=page_filename(number + 1) if number < pages else None,
        page_links=_page_links(number, pages),
        hint_json=hint_json,
        hint_index=hint_index,
        live=live,
    )


def _write_pages(site: Site, page_size: int) -> int:
    """Every page of the site, each written atomically; returns how many."""
    pages = site.pages(page_size)
    for number in range(1, pages + 1):
        _write_atomic(site.gallery / page_filename(number), render_page(site, number, page_size))
    return pages


def _remove_stale_pages(gallery: Path, pages: int) -> None:
    """The pages a previous, longer build left beyond the last one."""
    for stale in gallery.glob("page-*.html"):
        match = _PAGE_FILE.fullmatch(stale.name)
        if match and int(match.group(1)) > pages:
            stale.unlink()


def build_gallery(out_dir: Path, source_dir: Path | None = None, page_size: int = 100, workers: int = 2,
                  hints_dir: Path | None = None, suggester: Suggester | None = None) -> Path:
    """Write the review site into ``OUT/.colorize-batch/gallery/``; return its ``index.html``.

    ``hints_dir``, ``suggester``: see :func:`collect_site`. Raises :class:`NoManifestError` when
    ``out_dir`` has no manifest.
    """
    if page_size < 1:
        raise ValueError("page_size must be at least 1")
    site = collect_site(out_dir, source_dir, workers, hints_dir, suggester)
    pages = _write_pages(site, page_size)
    _remove_stale_pages(site.gallery, pages)
    log.info("gallery: %d file(s) on %d page(s): %s", len(site.items), pages, site.gallery / "index.html")
    return site.gallery / "index.html"
