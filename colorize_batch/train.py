"""``colorize-batch train``: training of the generators that ``run`` uses (``train.preset``).

What the generator learns from is its family's objective (``objectives.py``: pix2pix's L1 + GAN
for the ``unet`` presets, the rebalanced ab-bin cross-entropy + L1 for the ``effunet`` ones);
the trainer around it is the same for both.

Every batch is fixed by ``(seed, step)`` (which files, which crops, which flips), and the
checkpoint stores the model, optimisers, step and torch RNG, so ``--resume`` continues
exactly where the run stopped. With ``train.ema`` the checkpoint also keeps a moving average of
the weights (torch's ``AveragedModel``), and that average is what is validated and exported: the
last iterate of a small-batch run is a noisy point, and averaging weights along the run lies
above it on the quality frontier (issue 24: two points 1,200 steps apart, averaged, +0.1 dB).
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
from typing import cast

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, Dataset, Sampler

from . import __version__
from .color import normalize_ab, normalize_l, rgb_to_lab
from .config import PipelineConfig, TrainSection
from .discovery import find_images
from .degrade import degrade_grey
from .evaluate import colour_photos, contact_sheet, evaluate, grey_from_rgb
from .inference import Colorizer
from .model import PRESETS, EffUNetConfig, EffUNetGenerator, UNetGenerator, build_generator, count_parameters, init_guide
from .objectives import Batch, ObjectiveError, Optimisation, objective_for
from .reading import WEIGHTS_LIMIT, FileLimitError, open_user_file
from .weights import WeightsError, load_weights, save_weights, torch_save_atomic

log = logging.getLogger("colorize_batch.train")
CHECKPOINT = "checkpoint.pt"
# What every checkpoint holds; an objective adds its own (pix2pix: "discriminator", "opt_d"). Checkpoints
# written before the objectives were split hold those two for every family: an effunet one ignores them.
CHECKPOINT_KEYS = ("step", "generator", "opt_g", "scaler", "torch_rng", "config")


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


def training_files(cfg: TrainSection, extra_roots: list[Path], out_dir: Path | None = None) -> tuple[list[Path], torch.Tensor]:
    """Files of all roots and a sampling weight per file: each root's share is its weight. Nothing from
    ``out_dir``, the run's own folder (under a root, its contact sheets would become training photos
    on ``--resume``, and the resumed batches differ from the ones an uninterrupted run draws)."""
    roots = [(r.path, r.weight) for r in cfg.data] if not extra_roots else [(p, 1.0) for p in extra_roots]
    files: list[Path] = []
    weights: list[float] = []
    for root, weight in roots:
        found = [item.source for item in find_images(root, skip_dirs=[out_dir] if out_dir else [])]
        if not found:
            raise TrainingError(f"{root}: no training images found")
        files += found
        weights += [weight / len(found)] * len(found)
        log.info("train data %s: %d files, weight %.2f", root, len(found), weight)
    return files, torch.tensor(weights, dtype=torch.double)


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
        self.objective = objective_for(self.generator, cfg, self.device)
        try:
            groups = self.objective.param_groups()
        except ObjectiveError as exc:
            raise TrainingError(str(exc)) from None
        self.opt_g = torch.optim.Adam(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
        # The weights' moving average (train.ema), BN statistics included: what validation and export use
        self.ema = (AveragedModel(self.generator, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema), use_buffers=True)
                    if cfg.ema else None)
        self.use_amp = self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.step = 0
        self.out_dir.mkdir(parents=True, exist_ok=True)

    def _load_init(self, path: Path) -> None:
        """Start from a weights file of the same architecture, or of the same one with or without
        the hint branch or the guide (a missing branch starts as built, contributing nothing; a
        missing guide starts as a copy of the encoder it was given; what the preset lacks is left
        out: its automatic model is trained on)."""
        try:
            start, info = load_weights(path, self.device)
        except WeightsError as exc:
            raise TrainingError(f"--init: {exc}") from None
        own = self.generator.config

        def plain(config: object) -> object:
            return dataclasses.replace(config, hint_channels=(), guide=False) if isinstance(config, EffUNetConfig) else config

        if plain(info.architecture) != plain(own):
            raise TrainingError(f"{path}: architecture differs from train.preset {self.config.train.preset!r}")
        state = start.state_dict()
        if isinstance(own, EffUNetConfig):
            left_out = (() if own.hint_channels else ("hints.",)) + (() if own.guide else ("guide.",))
            state = {k: v for k, v in state.items() if not k.startswith(left_out)}
        missing, unexpected = self.generator.load_state_dict(state, strict=False)
        if unexpected or any(not k.startswith(("hints.", "guide.")) for k in missing):
            raise TrainingError(f"{path}: weights do not fit train.preset (missing {missing[:3]}, unexpected {unexpected[:3]})")
        gen = self.generator
        if isinstance(gen, EffUNetGenerator) and gen.guide is not None and any(k.startswith("guide.") for k in missing):
            init_guide(gen.guide, gen.encoder)  # a new guide: a copy of the encoder just loaded
        self.generator.train()

    # -- checkpoints -------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        state = {
            "step": self.step,
            "generator": self.generator.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            **self.objective.state_dict(),
            "scaler": self.scaler.state_dict(),
            **({"ema": self.ema.state_dict()} if self.ema is not None else {}),
            "torch_rng": torch.get_rng_state(),
            "config": json.loads(self.config.train.model_dump_json()),
        }
        return torch_save_atomic(state, self.out_dir / CHECKPOINT)

    def load_checkpoint(self) -> None:
        path = self.out_dir / CHECKPOINT
        state = read_checkpoint(path, self.device)
        try:
            self.generator.load_state_dict(state["generator"])
            self.opt_g.load_state_dict(state["opt_g"])
            self.objective.load_state_dict(state)
            self.scaler.load_state_dict(state["scaler"])
            torch.set_rng_state(state["torch_rng"].cpu())
            self.step = int(state["step"])
            if self.ema is not None and "ema" in state:
                self.ema.load_state_dict(state["ema"])
            elif self.ema is not None:  # a checkpoint made without train.ema: the average starts here
                self.ema.module.load_state_dict(self.generator.state_dict())
                log.info("%s has no weight average (train.ema): it starts at step %d", path, self.step)
        except (KeyError, ValueError, TypeError, RuntimeError, AttributeError) as exc:
            raise TrainingError(f"{path}: does not fit this run's model and optimiser ({_first_line(exc)})") from None

    def export(self, path: Path | None = None, extra: dict | None = None) -> Path:
        cfg = self.config.train
        provenance = {
            "name": "colorize-lite" if cfg.preset == "lite" else f"colorize-{cfg.preset}",
            "objective": self.objective.describe(),
            "tool": f"colorize-batch {__version__}",
            "steps": self.step,
            "preset": cfg.preset,
            "crop": cfg.crop,
            "data": [str(p) for p in (self.data_roots or [r.path for r in cfg.data])],
            "parameters": count_parameters(self.generator),
            "init": str(self.init_weights) if self.init_weights else None,
            **({"ema": cfg.ema, "ema_start": cfg.ema_start} if self.averaged is not self.generator else {}),
            **(extra or {}),
        }
        return save_weights(path or self.out_dir / "generator.pt", self.averaged, provenance)

    @property
    def averaged(self) -> UNetGenerator | EffUNetGenerator:
        """The weights that validation scores and export writes: the moving average with
        ``train.ema`` once it has started (``train.ema_start``), else the trained weights themselves."""
        if self.ema is not None and int(self.ema.n_averaged):
            return cast("UNetGenerator | EffUNetGenerator", self.ema.module)
        return self.generator

    def learning_rate(self, gan_phase: bool) -> float:
        """``lr`` (``gan_lr`` once the GAN runs), times a cosine decay to 0 over the run if asked,
        times a linear warm-up over the first ``lr_warmup`` steps."""
        cfg = self.config.train
        base = cfg.gan_lr if gan_phase else cfg.lr
        if cfg.lr_schedule == "cosine":
            base *= 0.5 * (1 + math.cos(math.pi * min(self.step, cfg.steps) / cfg.steps))
        if self.step < cfg.lr_warmup:
            base *= (self.step + 1) / (cfg.lr_warmup + 1)
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
        batch_lab = Batch(normalize_l(lightness), normalize_ab(lab[:, 1:]), lab[:, 1:])
        for group in self.opt_g.param_groups:
            group["lr"] = self.learning_rate(self.step >= cfg.l1_steps) * group.get("lr_scale", 1.0)
        return self.objective.step(batch_lab, self.step, Optimisation(self.opt_g, self.scaler, self.use_amp))

    # -- validation --------------------------------------------------------------------
    def validate(self, val_files: list[Path], size: int) -> dict:
        colorizer = Colorizer(self.averaged, self.device)
        result = evaluate(colorizer, val_files, size, sheet_limit=8)
        self.generator.train()
        summary = result.summary()
        contact_sheet(result.sheet_rows, self.out_dir / f"sheet_{self.step:06d}.png")
        return summary

    def fit(self, max_minutes: float | None = None, progress=None) -> dict:
        cfg = self.config.train
        files, weights = training_files(cfg, self.data_roots, self.out_dir)
        val_files = colour_photos(cfg.val_dir, cfg.val_limit, skip_dirs=[self.out_dir]) if cfg.val_dir else []
        self.objective.prepare(files, weights)
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
        self.objective.train()
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
            if self.ema is not None and self.step > cfg.ema_start:
                self.ema.update_parameters(self.generator)
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


def _refuse_own_source(dest: Path, *sources: Path) -> None:
    """An export never replaces the run's checkpoint (its training state: ``--resume`` would be
    gone) nor the file it exports: :class:`TrainingError` before anything is read or written."""
    from .safe_files import same_file

    for source in sources:
        if same_file(dest, source):
            raise TrainingError(f"{dest}: that is the run's {source.name}; the export would replace it, choose another file")


def export_checkpoint(run_dir: Path, dest: Path) -> Path:
    """A run folder's last checkpoint as a weights file at ``dest``, through the trainer's own
    :meth:`Trainer.export` (the same file and provenance training writes); :class:`TrainingError`
    says in one line why it cannot be."""
    from pydantic import ValidationError

    ckpt = run_dir / CHECKPOINT
    _refuse_own_source(dest, ckpt)
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
    _refuse_own_source(dest, run_dir / CHECKPOINT, snapshot)
    try:
        generator, info = load_weights(snapshot)
    except WeightsError as exc:
        raise TrainingError(str(exc)) from None
    return save_weights(dest, generator, {**info.provenance, "name": dest.stem})
