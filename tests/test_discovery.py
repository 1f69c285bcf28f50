import os
from pathlib import Path

import pytest

from colorize_batch.discovery import DiscoveryError, check_roots, find_images, output_path


def touch(root: Path, rel: str) -> Path:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"x")
    return p


def test_walk_is_recursive_sorted_case_insensitive_and_skips_hidden(tmp_path):
    for rel in ["b/2.JPG", "b/1.png", "a.tif", "c/d/e.TIFF", "notes.txt", ".hidden.jpg", ".git/x.jpg", "x.webp", "y.bmp"]:
        touch(tmp_path, rel)
    rels = [str(i.relative) for i in find_images(tmp_path)]
    assert rels == ["a.tif", "b/1.png", "b/2.JPG", "c/d/e.TIFF", "x.webp", "y.bmp"]


def test_include_exclude_globs(tmp_path):
    for rel in ["keep/a.jpg", "keep/b_mask.png", "drafts/c.jpg"]:
        touch(tmp_path, rel)
    items = find_images(tmp_path, include=["**"], exclude=["drafts/*", "*_mask.png"])
    assert [str(i.relative) for i in items] == ["keep/a.jpg"]
    assert [str(i.relative) for i in find_images(tmp_path, include=["drafts/*"])] == ["drafts/c.jpg"]


def test_output_inside_input_is_skipped_and_roots_are_checked(tmp_path):
    touch(tmp_path, "a.jpg")
    touch(tmp_path, "out/a.jpg")
    assert [str(i.relative) for i in find_images(tmp_path, skip_dirs=[tmp_path / "out"])] == ["a.jpg"]
    check_roots(tmp_path, tmp_path / "out")  # allowed
    with pytest.raises(DiscoveryError):
        check_roots(tmp_path, tmp_path)
    with pytest.raises(DiscoveryError):
        check_roots(tmp_path / "out", tmp_path)
    with pytest.raises(DiscoveryError):
        check_roots(tmp_path / "missing", tmp_path / "o")


def test_symlinks_followed_and_loops_detected(tmp_path):
    touch(tmp_path, "real/a.jpg")
    os.symlink(tmp_path / "real", tmp_path / "link")
    os.symlink(tmp_path, tmp_path / "real" / "loop")
    os.symlink(tmp_path / "missing.jpg", tmp_path / "broken.jpg")
    warnings = []
    items = find_images(tmp_path, on_warning=warnings.append)
    rels = [str(i.relative) for i in items]
    assert rels == ["link/a.jpg"]  # the real folder is the same folder: listed once
    assert any("loop" in w or "already visited" in w for w in warnings)
    assert any("broken symlink" in w for w in warnings)


def test_unicode_spaces_and_deep_paths(tmp_path):
    deep = "/".join(f"level {i}" for i in range(40))
    touch(tmp_path, f"{deep}/фото ёлка 1.jpg")
    (item,) = find_images(tmp_path)
    assert item.relative.name == "фото ёлка 1.jpg"
    assert output_path(item, tmp_path / "o", "png").name == "фото ёлка 1.png"
