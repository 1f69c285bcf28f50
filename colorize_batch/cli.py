"""The ``colorize-batch`` command line.

Options default to None so that only flags actually given override ``pipeline.yaml``.
Exit codes (for cron and Makefiles): 0 all good (skips included), 1 some files failed,
2 usage or configuration error, 75 the output folder is locked by another run,
130 interrupted.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import click

from . import __version__
from .config import ConfigError, PipelineConfig, load_config

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_LOCKED, EXIT_INTERRUPTED = 0, 1, 2, 75, 130


def _setup_logging(verbosity: int, log_file: Path | None = None) -> None:
    level = logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        from logging.handlers import WatchedFileHandler

        handlers.append(WatchedFileHandler(log_file))
    logging.basicConfig(level=level, handlers=handlers, force=True, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")


def _resolve_config(ctx: click.Context, config_path: Path | None, mapping: dict[str, str]) -> PipelineConfig:
    """YAML first, then the flags the user actually typed (``mapping``: param -> dotted key)."""
    overrides: dict[str, Any] = {}
    for param, dotted in mapping.items():
        value = ctx.params.get(param)
        source = ctx.get_parameter_source(param)
        if value is not None and source in (click.core.ParameterSource.COMMANDLINE, click.core.ParameterSource.ENVIRONMENT):
            overrides[dotted] = str(value) if isinstance(value, Path) else value
    try:
        return load_config(config_path, overrides)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None


config_option = click.option(
    "--config", "config_path", type=click.Path(path_type=Path, dir_okay=False),
    help="Pipeline description (default: pipeline.yaml of the installation).",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="colorize-batch")
def main() -> None:
    """Colorize folders of black-and-white photographs with a pix2pix U-Net.

    \b
    Exit codes: 0 all good (skips included), 1 some files failed,
    2 usage or configuration error, 75 output folder locked by another run,
    130 interrupted.
    """


# ----------------------------------------------------------------------------- train
@main.command()
@click.argument("data_dirs", nargs=-1, type=click.Path(exists=True, file_okay=False, path_type=Path))
@config_option
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/default"), show_default=True, help="Run folder: checkpoints, logs, sheets, weights.")
@click.option("--resume", is_flag=True, help="Continue exactly from the run folder's checkpoint.")
@click.option("--max-minutes", type=float, help="Stop cleanly (checkpoint + weights) after this many minutes.")
@click.option("--steps", type=int, help="Total training steps (train.steps).")
@click.option("--device", type=str, help="auto | cpu | cuda | cuda:N")
@click.option("--print-config", is_flag=True, help="Print the resolved configuration and exit.")
@click.option("-v", "--verbose", count=True)
@click.pass_context
def train(ctx, data_dirs, config_path, out_dir, resume, max_minutes, steps, device, print_config, verbose):
    """Train the generator (U-Net + PatchGAN, GAN loss + L1) on folders of colour photos.

    DATA_DIRS override train.data from the config (each with weight 1).
    """
    config = _resolve_config(ctx, config_path, {"steps": "train.steps", "device": "model.device"})
    if print_config:
        click.echo(config.to_yaml(), nl=False)
        return
    _setup_logging(verbose)
    import torch

    from .inference import InferenceError, resolve_device
    from .train import Trainer, TrainingError

    try:
        dev = resolve_device(config.model.device)
    except InferenceError as exc:
        raise click.UsageError(str(exc)) from None
    threads = config.train.threads
    if threads:
        torch.set_num_threads(threads)
    try:
        trainer = Trainer(config, out_dir, list(data_dirs), dev)
        if resume:
            trainer.load_checkpoint()
        result = trainer.fit(max_minutes=max_minutes, progress=_train_progress())
    except TrainingError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(result))


def _train_progress():
    log = logging.getLogger("colorize_batch.train")

    def report(step: int, total: int, losses: dict) -> None:
        log.info("step %d/%d %s", step, total, " ".join(f"{k}={v:.4f}" for k, v in losses.items()))

    return report


if __name__ == "__main__":  # pragma: no cover
    main()
