"""``colorize-batch eval``: colour quality of a model against ground-truth colour photos.

Each photo is made grey (its exact CIE lightness, written as an 8-bit sRGB grey level),
colorized through the same decode -> forward -> recombination code as ``run``, and scored
for the model, for the grey baseline (the grey input itself) and, where it applies, for the
truth. Metrics, averaged per image:

- PSNR and SSIM on 8-bit sRGB; PSNR's squared error is floored at 1/12, the variance of 8-bit
  rounding, so identical images (a grey truth and its grey input) score 58.9 dB, not infinity
  (which would make the mean infinite and the JSON report invalid);
- colourfulness (Hasler & Süsstrunk 2003) in the absolute-value variant used by the
  DDColor / CT2 / ColorFormer code: rg = |R - G|, yb = |(R + G)/2 - B|,
  M = sqrt(std_rg² + std_yb²) + 0.3 sqrt(mean_rg² + mean_yb²);
- ΔCF = |mean CF(outputs) - mean CF(truth)|;
- Zhang et al.'s AuC: the share of pixels whose ab error (L2, Lab units) is within t,
  averaged over t = 0..150.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageOps
from skimage.metrics import structural_similarity

from .color import XYZ_FROM_RGB, linear_to_srgb, rgb_to_lab, srgb_to_linear
from .decoding import network_input
from .degrade import degrade_grey
from .discovery import find_images
from .hints import rasterize, sample_points
from .inference import Colorizer
from .recombination import chroma_planes, recombine
from .safe_files import write_named

AUC_THRESHOLDS = torch.arange(0, 151, dtype=torch.float32)


def grey_from_rgb(rgb_u8: np.ndarray) -> np.ndarray:
    """8-bit sRGB grey with the same CIE lightness as each colour pixel."""
    t = torch.from_numpy(np.array(rgb_u8, dtype=np.uint8)).float().div_(255).permute(2, 0, 1)
    weights = torch.tensor(XYZ_FROM_RGB[1]).view(3, 1, 1)
    y = (srgb_to_linear(t) * weights).sum(0)
    return (linear_to_srgb(y) * 255).round().to(torch.uint8).numpy()


MSE_FLOOR = 1 / 12  # the variance of rounding to 8 bits: images closer than that are as equal as 8 bits can tell


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR of two 8-bit images in dB, at most 10·log10(255² / MSE_FLOOR) = 58.9 (identical images)."""
    mse = float(np.mean((a.astype(np.float32) - b.astype(np.float32)) ** 2))
    return 10 * math.log10(255.0**2 / max(mse, MSE_FLOOR))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    return float(structural_similarity(a, b, channel_axis=2, data_range=255))


def colourfulness(rgb_u8: np.ndarray) -> float:
    """Hasler & Süsstrunk colourfulness, absolute-value variant (see module docstring)."""
    rgb = rgb_u8.astype(np.float32)
    rg = np.abs(rgb[..., 0] - rgb[..., 1])
    yb = np.abs(0.5 * (rgb[..., 0] + rgb[..., 1]) - rgb[..., 2])
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


def ab_of(rgb_u8: np.ndarray) -> torch.Tensor:
    return rgb_to_lab(torch.from_numpy(np.array(rgb_u8, dtype=np.uint8)).float().div_(255).permute(2, 0, 1))[1:]


def ab_auc(pred_ab: torch.Tensor, true_ab: torch.Tensor) -> float:
    """Zhang's AuC: mean over t = 0..150 of the share of pixels with ab L2 error <= t."""
    err = (pred_ab - true_ab).pow(2).sum(0).sqrt().flatten()
    counts = torch.bucketize(err, AUC_THRESHOLDS, right=False)  # index of first threshold >= err
    hist = torch.bincount(counts, minlength=len(AUC_THRESHOLDS) + 1)[: len(AUC_THRESHOLDS)]
    return float((hist.cumsum(0).float() / err.numel()).mean())


@dataclass
class EvalResult:
    files: list[str] = field(default_factory=list)
    failures: list[dict] = field(default_factory=list)  # {"path", "reason"}: photos that could not be scored
    scores: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    sheet_rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)

    def add(self, who: str, metric: str, value: float) -> None:
        self.scores.setdefault(who, {}).setdefault(metric, []).append(value)

    def summary(self) -> dict:
        out: dict = {}
        for who, metrics in self.scores.items():
            out[who] = {m: float(np.mean(v)) for m, v in metrics.items()}
        truth_cf = out.get("truth", {}).get("cf")
        if truth_cf is not None:
            for who in ("model", "gray"):
                if who in out:
                    out[who]["delta_cf"] = abs(out[who]["cf"] - truth_cf)
        out["images"] = len(self.files)
        if self.failures:
            out["failures"] = self.failures
        return out


def load_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))


MIN_SIDE = 7  # SSIM's 7x7 window


def load_truth(path: Path) -> np.ndarray:
    """:func:`load_rgb` for scoring; a photo that cannot be read or scored raises ``ValueError``
    with the reason in a few words."""
    try:
        truth = load_rgb(path)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ValueError(f"cannot read the photo ({exc})") from None
    if min(truth.shape[:2]) < MIN_SIDE:
        raise ValueError(f"{truth.shape[1]}x{truth.shape[0]} pixels: too small to score (SSIM needs {MIN_SIDE}x{MIN_SIDE})")
    return truth


def revealed_hints(truth: np.ndarray, size: int, count: int, seed: int, radius_px: float = 2.5) -> torch.Tensor:
    """Hint planes for ``eval --hints N``: ``count`` points of the truth (uniform centres, discs of
    ``radius_px`` at the network size, each of its mean true colour), fixed by ``seed``."""
    small = np.asarray(Image.fromarray(truth).resize((size, size), Image.Resampling.BILINEAR))
    points = sample_points(ab_of(small), count, torch.Generator().manual_seed(seed), (radius_px, radius_px),
                           truth.shape[1], truth.shape[0])
    return rasterize(points, size, truth.shape[1], truth.shape[0])


def evaluate(
    colorizer: Colorizer,
    paths: list[Path],
    size: int,
    batch_size: int = 8,
    chroma_gain: float = 1.0,
    sheet_limit: int = 0,
    method: str = "fast",
    hints: int = 0,
    hint_seed: int = 0,
    degrade: float = 0.0,
) -> EvalResult:
    """Score ``colorizer`` on colour photos ``paths`` (see the module docstring).

    ``hints``: reveal that many points of each photo's truth to the model (:func:`revealed_hints`).
    ``degrade``: make each grey input look like an old scan at this strength (:func:`degrade.degrade_grey`,
    seeded by the photo's position), as a user's scans would; the grey baseline is that degraded grey.
    A photo that cannot be read or scored is left out and listed in ``failures`` with the reason.
    """
    result = EvalResult()
    for start in range(0, len(paths), batch_size):
        chunk, truths = [], []
        for path in paths[start : start + batch_size]:
            try:
                truths.append(load_truth(path))
            except ValueError as exc:
                result.failures.append({"path": str(path), "reason": str(exc)})
                continue
            chunk.append(path)
        if not chunk:
            continue
        greys = [grey_from_rgb(t) for t in truths]
        if degrade:
            greys = [degrade_grey(g, random.Random(1_000_003 + start + i), degrade) for i, g in enumerate(greys)]
        net = torch.stack([torch.from_numpy(network_input(g, size)) for g in greys]).unsqueeze(1)
        planes = (torch.stack([revealed_hints(t, size, hints, hint_seed * 1_000_003 + start + i) for i, t in enumerate(truths)])
                  if hints else None)
        abs_pred = colorizer.predict(net, hints=planes)
        cbs, crs = chroma_planes(net[:, 0], abs_pred, chroma_gain)
        for path, truth, grey, ab, cb, cr in zip(chunk, truths, greys, abs_pred, cbs, crs):
            out = np.asarray(recombine(torch.from_numpy(grey), ab, (cb, cr), method=method, chroma_gain=chroma_gain))
            grey_rgb = np.repeat(grey[..., None], 3, axis=2)
            true_ab = ab_of(truth)
            result.files.append(str(path))
            for who, img in (("model", out), ("gray", grey_rgb)):
                result.add(who, "psnr", psnr(img, truth))
                result.add(who, "ssim", ssim(img, truth))
                result.add(who, "cf", colourfulness(img))
                result.add(who, "auc", ab_auc(ab_of(img) if who == "model" else torch.zeros_like(true_ab), true_ab))
            result.add("truth", "cf", colourfulness(truth))
            if len(result.sheet_rows) < sheet_limit:
                result.sheet_rows.append((grey_rgb, out, truth))
    return result


def contact_sheet(rows: Sequence[tuple[np.ndarray, ...]], path: Path, height: int = 160, labels: tuple[str, ...] = ("grey", "model", "truth")) -> Path:
    """A PNG with one column per image and one row per version (grey / model / truth)."""
    if not rows:
        raise ValueError("no images for the contact sheet")
    n_versions = len(rows[0])
    thumbs = [[Image.fromarray(v).resize((max(1, round(v.shape[1] * height / v.shape[0])), height)) for v in row] for row in rows]
    widths = [t[0].width for t in thumbs]
    label_w = 60
    sheet = Image.new("RGB", (label_w + sum(widths) + 4 * len(widths), n_versions * (height + 4)), "white")
    draw = ImageDraw.Draw(sheet)
    for r in range(n_versions):
        draw.text((4, r * (height + 4) + height // 2), labels[r] if r < len(labels) else "", fill="black")
    x = label_w
    for col, w in zip(thumbs, widths):
        for r, im in enumerate(col):
            sheet.paste(im, (x, r * (height + 4)))
        x += w + 4
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_named(path, lambda f: sheet.save(f, format="PNG"))
    return path


def colour_photos(root: Path, limit: int | None = None, skip_dirs: Sequence[Path] = ()) -> list[Path]:
    """The photos under ``root`` (the first ``limit``), none from ``skip_dirs`` (a training run's own folder)."""
    files = [item.source for item in find_images(root, skip_dirs=skip_dirs)]
    return files[:limit] if limit else files


def format_table(summary: dict) -> str:
    lines = [f"{'':8}{'PSNR':>8}{'SSIM':>8}{'CF':>8}{'ΔCF':>8}{'AuC':>8}"]
    for who in ("model", "gray", "truth"):
        s = summary.get(who)
        if not s:
            continue
        cells = [s.get(k) for k in ("psnr", "ssim", "cf", "delta_cf", "auc")]
        lines.append(f"{who:8}" + "".join(f"{c:8.3f}" if c is not None else f"{'-':>8}" for c in cells))
    return "\n".join(lines)
