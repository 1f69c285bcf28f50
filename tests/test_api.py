"""The Python API (colorize_batch.colorize, ColorizeSession) gives the pixels `run` writes.

Each test writes real files, runs `colorize-batch run` on them with PNG outputs, and compares
the API's image with the run's output pixel for pixel, with and without hints.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import colorize_batch
from colorize_batch.config import DEFAULT_WEIGHTS
from colorize_batch.decoding import DecodeError
from colorize_batch.hints import HintError, hints_document

from conftest import grey_image, save

REPO = Path(__file__).resolve().parents[1]
TINT = {"points": [], "global": {"tint": "#704214", "strength": 0.6}}


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def same(image: Image.Image, path: Path) -> None:
    got, want = np.asarray(image), pixels(path)
    assert image.mode == "RGB" and got.shape == want.shape
    assert np.array_equal(got, want), f"{(got != want).sum()} values differ"


def photo_tree(root: Path) -> dict[str, Path]:
    """Grey 8-bit PNG, grey JPEG with an EXIF orientation, 16-bit PNG, RGBA PNG: odd sizes."""
    files = {
        "grey.png": save(root / "grey.png", Image.fromarray(grey_image(97, 61, seed=1))),
        "sub/turned.jpg": None,
        "deep.png": save(root / "deep.png", Image.fromarray(grey_image(70, 90, seed=3).astype(np.uint16) * 257 + 100)),
        "alpha.png": None,
    }
    exif = Image.Exif()
    exif[0x0112] = 6  # turned 90 degrees: the output is upright
    files["sub/turned.jpg"] = save(root / "sub" / "turned.jpg", Image.fromarray(grey_image(80, 48, seed=2)), exif=exif)
    rgba = np.dstack([np.repeat(grey_image(64, 64, seed=4)[..., None], 3, axis=2), np.full((64, 64), 200, np.uint8)])
    files["alpha.png"] = save(root / "alpha.png", Image.fromarray(rgba, "RGBA"))
    return {k: v for k, v in files.items() if v is not None}


def test_colorize_gives_the_pixels_run_writes_for_one_file(tmp_path, run_cli, tiny_weights):
    src = save(tmp_path / "scan.png", Image.fromarray(grey_image(97, 61)))
    run_cli("run", src, tmp_path / "out.png", "--workers", "0", expect=0)
    image = colorize_batch.colorize(src, weights=tiny_weights)
    same(image, tmp_path / "out.png")
    assert image.size == (97, 61)
    luma = np.asarray(image.convert("L")).astype(int)  # back to grey: the scan's grey levels (up to RGB rounding and gamut)
    assert np.abs(luma - grey_image(97, 61)).mean() < 1.0  # as tests/test_run.py checks run


def test_a_session_gives_runs_pixels_for_a_tree_of_odd_inputs(tmp_path, run_cli, tiny_weights):
    files = photo_tree(tmp_path / "in")
    run_cli("run", tmp_path / "in", tmp_path / "out", "--format", "png", "--workers", "0", expect=0)
    session = colorize_batch.ColorizeSession(tiny_weights)
    for rel, src in files.items():
        same(session.colorize(src), (tmp_path / "out" / rel).with_suffix(".png"))
    # one batched call gives the same images as one call each
    many = session.colorize_many(list(files.values()))
    for image, rel in zip(many, files):
        same(image, (tmp_path / "out" / rel).with_suffix(".png"))
    streamed = list(session.colorize_stream(files.values(), batch_size=3))
    assert [np.asarray(a).tobytes() for a in streamed] == [np.asarray(b).tobytes() for b in many]


def test_images_and_arrays_in_memory_give_the_files_pixels(tmp_path, run_cli, tiny_weights):
    grey = grey_image(97, 61, seed=5)
    src = save(tmp_path / "in" / "scan.png", Image.fromarray(grey))
    deep = (grey.astype(np.uint16) * 257) ^ 0x55  # 16-bit levels that 8-bit rounding must scale, not clip
    save(tmp_path / "in" / "scan16.png", Image.fromarray(deep))
    run_cli("run", tmp_path / "in", tmp_path / "out", "--workers", "0", expect=0)
    session = colorize_batch.ColorizeSession(tiny_weights)
    with Image.open(src) as im:
        same(session.colorize(im), tmp_path / "out" / "scan.png")
    same(session.colorize(grey), tmp_path / "out" / "scan.png")
    same(session.colorize(deep), tmp_path / "out" / "scan16.png")
    rgb = np.repeat(grey[..., None], 3, axis=2)  # a colour array with grey content: the same grey levels
    same(session.colorize(rgb), tmp_path / "out" / "scan.png")


def test_hints_give_the_pixels_run_writes_with_the_same_hint_file(tmp_path, run_cli, tiny_weights):
    src = save(tmp_path / "in" / "scan.png", Image.fromarray(grey_image(97, 61, seed=6)))
    hint_file = tmp_path / "in" / "scan.hints.json"
    hint_file.write_text(json.dumps(TINT))
    run_cli("run", tmp_path / "in", tmp_path / "out", "--workers", "0", expect=0)
    plain = colorize_batch.colorize(src, weights=tiny_weights)
    for hints in (hint_file, str(hint_file), TINT):
        hinted = colorize_batch.colorize(src, hints=hints, weights=tiny_weights)
        same(hinted, tmp_path / "out" / "scan.png")
    assert not np.array_equal(np.asarray(plain), np.asarray(hinted))  # the tint did something


@pytest.mark.skipif(not DEFAULT_WEIGHTS.is_file(), reason="no shipped weights")
def test_the_shipped_weights_with_hint_points_and_a_temperature_match_run(tmp_path, run_cli):
    src = save(tmp_path / "in" / "scan.png", Image.fromarray(grey_image(120, 88, seed=7)))
    hints = hints_document([(0.3, 0.4, "#1f4aa0", 0.05), (0.7, 0.6, "#b03020", 0.05)])
    (tmp_path / "hints").mkdir()
    (tmp_path / "hints" / "scan.hints.json").write_text(json.dumps(hints))
    args = ("--weights", DEFAULT_WEIGHTS, "--workers", "0", "--temperature", "0.5")
    run_cli("run", tmp_path / "in", tmp_path / "plain", *args, expect=0)
    run_cli("run", tmp_path / "in", tmp_path / "hinted", *args, "--hints", tmp_path / "hints", expect=0)
    session = colorize_batch.ColorizeSession(temperature=0.5)  # the default weights are the shipped ones
    assert session.info.sha256 and session.colorizer.takes_hints
    same(session.colorize(src), tmp_path / "plain" / "scan.png")
    hinted = session.colorize(src, hints)
    same(hinted, tmp_path / "hinted" / "scan.png")
    assert not np.array_equal(np.asarray(hinted), pixels(tmp_path / "plain" / "scan.png"))


def test_bad_inputs_are_named_errors(tmp_path, tiny_weights):
    session = colorize_batch.ColorizeSession(tiny_weights)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    with pytest.raises(DecodeError, match=r"broken\.png: not an image"):
        session.colorize(broken)
    with pytest.raises(ValueError, match="float32"):
        session.colorize(np.zeros((8, 8), np.float32))
    with pytest.raises(TypeError, match="int"):
        session.colorize(3)  # type: ignore[arg-type]
    bad_hints = tmp_path / "bad.hints.json"
    bad_hints.write_text('{"points": [{"x": 2, "y": 0.5, "color": "#ffffff"}]}')
    with pytest.raises(HintError, match=r"bad\.hints\.json: point 1: x = 2"):
        session.colorize(grey_image(), bad_hints)
    with pytest.raises(ValueError, match="2 images but 1 hint"):
        session.colorize_many([grey_image(), grey_image()], [None])
    with pytest.raises(TypeError, match="one hints entry"):  # one document for two images: not "no len()"
        session.colorize_many([grey_image(), grey_image()], {"points": []})


def test_colorize_many_takes_generators(tiny_weights):
    session = colorize_batch.ColorizeSession(tiny_weights)
    images = [grey_image(seed=1), grey_image(seed=2)]
    listed = session.colorize_many(images, [None, None])
    from_generators = session.colorize_many((im for im in images), (None for _ in images))
    assert [np.asarray(a).tobytes() for a in listed] == [np.asarray(b).tobytes() for b in from_generators]


def test_importing_the_package_does_not_load_torch():
    code = "import sys, colorize_batch; assert 'torch' not in sys.modules; colorize_batch.colorize; assert 'torch' in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})


def test_a_session_takes_the_settings_of_a_config_file_as_run_does(tmp_path, run_cli, tiny_weights):
    src = save(tmp_path / "in" / "scan.png", Image.fromarray(grey_image(97, 61, seed=8)))
    config = tmp_path / "settings.yaml"
    config.write_text("model:\n  chroma_gain: 1.3\n  size: 128\noutput:\n  recombination: exact\n")
    run_cli("run", tmp_path / "in", tmp_path / "out", "--config", config, "--workers", "0", expect=0)
    session = colorize_batch.ColorizeSession(tiny_weights, config=config)
    assert session.config.output.recombination == "exact" and session.config.model.size == 128
    same(session.colorize(src), tmp_path / "out" / "scan.png")
    assert not np.array_equal(np.asarray(colorize_batch.colorize(src, weights=tiny_weights)), pixels(tmp_path / "out" / "scan.png"))
