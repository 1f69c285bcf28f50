"""The README's before/after strip: present, small, and made of public-domain photographs only."""

from __future__ import annotations

import csv
import importlib.util
import os
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
STRIP = REPO / "docs" / "before-after.jpg"
ARCHIVE = Path(os.environ.get("ARCHIVE_BW", REPO.parent / "shared" / "data" / "archive_bw"))  # ../shared beside the main checkout


def strip_script():
    spec = importlib.util.spec_from_file_location("make_strip", REPO / "docs" / "make_strip.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_shows_a_small_strip_of_six_pairs():
    assert "](docs/before-after.jpg)" in (REPO / "README.md").read_text(encoding="utf-8")
    assert STRIP.stat().st_size < 300_000
    script = strip_script()
    with Image.open(STRIP) as im:
        assert im.height == 2 * script.HEIGHT + script.GAP
    assert len(script.SKIMAGE) + len(script.ARCHIVE) == 6


@pytest.mark.skipif(not (ARCHIVE / "MANIFEST.csv").is_file(), reason="archive_bw not beside the checkout")
def test_the_archive_photos_are_public_domain_per_the_manifest():
    with open(ARCHIVE / "MANIFEST.csv", newline="", encoding="utf-8") as fh:
        rights = {row["file"]: row["rights_guess"] for row in csv.DictReader(fh)}
    for rel, stated in strip_script().ARCHIVE.items():
        assert rights[rel] == stated and rights[rel].startswith("PD (")  # not "PD likely"
