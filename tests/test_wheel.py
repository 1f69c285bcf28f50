"""Installed from a wheel, away from the repository, the tool finds its own model and pipeline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from conftest import grey_image, save
from PIL import Image

from colorize_batch.manifest import gallery_dir

REPO = Path(__file__).resolve().parent.parent


def test_wheel_install_runs_with_the_shipped_weights_from_anywhere(tmp_path):
    dist = tmp_path / "dist"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(REPO)],
                           capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next(dist.glob("colorize_batch-*.whl"))
    site = tmp_path / "site"  # the wheel alone; torch and the other requirements come from this interpreter
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(site), str(wheel)],
                             capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-2000:]
    elsewhere = tmp_path / "elsewhere"  # no repository around: not a checkout, not its parent
    save(elsewhere / "in" / "a" / "photo.jpg", Image.fromarray(grey_image(160, 120)))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(site)}
    where = subprocess.run([sys.executable, "-c", "import colorize_batch.config as c; print(c.__file__); print(c.DEFAULT_WEIGHTS)"],
                           capture_output=True, text=True, cwd=elsewhere, env=env)
    module_file, weights = where.stdout.split()
    assert module_file.startswith(str(site)) and weights.startswith(str(site)), where.stdout
    script = site / "bin" / "colorize-batch"  # the console script the wheel installs
    assert script.is_file(), sorted(p.name for p in (site / "bin").glob("*")) if (site / "bin").is_dir() else "no bin/"
    run = subprocess.run([str(script), "run", "in", "out", "-q"],
                         capture_output=True, text=True, cwd=elsewhere, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    out = np.asarray(Image.open(elsewhere / "out" / "a" / "photo.jpg").convert("RGB")).astype(int)
    assert out.shape == (120, 160, 3)
    assert np.abs(out[..., 0] - out[..., 2]).mean() > 1.0  # coloured, not grey
    gallery = subprocess.run([sys.executable, "-m", "colorize_batch", "gallery", "out"],  # its templates are package data
                             capture_output=True, text=True, cwd=elsewhere, env=env, timeout=600)
    assert gallery.returncode == 0, gallery.stderr[-2000:]
    page = (gallery_dir(elsewhere / "out") / "index.html").read_text()
    assert "a/photo.jpg" in page and "<style>" in page and "localStorage" in page  # the page, its CSS and script
    schema = subprocess.run([str(script), "hints", "schema"], capture_output=True, text=True, cwd=elsewhere, env=env, timeout=600)
    assert schema.returncode == 0, schema.stderr[-2000:]  # what run --help points to, carried by the wheel
    assert json.loads(schema.stdout) == json.loads((REPO / "schemas" / "hints.schema.json").read_text())
