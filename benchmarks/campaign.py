"""A time-boxed training campaign on an accelerator: several runs trained on the SAME batches.

Issue 24's GPU leg. A lent GPU machine is held for minutes, not hours, so this spends a fixed
wall-clock budget, not a step count: after a short warm-up it measures the step rate and sets
each run's ``train.steps`` so that the cosine schedule reaches 0 when the budget ends. All runs
step on one stream of crops (one DataLoader: the CPU work of decoding and degrading is paid once),
so they differ only by what their configs say (architecture, learning rates): an A/B of equal
data. Each run is the project's own :class:`colorize_batch.train.Trainer` (model, objective,
optimiser, export); this file only feeds them.

A second phase (``--hint-minutes``) trains each run's colour-hint branch on top of its new
automatic model (the run's hint config: ``freeze_base``, as ``recipes/effnet-hints.yaml``), so the
weights that come out serve both.

    python benchmarks/campaign.py --minutes 6 --hint-minutes 1.5 --export $OUT \\
        --run base recipes/effnet-gpu.yaml weights/colorize-effnet-lite0.pt recipes/effnet-gpu-hints.yaml \\
        --run wide recipes/effnet-gpu-wide.yaml encoder:weights/colorize-effnet-lite0.pt recipes/effnet-gpu-wide-hints.yaml

INIT is a weights file of the run's architecture, or ``encoder:FILE`` to take only the encoder
(ImageNet-then-colour trained) from FILE and start the rest as built.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from colorize_batch.config import load_config  # noqa: E402
from colorize_batch.train import CropDataset, StepBatchSampler, Trainer, training_files  # noqa: E402
from colorize_batch.weights import load_weights  # noqa: E402

SHARED = ("data", "crop", "batch_size", "degrade", "degrade_strength", "seed")
WARMUP_STEPS = 40


def make_trainer(name: str, config_path: Path, init: str | None, out: Path, device: torch.device) -> Trainer:
    config = load_config(config_path)
    config.train.pretrained = False  # every weight comes from INIT
    if init and init.startswith("encoder:"):
        trainer = Trainer(config, out / name, [], device)
        source, _ = load_weights(Path(init.split(":", 1)[1]), device)
        keep = {k: v for k, v in source.state_dict().items() if k.startswith("encoder.") or k == "ab_bins"}
        missing, unexpected = trainer.generator.load_state_dict(keep, strict=False)
        if unexpected or not keep:
            raise SystemExit(f"{init}: no encoder to take ({unexpected[:3]})")
        logging.info("%s: encoder from %s (%d tensors), decoder as built", name, init, len(keep))
        return trainer
    return Trainer(config, out / name, [], device, Path(init) if init else None)


def phase(label: str, trainers: dict[str, Trainer], minutes: float, workers: int, export: Path) -> dict[str, Path]:
    """Train every trainer on one stream of batches for ``minutes``; export each; the weights files."""
    first = next(iter(trainers.values())).config.train
    for name, trainer in trainers.items():
        differs = [key for key in SHARED if getattr(trainer.config.train, key) != getattr(first, key)]
        if differs:
            raise SystemExit(f"{name}: {', '.join(differs)} differ from the first run's; runs of a phase share their batches")
    files, weights = training_files(first, [])
    for trainer in trainers.values():
        trainer.objective.prepare(files, weights)
        trainer.generator.train()
    loader = DataLoader(
        CropDataset(files, first.crop, first.degrade, first.degrade_strength),
        batch_sampler=StepBatchSampler(weights, first.batch_size, first.seed, 0),
        num_workers=workers, pin_memory=next(iter(trainers.values())).device.type == "cuda",
        prefetch_factor=6 if workers else None,
    )
    budget = minutes * 60
    started = time.monotonic()
    waited = 0.0
    mark: tuple[int, float] | None = None
    step = 0
    batches = iter(loader)
    logs = {name: open(t.out_dir / "train_log.jsonl", "a") for name, t in trainers.items()}
    while True:
        t0 = time.monotonic()
        batch = next(batches)
        waited += time.monotonic() - t0
        for name, trainer in trainers.items():
            losses = trainer.train_step(batch)
            trainer.step += 1
            if losses and trainer.step % 50 == 0:
                logs[name].write(json.dumps({"run": name, "step": trainer.step, "seconds": round(time.monotonic() - started, 1), **losses}) + "\n")
        step += 1
        elapsed = time.monotonic() - started
        if step == 10:
            mark = (step, elapsed)
        if step == WARMUP_STEPS and mark:  # the step rate, then the schedule's length
            rate = (step - mark[0]) / (elapsed - mark[1])
            total = int(step + rate * (budget - elapsed) * 0.97)
            for trainer in trainers.values():
                trainer.config.train.steps = total
            logging.info("%s: %.1f steps/s (%.0f crops/s per run), schedule set to %d steps", label, rate, rate * first.batch_size, total)
        if label == "auto" and step > WARMUP_STEPS and step == first.steps // 2:  # a second candidate, mid-schedule
            for name, trainer in trainers.items():
                trainer.export(export / f"{name}-{label}-half.pt", {"campaign": {"phase": label, "snapshot": "half"}})
        if step % 200 == 0:
            logging.info("%s step %d/%d, %.0f s, waiting for data %.0f%%", label, step, first.steps if step > WARMUP_STEPS else -1,
                         elapsed, 100 * waited / elapsed)
        if (step > WARMUP_STEPS and step >= next(iter(trainers.values())).config.train.steps) or elapsed > budget * 1.05:
            break
    for fh in logs.values():
        fh.close()
    exported = {}
    for name, trainer in trainers.items():
        extra = {"campaign": {"phase": label, "minutes": minutes, "crops": trainer.step * first.batch_size,
                              "device": torch.cuda.get_device_name() if trainer.device.type == "cuda" else "cpu",
                              "waiting_for_data": round(waited / (time.monotonic() - started), 3)}}
        exported[name] = trainer.export(export / f"{name}-{label}.pt", extra)
        logging.info("%s %s: %d steps, %d crops -> %s", label, name, trainer.step, trainer.step * first.batch_size, exported[name])
    return exported


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", nargs=4, action="append", required=True, metavar=("NAME", "CONFIG", "INIT", "HINT_CONFIG"))
    parser.add_argument("--minutes", type=float, required=True, help="wall-clock budget of the automatic phase")
    parser.add_argument("--hint-minutes", type=float, default=0.0, help="then the hint branch of each run (0: none)")
    parser.add_argument("--out", type=Path, default=Path.home() / ".cache/colorize-batch/runs/campaign-gpu")
    parser.add_argument("--export", type=Path, required=True, help="folder for the fp16 weights files")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    torch.backends.cudnn.benchmark = True
    if Path("/dev/shm").is_dir() and shutil.disk_usage("/dev/shm").free < 2**31:  # batches pass through shared memory
        torch.multiprocessing.set_sharing_strategy("file_system")
    device = torch.device(args.device)
    args.export.mkdir(parents=True, exist_ok=True)
    trainers = {name: make_trainer(name, Path(cfg), None if init == "-" else init, args.out, device) for name, cfg, init, _ in args.run}
    automatic = phase("auto", trainers, args.minutes, args.workers, args.export)
    if args.hint_minutes > 0:
        del trainers
        hinted = {name: make_trainer(name + "-hints", Path(hint_cfg), str(automatic[name]), args.out, device)
                  for name, _, _, hint_cfg in args.run}
        phase("hints", hinted, args.hint_minutes, args.workers, args.export)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
