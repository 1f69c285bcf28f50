"""``colorize-batch train``: training of the generators that ``run`` uses (``train.preset``).

The ``unet`` family (the pix2pix presets) trains as in pix2pix: a PatchGAN conditioned on L
(vanilla BCE or least-squares) plus λ·L1 on normalised ab, Adam(lr, betas=(0.5, 0.999)). An
optional L1-only warm-up of the generator comes first (``train.l1_steps``); the GAN phase may
use its own learning rate.

The ``effunet`` family (the default model: EfficientNet-Lite0 encoder, ab-bin classification head) trains on
``lambda_ce`` x a class-rebalanced cross-entropy over the quantised ab of the 1/4-resolution
target (soft-encoded on the 5 nearest bins, Zhang et al. 2016; the ab prior is counted on 400
training photos at start-up) plus ``lambda_l1`` x L1 of the expectation (T = 1) at full size; its
ImageNet encoder learns at ``lr x encoder_lr_scale``.

Every batch is fixed by ``(seed, step)`` (which files, which crops, which flips), and the
checkpoint stores the model, optimisers, step and torch RNG, so ``--resume`` continues
exactly where the run stopped.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import pickle
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch.utils.data import DataLoader, Dataset, Sampler

from . import __version__
from .color import normalize_ab, normalize_l, rgb_to_lab
from .config import PipelineConfig, TrainSection
from .discovery import find_images
from .degrade import degrade_grey
from .evaluate import colour_photos, contact_sheet, evaluate, grey_from_rgb
from .hints import hint_count, rasterize, sample_points
from .inference import Colorizer
from .model import PRESETS, EffUNetConfig, EffUNetGenerator, GANLoss, build_discriminator, build_generator, count_parameters
from .reading import WEIGHTS_LIMIT, FileLimitError, open_user_file
from .weights import WeightsError, load_weights, save_weights, torch_save_atomic

log = logging.getLogger("colorize_batch.train")
CHECKPOINT = "checkpoint.pt"
CHECKPOINT_KEYS = ("step", "generator", "discriminator", "opt_g", "opt_d", "scaler", "torch_rng", "config")


class TrainingError(Exception):
    pass


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def read_checkpoint(path: Path, device: str | torch.device = "cpu") -> dict:
    """A training checkpoint's state: tensors and plain data only (``weights_only``: no pickled
    code runs), from a regular file under the weights size limit; :class:`TrainingError` says
    why not, in one line."""
    try:
        with open_user_file(path, WEIGHTS_LIMIT, "checkpoint") as fh:
            state = torch.load(fh, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise TrainingError(f"{path}: no checkpoint in this run folder") from None
    except FileLimitError as exc:
        raise TrainingError(str(exc)) from None
    except pickle.UnpicklingError:  # torch's own text would advise weights_only=False: never that
        raise TrainingError(f"{path}: not a colorize-batch checkpoint (it holds Python objects, not only tensors "
                            "and plain data; refused, nothing in it was run)") from None
    except Exception as exc:  # noqa: BLE001 - a damaged zip, a truncated file, ...: not a checkpoint
        raise TrainingError(f"{path}: not a readable checkpoint ({_first_line(exc)})") from None
    missing = [key for key in CHECKPOINT_KEYS if not isinstance(state, dict) or key not in state]
    if missing:
        raise TrainingError(f"{path}: not a colorize-batch checkpoint (no {', '.join(missing)})")
    return state


class CropDataset(Dataset):
    """Random resized crop + horizontal flip of a colour photo, fixed by the sample's seed.

    With ``degrade`` > 0 a fourth channel carries the network's grey input: the crop's exact
    lightness as 8-bit grey, for that share of crops degraded like an old scan
    (:func:`degrade.degrade_grey` at ``strength``). The colour channels stay clean: they are the target.
    """

    def __init__(self, files: list[Path], crop: int, degrade: float = 0.0, strength: float = 1.0):
        self.files = files
        self.crop = crop
        self.degrade = degrade
        self.strength = strength

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key: tuple[int, int]) -> torch.Tensor:
        index, seed = key
        rng = random.Random(seed)
        try:
            with Image.open(self.files[index]) as im:
                im.draft("RGB", (self.crop, self.crop))
                im = ImageOps.exif_transpose(im).convert("RGB")
        except OSError:
            return torch.zeros(4 if self.degrade else 3, self.crop, self.crop, dtype=torch.uint8)  # dropped as near-grey
        w, h = im.size
        area = w * h * rng.uniform(0.3, 1.0)
        aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        cw = int(round(min(w, np.sqrt(area * aspect))))
        ch = int(round(min(h, np.sqrt(area / aspect))))
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        im = im.resize((self.crop, self.crop), Image.Resampling.BILINEAR, box=(x, y, x + cw, y + ch))
        if rng.random() < 0.5:
            im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        rgb = np.asarray(im)
        if not self.degrade:
            return torch.from_numpy(rgb.copy()).permute(2, 0, 1)
        grey = grey_from_rgb(rgb)
        if rng.random() < self.degrade:
            grey = degrade_grey(grey, rng, self.strength)
        return torch.from_numpy(np.concatenate([rgb, grey[..., None]], axis=2)).permute(2, 0, 1)


class StepBatchSampler(Sampler):
    """Infinite batches; batch ``s`` depends only on ``(seed, s)``, so resuming is exact."""

    def __init__(self, weights: torch.Tensor, batch_size: int, seed: int, start_step: int):
        self.weights = weights
        self.batch_size = batch_size
        self.seed = seed
        self.start_step = start_step

    def __iter__(self):
        step = self.start_step
        while True:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
            idx = torch.multinomial(self.weights, self.batch_size, replacement=True, generator=g)
            seeds = torch.randint(0, 2**31 - 1, (self.batch_size,), generator=g)
            yield list(zip(idx.tolist(), seeds.tolist()))
            step += 1

    def __len__(self) -> int:  # pragma: no cover - infinite
        return sys.maxsize


def training_files(cfg: TrainSection, extra_roots: list[Path]) -> tuple[list[Path], torch.Tensor]:
    """Files of all roots and a sampling weight per file: each root's share is its weight."""
    roots = [(r.path, r.weight) for r in cfg.data] if not extra_roots else [(p, 1.0) for p in extra_roots]
    files: list[Path] = []
    weights: list[float] = []
    for root, weight in roots:
        found = [item.source for item in find_images(root)]
        if not found:
            raise TrainingError(f"{root}: no training images found")
        files += found
        weights += [weight / len(found)] * len(found)
        log.info("train data %s: %d files, weight %.2f", root, len(found), weight)
    return files, torch.tensor(weights, dtype=torch.double)


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


@dataclass
class Trainer:
    config: PipelineConfig
    out_dir: Path
    data_roots: list[Path]
    device: torch.device
    init_weights: Path | None = None  # start the generator from a weights file (fine-tuning)

    def __post_init__(self) -> None:
        cfg = self.config.train
        if cfg.preset not in PRESETS:
            raise TrainingError(f"train.preset {cfg.preset!r} is not one of {sorted(PRESETS)}")
        torch.manual_seed(cfg.seed)
        self.generator = build_generator(cfg.preset, pretrained=cfg.pretrained and self.init_weights is None).to(self.device)
        if self.init_weights is not None:
            self._load_init(self.init_weights)
        self.discriminator = build_discriminator(cfg.disc_layers, cfg.disc_channels).to(self.device)
        self.gan_loss = GANLoss(cfg.gan_mode).to(self.device)
        betas = (cfg.beta1, cfg.beta2)
        if cfg.freeze_base:
            if not (isinstance(self.generator, EffUNetGenerator) and self.generator.hints is not None):
                raise TrainingError(f"train.freeze_base needs a preset with a hint branch, not {cfg.preset!r}")
            groups = [{"params": self.generator.freeze_base(), "lr_scale": 1.0}]
        elif isinstance(self.generator, EffUNetGenerator):
            encoder = {id(p) for p in self.generator.encoder_parameters()}
            groups = [
                {"params": [p for p in self.generator.parameters() if id(p) in encoder], "lr_scale": cfg.encoder_lr_scale},
                {"params": [p for p in self.generator.parameters() if id(p) not in encoder], "lr_scale": 1.0},
            ]
        else:
            groups = [{"params": list(self.generator.parameters()), "lr_scale": 1.0}]
        self.opt_g = torch.optim.Adam(groups, lr=cfg.lr, betas=betas)
        self.class_weights: torch.Tensor | None = None  # effunet: set by fit() from the training data's ab prior
        self.opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=cfg.gan_lr, betas=betas)
        self.use_amp = self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.step = 0
        self.out_dir.mkdir(parents=True, exist_ok=True)

    def _load_init(self, path: Path) -> None:
        """Start from a weights file of the same architecture, or of the same one with or without
        the hint branch (a missing branch starts as built, contributing nothing; a branch the
        preset lacks is left out: its automatic model is trained on)."""
        try:
            start, info = load_weights(path, self.device)
        except WeightsError as exc:
            raise TrainingError(f"--init: {exc}") from None
        own = self.generator.config

        def plain(config: object) -> object:
            return dataclasses.replace(config, hint_channels=()) if isinstance(config, EffUNetConfig) else config

        if plain(info.architecture) != plain(own):
            raise TrainingError(f"{path}: architecture differs from train.preset {self.config.train.preset!r}")
        state = start.state_dict()
        if isinstance(own, EffUNetConfig) and not own.hint_channels:
            state = {k: v for k, v in state.items() if not k.startswith("hints.")}
        missing, unexpected = self.generator.load_state_dict(state, strict=False)
        if unexpected or any(not k.startswith("hints.") for k in missing):
            raise TrainingError(f"{path}: weights do not fit train.preset (missing {missing[:3]}, unexpected {unexpected[:3]})")
        self.generator.train()

    # -- checkpoints -------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        state = {
            "step": self.step,
            "generator": self.generator.state_dict(),
            "discriminator": self.discriminator.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "scaler": self.scaler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "config": json.loads(self.config.train.model_dump_json()),
        }
        return torch_save_atomic(state, self.out_dir / CHECKPOINT)

    def load_checkpoint(self) -> None:
        path = self.out_dir / CHECKPOINT
        state = read_checkpoint(path, self.device)
        try:
            self.generator.load_state_dict(state["generator"])
            self.discriminator.load_state_dict(state["discriminator"])
            self.opt_g.load_state_dict(state["opt_g"])
            self.opt_d.load_state_dict(state["opt_d"])
            self.scaler.load_state_dict(state["scaler"])
            torch.set_rng_state(state["torch_rng"].cpu())
            self.step = int(state["step"])
        except (KeyError, ValueError, TypeError, RuntimeError, AttributeError) as exc:
            raise TrainingError(f"{path}: does not fit this run's model and optimiser ({_first_line(exc)})") from None

    def export(self, path: Path | None = None, extra: dict | None = None) -> Path:
        cfg = self.config.train
        provenance = {
            "name": "colorize-lite" if cfg.preset == "lite" else f"colorize-{cfg.preset}",
            "objective": (f"{cfg.lambda_ce} x rebalanced CE (mix {cfg.rebalance}) + {cfg.lambda_l1} x L1"
                          if isinstance(self.generator, EffUNetGenerator) else f"{cfg.lambda_l1} x L1 (+ GAN after {cfg.l1_steps})"),
            "tool": f"colorize-batch {__version__}",
            "steps": self.step,
            "preset": cfg.preset,
            "crop": cfg.crop,
            "data": [str(p) for p in (self.data_roots or [r.path for r in cfg.data])],
            "parameters": count_parameters(self.generator),
            "init": str(self.init_weights) if self.init_weights else None,
            **(extra or {}),
        }
        return save_weights(path or self.out_dir / "generator.pt", self.generator, provenance)

    def learning_rate(self, gan_phase: bool) -> float:
        """``lr`` (``gan_lr`` once the GAN runs), times a cosine decay to 0 over the run if asked."""
        cfg = self.config.train
        base = cfg.gan_lr if gan_phase else cfg.lr
        if cfg.lr_schedule == "cosine":
            base *= 0.5 * (1 + math.cos(math.pi * min(self.step, cfg.steps) / cfg.steps))
        return base

    # -- one step ----------------------------------------------------------------------
    def train_step(self, rgb_u8: torch.Tensor) -> dict[str, float] | None:
        cfg = self.config.train
        batch = rgb_u8.to(self.device, non_blocking=True).float().div_(255)
        lab = rgb_to_lab(batch[:, :3])
        chroma = lab[:, 1:].pow(2).sum(1).sqrt().mean(dim=(1, 2))
        keep = chroma >= cfg.min_chroma
        if int(keep.sum()) < 2:
            return None
        lab = lab[keep]
        if batch.shape[1] == 4:  # the grey input comes with the batch (possibly degraded: CropDataset)
            lightness = rgb_to_lab(batch[keep, 3:].expand(-1, 3, -1, -1))[:, :1]
        else:
            lightness = lab[:, :1]
        real_l, real_ab = normalize_l(lightness), normalize_ab(lab[:, 1:])
        gan_phase = self.step >= cfg.l1_steps
        for group in self.opt_g.param_groups:
            group["lr"] = self.learning_rate(gan_phase) * group.get("lr_scale", 1.0)
        losses: dict[str, float] = {}
        if isinstance(self.generator, EffUNetGenerator):
            return self._class_step(real_l, real_ab, lab[:, 1:], losses)
        with torch.autocast(self.device.type, enabled=self.use_amp):
            fake_ab = self.generator(real_l)
        if gan_phase:
            self.discriminator.requires_grad_(True)
            self.opt_d.zero_grad(set_to_none=True)
            with torch.autocast(self.device.type, enabled=self.use_amp):
                d_fake = self.discriminator(torch.cat([real_l, fake_ab.detach()], 1))
                d_real = self.discriminator(torch.cat([real_l, real_ab], 1))
                loss_d = 0.5 * (self.gan_loss(d_fake, False) + self.gan_loss(d_real, True))
            self.scaler.scale(loss_d).backward()
            self.scaler.step(self.opt_d)
            losses["d"] = float(loss_d.detach())
            self.discriminator.requires_grad_(False)
        self.opt_g.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, enabled=self.use_amp):
            loss_l1 = F.l1_loss(fake_ab.float(), real_ab)
            loss_g = cfg.lambda_l1 * loss_l1
            if gan_phase:
                loss_gan = self.gan_loss(self.discriminator(torch.cat([real_l, fake_ab], 1)), True)
                loss_g = loss_g + loss_gan
                losses["g_gan"] = float(loss_gan.detach())
        self.scaler.scale(loss_g).backward()
        self.scaler.step(self.opt_g)
        self.scaler.update()
        losses["l1"] = float(loss_l1.detach())
        return losses

    def _class_step(self, real_l: torch.Tensor, real_ab: torch.Tensor, lab_ab: torch.Tensor, losses: dict) -> dict[str, float]:
        """effunet: rebalanced CE over ab bins at 1/4 resolution + L1 of the full-size expectation."""
        cfg = self.config.train
        gen = self.generator
        assert isinstance(gen, EffUNetGenerator)
        if self.class_weights is None:
            self.class_weights = torch.ones(gen.config.bins, device=self.device)
        self.opt_g.zero_grad(set_to_none=True)
        planes = self._training_hints(lab_ab) if gen.hints is not None else None
        with torch.autocast(self.device.type, enabled=self.use_amp):
            logits = gen.logits(real_l, planes)
        target = F.adaptive_avg_pool2d(lab_ab, (logits.shape[-2], logits.shape[-1]))
        loss_ce = rebalanced_ce(logits, target, gen.ab_bins, self.class_weights)
        mean_ab = F.interpolate(gen.decode(logits, 1.0), size=real_ab.shape[-2:], mode="bilinear", align_corners=False)
        loss_l1 = F.l1_loss(mean_ab, real_ab)
        loss = cfg.lambda_ce * loss_ce + cfg.lambda_l1 * loss_l1
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt_g)
        self.scaler.update()
        losses["ce"] = float(loss_ce.detach())
        losses["l1"] = float(loss_l1.detach())
        return losses

    def _training_hints(self, lab_ab: torch.Tensor) -> torch.Tensor:
        """Hint planes revealing random points of each photo's true ab (Zhang et al. 2017: a
        geometric number of points, discs of 1-4.5 px radius, each of its mean true colour);
        fixed by ``(seed, step)``."""
        cfg = self.config.train
        g = torch.Generator().manual_seed(cfg.seed * 7_919 + self.step)
        size = lab_ab.shape[-1]
        truth = lab_ab.detach().float().cpu()
        planes = [rasterize(sample_points(ab, hint_count(g, 1.0 / cfg.hint_mean_points), g, (1.0, 4.5)), size, size, size)
                  for ab in truth]
        return torch.stack(planes).to(self.device)

    # -- validation --------------------------------------------------------------------
    def validate(self, val_files: list[Path], size: int) -> dict:
        colorizer = Colorizer(self.generator, self.device)
        result = evaluate(colorizer, val_files, size, sheet_limit=8)
        self.generator.train()
        summary = result.summary()
        contact_sheet(result.sheet_rows, self.out_dir / f"sheet_{self.step:06d}.png")
        return summary

    def fit(self, max_minutes: float | None = None, progress=None) -> dict:
        cfg = self.config.train
        files, weights = training_files(cfg, self.data_roots)
        val_files = colour_photos(cfg.val_dir, cfg.val_limit) if cfg.val_dir else []
        if isinstance(self.generator, EffUNetGenerator) and cfg.lambda_ce > 0:
            bins = self.generator.ab_bins.detach().cpu()
            prior = ab_prior(files, weights, bins, seed=cfg.seed)
            self.class_weights = rebalance_weights(prior, bins, cfg.rebalance).to(self.device)
            log.info("ab prior over %d bins: max share %.3f, rebalancing weights %.2f-%.2f",
                     len(bins), float(prior.max()), float(self.class_weights.min()), float(self.class_weights.max()))
        log.info(
            "training %s (%.1fM parameters) on %d files, %s, from step %d to %d",
            cfg.preset, count_parameters(self.generator) / 1e6, len(files), self.device, self.step, cfg.steps,
        )
        loader = DataLoader(
            CropDataset(files, cfg.crop, cfg.degrade, cfg.degrade_strength),
            batch_sampler=StepBatchSampler(weights, cfg.batch_size, cfg.seed, self.step),
            num_workers=cfg.workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
            generator=torch.Generator().manual_seed(cfg.seed),  # keeps the global RNG (dropout) untouched
        )
        self.generator.train()
        self.discriminator.train()
        log_path = self.out_dir / "train_log.jsonl"
        started = time.monotonic()
        window: dict[str, list[float]] = {}
        last: dict = {}
        stopped_early = False
        batches = iter(loader)
        while self.step < cfg.steps:
            if max_minutes is not None and time.monotonic() - started > max_minutes * 60:
                stopped_early = True
                break
            losses = self.train_step(next(batches))
            self.step += 1
            if losses:
                for k, v in losses.items():
                    window.setdefault(k, []).append(v)
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                last = {k: float(np.mean(v)) for k, v in window.items()}
                window.clear()
                record = {"step": self.step, "seconds": round(time.monotonic() - started, 1), **last}
                with open(log_path, "a") as fh:
                    fh.write(json.dumps(record) + "\n")
                if progress:
                    progress(self.step, cfg.steps, last)
            if self.step % cfg.checkpoint_every == 0:
                self.save_checkpoint()
            if val_files and self.step % cfg.val_every == 0:
                summary = self.validate(val_files, self.config.model.size)
                with open(self.out_dir / "val_log.jsonl", "a") as fh:
                    fh.write(json.dumps({"step": self.step, **summary}) + "\n")
                self.export(self.out_dir / f"generator_{self.step:06d}.pt")
                log.info("validation at step %d: %s", self.step, json.dumps(summary))
        self.save_checkpoint()
        weights_path = self.export()
        return {"step": self.step, "stopped_early": stopped_early, "weights": str(weights_path), "losses": last}


def export_checkpoint(run_dir: Path, dest: Path) -> Path:
    """A run folder's last checkpoint as a weights file at ``dest``, through the trainer's own
    :meth:`Trainer.export` (the same file and provenance training writes); :class:`TrainingError`
    says in one line why it cannot be."""
    from pydantic import ValidationError

    ckpt = run_dir / CHECKPOINT
    try:
        train_cfg = TrainSection.model_validate(read_checkpoint(ckpt)["config"])
        train_cfg.pretrained = False  # every weight comes from the checkpoint
        trainer = Trainer(PipelineConfig(train=train_cfg), run_dir, [], torch.device("cpu"))
        trainer.load_checkpoint()
    except (KeyError, ValidationError, RuntimeError) as exc:
        raise TrainingError(f"{ckpt}: cannot be exported ({type(exc).__name__}: {exc})".splitlines()[0]) from None
    return trainer.export(dest, {"name": dest.stem})


def export_snapshot(run_dir: Path, step: int, dest: Path) -> Path:
    """The validation snapshot of ``step`` (a weights file already) re-saved as ``dest``, named after it."""
    snapshot = run_dir / f"generator_{step:06d}.pt"
    try:
        generator, info = load_weights(snapshot)
    except WeightsError as exc:
        raise TrainingError(str(exc)) from None
    return save_weights(dest, generator, {**info.provenance, "name": dest.stem})
