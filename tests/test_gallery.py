"""The static review gallery: paging, thumbnails made once, escaping, and a real headless browser."""

from __future__ import annotations

import json
import os
import shutil
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import CHROMIUM, launch_chromium
from PIL import Image

from colorize_batch.cli import gallery_command
from colorize_batch.gallery import build_gallery
from colorize_batch.manifest import gallery_dir, manifest_path, report_path, state_dir

# "</script>" holds a "/", so on disk this is folder "<script>alert(1)<" + file "script>.png".
HOSTILE_SCRIPT = "<script>alert(1)</script>.png"
HOSTILE_IMG = "<img src=x onerror=alert(1)>.png"  # a single file name
ODD_NAME = "roll2/100% #1 ?.png"  # '%', '#', '?' and spaces must be percent-encoded in URLs
DONE = ["roll1/a.png", "roll1/b.jpg", "roll1/sub/c16.png", ODD_NAME, HOSTILE_IMG, HOSTILE_SCRIPT, "roll2/gone.png"]
COPIED = "roll2/colour.jpg"
FAILED = "roll2/broken.jpg"


def _grey(w: int, h: int, seed: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(seed)
    return np.clip(x * 200 / w + y * 55 / h + rng.normal(0, 6, (h, w)), 0, 255).astype(np.uint8)


def _tint(grey: np.ndarray) -> np.ndarray:
    g = grey.astype(np.float32)
    return np.clip(np.stack([g * 1.1 + 20, g * 0.95, g * 0.7], axis=-1), 0, 255).astype(np.uint8)


def _save(path: Path, im: Image.Image, **kwargs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, **kwargs)


def _record(source: str, status: str, output: str | None, reason: str | None = None) -> dict:
    rec = {"source": source, "source_fp": "size=1;mtime_ns=1", "output": output, "output_sha256": None,
           "model": "ab" * 32, "config": "cfg", "version": "0.1.0", "time": "2024-05-04T10:11:12+0000", "status": status}
    if reason:
        rec["reason"] = reason
    return rec


@pytest.fixture
def fake_run(tmp_path: Path) -> tuple[Path, Path]:
    """IN and OUT trees as a run leaves them, written by hand: grey sources, tinted outputs, manifest, report."""
    src, out = tmp_path / "IN", tmp_path / "OUT"
    for i, rel in enumerate(DONE):
        grey = _grey(400 + 40 * i, 300, seed=i)
        if rel.endswith("c16.png"):  # a 16-bit scan (mode I;16)
            _save(src / rel, Image.fromarray(grey.astype(np.uint16) * 257))
        elif rel.endswith(".jpg"):
            _save(src / rel, Image.fromarray(np.tile(grey, (3, 3))), quality=90)  # 1200+ px: exercises draft()
        elif rel != "roll2/gone.png":  # its source was deleted since the run
            _save(src / rel, Image.fromarray(grey))
        if rel.endswith(".jpg"):
            _save(out / rel, Image.fromarray(_tint(np.tile(grey, (3, 3)))), quality=90)
        else:
            _save(out / rel, Image.fromarray(_tint(grey)))
    colour = Image.fromarray(_tint(_grey(320, 240, seed=42))[:, :, ::-1].copy())
    _save(src / COPIED, colour, quality=90)
    _save(out / COPIED, colour, quality=90)
    (src / FAILED).write_bytes(b"not a jpeg at all")
    records = [_record(rel, "done", rel) for rel in DONE]
    records += [_record(COPIED, "copied", COPIED), _record(FAILED, "failed", None, "cannot identify image file")]
    state_dir(out).mkdir(parents=True)
    manifest_path(out).write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    report = {
        "tool": "colorize-batch 0.1.0", "model": "colorize-lite-v1", "model_sha256": "ab" * 32,
        "counts": {"done": len(DONE), "skipped_up_to_date": 3, "skipped_color": 1, "copied": 1, "failed": 2},
        "failures": [{"path": str(src / FAILED), "reason": "cannot identify image file"},
                     {"path": str(src / "roll3/<b>locked</b>.tif"), "reason": "cannot read: Permission denied"}],
        "wall_seconds": 12.5, "images_per_second": 0.6, "input": str(src), "output": str(out),
    }
    report_path(out).write_text(json.dumps(report), encoding="utf-8")
    return src, out


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []
        self.srcs: list[str] = []
        self.next: str | None = None
        self.scripts = 0
        self.handlers: list[str] = []  # on*= event handler attributes

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.handlers += [name for name in a if name.startswith("on")]
        if tag == "a" and a.get("href"):
            self.hrefs.append(a["href"])
            if a.get("rel") == "next":
                self.next = a["href"]
        if tag == "img":
            self.srcs.append(a["src"] or "")
        if tag == "script" and a.get("type") != "application/json":  # the hint editor's data block is not code
            self.scripts += 1


def _parse(page: Path) -> _Links:
    parser = _Links()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser


def _target(page: Path, url: str) -> Path:
    parts = urlsplit(url)
    assert not parts.scheme and not parts.netloc and not url.startswith("/"), f"not a relative URL: {url}"
    return page.parent / unquote(parts.path)


def _thumbs(gallery: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in (gallery / "thumbs").rglob("*.jpg")}


def test_pages_links_and_thumbnails(fake_run):
    _, out = fake_run
    index = build_gallery(out, page_size=2)
    gallery = gallery_dir(out)
    assert index == gallery / "index.html"

    # Follow "next" from index.html: 8 shown files (7 done + 1 copied) in pages of 2.
    pages, page = [], index
    while True:
        pages.append(page)
        links = _parse(page)
        assert links.scripts == 1  # only the gallery's own inline script
        for url in links.hrefs + links.srcs:
            assert _target(page, url).is_file(), f"{page.name}: broken link {url}"
        if links.next is None:
            break
        page = _target(page, links.next)
    assert [p.name for p in pages] == ["index.html", "page-2.html", "page-3.html", "page-4.html"]
    html = "\n".join(p.read_text(encoding="utf-8") for p in pages)
    assert 'href="page-3.html"' in html and 'rel="prev"' in html

    # Every shown file appears exactly once, with a link to its full-resolution output.
    for rel in ["roll1/a.png", "roll1/b.jpg", "roll2/colour.jpg", "roll1/sub/c16.png"]:
        assert html.count(f'href="../../{rel}"') == 1
    assert "../../roll2/100%25%20%231%20%3F.png" in html  # percent-encoded, relative
    assert "source missing" in html  # roll2/gone.png lost its source: placeholder, not a broken <img>
    assert "1320×900 px" in html  # pixel size of roll1/b.jpg's output (440 px wide grey tiled 3 x 3)

    # Summary header on every page, failures listed on the first only.
    for p in pages:
        text = p.read_text(encoding="utf-8")
        assert "colorize-lite-v1" in text and "Last run:" in text
    first = index.read_text(encoding="utf-8")
    assert "roll2/broken.jpg" in first and "cannot identify image file" in first
    assert "Permission denied" in first and "&lt;b&gt;locked&lt;/b&gt;" in first
    assert "roll2/broken.jpg" not in pages[1].read_text(encoding="utf-8")

    # Thumbnails: small JPEGs mirroring the relative paths; the 16-bit scan scaled, not black.
    thumbs = gallery / "thumbs"
    for rel in ["roll1/a.png", "roll1/b.jpg", "roll1/sub/c16.png", ODD_NAME, HOSTILE_SCRIPT]:
        for side in ("out", "src"):
            with Image.open(thumbs / side / f"{rel}.jpg") as im:
                assert im.format == "JPEG" and max(im.size) <= 320 and max(im.size) >= 300
    with Image.open(thumbs / "src" / "roll1/sub/c16.png.jpg") as im:
        assert 60 < np.asarray(im.convert("L")).mean() < 200
    assert not (thumbs / "src" / "roll2/gone.png.jpg").exists()


def test_second_build_reuses_thumbnails(fake_run):
    _, out = fake_run
    gallery = build_gallery(out, page_size=3).parent
    before = _thumbs(gallery)
    assert len(before) == 15  # 8 outputs + 7 existing sources
    build_gallery(out, page_size=3)
    assert _thumbs(gallery) == before

    # A newer output is re-thumbnailed; the rest stay as they were.
    changed = out / "roll1" / "a.png"
    Image.fromarray(np.full((50, 80, 3), 200, np.uint8)).save(changed)
    thumb = gallery / "thumbs" / "out" / "roll1" / "a.png.jpg"
    stamp = before[thumb] + 10**9
    os.utime(changed, ns=(stamp, stamp))
    build_gallery(out, page_size=3)
    after = _thumbs(gallery)
    assert after[thumb] != before[thumb]
    assert {p: t for p, t in after.items() if p != thumb} == {p: t for p, t in before.items() if p != thumb}
    # Fewer pages than last time: the stale page files go.
    build_gallery(out, page_size=100)
    assert sorted(p.name for p in gallery.glob("*.html")) == ["index.html"]


def test_hostile_names_are_escaped(fake_run):
    _, out = fake_run
    gallery = build_gallery(out, page_size=100).parent
    html = (gallery / "index.html").read_text(encoding="utf-8")
    assert "<script>alert" not in html and "</script>.png" not in html
    assert "<img src=x" not in html
    links = _parse(gallery / "index.html")
    assert links.scripts == 1 and not links.handlers  # no injected <script>, no onerror=... attributes
    assert "&lt;script&gt;alert(1)&lt;/script&gt;.png" in html
    assert "&lt;img src=x onerror=alert(1)&gt;.png" in html
    assert "%3Cscript%3Ealert%281%29%3C/script%3E.png" in html  # percent-encoded in URLs


def test_thumbnail_failure_shows_placeholder(fake_run):
    _, out = fake_run
    (out / "roll1" / "a.png").write_bytes(b"\x89PNG truncated")
    html = build_gallery(out, page_size=100).read_text(encoding="utf-8")
    assert "no thumbnail: UnidentifiedImageError" in html
    assert 'src="thumbs/out/roll1/b.jpg.jpg"' in html  # the others are still there


def test_explicit_source_and_unknown_source(fake_run, tmp_path):
    src, out = fake_run
    moved = tmp_path / "moved-IN"
    shutil.move(src, moved)
    html = build_gallery(out).read_text(encoding="utf-8")
    assert "not found: pass --source" in html and html.count("source missing") == 0
    html = build_gallery(out, source_dir=moved).read_text(encoding="utf-8")
    assert "pass --source" not in html and 'src="thumbs/src/roll1/a.png.jpg"' in html


def test_cli(fake_run, tmp_path, monkeypatch):
    _, out = fake_run
    opened: list[str] = []
    monkeypatch.setattr("webbrowser.open", lambda url, *a, **k: opened.append(url) or True)
    result = CliRunner().invoke(gallery_command, [str(out), "--page-size", "3", "--open", "--no-suggest"])
    assert result.exit_code == 0, result.output
    assert opened == [(gallery_dir(out) / "index.html").resolve().as_uri()]
    assert (gallery_dir(out) / "page-3.html").is_file()

    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(gallery_command, [str(empty)])
    assert result.exit_code == 2
    assert f"no {manifest_path(Path())}" in result.output


def test_real_browser(fake_run, tmp_path):
    if not CHROMIUM.is_file():
        pytest.skip("/usr/bin/chromium is missing (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is missing (pip install playwright)")
    _, out = fake_run
    index = build_gallery(out, page_size=4)
    dialogs: list[str] = []
    errors: list[str] = []

    with sync_api.sync_playwright() as pw:
        context = launch_chromium(pw, tmp_path)
        try:
            page = context.new_page()
            page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
            page.on("pageerror", lambda exc: errors.append(str(exc)))

            def shown_paths() -> list[str]:
                # Load the lazy images too, then insist every one decoded.
                page.evaluate("""() => Promise.all([...document.images].map(img => {
                    img.loading = "eager";
                    return img.complete ? null : new Promise(r => { img.onload = img.onerror = r; });
                }))""")
                widths = page.evaluate("() => [...document.images].map(img => [img.getAttribute('src'), img.naturalWidth])")
                assert widths and all(w > 0 for _, w in widths), widths
                assert page.evaluate("() => document.querySelectorAll('script:not([type=\"application/json\"])').length") == 1
                assert page.evaluate("() => document.querySelectorAll('[onerror]').length") == 0
                return page.locator(".card .path").all_inner_texts()

            page.goto(index.as_uri())
            first = shown_paths()
            assert len(first) == 4
            assert HOSTILE_SCRIPT in first and HOSTILE_IMG in first  # shown as text
            page.get_by_text(HOSTILE_IMG, exact=True).wait_for()
            page.screenshot(path=str(tmp_path / "gallery.png"), full_page=True)
            shutil.copy(tmp_path / "gallery.png", "/tmp/gallery_screenshot.png")

            page.locator('a[rel="next"]').first.click()
            page.wait_for_url("**/page-2.html")
            second = shown_paths()
            assert len(second) == 4 and not set(first) & set(second)
            assert ODD_NAME in second  # '%', '#', '?' survived the URL round trip (its images loaded)

            page.get_by_role("button", name="slider").first.click()  # the before/after slider view
            assert page.evaluate("() => document.body.dataset.view") == "slider"
            page.screenshot(path=str(tmp_path / "gallery-page2-slider.png"), full_page=True)
        finally:
            context.close()
    assert dialogs == [], f"a dialog fired: {dialogs}"
    assert errors == [], errors
