"""What each generator family trains on: one objective object per family (``train.py`` picks it).

- :class:`Pix2PixObjective` (family ``unet``, the pix2pix presets): λ·L1 on normalised ab, plus,
  once the L1 warm-up (``train.l1_steps``) is over, a PatchGAN conditioned on L (vanilla BCE or
  least-squares) with its own Adam optimiser. Its discriminator and that optimiser are part of
  the training checkpoint.
- :class:`BinClassObjective` (family ``effunet``): ``lambda_ce`` x a class-rebalanced
  cross-entropy over the quantised ab of the 1/4-resolution target (soft-encoded on the 5 nearest
  bins, Zhang et al. 2016; the ab prior is counted on 400 training photos when fitting starts)
  plus ``lambda_l1`` x L1 of the expectation (T = 1) at full size; its ImageNet encoder learns at
  ``lr x encoder_lr_scale``; a hint branch trains on sampled hint planes. It has no
  discriminator and adds nothing to the checkpoint.

The trainer owns the generator, its optimiser, the AMP scaler, the step and the RNG; an
objective gets them for one step and owns only what its family alone needs.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .color import denormalize_l, lab_to_rgb, normalize_ab, rgb_to_lab
from .config import TrainSection
from .hint_edges import EDGE_THRESHOLD, geodesic_nearest
from .hints import training_hint_planes
from .model import EffUNetGenerator, GANLoss, UNetGenerator, build_discriminator, family_of

log = logging.getLogger("colorize_batch.train")


class ObjectiveError(Exception):
    """A training setting this family cannot honour (the trainer reports it as a TrainingError)."""


@dataclass
class Batch:
    """One training batch in the network's units: ``lightness`` (the grey input, normalised L),
    ``ab`` (normalised target ab) and ``lab_ab`` (the target ab in Lab units)."""

    lightness: torch.Tensor
    ab: torch.Tensor
    lab_ab: torch.Tensor


@dataclass
class Optimisation:
    """The trainer's generator optimiser and AMP scaler, lent to an objective for one step."""

    opt_g: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    use_amp: bool


class Objective(Protocol):
    def param_groups(self) -> list[dict[str, Any]]:
        """The generator's parameters as optimiser groups, each with its ``lr_scale``."""

    def prepare(self, files: list[Path], weights: torch.Tensor) -> None:
        """Once per ``fit``, with the training files and their sampling weights."""

    def train(self) -> None:
        """Put the objective's own networks in training mode."""

    def step(self, batch: Batch, step: int, opt: Optimisation) -> dict[str, float]:
        """One optimisation step of the generator (and of the objective's own networks); the losses."""

    def state_dict(self) -> dict[str, Any]:
        """Checkpoint entries of the objective's own state (none for a family without any)."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from a checkpoint's entries (other keys, e.g. an older checkpoint's, are ignored)."""

    def describe(self) -> str:
        """The objective in words, for a weights file's provenance."""


# -- pix2pix (unet family) ------------------------------------------------------------------
class Pix2PixObjective:
    CHECKPOINT_KEYS = ("discriminator", "opt_d")

    def __init__(self, generator: UNetGenerator, cfg: TrainSection, device: torch.device):
        self.generator = generator
        self.cfg = cfg
        self.device = device
        self.discriminator = build_discriminator(cfg.disc_layers, cfg.disc_channels).to(device)
        self.gan_loss = GANLoss(cfg.gan_mode).to(device)
        self.opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=cfg.gan_lr, betas=(cfg.beta1, cfg.beta2))

    def param_groups(self) -> list[dict[str, Any]]:
        if self.cfg.freeze_base:
            raise ObjectiveError(f"train.freeze_base needs a preset with a hint branch, not {self.cfg.preset!r}")
        return [{"params": list(self.generator.parameters()), "lr_scale": 1.0}]

    def prepare(self, files: list[Path], weights: torch.Tensor) -> None:
        pass

    def train(self) -> None:
        self.discriminator.train()

    def step(self, batch: Batch, step: int, opt: Optimisation) -> dict[str, float]:
        losses: dict[str, float] = {}
        real_l, real_ab = batch.lightness, batch.ab
        gan_phase = step >= self.cfg.l1_steps
        with torch.autocast(self.device.type, enabled=opt.use_amp):
            fake_ab = self.generator(real_l)
        if gan_phase:
            losses["d"] = self._discriminator_step(real_l, real_ab, fake_ab, opt)
        opt.opt_g.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, enabled=opt.use_amp):
            loss_l1 = F.l1_loss(fake_ab.float(), real_ab)
            loss_g = self.cfg.lambda_l1 * loss_l1
            if gan_phase:
                loss_gan = self.gan_loss(self.discriminator(torch.cat([real_l, fake_ab], 1)), True)
                loss_g = loss_g + loss_gan
                losses["g_gan"] = float(loss_gan.detach())
        opt.scaler.scale(loss_g).backward()
        opt.scaler.step(opt.opt_g)
        opt.scaler.update()
        losses["l1"] = float(loss_l1.detach())
        return losses

    def _discriminator_step(self, real_l: torch.Tensor, real_ab: torch.Tensor, fake_ab: torch.Tensor, opt: Optimisation) -> float:
        self.discriminator.requires_grad_(True)
        self.opt_d.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, enabled=opt.use_amp):
            d_fake = self.discriminator(torch.cat([real_l, fake_ab.detach()], 1))
            d_real = self.discriminator(torch.cat([real_l, real_ab], 1))
            loss_d = 0.5 * (self.gan_loss(d_fake, False) + self.gan_loss(d_real, True))
        opt.scaler.scale(loss_d).backward()
        opt.scaler.step(self.opt_d)
        self.discriminator.requires_grad_(False)
        return float(loss_d.detach())

    def state_dict(self) -> dict[str, Any]:
        return {"discriminator": self.discriminator.state_dict(), "opt_d": self.opt_d.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.discriminator.load_state_dict(state["discriminator"])
        self.opt_d.load_state_dict(state["opt_d"])

    def describe(self) -> str:
        return f"{self.cfg.lambda_l1} x L1 (+ GAN after {self.cfg.l1_steps})"


# -- ab-bin classification (effunet family) -------------------------------------------------
def ab_prior(files: list[Path], weights: torch.Tensor, bins: torch.Tensor, samples: int = 400, seed: int = 0, side: int = 64) -> torch.Tensor:
    """Share of pixels per ab bin (nearest centre) on ``samples`` training photos drawn by ``weights``."""
    g = torch.Generator().manual_seed(seed)
    picks = torch.multinomial(weights, min(samples, len(files)), replacement=False, generator=g).tolist()
    counts = torch.zeros(len(bins), dtype=torch.double)
    for i in picks:
        try:
            with Image.open(files[i]) as im:
                im.draft("RGB", (side, side))
                rgb = np.asarray(im.convert("RGB").resize((side, side), Image.Resampling.BILINEAR)).copy()
        except OSError:
            continue
        ab = rgb_to_lab(torch.from_numpy(rgb).permute(2, 0, 1).float().div_(255))[1:].reshape(2, -1).T
        counts += torch.bincount(torch.cdist(ab, bins).argmin(1), minlength=len(bins)).double()
    return (counts / counts.sum().clamp_min(1)).float()


def rebalance_weights(prior: torch.Tensor, bins: torch.Tensor, mix: float, sigma: float = 5.0) -> torch.Tensor:
    """Zhang's class weights: w ~ 1 / ((1 - mix) * smoothed prior + mix / Q), scaled so E_prior[w] = 1."""
    kernel = torch.exp(-torch.cdist(bins, bins).pow(2) / (2 * sigma**2))
    smoothed = kernel @ prior
    smoothed = smoothed / smoothed.sum()
    w = 1.0 / ((1 - mix) * smoothed + mix / len(bins))
    return w / (smoothed * w).sum()


def soft_encode(ab: torch.Tensor, bins: torch.Tensor, k: int = 5, sigma: float = 5.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(N, 2)`` ab (Lab units) -> indices ``(N, k)`` of the nearest bins and Gaussian weights summing to 1."""
    d2, idx = torch.cdist(ab, bins).pow(2).topk(k, dim=1, largest=False)
    w = torch.softmax(-d2 / (2 * sigma**2), dim=1)
    return idx, w


def rebalanced_ce(logits: torch.Tensor, target_ab: torch.Tensor, bins: torch.Tensor, class_weights: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of ``(B, Q, h, w)`` logits against soft-encoded ``(B, 2, h, w)`` ab, weighted by the
    rebalancing weight of each pixel's nearest bin."""
    logp = F.log_softmax(logits.float(), dim=1).permute(0, 2, 3, 1).reshape(-1, logits.shape[1])
    idx, w = soft_encode(target_ab.permute(0, 2, 3, 1).reshape(-1, 2), bins)
    ce = -(w * logp.gather(1, idx)).sum(1)
    return (ce * class_weights[idx[:, 0]]).mean()


def recoloured_regions(light: torch.Tensor, true_ab: torch.Tensor, generator: torch.Generator, share: float,
                       extent: tuple[float, float] = (4.0, 20.0), colour_gap: float = 20.0,
                       chroma: tuple[float, float] = (15.0, 60.0)) -> tuple[torch.Tensor, torch.Tensor]:
    """Give one region of a ``share`` of the crops a new colour, so that hint training can show
    hints that are not the photo's palette: a hint must colour its own object, not the photo.

    ``light`` ``(B, 1, S, S)`` (Lab L of the network's input), ``true_ab`` ``(B, 2, S, S)`` (Lab
    units). A crop's region grows from a random pixel over the grey photo (geodesic distance at
    half size: a step costs ``max(|ΔL| - EDGE_THRESHOLD, 0) + 0.02``, the edges hint_edges cuts
    at, up to a random limit from ``extent``: it stops at edges, and a flat area is one region, never cut where the grey cannot show it)
    and keeps the pixels whose true colour is within ``colour_gap`` of the seed's (the object,
    not its surroundings of the same lightness). It keeps its texture (ab minus its mean) around a
    new mean of random hue and a chroma from ``chroma``, brought into the sRGB gamut at the
    pixel's lightness. Returns the new truth (unchanged outside the regions, and for the other
    crops) and ``(B, 2)`` anchors: the seed as a relative ``(x, y)``, NaN where nothing changed."""
    b, _, size, _ = true_ab.shape
    chosen = torch.rand(b, generator=generator) < share
    draws = torch.rand(b, 5, generator=generator)
    anchors = torch.full((b, 2), math.nan, device=true_ab.device)
    if not bool(chosen.any()):
        return true_ab, anchors
    idx = chosen.nonzero().squeeze(1).to(true_ab.device)
    d = draws[chosen].to(true_ab.device)
    half = max(size // 2, 1)
    light_s = F.adaptive_avg_pool2d(light[idx].float(), half)[:, 0]
    ab_s = F.adaptive_avg_pool2d(true_ab[idx].float(), half)
    sy, sx = (d[:, 0] * half).long().clamp_max(half - 1), (d[:, 1] * half).long().clamp_max(half - 1)
    rows = torch.arange(len(idx), device=true_ab.device)
    seeds = torch.zeros_like(light_s, dtype=torch.bool)
    seeds[rows, sy, sx] = True
    distance, seed_ab = geodesic_nearest(seeds, light_s, ab_s, threshold=EDGE_THRESHOLD, spread=0.02)
    limit = extent[0] + (extent[1] - extent[0]) * d[:, 2]
    region_s = (distance < limit[:, None, None]) & ((ab_s - seed_ab).norm(dim=1) < colour_gap)
    region = F.interpolate(region_s[:, None].float(), size=(size, size), mode="nearest")  # (n, 1, S, S)
    ab = true_ab[idx].float()
    mean = (ab * region).sum((2, 3)) / region.sum((2, 3)).clamp_min(1)
    hue = d[:, 3] * 2 * math.pi
    radius = chroma[0] + (chroma[1] - chroma[0]) * d[:, 4]
    target = torch.stack([radius * torch.cos(hue), radius * torch.sin(hue)], 1)
    moved = ab - mean[..., None, None] + target[..., None, None]
    fitted = rgb_to_lab(lab_to_rgb(torch.cat([light[idx].float(), moved], 1), gamut="chroma"))[:, 1:]
    out = true_ab.clone()
    out[idx] = torch.where(region > 0.5, fitted, ab).to(true_ab.dtype)
    anchors[idx] = torch.stack([(sx.float() + 0.5) / half, (sy.float() + 0.5) / half], 1)
    return out, anchors


class BinClassObjective:
    CHECKPOINT_KEYS: tuple[str, ...] = ()

    def __init__(self, generator: EffUNetGenerator, cfg: TrainSection, device: torch.device):
        self.generator = generator
        self.cfg = cfg
        self.device = device
        self.class_weights: torch.Tensor | None = None  # set by prepare() from the training data's ab prior

    def param_groups(self) -> list[dict[str, Any]]:
        gen = self.generator
        if self.cfg.freeze_base:
            if gen.hints is None:
                raise ObjectiveError(f"train.freeze_base needs a preset with a hint branch, not {self.cfg.preset!r}")
            trainable = gen.freeze_base()
            copied = {id(p) for p in gen.guide_encoder_parameters()}  # a copy of a trained encoder: its rate
            return [group for group in (
                {"params": [p for p in trainable if id(p) in copied], "lr_scale": self.cfg.encoder_lr_scale},
                {"params": [p for p in trainable if id(p) not in copied], "lr_scale": 1.0}) if group["params"]]
        encoder = {id(p) for p in gen.encoder_parameters()}
        return [
            {"params": [p for p in gen.parameters() if id(p) in encoder], "lr_scale": self.cfg.encoder_lr_scale},
            {"params": [p for p in gen.parameters() if id(p) not in encoder], "lr_scale": 1.0},
        ]

    def prepare(self, files: list[Path], weights: torch.Tensor) -> None:
        if self.cfg.lambda_ce <= 0:
            return
        bins = self.generator.ab_bins.detach().cpu()
        prior = ab_prior(files, weights, bins, seed=self.cfg.seed)
        self.class_weights = rebalance_weights(prior, bins, self.cfg.rebalance).to(self.device)
        log.info(
            "ab prior over %d bins: max share %.3f, rebalancing weights %.2f-%.2f",
            len(bins), float(prior.max()), float(self.class_weights.min()), float(self.class_weights.max()))

    def train(self) -> None:
        pass

    def step(self, batch: Batch, step: int, opt: Optimisation) -> dict[str, float]:
        """Rebalanced CE over ab bins at 1/4 resolution + L1 of the full-size expectation."""
        cfg, gen = self.cfg, self.generator
        if self.class_weights is None:
            self.class_weights = torch.ones(gen.config.bins, device=self.device)
        opt.opt_g.zero_grad(set_to_none=True)
        planes = None
        if gen.hints is not None:
            batch, planes = self.training_hints(batch, step)
        with torch.autocast(self.device.type, enabled=opt.use_amp):
            logits = gen.logits(batch.lightness, planes)
        target = F.adaptive_avg_pool2d(batch.lab_ab, (logits.shape[-2], logits.shape[-1]))
        loss_ce = rebalanced_ce(logits, target, gen.ab_bins, self.class_weights)
        mean_ab = F.interpolate(gen.decode(logits, 1.0), size=batch.ab.shape[-2:], mode="bilinear", align_corners=False)
        loss_l1 = F.l1_loss(mean_ab, batch.ab)
        loss = cfg.lambda_ce * loss_ce + cfg.lambda_l1 * loss_l1
        opt.scaler.scale(loss).backward()
        opt.scaler.step(opt.opt_g)
        opt.scaler.update()
        return {"ce": float(loss_ce.detach()), "l1": float(loss_l1.detach())}

    def training_hints(self, batch: Batch, step: int) -> tuple[Batch, torch.Tensor]:
        """Hint planes revealing random points of each photo's true ab (Zhang et al. 2017: a
        geometric number of points, discs of 1-4.5 px radius, each of its mean true colour; none
        for a ``hint_free`` share of the crops), made batched on the training device; fixed by
        ``(seed, step)``. For a ``hint_recolour`` share of the crops one region is first given a
        new colour (:func:`recoloured_regions`), in the truth the loss sees too, and the first
        point lies in it. Returns the batch (its truth possibly recoloured) and the planes."""
        g = torch.Generator().manual_seed(self.cfg.seed * 7_919 + step)
        anchors = None
        if self.cfg.hint_recolour > 0:
            lab_ab, anchors = recoloured_regions(denormalize_l(batch.lightness.detach()), batch.lab_ab.detach(), g, self.cfg.hint_recolour)
            batch = Batch(batch.lightness, normalize_ab(lab_ab), lab_ab)
        planes = training_hint_planes(batch.lab_ab.detach(), g, self.cfg.hint_mean_points, hint_free=self.cfg.hint_free, anchors=anchors)
        return batch, planes

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass  # a checkpoint written before the objectives were split also holds an unused discriminator: ignored

    def describe(self) -> str:
        return f"{self.cfg.lambda_ce} x rebalanced CE (mix {self.cfg.rebalance}) + {self.cfg.lambda_l1} x L1"


OBJECTIVES: dict[str, Callable[[Any, TrainSection, torch.device], Objective]] = {
    "unet": Pix2PixObjective,
    "effunet": BinClassObjective,
}


def objective_for(generator: UNetGenerator | EffUNetGenerator, cfg: TrainSection, device: torch.device) -> Objective:
    """The objective of the generator's family (``model.family_of``: the key its weights file carries)."""
    return OBJECTIVES[family_of(generator.config)](generator, cfg, device)
