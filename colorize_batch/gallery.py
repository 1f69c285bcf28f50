"""A static HTML review gallery of a finished run: ``OUT/.colorize-batch/gallery/``.

``colorize-batch gallery OUT`` reads the run's memory (``manifest.jsonl`` and, when present,
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
* Everything is relative and local: no CDN, fonts or external scripts, so the folder can
  be copied or opened from a NAS. Page, thumbnail and file links are percent-encoded
  relative URLs; every file and folder name goes through Jinja2 with autoescaping, so a
  file called ``<img src=x onerror=alert(1)>.png`` shows as text and never runs.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import time
import webbrowser
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath
from urllib.parse import quote

import click
import jinja2
import numpy as np
from PIL import Image, ImageOps

from . import __version__
from .manifest import Manifest, state_dir
from .names import display
from .writing import atomic_write, atomic_write_text

log = logging.getLogger("colorize_batch")

GALLERY_DIR = "gallery"
THUMB_DIR = "thumbs"
THUMB_LONG_SIDE = 320
THUMB_QUALITY = 82
MAX_FAILURES_SHOWN = 1000
SHOWN_STATUSES = ("done", "copied")
_PAGE_SUFFIX = re.compile(r"#p(\d+)$")  # manifest keys of multi-page TIFF pages: "scan.tif#p2"
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


def _to_8bit(im: Image.Image) -> Image.Image:
    """Something JPEG can store: 16/32-bit grey scaled to 8-bit, alpha flattened on white."""
    if im.mode.startswith("I;16") or im.mode == "I":
        arr = np.asarray(im).astype(np.float32)
        if im.mode == "I" and arr.max(initial=0) <= 255:
            scaled = arr  # 8-bit values stored in a 32-bit image
        else:
            scaled = arr / 257.0  # 0..65535 -> 0..255
        return Image.fromarray(np.clip(scaled + 0.5, 0, 255).astype(np.uint8), "L")
    if im.mode == "F":
        arr = np.asarray(im, dtype=np.float32)
        if arr.max(initial=0) <= 1.0:
            arr = arr * 255.0
        return Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), "L")
    if im.mode in ("L", "RGB"):
        return im
    if im.mode in ("LA", "La", "RGBA", "RGBa", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")  # 1, P, CMYK, YCbCr, LAB, HSV


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
            if im.format == "JPEG":
                im.draft(im.mode if im.mode in ("L", "RGB") else "RGB", (long_side, long_side))
            small = ImageOps.exif_transpose(im)  # browsers apply EXIF orientation to the full file too
            small.thumbnail((long_side, long_side), Image.Resampling.LANCZOS, reducing_gap=2.0)
            small = _to_8bit(small)
            job.thumb.parent.mkdir(parents=True, exist_ok=True)
            buf = io.BytesIO()
            small.save(buf, "JPEG", quality=THUMB_QUALITY, optimize=True)
            atomic_write(job.thumb, buf.getvalue(), fsync=False)  # a killed build never leaves a half thumbnail
            return ThumbResult(image_size, small.size, made=True)
    except Exception as exc:  # noqa: BLE001 - one bad file must not stop the gallery
        log.warning("gallery: no thumbnail for %s: %s", job.image, exc)
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
class Item:
    key: str  # manifest key (source relative path, "#pN" for TIFF pages)
    status: str
    output_rel: str
    folder: str
    name: str
    source: Picture
    output: Picture


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
    """A manifest path usable under a root: relative, without ``..`` (else None)."""
    if not isinstance(rel, str) or not rel:
        return None
    path = PurePosixPath(rel)  # '\\' is an ordinary character of a Linux file name, not a separator
    if path.is_absolute() or ".." in path.parts or not path.parts:
        return None
    return path


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


def _read_last_run(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("gallery: ignoring unreadable %s: %s", path, exc)
        return None
    return data if isinstance(data, dict) else None


def _source_root(source_dir: Path | None, last_run: dict | None) -> tuple[Path | None, str | None]:
    """Where the sources are, and a warning for the header when that is unknown."""
    if source_dir is not None:
        root = Path(source_dir)
    elif last_run and isinstance(last_run.get("input"), str):
        root = Path(last_run["input"])
    else:
        return None, "The source folder is unknown (no last-run.json): pass --source IN_DIR to see the grey originals."
    if root.is_file():  # a single-file run: its manifest key is the file name
        root = root.parent
    if not root.is_dir():
        return None, f"Source folder {root} not found: pass --source IN_DIR to see the grey originals."
    return root.resolve(), None


def _run_date(last_run_path: Path, last_run: dict | None, records: Iterable[dict]) -> str:
    if last_run is not None:
        for key in ("finished", "date", "time"):
            if isinstance(last_run.get(key), str):
                return last_run[key]
        try:
            return datetime.fromtimestamp(last_run_path.stat().st_mtime).astimezone().strftime("%Y-%m-%d %H:%M %z")
        except OSError:
            pass
    latest: datetime | None = None
    for rec in records:
        try:
            when = datetime.strptime(rec.get("time", ""), "%Y-%m-%dT%H:%M:%S%z")
        except (TypeError, ValueError):
            continue
        latest = when if latest is None or when > latest else latest
    return latest.strftime("%Y-%m-%d %H:%M %z") if latest else "unknown"


def _model_label(last_run: dict | None, records: Iterable[dict]) -> str:
    if last_run and last_run.get("model"):
        label = str(last_run["model"])
        sha = last_run.get("model_sha256")
        return f"{label} (sha256 {str(sha)[:12]})" if sha and str(sha)[:12] not in label else label
    hashes = sorted({str(rec["model"]) for rec in records if rec.get("model")})
    if not hashes:
        return "unknown"
    return ", ".join(f"sha256 {h[:12]}" for h in hashes)


def _failures(records: Iterable[dict], last_run: dict | None, input_roots: Sequence[str]) -> list[tuple[str, str]]:
    """(path, reason) of failed files from the manifest and from last-run.json, deduplicated."""
    found: dict[str, str] = {}
    for rec in records:
        if rec.get("status") == "failed":
            found[str(rec.get("source"))] = str(rec.get("reason") or "failed")
    for failure in (last_run or {}).get("failures") or []:
        if not isinstance(failure, dict):
            continue
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

_TEMPLATE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="{{ tool }}">
<title>colorize-batch review{% if pages > 1 %} ({{ page }}/{{ pages }}){% endif %}</title>
<style>
  :root { color-scheme: dark; --bg: #2b2b2b; --card: #363636; --fg: #e8e8e8; --dim: #a8a8a8; --accent: #8fc1ff; }
  * { box-sizing: border-box; }
  body { margin: 0; font: 14px/1.4 system-ui, sans-serif; background: var(--bg); color: var(--fg); }
  header, main, nav.pages { padding: 0 16px; }
  header { border-bottom: 1px solid #444; padding-bottom: 8px; }
  h1 { font-size: 20px; margin: 12px 0 4px; }
  h2 { font-size: 16px; margin: 20px 0 8px; padding-bottom: 4px; border-bottom: 1px solid #444; word-break: break-all; }
  a { color: var(--accent); }
  .summary { display: flex; flex-wrap: wrap; gap: 4px 20px; margin: 4px 0; }
  .summary b { font-variant-numeric: tabular-nums; }
  .failed b, .failed-list { color: #ff9d8f; }
  .warning { color: #ffd27f; }
  .failures { margin: 8px 0; }
  .failures li { word-break: break-all; }
  .failures .reason { color: var(--dim); }
  nav.pages { display: flex; flex-wrap: wrap; gap: 6px; align-items: center; margin: 10px 0; }
  nav.pages a, nav.pages span { padding: 2px 8px; border-radius: 4px; }
  nav.pages [aria-current] { background: var(--accent); color: #000; }
  nav.pages .disabled { color: #666; }
  .view { margin-left: auto; }
  .view button { background: var(--card); color: var(--fg); border: 1px solid #555; border-radius: 4px; padding: 2px 8px; cursor: pointer; }
  .view button[aria-pressed="true"] { border-color: var(--accent); color: var(--accent); }
  .grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(420px, 1fr)); gap: 12px; }
  .card { background: var(--card); border-radius: 6px; padding: 8px; }
  .pair { display: grid; grid-template-columns: 1fr 1fr; gap: 6px; align-items: start; --split: 50%; }
  figure { margin: 0; }
  figure img { display: block; width: 100%; height: auto; background: #222; }
  figcaption { color: var(--dim); font-size: 12px; }
  .placeholder { display: flex; align-items: center; justify-content: center; aspect-ratio: 4 / 3; background: #222;
                 color: var(--dim); font-size: 12px; text-align: center; padding: 8px; border: 1px dashed #555; }
  .split { display: none; width: 100%; }
  /* slider view: colour over grey, clipped at the slider; cards missing a side stay side by side */
  body[data-view="slider"] .pair:not(.incomplete) { grid-template-columns: 1fr; }
  body[data-view="slider"] .pair:not(.incomplete) > figure { grid-area: 1 / 1; }
  body[data-view="slider"] .pair:not(.incomplete) > figure.after img { clip-path: inset(0 0 0 var(--split)); }
  body[data-view="slider"] .pair:not(.incomplete) figcaption { display: none; }
  body[data-view="slider"] .pair:not(.incomplete) .split { display: block; }
  .path { font-family: ui-monospace, monospace; font-size: 12px; word-break: break-all; margin: 6px 0 2px; }
  .meta { color: var(--dim); font-size: 12px; }
  .badge { background: #555; border-radius: 3px; padding: 0 4px; margin-left: 4px; }
</style>
</head>
<body data-view="side">
<header>
  <h1>colorize-batch review</h1>
  <div class="summary">
    {% if last_counts %}<span>Last run:</span>
    <span>done <b>{{ last_counts.done }}</b></span>
    <span>skipped <b>{{ last_counts.skipped }}</b> (up to date {{ last_counts.up_to_date }}, already colour {{ last_counts.skipped_color }})</span>
    <span>copied <b>{{ last_counts.copied }}</b></span>
    <span class="failed">failed <b>{{ last_counts.failed }}</b></span>{% endif %}
  </div>
  <div class="summary">
    <span>In the manifest:</span>
    <span>done <b>{{ totals.done }}</b></span>
    <span>skipped (already colour) <b>{{ totals.skipped_color }}</b></span>
    <span>copied <b>{{ totals.copied }}</b></span>
    <span class="failed">failed <b>{{ totals.failed }}</b></span>
  </div>
  <div class="summary">
    <span>Model: <b>{{ model }}</b></span>
    <span>Date: <b>{{ date }}</b></span>
    <span>Shown: <b>{{ total_items }}</b> file(s){% if pages > 1 %}, page {{ page }} of {{ pages }}{% endif %}</span>
  </div>
  {% for warning in warnings %}<p class="warning">{{ warning }}</p>{% endfor %}
  {% if page == 1 and failures %}
  <details class="failures" open>
    <summary class="failed-list">{{ failures_total }} failed file(s)</summary>
    <ul>
    {% for path, reason in failures %}<li><span class="path">{{ path }}</span>: <span class="reason">{{ reason }}</span></li>
    {% endfor %}
    {% if failures_total > failures|length %}<li>… and {{ failures_total - failures|length }} more (see last-run.json / manifest.jsonl)</li>{% endif %}
    </ul>
  </details>
  {% endif %}
</header>
{% macro pager() -%}
<nav class="pages" aria-label="pages">
  {% if prev_url %}<a href="{{ prev_url }}" rel="prev">‹ prev</a>{% else %}<span class="disabled">‹ prev</span>{% endif %}
  {% for link in page_links %}{% if link.number is none %}<span>…</span>{% elif link.current %}<span aria-current="page">{{ link.number }}</span>{% else %}<a href="{{ link.url }}">{{ link.number }}</a>{% endif %}
  {% endfor %}
  {% if next_url %}<a href="{{ next_url }}" rel="next">next ›</a>{% else %}<span class="disabled">next ›</span>{% endif %}
  <span class="view">view:
    <button type="button" data-set-view="side" aria-pressed="true">side by side</button>
    <button type="button" data-set-view="slider" aria-pressed="false">slider</button></span>
</nav>
{%- endmacro %}
{{ pager() }}
<main>
{% if not groups %}<p>No colorized outputs in the manifest yet.</p>{% endif %}
{% for group in groups %}
  <h2>{{ group.folder or "(top level)" }}{% if group.continued %} <small>(continued)</small>{% endif %}</h2>
  <div class="grid">
  {% for item in group.items %}
    <section class="card">
      <div class="pair{% if not (item.source.thumb_url and item.output.thumb_url) %} incomplete{% endif %}">
        {% for side, pic, label in (("before", item.source, "grey source"), ("after", item.output, "colour result")) %}
        <figure class="{{ side }}">
          {% if pic.thumb_url %}<img src="{{ pic.thumb_url }}" width="{{ pic.thumb_size[0] }}" height="{{ pic.thumb_size[1] }}" loading="lazy" decoding="async" alt="{{ label }}: {{ item.key }}">
          {% else %}<div class="placeholder">{{ pic.placeholder }}</div>{% endif %}
          <figcaption>{{ label }}{% if pic.size %} · {{ pic.size[0] }}×{{ pic.size[1] }} px{% endif %}</figcaption>
        </figure>
        {% endfor %}
        <input class="split" type="range" min="0" max="100" value="50" aria-label="before / after split">
      </div>
      <div class="path">{{ item.key }}</div>
      <div class="meta">
        {% if item.output.size %}{{ item.output.size[0] }}×{{ item.output.size[1] }} px · {% endif %}
        {% if item.output.link_url %}<a href="{{ item.output.link_url }}">full resolution</a>{% else %}output missing{% endif %}
        {% if item.source.link_url %} · <a href="{{ item.source.link_url }}">original</a>{% endif %}
        {% if item.status != "done" %}<span class="badge">{{ item.status }}</span>{% endif %}
        {% if item.output_rel != item.key %}<div>→ {{ item.output_rel }}</div>{% endif %}
      </div>
    </section>
  {% endfor %}
  </div>
{% endfor %}
</main>
{{ pager() }}
<script>
(function () {
  var KEY = "colorize-batch-gallery-view";
  function setView(view) {
    document.body.setAttribute("data-view", view);
    document.querySelectorAll("[data-set-view]").forEach(function (b) {
      b.setAttribute("aria-pressed", String(b.getAttribute("data-set-view") === view));
    });
    try { localStorage.setItem(KEY, view); } catch (e) { /* file:// storage may be off */ }
  }
  document.addEventListener("click", function (e) {
    var button = e.target.closest("[data-set-view]");
    if (button) setView(button.getAttribute("data-set-view"));
  });
  document.addEventListener("input", function (e) {
    if (e.target.classList.contains("split")) e.target.closest(".pair").style.setProperty("--split", e.target.value + "%");
  });
  document.addEventListener("keydown", function (e) {
    if (e.target.tagName === "INPUT") return;
    var rel = e.key === "ArrowRight" ? "next" : e.key === "ArrowLeft" ? "prev" : null;
    var link = rel && document.querySelector('a[rel="' + rel + '"]');
    if (link) location.href = link.href;
  });
  var saved = null;
  try { saved = localStorage.getItem(KEY); } catch (e) { /* ignore */ }
  setView(saved === "slider" ? "slider" : "side");
})();
</script>
</body>
</html>
"""

_ENV = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
_PAGE = _ENV.from_string(_TEMPLATE)


def _write_atomic(path: Path, text: str) -> None:
    atomic_write_text(path, text)


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


def build_gallery(out_dir: Path, source_dir: Path | None = None, page_size: int = 100, workers: int = 2) -> Path:
    """Write the review site into ``OUT/.colorize-batch/gallery/``; return its ``index.html``.

    Raises :class:`NoManifestError` when ``out_dir`` has no manifest.
    """
    if page_size < 1:
        raise ValueError("page_size must be at least 1")
    out_dir = Path(out_dir).resolve()
    manifest = Manifest(out_dir)  # read only: it opens its file for writing only on add()
    if not manifest.path.is_file():
        raise NoManifestError(f"{out_dir}: no {manifest.path.relative_to(out_dir)} (not a colorize-batch output folder, or nothing ran yet)")
    records = list(manifest.records.values())
    last_run_path = state_dir(out_dir) / "last-run.json"
    last_run = _read_last_run(last_run_path)
    src_root, src_warning = _source_root(source_dir, last_run)
    gallery = state_dir(out_dir) / GALLERY_DIR
    thumbs = gallery / THUMB_DIR
    gallery.mkdir(parents=True, exist_ok=True)
    warnings: list[str] = [src_warning] if src_warning else []

    # Which records to show, and the thumbnails they need.
    entries: list[tuple[dict, PurePosixPath, PurePosixPath, int]] = []
    skipped_bad = 0
    for rec in records:
        if rec.get("status") not in SHOWN_STATUSES:
            continue
        key = str(rec.get("source", ""))
        match = _PAGE_SUFFIX.search(key)
        page = int(match.group(1)) - 1 if match else 0
        source_rel = _safe_rel(key[: match.start()] if match else key)
        output_rel = _safe_rel(rec.get("output"))
        if source_rel is None or output_rel is None:
            skipped_bad += 1
            continue
        entries.append((rec, source_rel, output_rel, page))
    if skipped_bad:
        warnings.append(f"{skipped_bad} manifest record(s) with unusable paths were left out.")
    entries.sort(key=lambda e: _sort_key(str(e[0]["source"])))

    def src_thumb(source_rel: PurePosixPath, page: int) -> Path:
        return thumbs / "src" / f"{source_rel}{f'.p{page + 1}' if page else ''}.jpg"

    jobs: list[ThumbJob] = []
    for _, source_rel, output_rel, page in entries:
        jobs.append(ThumbJob(out_dir / output_rel, thumbs / "out" / f"{output_rel}.jpg"))
        jobs.append(ThumbJob(src_root / source_rel if src_root else None, src_thumb(source_rel, page), page))
    started = time.monotonic()
    results = make_thumbnails(jobs, workers)
    made = sum(r.made for r in results.values())
    log.info("gallery: %d thumbnail(s) made, %d reused, in %.1fs", made,
             sum(1 for r in results.values() if r.thumb_size and not r.made), time.monotonic() - started)

    items: list[Item] = []
    for rec, source_rel, output_rel, page in entries:
        out_thumb, s_thumb = thumbs / "out" / f"{output_rel}.jpg", src_thumb(source_rel, page)
        source_path = src_root / source_rel if src_root else None
        out_pic = _picture(results[out_thumb], out_thumb, gallery, out_dir / output_rel)
        src_pic = _picture(results[s_thumb], s_thumb, gallery, source_path)
        if src_pic.placeholder == "file missing":
            src_pic = Picture(None, None, None, None, "source missing")
        if out_pic.placeholder == "file missing":
            out_pic = Picture(None, None, None, None, "output missing")
        key = display(str(rec["source"]))
        folder = display(str(source_rel.parent)) if str(source_rel.parent) != "." else ""
        name = display(source_rel.name) + (f" (page {page + 1})" if page else "")
        items.append(Item(key, str(rec["status"]), display(output_rel.as_posix()), folder, name, src_pic, out_pic))

    # Summary shared by all pages.
    statuses = Counter(str(rec.get("status")) for rec in records)
    totals = {s: statuses[s] for s in ("done", "copied", "skipped_color", "failed")}
    last_counts = None
    if last_run and isinstance(last_run.get("counts"), dict):
        c = last_run["counts"]
        up_to_date, skipped_color = int(c.get("skipped_up_to_date", 0)), int(c.get("skipped_color", 0))
        last_counts = {"done": int(c.get("done", 0)), "skipped": up_to_date + skipped_color, "up_to_date": up_to_date,
                       "skipped_color": skipped_color, "copied": int(c.get("copied", 0)), "failed": int(c.get("failed", 0))}
    roots = [str(r) for r in (src_root, (last_run or {}).get("input")) if r]
    failures = _failures(records, last_run, roots)
    common = {
        "tool": f"colorize-batch {__version__} gallery",
        "last_counts": last_counts,
        "totals": totals,
        "model": _model_label(last_run, records),
        "date": _run_date(last_run_path, last_run, records),
        "warnings": warnings,
        "failures": failures[:MAX_FAILURES_SHOWN],
        "failures_total": len(failures),
        "total_items": len(items),
    }

    pages = max(1, -(-len(items) // page_size))
    for number in range(1, pages + 1):
        chunk = items[(number - 1) * page_size: number * page_size]
        previous_folder = items[(number - 1) * page_size - 1].folder if number > 1 and chunk else None
        html = _PAGE.render(
            **common,
            page=number,
            pages=pages,
            groups=_groups(chunk, previous_folder),
            prev_url=page_filename(number - 1) if number > 1 else None,
            next_url=page_filename(number + 1) if number < pages else None,
            page_links=_page_links(number, pages),
        )
        _write_atomic(gallery / page_filename(number), html)
    for stale in gallery.glob("page-*.html"):  # a previous, longer build's pages
        match = _PAGE_FILE.fullmatch(stale.name)
        if match and int(match.group(1)) > pages:
            stale.unlink()
    log.info("gallery: %d file(s) on %d page(s): %s", len(items), pages, gallery / "index.html")
    return gallery / "index.html"


@click.command("gallery")
@click.argument("out_dir", metavar="OUT_DIR", type=click.Path(path_type=Path, file_okay=False))
@click.option("--source", "source_dir", metavar="IN_DIR", type=click.Path(path_type=Path, file_okay=False),
              help="Folder of the grey originals (default: the input recorded in last-run.json).")
@click.option("--open", "open_browser", is_flag=True, help="Open the gallery in the default web browser.")
@click.option("--page-size", type=click.IntRange(min=1), default=100, show_default=True, help="Files per page.")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True, help="Thumbnail threads.")
def gallery_command(out_dir: Path, source_dir: Path | None, open_browser: bool, page_size: int, workers: int) -> None:
    """Write a static HTML review gallery of OUT_DIR into OUT_DIR/.colorize-batch/gallery/."""
    try:
        index = build_gallery(out_dir, source_dir=source_dir, page_size=page_size, workers=workers)
    except NoManifestError as exc:
        click.echo(f"Error: {exc}", err=True)
        raise click.exceptions.Exit(2) from None
    click.echo(str(index))
    if open_browser:
        webbrowser.open(index.resolve().as_uri())
