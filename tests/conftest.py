from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from colorize_batch.cli import main
from colorize_batch.model import build_generator
from colorize_batch.weights import save_weights

REPO = Path(__file__).resolve().parent.parent
SHIPPED_WEIGHTS = REPO / "weights" / "colorize-lite.pt"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def launch_chromium(pw, tmp_path: Path, **options):
    """Debian's Chromium through Playwright, headless, a fresh profile, no background networking
    (this machine's closed network refuses it); a persistent context of a 1280x900 window."""
    return pw.chromium.launch_persistent_context(
        str(tmp_path / "chromium-profile"), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
        viewport={"width": 1280, "height": 900}, **options,
    )


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """A real (untrained, tiny) weights file: fast, and exercises the full loading path."""
    torch.manual_seed(0)
    gen = build_generator("tiny")
    # Give the untrained net some colour so "coloured output" checks are meaningful.
    with torch.no_grad():
        gen.outermost[1].bias.copy_(torch.tensor([0.3, 0.4]))
    return save_weights(tmp_path_factory.mktemp("weights") / "tiny.pt", gen, {"name": "tiny-test"})


def grey_image(w: int = 96, h: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = (x * 255 / max(w - 1, 1) * 0.6 + y * 255 / max(h - 1, 1) * 0.4)
    return np.clip(base + rng.normal(0, 8, (h, w)), 0, 255).astype(np.uint8)


def save(path: Path, im: Image.Image, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, **kwargs)
    return path


@pytest.fixture
def run_cli(tiny_weights):
    """Invoke ``colorize-batch`` in-process; returns the click Result."""

    def invoke(*args: str, weights: Path | None = tiny_weights, expect: int | None = None):
        argv = [str(a) for a in args]
        if weights is not None and argv and argv[0] == "run" and "--weights" not in argv:
            argv += ["--weights", str(weights)]
        result = CliRunner().invoke(main, argv, catch_exceptions=False)
        if expect is not None:
            assert result.exit_code == expect, result.output
        return result

    return invoke


@pytest.fixture(autouse=True)
def _quiet_threads():
    torch.set_num_threads(min(2, os.cpu_count() or 1))
