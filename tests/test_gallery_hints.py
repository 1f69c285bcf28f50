"""The gallery's hint editor (issue 15): points clicked in a real browser come back as hint files
that a run reads, and `colorize-batch hints import` unpacks the gallery's bundle."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import CHROMIUM, grey_image, launch_chromium, save
from PIL import Image

from colorize_batch.cli import main
from colorize_batch.config import DEFAULT_WEIGHTS, load_config
from colorize_batch.gallery import build_gallery
from colorize_batch.hints import hints_path_for, locate, parse_hints, read_bundle
from colorize_batch.names import display
from colorize_batch.suggestions import Suggester

PLAIN = "roll 1/a photo.png"  # output: roll 1/a photo.jpg (--format jpg): the bundle must name the INPUT
HINTED = "roll 1/b.png"  # has a hint file beside it already
ODD = os.fsdecode(b"caf\xe9 <b>&\".png")  # not UTF-8, and HTML/JS specials
EXISTING = {"points": [{"x": 0.5, "y": 0.25, "color": "#204080", "radius": 0.1}]}
_DATA = re.compile(r'<script type="application/json" id="hint-data">(.*?)</script>', re.S)


@pytest.fixture
def hint_run(tmp_path, run_cli) -> tuple[Path, Path]:
    """A real run (tiny weights) over three small scans, one with a hint file beside it."""
    src, out = tmp_path / "IN", tmp_path / "OUT"
    for i, rel in enumerate([PLAIN, HINTED, ODD]):
        save(src / rel, Image.fromarray(grey_image(160, 96, seed=i)))
    (src / "roll 1" / "b.hints.json").write_text(json.dumps(EXISTING), encoding="utf-8")
    run_cli("run", src, out, "--workers", "0", "--size", "64", "--format", "jpg", "-q", expect=0)
    assert (out / "roll 1" / "a photo.jpg").is_file()
    return src, out


def _hint_data(index: Path) -> dict:
    match = _DATA.search(index.read_text(encoding="utf-8"))
    assert match, "no hint data block"
    assert "<" not in match.group(1) and "&" not in match.group(1)  # no name can close the block
    return json.loads(match.group(1))


def test_page_carries_input_paths_and_existing_hints(hint_run):
    src, out = hint_run
    data = _hint_data(build_gallery(out))
    by_rel = {image["rel"]: image for image in data["images"]}
    assert set(by_rel) == {PLAIN, HINTED, ODD}  # input paths (.png), not the outputs (.jpg); ODD exactly
    assert by_rel[PLAIN]["file"] == "a photo.hints.json" and by_rel[PLAIN]["existing"] is None
    assert by_rel[HINTED]["existing"] == EXISTING
    # Hints under a --hints DIR instead: found there (and only there).
    hints_dir = src.parent / "hints"
    hints_path_for(PLAIN, hints_dir).parent.mkdir(parents=True)
    hints_path_for(PLAIN, hints_dir).write_text(json.dumps({"points": [{"x": 0.1, "y": 0.2, "color": "ABCDEF"}]}))
    by_rel = {image["rel"]: image for image in _hint_data(build_gallery(out, hints_dir=hints_dir))["images"]}
    assert by_rel[PLAIN]["existing"] == {"points": [{"x": 0.1, "y": 0.2, "color": "#abcdef", "radius": 0.01}]}
    assert by_rel[HINTED]["existing"] is None


def test_bad_existing_hint_file_is_a_warning(hint_run):
    src, out = hint_run
    (src / "roll 1" / "b.hints.json").write_text('{"points": [{"x": 2, "y": 0, "color": "#000000"}]}')
    html = build_gallery(out).read_text(encoding="utf-8")
    assert "roll 1/b.png: its hint file cannot be used (point 1: x = 2 is outside 0-1)" in html


@pytest.mark.skipif(not DEFAULT_WEIGHTS.is_file(), reason="no shipped weights (for the suggested colours)")
def test_browser_writes_hints_that_import_and_run_find(hint_run, tmp_path):
    """Points clicked in Chromium, one recoloured with a suggested colour (the shipped weights'), come
    back as hint files and a bundle that `hints import` unpacks where a run finds them."""
    if not CHROMIUM.is_file():
        pytest.skip("/usr/bin/chromium is missing (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is missing (pip install playwright)")
    src, out = hint_run
    index = build_gallery(out, suggester=Suggester(load_config(None, {}).model))
    grids = {image["rel"]: image["suggest"] for image in _hint_data(index)["images"]}
    assert set(grids) == {PLAIN, HINTED, ODD}
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    dialogs: list[str] = []
    errors: list[str] = []

    with sync_api.sync_playwright() as pw:
        context = launch_chromium(pw, tmp_path, accept_downloads=True)
        try:
            page = context.new_page()
            page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(index.as_uri())
            page.evaluate("""() => Promise.all([...document.images].map(img => {
                img.loading = "eager";
                return img.complete ? null : new Promise(r => { img.onload = img.onerror = r; });
            }))""")

            def card(path_text: str):
                return page.locator(".card").filter(has=page.locator(".path", has_text=re.compile("^" + re.escape(path_text) + "$")))

            plain, hinted, odd = card(PLAIN), card(HINTED), card(display(ODD))
            assert hinted.locator(".hint-dot").count() == 1  # the existing file's point is shown
            assert "1 hint point" in hinted.locator(".hint-count").inner_text()

            page.fill("#hint-color", "#1f8a44")
            page.fill("#hint-radius", "0.05")
            img = plain.locator(".hint-area img")
            box = img.bounding_box()
            assert box and box["width"] > 50
            img.click(position={"x": 0.25 * box["width"], "y": 0.6 * box["height"]})
            img.click(position={"x": 0.75 * box["width"], "y": 0.3 * box["height"]})
            assert plain.locator(".hint-dot").count() == 2
            plain.locator(".hint-dot").nth(1).click()  # a click on a point removes it
            assert plain.locator(".hint-dot").count() == 1
            assert "(edited)" in plain.locator(".hint-count").inner_text()

            odd_img = odd.locator(".hint-area img")
            odd_box = odd_img.bounding_box()
            assert odd_box
            assert odd.locator(".hint-swatch").count() == 0  # no point chosen yet: no suggestions
            odd_img.click(position={"x": 0.9 * odd_box["width"], "y": 0.1 * odd_box["height"]})
            swatches = odd.locator(".hint-suggest .hint-swatch")  # the new point's cell's suggested colours
            assert 1 <= swatches.count() <= 3 and plain.locator(".hint-swatch").count() == 0
            offered = [swatches.nth(i).get_attribute("data-color") for i in range(swatches.count())]
            chosen = offered[-1]
            assert chosen != "#1f8a44"  # not the picker's colour: the download below tells them apart
            swatches.nth(len(offered) - 1).click()
            assert odd.locator(".hint-swatch[aria-pressed='true']").get_attribute("data-color") == chosen

            def download(button) -> tuple[str, dict]:
                with page.expect_download() as info:
                    button.click()
                target = downloads / f"{len(list(downloads.iterdir()))}.json"
                info.value.save_as(target)
                return info.value.suggested_filename, json.loads(target.read_text(encoding="utf-8"))

            name, document = download(plain.get_by_role("button", name="download a photo.hints.json"))
            assert name == "a photo.hints.json"
            parsed = parse_hints(document)  # exactly what a run reads
            assert len(parsed.points) == 1
            point = document["points"][0]
            assert abs(point["x"] - 0.25) < 0.02 and abs(point["y"] - 0.6) < 0.02
            assert point["color"] == "#1f8a44" and point["radius"] == 0.05

            name, bundle = download(page.locator("#hint-bundle"))
            assert name == "colorize-batch-hints.json"
            documents = read_bundle(bundle)
            assert set(documents) == {Path(PLAIN), Path(ODD)}  # input paths; the unedited HINTED is left alone
            assert bundle["images"][PLAIN] == document
            odd_point = bundle["images"][ODD]["points"][0]
            assert abs(odd_point["x"] - 0.9) < 0.02 and abs(odd_point["y"] - 0.1) < 0.02
            assert odd_point["color"] == chosen and odd_point["radius"] == 0.05  # the swatch's colour, the point kept
            grid = grids[ODD]  # the swatches were those of the cell under the point
            cell = grid["cells"][min(int(odd_point["y"] * grid["rows"]), grid["rows"] - 1) * grid["cols"]
                                 + min(int(odd_point["x"] * grid["cols"]), grid["cols"] - 1)]
            assert offered == ["#" + cell[i: i + 6] for i in range(0, len(cell), 8)]

            page.reload()  # edits outlive a reload (localStorage), until forgotten
            # the page's script draws the dots after the reload: wait for them (a bare count() raced it under load)
            sync_api.expect(card(PLAIN).locator(".hint-dot")).to_have_count(1)
            page.locator("#hint-forget").click()
            sync_api.expect(card(PLAIN).locator(".hint-dot")).to_have_count(0)
            sync_api.expect(card(HINTED).locator(".hint-dot")).to_have_count(1)
        finally:
            context.close()
    assert dialogs == [] and errors == [], (dialogs, errors)

    bundle_file = downloads / "1.json"
    hints_dir = tmp_path / "hints"
    result = CliRunner().invoke(main, ["hints", "import", str(bundle_file), str(hints_dir)])
    assert result.exit_code == 0, result.output
    for rel in (PLAIN, ODD):
        dest = hints_path_for(rel, hints_dir)
        assert json.loads(dest.read_text(encoding="utf-8")) == bundle["images"][rel]
        assert locate(src / rel, rel, hints_dir) == dest  # where planning looks with --hints DIR
    assert (hints_dir / "roll 1" / "a photo.hints.json").is_file()
    assert os.path.exists(os.path.join(os.fsencode(hints_dir), b"caf\xe9 <b>&\".hints.json"))  # the name's own bytes


# --------------------------------------------------------------------------- hints import / check


def _bundle(path: Path, images: dict, **extra) -> Path:
    path.write_text(json.dumps({"format": "colorize-batch-hints", "version": 1, "images": images, **extra}), encoding="utf-8")
    return path


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_import_writes_mirrored_files(tmp_path):
    doc_a = {"points": [{"x": 0.1, "y": 0.9, "color": "#aa0000", "radius": 0.02}]}
    doc_b = {"points": [], "global": {"tint": "#704214", "strength": 0.5}}
    bundle = _bundle(tmp_path / "bundle.json", {"a/b/photo.jpg": doc_a, "top.tif": doc_b})
    dest = tmp_path / "hints"
    result = CliRunner().invoke(main, ["hints", "import", str(bundle), str(dest)])
    assert result.exit_code == 0, result.output
    assert _files(dest) == [dest / "a" / "b" / "photo.hints.json", dest / "top.hints.json"]
    assert json.loads((dest / "a" / "b" / "photo.hints.json").read_text()) == doc_a
    assert json.loads((dest / "top.hints.json").read_text()) == doc_b
    assert result.stdout.splitlines() == [str(dest / "a" / "b" / "photo.hints.json"), str(dest / "top.hints.json")]
    assert "2 hint file(s) written" in result.stderr


@pytest.mark.parametrize("images, extra, problem", [
    ({"a.jpg": {"points": []}}, {"format": "something-else"}, "not a hint bundle"),
    ({"ok.jpg": {"points": []}, "../evil.jpg": {"points": []}}, {}, "'../evil.jpg' leaves the hints folder"),
    ({"ok.jpg": {"points": []}, "/etc/evil.jpg": {"points": []}}, {}, "leaves the hints folder"),
    ({"ok.jpg": {"points": []}, "bad.jpg": {"points": [{"x": 0.5, "y": 0.5, "color": "navy"}]}}, {},
     "bad.jpg: point 1: colour 'navy' is not an sRGB hex colour"),
    ({"a.jpg": {"points": []}}, {"version": 2}, "bundle version 2 is not supported"),
])
def test_bad_bundle_is_one_line_and_writes_nothing(tmp_path, images, extra, problem):
    bundle = _bundle(tmp_path / "bundle.json", images, **extra)
    dest = tmp_path / "work" / "hints"
    result = CliRunner().invoke(main, ["hints", "import", str(bundle), str(dest)])
    assert result.exit_code == 2, result.output
    lines = result.output.splitlines()
    assert len(lines) == 1 and str(bundle) in lines[0] and problem in lines[0], lines
    assert _files(tmp_path / "work") == [] and not (tmp_path / "evil.hints.json").exists()


def test_unreadable_bundle(tmp_path):
    bundle = tmp_path / "bundle.json"
    bundle.write_text("{not json")
    result = CliRunner().invoke(main, ["hints", "import", str(bundle), str(tmp_path / "hints")])
    assert result.exit_code == 2 and len(result.output.splitlines()) == 1
    assert "cannot read the bundle: " in result.output and not (tmp_path / "hints").exists()
    result = CliRunner().invoke(main, ["hints", "import", str(tmp_path / "missing.json"), str(tmp_path / "hints")])
    assert result.exit_code == 2 and "missing.json: cannot read the bundle" in result.output


def test_check(tmp_path):
    good = tmp_path / "good.hints.json"
    good.write_text(json.dumps(EXISTING))
    bad = tmp_path / "bad.hints.json"
    bad.write_text(json.dumps({"points": [{"x": 0.5, "y": 0.5}]}))
    result = CliRunner().invoke(main, ["hints", "check", str(good)])
    assert result.exit_code == 0 and f"{good}: ok, 1 point(s)" in result.output
    result = CliRunner().invoke(main, ["hints", "check", str(good), str(bad)])
    assert result.exit_code == 2 and f"{bad}: point 1: no 'color'" in result.output
