"""Old-scan degradations of a grey photo, for training inputs and for evaluating on them.

The photos users bring are old scans: faded prints (lifted blacks, compressed highlights),
crushed or lifted shadows, uneven exposure and vignetting, soft focus, film grain, halftone
screens, dust and scratches, and the JPEG artefacts of the digitisation. A network that has
only seen clean grey meets them for the first time in ``run``. :func:`degrade_grey` applies a
random selection of them to an 8-bit grey image (the network's input only: the colour target
stays the clean photo's), in the order a print is made, aged and scanned:
tone -> exposure -> blur -> halftone -> grain -> dust and scratches -> JPEG.

Everything is drawn from the ``random.Random`` passed in, so a training crop's degradation is
fixed by its seed (``train --resume`` stays exact) and ``eval --degrade`` is repeatable.
``strength`` scales every magnitude (0: unchanged; 1: the training default; up to 2).
The recipe follows DeOldify's "crappify" (rescale + JPEG) and Wan et al. 2020 (blur, noise,
JPEG, scratch overlays), extended with fading and halftone.
"""

from __future__ import annotations

import io
import math
import random

import numpy as np
from PIL import Image, ImageFilter


def _tone(x: np.ndarray, rng: random.Random, s: float) -> np.ndarray:
    """Fading: blacks lifted, whites lowered, a random gamma (crushed or washed-out mid-tones)."""
    black = rng.uniform(0.0, 0.22 * s)
    white = 1.0 - rng.uniform(0.0, 0.18 * s)
    gamma = math.exp(rng.uniform(-0.35, 0.35) * s)
    return black + (white - black) * np.power(x, gamma)


def _exposure(x: np.ndarray, rng: random.Random, s: float) -> np.ndarray:
    """Uneven exposure: a vignette or a linear light gradient across the print."""
    h, w = x.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yy, xx = yy / max(h - 1, 1) - 0.5, xx / max(w - 1, 1) - 0.5
    if rng.random() < 0.5:
        field = 1.0 - rng.uniform(0.0, 0.5 * s) * (xx**2 + yy**2) * 2
    else:
        angle = rng.uniform(0, 2 * math.pi)
        field = 1.0 + rng.uniform(0.0, 0.25 * s) * (math.cos(angle) * xx + math.sin(angle) * yy) * 2
    return x * field


def _blur(img: Image.Image, rng: random.Random, s: float) -> Image.Image:
    """Soft focus (Gaussian) or lost resolution (down- and up-scaled)."""
    if rng.random() < 0.5:
        return img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.6 * s + 0.3)))
    factor = rng.uniform(1.2, 1.2 + 2.0 * s)
    w, h = img.size
    small = img.resize((max(1, round(w / factor)), max(1, round(h / factor))), Image.Resampling.BILINEAR)
    return small.resize((w, h), Image.Resampling.BICUBIC)


def _halftone(x: np.ndarray, rng: random.Random, s: float) -> np.ndarray:
    """A printed photo's dot screen: a rotated periodic pattern whose depth follows the tone."""
    h, w = x.shape
    period = rng.uniform(2.5, 5.0)
    angle = math.radians(rng.choice([15.0, 45.0, 75.0]))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    u = (math.cos(angle) * xx + math.sin(angle) * yy) * (2 * math.pi / period)
    v = (-math.sin(angle) * xx + math.cos(angle) * yy) * (2 * math.pi / period)
    depth = rng.uniform(0.03, 0.12 * s + 0.03)
    return x + depth * np.cos(u) * np.cos(v) * (1 - np.abs(2 * x - 1))


def _grain(x: np.ndarray, rng: random.Random, nrng: np.random.Generator, s: float) -> np.ndarray:
    """Film grain: Gaussian noise, stronger in the mid-tones, of 1-2 px clumps."""
    sigma = rng.uniform(0.005, 0.06 * s + 0.005)
    noise: np.ndarray = nrng.normal(0.0, 1.0, x.shape).astype(np.float32)
    if rng.random() < 0.5:  # clumped grain: blur the noise, then restore its spread
        noise_img = Image.fromarray(((noise * 32) + 128).clip(0, 255).astype(np.uint8))
        noise = (np.asarray(noise_img.filter(ImageFilter.GaussianBlur(0.7)), dtype=np.float32) - 128) / 32
        noise /= max(float(noise.std()), 1e-3)
    return x + sigma * noise * (0.5 + 2 * x * (1 - x))


def _dust_and_scratches(x: np.ndarray, rng: random.Random, nrng: np.random.Generator, s: float) -> np.ndarray:
    """A few thin bright or dark scratches (mostly vertical, as film runs) and dust specks."""
    h, w = x.shape
    out = x.copy()
    for _ in range(rng.randint(0, max(0, round(3 * s)))):
        x0 = rng.uniform(0, w)
        slope = rng.uniform(-0.15, 0.15)
        y0, y1 = sorted((rng.randint(0, h - 1), rng.randint(0, h - 1)))
        value = rng.choice([0.05, 0.95])
        rows = np.arange(y0, y1 + 1)
        cols = np.clip(np.round(x0 + slope * (rows - y0)).astype(int), 0, w - 1)
        out[rows, cols] = value
    specks = int(nrng.integers(0, round(40 * s) + 1))
    if specks:
        ys, xs = nrng.integers(0, h, specks), nrng.integers(0, w, specks)
        out[ys, xs] = np.where(nrng.random(specks) < 0.5, 0.05, 0.95)
    return out


def _jpeg(img: Image.Image, rng: random.Random, s: float) -> Image.Image:
    """Compression artefacts of the digitisation."""
    quality = int(round(rng.uniform(max(10.0, 90 - 70 * s), 90)))
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return decoded.convert("L")


def degrade_grey(grey: np.ndarray, rng: random.Random, strength: float = 1.0) -> np.ndarray:
    """``(h, w)`` uint8 grey -> the same photo as an old scan might show it (uint8, same size).

    Each stage is applied with its own probability; all draws come from ``rng``.
    """
    if strength <= 0:
        return grey
    s = float(strength)
    nrng = np.random.default_rng(rng.getrandbits(64))
    x = grey.astype(np.float32) / 255.0
    if rng.random() < 0.7:
        x = _tone(x, rng, s)
    if rng.random() < 0.35:
        x = _exposure(x, rng, s)
    img = Image.fromarray((x.clip(0, 1) * 255).round().astype(np.uint8))
    if rng.random() < 0.6:
        img = _blur(img, rng, s)
    x = np.asarray(img, dtype=np.float32) / 255.0
    if rng.random() < 0.1:
        x = _halftone(x, rng, s)
    if rng.random() < 0.6:
        x = _grain(x, rng, nrng, s)
    if rng.random() < 0.3:
        x = _dust_and_scratches(x, rng, nrng, s)
    img = Image.fromarray((x.clip(0, 1) * 255).round().astype(np.uint8))
    if rng.random() < 0.6:
        img = _jpeg(img, rng, s)
    return np.array(img, dtype=np.uint8)  # writable, as the decoder's arrays are
