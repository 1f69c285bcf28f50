"""The ``colorize-batch`` command line.

Options default to None so that only flags actually given override ``pipeline.yaml``.
Exit codes (for cron and Makefiles): 0 all good (skips included), 1 some files failed,
2 usage or configuration error, 75 the output folder is locked by another run,
130 interrupted.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import signal
import sys
import threading
from dataclasses import dataclass
from logging.handlers import WatchedFileHandler
from pathlib import Path
from typing import Any

import click

from . import __version__
from .config import ConfigError, PipelineConfig, load_config

from .exit_codes import ExitCode
from .names import display

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_LOCKED, EXIT_INTERRUPTED = (int(c) for c in ExitCode)  # short names used below


class InputError(click.ClickException):
    """A file or setting the user named cannot be used: one line ``Error: ...``, exit 2 (no usage text)."""

    exit_code = EXIT_USAGE


class LogFileHandler(WatchedFileHandler):
    """``--log-file`` (logrotate-safe). A line that cannot be written (a full disk, ``/dev/full``)
    is said once, in one line on stderr, instead of logging's traceback per record; no more lines
    go to the file, and ``failed`` makes the command exit 1: the log is part of what a cron job
    relies on."""

    failed: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.failed is None:
            super().emit(record)

    def flush(self) -> None:
        try:
            super().flush()
        except OSError as exc:
            self._fail(exc)

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        self._fail(sys.exc_info()[1])

    def _fail(self, exc: BaseException | None) -> None:
        if self.failed is None:
            reason = (exc.strerror if isinstance(exc, OSError) else None) or str(exc) or type(exc).__name__
            self.failed = f"{display(self.baseFilename)}: cannot write the log file ({reason}); no more lines were written to it"
            click.echo(f"Error: {self.failed}", err=True)


class GivenPath(click.Path):
    """``click.Path`` that refuses an empty argument: ``run "$SCANS" "$COLOUR"`` with a variable unset
    in a cron job must not mean the current folder (colorizing the home folder, or writing into it).
    Every path argument and option of every command is one (``train --out ""`` wrote its checkpoints
    into the current folder)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and value == "":
            self.fail("is empty (an unset variable in a script?); give a path", param, ctx)
        return super().convert(value, param, ctx)


class Number(click.FloatRange):
    """``click.FloatRange`` that refuses ``nan`` (which passes every range comparison): ``eval --degrade
    nan`` ended in a traceback, ``train --max-minutes nan`` never stopped. Every float option is one."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if math.isnan(number):
            self.fail("is not a number (nan)", param, ctx)
        return number


def _refuse_blocking(path: Path) -> None:
    """A FIFO with no reader would block the log file's open for ever: ``OSError`` instead."""
    import stat

    from .safe_files import open_writer

    try:
        if stat.S_ISFIFO(os.stat(path).st_mode):
            os.close(open_writer(path))
    except FileNotFoundError:
        return


def _setup_logging(verbosity: int, log_file: Path | None = None) -> LogFileHandler | None:
    level = logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    file_handler = None
    if log_file is not None:
        try:
            _refuse_blocking(log_file)
            file_handler = LogFileHandler(log_file, errors="backslashreplace")
        except OSError as exc:
            raise click.UsageError(f"{log_file}: cannot open the log file ({exc.strerror or exc})") from None
        handlers.append(file_handler)
    logging.basicConfig(level=level, handlers=handlers, force=True, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    # Pillow's debug chatter (every PNG chunk, every TIFF tag) is not this tool's: -v would print it, and in a
    # decode worker, whose stderr is captured per file, it would fill the report's notes
    logging.getLogger("PIL").setLevel(max(level, logging.INFO))
    return file_handler


# Every flag that sets a configuration key, written once: click parameter name -> dotted key.
CONFIG_FLAGS = {
    "weights": "model.weights",
    "device": "model.device",
    "size": "model.size",
    "temperature": "model.temperature",
    "batch_size": "loader.batch_size",
    "workers": "loader.workers",
    "lanes": "loader.lanes",
    "fmt": "output.format",
    "color_inputs": "input.color_inputs",
    "hints_dir": "input.hints_dir",
    "hints_only": "input.hints_only",
    "steps": "train.steps",
}


def _resolve_config(ctx: click.Context, config_path: Path | None) -> PipelineConfig:
    """YAML first, then the flags of :data:`CONFIG_FLAGS` the user actually typed for this command."""
    overrides: dict[str, Any] = {}
    for param, value in ctx.params.items():
        dotted = CONFIG_FLAGS.get(param)
        source = ctx.get_parameter_source(param)
        if dotted and value is not None and source in (click.core.ParameterSource.COMMANDLINE, click.core.ParameterSource.ENVIRONMENT):
            overrides[dotted] = str(value.absolute()) if isinstance(value, Path) else value  # relative to cwd, not the YAML
    try:
        return load_config(config_path, overrides)
    except ConfigError as exc:
        raise InputError(str(exc)) from None


# Options that several commands share: one spelling, one help text each.
config_option = click.option(
    "--config", "config_path", type=GivenPath(path_type=Path, dir_okay=False),
    help="Pipeline description overlaid on the installation's pipeline.yaml, key by key.",
)
weights_option = click.option("--weights", type=GivenPath(path_type=Path, dir_okay=False),
                              help="Generator weights file (model.weights).")
device_option = click.option("--device", type=str, help="auto (CUDA if present) | cpu | cuda | cuda:N (model.device).")
size_option = click.option("--size", type=click.IntRange(32, 2048), help="Side of the square the network sees (model.size).")
temperature_option = click.option(
    "--temperature", type=Number(0.05, 5.0),
    help="Annealed-mean temperature of classification-head weights (effunet): lower is more vivid, "
         "1.0 the plain expectation; ignored by unet weights (model.temperature).")
format_option = click.option("--format", "fmt", type=click.Choice(["same", "jpg", "png", "tif"]), help="Output format (output.format).")
print_config_option = click.option("--print-config", is_flag=True, help="Print the merged configuration as YAML and exit "
                                   "(with -v: where each value came from).")
verbose_option = click.option("-v", "--verbose", count=True, help="More log lines.")


def model_options(func):
    """--config, --weights, --device, --size, --temperature: what every command that runs the model takes."""
    for option in reversed((config_option, weights_option, device_option, size_option, temperature_option)):
        func = option(func)
    return func


def _print_config(config: PipelineConfig, verbose: int) -> None:
    click.echo(config.to_yaml(sources=verbose > 0), nl=False)


# what writing stdout or stderr can fail with: a full disk or device (> /dev/full), a quota, an I/O error
_OUTPUT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG}


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


class ToolGroup(click.Group):
    """The command group: Ctrl-C or SIGTERM before a command's own handling of them starts
    (imports, walking IN, fingerprinting, loading the weights) is exit 130 in one line, never
    click's "Aborted!" (exit 1) nor SIGTERM's bare death (143); ``run`` installs its graceful
    handler (:class:`~colorize_batch.signals.StopFlag`) once it starts colorizing."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        """click's main, and output that cannot be written (``> /dev/full``, a full disk under a
        redirected log; click already handles a closed pipe) is one line and exit 1, not a traceback."""
        try:
            return super().main(*args, **kwargs)
        except OSError as exc:
            if exc.filename is not None or exc.errno not in _OUTPUT_ERRNOS:
                raise
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the interpreter's last flush must not fail too
            try:
                click.echo(f"Error: cannot write the output ({exc.strerror or exc})", err=True)
            except OSError:
                pass
            sys.exit(EXIT_FAILED)

    def invoke(self, ctx: click.Context) -> Any:
        installed = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _interrupt) if installed else None
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            raise click.exceptions.Exit(EXIT_INTERRUPTED) from None
        finally:
            if installed:
                signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


@click.group(cls=ToolGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="colorize-batch")
def main() -> None:
    """Colorize folders of black-and-white photographs.

    The default model is a U-Net on an EfficientNet-Lite0 encoder that predicts
    colour (ab bins of CIE Lab) at low resolution; each output keeps the scan's own
    full-resolution grey levels. The older pix2pix U-Net weights still load.

    \b
    Exit codes: 0 all good (skips included), 1 some files failed,
    2 usage or configuration error, 75 output folder locked by another run,
    130 interrupted.
    """


# ----------------------------------------------------------------------------- run
@dataclass(frozen=True)
class RunRequest:
    """Everything ``colorize-batch run`` was asked, as click parsed it (the flags of
    :data:`CONFIG_FLAGS` are read from the click context into the configuration)."""

    in_path: Path
    out_path: Path
    config_path: Path | None
    weights: Path | None
    device: str | None
    size: int | None
    temperature: float | None
    batch_size: int | None
    workers: int | None
    lanes: int | None
    fmt: str | None
    color_inputs: str | None
    hints_dir: Path | None
    hints_only: bool | None
    force: bool
    checksum: bool
    dry_run: bool
    print_config: bool
    report_path: Path | None
    log_file: Path | None
    shard: str | None
    shard_count: int | None
    engine: str
    ray_address: str | None
    actors: int | None
    gpus_per_actor: float | None
    gallery: bool
    quiet: bool
    verbose: int

    def engine_options(self) -> dict[str, Any]:
        """The engine's own options (``ray``: address, actors, gpus_per_actor); a Ray option
        without ``--engine ray`` is a usage error."""
        ray_options = {"address": self.ray_address, "actors": self.actors, "gpus_per_actor": self.gpus_per_actor}
        if self.engine == "ray":
            return ray_options
        if any(v is not None for v in ray_options.values()):
            raise click.UsageError("--ray-address, --actors and --gpus-per-actor need --engine ray")
        return {}

    @property
    def writes_gallery(self) -> bool:
        return self.gallery and not self.dry_run


@main.command()
@click.argument("in_path", metavar="IN", type=GivenPath(path_type=Path))
@click.argument("out_path", metavar="OUT", type=GivenPath(path_type=Path))
@model_options
@click.option("--batch-size", type=click.IntRange(1, 1024), help="Images per forward pass (loader.batch_size).")
@click.option("--workers", type=click.IntRange(0, 64), help="Decoding processes; 0 decodes in the main process (loader.workers).")
@click.option("--lanes", type=click.IntRange(0, 64), help="Threads making forward passes, each with its share of the cores; "
              "0 = auto: 2 on a multi-core CPU, 1 on CUDA (loader.lanes).")
@format_option
@click.option("--color-inputs", type=click.Choice(["skip", "copy", "recolor"]), help="What to do with inputs already in colour.")
@click.option("--hints", "hints_dir", type=GivenPath(path_type=Path, file_okay=False, exists=True),
              help="Colour hints under this folder, mirroring IN (a/b/photo.jpg -> DIR/a/b/photo.hints.json) "
                   "instead of photo.hints.json beside each scan (input.hints_dir).")
@click.option("--hints-only", is_flag=True, default=None, help="Only the images that have a hint file (input.hints_only).")
@click.option("--force", is_flag=True, help="Redo every file, even those up to date.")
@click.option("--checksum", is_flag=True, help="Fingerprint sources by sha256 instead of size + mtime.")
@click.option("--dry-run", is_flag=True, help="List what would be done; write nothing.")
@print_config_option
@click.option("--report", "report_path", type=GivenPath(path_type=Path, dir_okay=False), help="Also write the JSON run report here.")
@click.option("--log-file", type=GivenPath(path_type=Path, dir_okay=False), help="Append log lines to this file (logrotate-safe).")
@click.option("--shard", metavar="I/N", help="Process only shard I of N (0-based; stable hash of each relative path). "
              "Defaults from SLURM_ARRAY_TASK_ID/COUNT or JOB_COMPLETION_INDEX.")
@click.option("--shard-count", type=click.IntRange(1), help="Number of shards when JOB_COMPLETION_INDEX gives the index.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: this machine; ray: a Ray cluster's actors (needs pip install 'colorize-batch[ray]').")
@click.option("--ray-address", metavar="ADDRESS", help="With --engine ray: auto or ray://HOST:PORT (default: start Ray locally).")
@click.option("--actors", type=click.IntRange(1), help="With --engine ray: actors, each loads the model once "
              "(default: one per GPU, else the cluster's CPUs - 1).")
@click.option("--gpus-per-actor", type=Number(0), help="With --engine ray: GPUs per actor, fractions share a GPU "
              "(default: the cluster's GPUs shared out; 0 with --device cpu).")
@click.option("--gallery", is_flag=True, help="Write the HTML review gallery into OUT/.colorize-batch/gallery/ after the run "
              "(with the model's suggested colours: see gallery --help); not after an interrupted one.")
@click.option("-q", "--quiet", is_flag=True, help="Only errors and the exit code.")
@verbose_option
@click.pass_context
def run(ctx: click.Context, **params: Any) -> None:
    """Colorize every black-and-white photo under IN into a mirrored tree under OUT.

    IN may also be a single image; OUT is then a file name or a folder. Outputs keep each
    input's pixel size and grey levels (only colour is added), its EXIF and DPI, and are
    marked as machine-colorized. Reruns skip files that are up to date (manifest in
    OUT/.colorize-batch/); bad files are reported and the run goes on.

    Colour hints ("this coat was navy"): photo.hints.json beside a scan, or under --hints DIR,
    gives points of known colour to the model (format: `colorize-batch hints schema`; the
    review gallery writes them). Editing a hint file redoes exactly that image on the next run.

    \b
    Exit codes: 0 all good (skips included), 1 some files failed,
    2 usage or configuration error, 75 OUT is locked by another run, 130 interrupted.
    """
    request = RunRequest(**params)
    config = _resolve_config(ctx, request.config_path)
    if request.print_config:
        _print_config(config, request.verbose)
        ctx.exit(EXIT_OK)
    named = (("--report", request.report_path), ("--log-file", request.log_file))
    _refuse_input_photos(request.in_path, config.input.extensions, *named)
    _refuse_state_files(request.out_path, *named)
    log_handler = _setup_logging(-1 if request.quiet else request.verbose, request.log_file)
    code = _run(ctx, request, config)
    if request.writes_gallery and code == EXIT_INTERRUPTED:  # asked to stop: not minutes of thumbnails and forward passes more
        logging.getLogger("colorize_batch").warning("gallery not updated: the run was interrupted "
                                                    "(colorize-batch gallery %s writes it)", display(request.out_path))
    elif request.writes_gallery and code in (EXIT_OK, EXIT_FAILED) and request.in_path.is_dir():
        _write_gallery(request, config)
    if log_handler is not None:
        log_handler.flush()  # a last line still buffered fails here, if it fails
        if log_handler.failed and code == EXIT_OK:
            code = EXIT_FAILED
    ctx.exit(code)


def _refuse_input_photos(in_path: Path, extensions: list[str] | tuple[str, ...], *named: tuple[str, Path | None]) -> None:
    """A file named to be written (a report, a log, a sheet) that is one of the input photos: exit 2,
    before anything is written into it."""
    from .discovery import named_file_problem

    for option, path in named:
        problem = named_file_problem(path, option, in_path, extensions) if path is not None else None
        if problem:
            raise click.UsageError(problem)


def _refuse_state_files(out_path: Path, *named: tuple[str, Path | None]) -> None:
    """A file named to be written that lies in OUT's state folder (``--report OUT/.colorize-batch/manifest.jsonl``
    would replace the run's memory with a report, and the next cron run would redo everything): exit 2.
    Compared by resolved path and, where the folder exists, by device + inode (a bind mount, a link)."""
    from .discovery import folder_chain, identity
    from .manifest import state_dir

    state = os.path.realpath(state_dir(out_path))
    state_id = identity(state)
    for option, path in named:
        if path is None:
            continue
        real = os.path.realpath(path)
        if os.path.commonpath([real, state]) == state or (state_id is not None and state_id in folder_chain(Path(real).parent)):
            raise click.UsageError(f"{option} {display(path)}: that is inside {display(state_dir(out_path))}, the run's own "
                                   "state (manifest, lock, reports); choose another file")


def _run(ctx: click.Context, request: RunRequest, config: PipelineConfig) -> int:
    """The run itself (:func:`~colorize_batch.runner.run_pipeline`), its usage errors refused first."""
    from .runner import run_pipeline
    from .sharding import ShardError, resolve_shard

    try:
        shard = resolve_shard(request.shard, request.shard_count)
    except ShardError as exc:
        raise click.UsageError(str(exc)) from None
    engine_options = request.engine_options()
    if request.writes_gallery:  # refused before the run, not after it
        _check_gallery_links(ctx, request.out_path)
    try:
        return run_pipeline(request.in_path, request.out_path, config, force=request.force, checksum=request.checksum,
                            dry_run=request.dry_run, report_path=request.report_path, quiet=request.quiet, shard=shard,
                            engine=request.engine, engine_options=engine_options)
    except KeyboardInterrupt:  # Ctrl-C outside the colorizing itself (planning, the report): no "Aborted!", exit 130
        click.echo("interrupted: finished files are kept and recorded; rerun to continue", err=True)
        ctx.exit(EXIT_INTERRUPTED)
        raise  # not reached: ctx.exit raises


def _check_gallery_links(ctx: click.Context, out_path: Path) -> None:
    from .gallery import check_gallery_links
    from .manifest import StateLinkError

    try:
        check_gallery_links(out_path)
    except StateLinkError as exc:
        click.echo(f"Error: {exc}", err=True)
        ctx.exit(EXIT_USAGE)


def _write_gallery(request: RunRequest, config: PipelineConfig) -> None:
    from .gallery import build_gallery
    from .inference import InferenceError
    from .weights import WeightsError

    options: dict[str, Any] = {"workers": config.loader.writer_threads, "hints_dir": config.input.hints_dir}
    try:
        index = build_gallery(request.out_path, request.in_path, suggester=_suggester(config, None), **options)
    except (InputError, WeightsError, InferenceError) as exc:  # the run is over: its gallery goes without suggestions
        logging.getLogger("colorize_batch").warning("gallery: no suggested colours: %s", exc)
        index = build_gallery(request.out_path, request.in_path, **options)
    if not request.quiet:
        click.echo(f"review gallery: {index}", err=True)


# ----------------------------------------------------------------------------- info
@main.command()
@config_option
@weights_option
@device_option
@click.option("--json", "as_json", is_flag=True, help="Print it as JSON.")
@click.pass_context
def info(ctx, config_path, weights, device, as_json):
    """Version, weights file (sha256, architecture, model id), device found and torch version."""
    config = _resolve_config(ctx, config_path)
    import torch

    from .inference import InferenceError, resolve_device
    from .weights import WeightsError, describe_weights

    try:
        found = resolve_device(config.model.device)
        device_text = str(found) + (f" ({torch.cuda.get_device_name(found)})" if found.type == "cuda" else "")
    except InferenceError as exc:
        device_text = f"none ({exc})"
    try:
        summary = describe_weights(config.model.weights)
    except WeightsError as exc:
        raise InputError(str(exc)) from None
    facts = {
        "version": __version__,
        "weights": str(summary.path),
        "sha256": summary.sha256,
        "model_id": summary.model_id,
        "family": summary.family,
        "preset": summary.preset,
        "architecture": summary.architecture,
        "parameters": summary.parameters,
        "device": device_text,
        "torch": torch.__version__,
        "weights_from": config.sources().get("model.weights", ""),
    }
    if as_json:
        click.echo(json.dumps(facts, indent=2))
        return
    arch = ", ".join(f"{k} {v}" for k, v in summary.architecture.items())
    click.echo(f"colorize-batch {__version__}")
    click.echo(f"weights:      {summary.path}")
    click.echo(f"sha256:       {summary.sha256}")
    click.echo(f"model id:     {summary.model_id}")
    click.echo(f"architecture: {summary.family}" + (f" (preset {summary.preset})" if summary.preset else "")
               + f", {summary.parameters / 1e6:.2f}M parameters: {arch}")
    click.echo(f"device:       {device_text}")
    click.echo(f"torch:        {torch.__version__}")


# ----------------------------------------------------------------------------- train
@main.command()
@click.argument("data_dirs", nargs=-1, type=GivenPath(exists=True, file_okay=False, path_type=Path))
@config_option
@click.option("--out", "out_dir", type=GivenPath(file_okay=False, path_type=Path), default=Path("runs/default"), show_default=True, help="Run folder: checkpoints, logs, sheets, weights.")
@click.option("--resume", is_flag=True, help="Continue exactly from the run folder's checkpoint.")
@click.option("--init", "init_weights", type=GivenPath(exists=True, dir_okay=False, path_type=Path), help="Start the generator from this weights file (fine-tuning).")
@click.option("--max-minutes", type=Number(0, min_open=True), help="Stop cleanly (checkpoint + weights) after this many minutes.")
@click.option("--steps", type=int, help="Total training steps (train.steps).")
@device_option
@print_config_option
@verbose_option
@click.pass_context
def train(ctx, data_dirs, config_path, out_dir, resume, init_weights, max_minutes, steps, device, print_config, verbose):
    """Train a generator on folders of colour photos.

    train.preset picks the family: effnet-lite0 / effnet-lite0-hints (the default
    model: EfficientNet-Lite0 U-Net, class-rebalanced cross-entropy over ab bins + L1)
    or the pix2pix presets lite, pix2pix-256, tiny (U-Net + PatchGAN, GAN loss + L1).

    DATA_DIRS override train.data from the config (each with weight 1).
    """
    config = _resolve_config(ctx, config_path)
    if print_config:
        _print_config(config, verbose)
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
    try:  # what the user named (data, --init, --resume's checkpoint) cannot be used: exit 2
        trainer = Trainer(config, out_dir, list(data_dirs), dev, init_weights)
        if resume:
            trainer.load_checkpoint()
    except TrainingError as exc:
        raise InputError(str(exc)) from None
    try:
        result = trainer.fit(max_minutes=max_minutes, progress=_train_progress())
    except TrainingError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(result))


def _train_progress():
    log = logging.getLogger("colorize_batch.train")

    def report(step: int, total: int, losses: dict) -> None:
        log.info("step %d/%d %s", step, total, " ".join(f"{k}={v:.4f}" for k, v in losses.items()))

    return report


# ----------------------------------------------------------------------------- export
@main.command()
@click.argument("run_dir", type=GivenPath(exists=True, file_okay=False, path_type=Path))
@click.argument("dest", type=GivenPath(dir_okay=False, path_type=Path))
@click.option("--step", type=int, help="Export the validation snapshot of this step instead of the last checkpoint.")
def export(run_dir, dest, step):
    """Write a training run's generator as a small fp16 weights file (architecture included)."""
    from .train import TrainingError, export_checkpoint, export_snapshot

    if dest.exists() and not dest.is_file():  # /dev/full, a FIFO: os.replace would put the weights in its place
        raise InputError(f"{display(dest)}: not a regular file; a weights file is never written over it")
    try:
        path = export_checkpoint(run_dir, dest) if step is None else export_snapshot(run_dir, step, dest)
    except TrainingError as exc:
        raise InputError(str(exc)) from None
    except OSError as exc:
        click.echo(f"Error: {display(dest)}: cannot write the weights file ({exc.strerror or exc})", err=True)
        raise SystemExit(EXIT_FAILED) from None
    click.echo(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")


# ----------------------------------------------------------------------------- eval
@main.command("eval")
@click.argument("color_dir", type=GivenPath(exists=True, path_type=Path))
@model_options
@click.option("--limit", type=click.IntRange(1), help="Only the first N photos.")
@click.option("--report", "report_path", type=GivenPath(dir_okay=False, path_type=Path), help="Write the JSON scores here.")
@click.option("--sheet", type=GivenPath(dir_okay=False, path_type=Path), help="Write a contact sheet PNG (grey / model / truth).")
@click.option("--sheet-images", type=click.IntRange(1), default=12, show_default=True)
@click.option("--hints", "hint_points", type=click.IntRange(0, 1000), default=0, show_default=True,
              help="Reveal N points of each photo's truth to the model as colour hints (fixed seed; models with a hint branch).")
@click.option("--degrade", type=Number(0.0, 2.0), default=0.0, show_default=True,
              help="Make each grey input look like an old scan at this strength (fading, blur, grain, JPEG...; fixed seed).")
@click.pass_context
def evaluate_cmd(ctx, color_dir, config_path, weights, device, size, temperature, limit, report_path, sheet, sheet_images, hint_points,
                 degrade):
    """Score a model on colour photos: PSNR, SSIM, colourfulness, ΔCF and AuC, against grey.

    Each photo is made grey, colorized through the same code as `run`, and compared with
    the truth; the grey input itself is the baseline.
    """
    config = _resolve_config(ctx, config_path)
    _setup_logging(0)
    from .discovery import DEFAULT_EXTENSIONS
    from .evaluate import colour_photos, contact_sheet, evaluate, format_table
    from .inference import Colorizer, InferenceError, resolve_device
    from .reporting import write_json_named
    from .weights import WeightsError, check_size, load_weights

    try:
        dev = resolve_device(config.model.device)
        generator, info = load_weights(config.model.weights, dev)
    except (InferenceError, WeightsError) as exc:
        raise click.UsageError(str(exc)) from None
    problem = check_size(config.model.size, info, "--size")
    if problem:
        raise click.UsageError(problem)
    if hint_points and not getattr(info.architecture, "hint_channels", ()):
        raise click.UsageError(f"--hints: {config.model.weights} has no hint branch")
    _refuse_input_photos(color_dir, DEFAULT_EXTENSIONS, ("--report", report_path), ("--sheet", sheet))
    photos = colour_photos(color_dir, limit)
    if not photos:
        raise click.UsageError(f"{color_dir}: no images found")
    result = evaluate(Colorizer.for_model(generator, dev, config.model), photos, config.model.size,
                      batch_size=config.loader.batch_size, chroma_gain=config.model.chroma_gain,
                      method=config.output.recombination,
                      sheet_limit=sheet_images if sheet else 0, hints=hint_points, degrade=degrade)
    summary = result.summary()
    summary.update(model_id=info.model_id, size=config.model.size, data=str(color_dir), temperature=config.model.temperature,
                   hints=hint_points, degrade=degrade)
    click.echo(format_table(summary))
    for failure in result.failures:  # left out of the scores, each in one line; exit 1 at the end
        click.echo(f"failed {display(failure['path'])}: {failure['reason']}", err=True)
    if not result.files:
        click.echo(f"Error: {display(color_dir)}: none of the {len(photos)} photo(s) could be scored", err=True)
        ctx.exit(EXIT_FAILED)
    for dest, write in ((report_path, lambda: write_json_named(report_path, summary)),
                        (sheet, lambda: contact_sheet(list(result.sheet_rows), sheet))):
        if dest:
            try:
                write()
            except OSError as exc:
                click.echo(f"Error: {display(dest)}: cannot write ({exc.strerror or exc})", err=True)
                ctx.exit(EXIT_FAILED)
    if result.failures:
        ctx.exit(EXIT_FAILED)


# ----------------------------------------------------------------------------- report
@main.group()
def report() -> None:
    """Work with run reports."""


@report.command("merge")
@click.argument("out_dir", type=GivenPath(exists=True, file_okay=False, path_type=Path))
@click.option("--output", "dest", type=GivenPath(dir_okay=False, path_type=Path), help="Default: OUT/.colorize-batch/last-run.json")
def report_merge(out_dir, dest):
    """Combine the shard reports of OUT_DIR into one; exits with the worst shard's exit code."""
    from .manifest import StateLinkError, refuse_links, report_path, shard_report_paths
    from .sharding import ShardError, merge_reports

    given = dest is not None
    try:
        merged = merge_reports(out_dir)
        if dest is None:
            dest = report_path(out_dir)
            refuse_links(dest, out_dir)
    except (ShardError, StateLinkError) as exc:
        raise click.UsageError(str(exc)) from None
    try:
        merged.write(dest, named=given)
    except OSError as exc:
        click.echo(f"Error: {display(dest)}: cannot write the merged report ({exc.strerror or exc})", err=True)
        raise SystemExit(EXIT_FAILED) from None
    c = merged.counts
    left_out = sorted({p.name for p in shard_report_paths(out_dir)} - set(merged.shards or []))
    if left_out:
        click.echo(f"left out {len(left_out)} report(s) of an earlier job shape: {', '.join(left_out)}", err=True)
    click.echo(f"{len(merged.shards or [])} shard report(s): done {c.done}, up to date {c.skipped_up_to_date}, "
               f"colour {c.skipped_color}, failed {c.failed} -> {dest}")
    for failure in merged.failures:
        click.echo(f"failed {display(str(failure.get('path')))}: {failure.get('reason')}")
    raise SystemExit(merged.exit_code)


# ----------------------------------------------------------------------------- gallery
@main.command("gallery")
@click.argument("out_dir", metavar="OUT_DIR", type=GivenPath(path_type=Path, file_okay=False))
@click.option("--source", "source_dir", metavar="IN_DIR", type=GivenPath(path_type=Path, file_okay=False),
              help="Folder of the grey originals (default: the input recorded in the run's last report).")
@click.option("--open", "open_browser", is_flag=True, help="Open the gallery in the default web browser.")
@click.option("--page-size", type=click.IntRange(min=1), default=100, show_default=True, help="Files per page.")
@click.option("--workers", "thumb_workers", type=click.IntRange(min=1), default=2, show_default=True,
              help="Thumbnail threads.")  # not "workers": that name is run's --workers (loader.workers, CONFIG_FLAGS)
@click.option("--hints", "hints_dir", metavar="DIR", type=GivenPath(path_type=Path, file_okay=False),
              help="Folder of the hint files, mirroring IN (default: the last run's --hints, else beside the scans).")
@click.option("--suggest/--no-suggest", default=None,
              help="Offer the model's suggested colours in the hint editor (default: on when the weights file exists). "
                   "Costs about what colorizing costs: every photo decoded again and one forward pass of the model "
                   "(only for photos new or changed since the last build: kept in gallery/suggest/), and about 5-7 KB "
                   "per photo in the pages.")
@config_option
@weights_option
@device_option
@size_option
@click.pass_context
def gallery_command(ctx: click.Context, out_dir: Path, source_dir: Path | None, open_browser: bool, page_size: int,
                    thumb_workers: int, hints_dir: Path | None, suggest: bool | None, config_path: Path | None, **_model: Any) -> None:
    """Write a static HTML review gallery of OUT_DIR into OUT_DIR/.colorize-batch/gallery/.

    A click on a colour result adds a colour hint there, of the picker's colour or one of the
    model's suggested colours for that spot; the page downloads photo.hints.json per image, or
    a bundle of every edited image for `colorize-batch hints import`. Give it the run's
    --config, --weights and --size, so that the suggestions are the run's model's.
    """
    import webbrowser

    from .gallery import NoManifestError, build_gallery
    from .inference import InferenceError
    from .manifest import StateLinkError
    from .weights import WeightsError

    suggester = _suggester(_resolve_config(ctx, config_path), suggest)
    try:
        index = build_gallery(out_dir, source_dir=source_dir, page_size=page_size, workers=thumb_workers, hints_dir=hints_dir,
                              suggester=suggester)
    except (WeightsError, InferenceError) as exc:
        raise InputError(f"suggested colours: {exc}") from None
    except (NoManifestError, StateLinkError) as exc:
        click.echo(f"Error: {exc}", err=True)
        raise click.exceptions.Exit(EXIT_USAGE) from None
    click.echo(str(index))
    if open_browser:
        webbrowser.open(index.resolve().as_uri())


def _suggester(config: PipelineConfig, wanted: bool | None):
    """The model for the gallery's suggested colours (loaded when first needed), or ``None``:
    ``wanted`` ``None`` means on when the weights file exists. A missing file: :class:`InputError`."""
    from .suggestions import Suggester

    weights = config.model.weights
    if wanted is False or (wanted is None and not weights.is_file()):
        return None
    if not weights.is_file():
        raise InputError(f"{display(weights)}: weights file not found (for --suggest: set --weights, or --no-suggest)")
    try:
        return Suggester(config.model, config.input.max_pixels)
    except OSError as exc:
        raise InputError(f"{display(weights)}: cannot read the weights file ({exc.strerror or exc})") from None


# ----------------------------------------------------------------------------- review
@main.command("review")
@click.argument("out_dir", metavar="OUT", type=GivenPath(path_type=Path, file_okay=False))
@config_option
@click.option("--port", type=click.IntRange(0, 65535), default=0, show_default=True,
              help="Port on 127.0.0.1 to listen on; 0 = any free port.")
@click.option("--source", "source_dir", metavar="IN_DIR", type=GivenPath(path_type=Path, file_okay=False),
              help="Folder of the grey originals (default: the input recorded in the run's last report).")
@weights_option
@device_option
@size_option
@format_option
@temperature_option
@click.option("--hints", "hints_dir", type=GivenPath(path_type=Path, file_okay=False, exists=True),
              help="Folder of the hint files, mirroring IN (input.hints_dir; default: the last run's, else beside the scans).")
@click.option("--page-size", type=click.IntRange(min=1), default=100, show_default=True, help="Photos per gallery page.")
@verbose_option
@click.pass_context
def review(ctx, out_dir, config_path, port, source_dir, weights, device, size, fmt, temperature, hints_dir, page_size, verbose):
    """Serve a live review of a finished run on 127.0.0.1 until Ctrl-C.

    Prints one line, the address with its access token (http://127.0.0.1:PORT/?token=...).
    The page is the review gallery; a click on a photo opens it in the editor, where a click
    adds a colour hint and the photo is re-colorized at once (the model is loaded once);
    points can be moved, recoloured (the model's suggested colours or any colour) and removed.
    "accept" writes the photo's hint file and its output as a run would, so the next run
    with the same settings finds it up to date: give review the run's --config, --weights,
    --size, --format and --temperature. OUT stays locked while it serves.

    \b
    Exit codes: 130 stopped by Ctrl-C/SIGTERM, 2 usage (no run in OUT, bad weights, port in use),
    75 OUT is locked by a run or another review.
    """
    config = _resolve_config(ctx, config_path)
    _setup_logging(verbose)
    from .review import run_review

    ctx.exit(run_review(out_dir, config, port=port, source_dir=source_dir, page_size=page_size))


# ----------------------------------------------------------------------------- hints
@main.group("hints")
def hints_group() -> None:
    """Colour hint files (photo.hints.json): what the review gallery writes."""


@hints_group.command("import")
@click.argument("bundle", type=GivenPath(path_type=Path, dir_okay=False))
@click.argument("dest", type=GivenPath(path_type=Path, file_okay=False))
def hints_import(bundle: Path, dest: Path) -> None:
    """Unpack a hint bundle downloaded from the review gallery into DEST.

    DEST is the --hints DIR of the run (a/b/photo.jpg -> DEST/a/b/photo.hints.json), or the
    input folder itself for hint files beside the scans. Nothing is written unless every
    document in the bundle is valid and every hint file can go where it belongs (no folder or
    link in its place, no two photos sharing one hint file).
    """
    from .hints import HintError, import_bundle
    from .names import display

    try:
        written = import_bundle(bundle, dest)
    except HintError as exc:
        click.echo(f"Error: {display(bundle)}: {exc}", err=True)
        raise click.exceptions.Exit(EXIT_USAGE) from None
    except OSError as exc:
        click.echo(f"Error: {display(bundle)}: cannot write into {display(dest)}: {exc.strerror or exc}", err=True)
        raise click.exceptions.Exit(EXIT_FAILED) from None
    for path in written:
        click.echo(display(path))
    click.echo(f"{len(written)} hint file(s) written under {display(dest)}", err=True)


@hints_group.command("schema")
def hints_schema() -> None:
    """Print the JSON Schema of a hint file (photo.hints.json), for editors and validators:
    colorize-batch hints schema > hints.schema.json"""
    from .config import installed_file

    click.echo(installed_file("schemas", "hints.schema.json").read_text(encoding="utf-8"), nl=False)


@hints_group.command("check")
@click.argument("files", nargs=-1, required=True, type=GivenPath(path_type=Path, dir_okay=False))
def hints_check(files: tuple[Path, ...]) -> None:
    """Check hint files (photo.hints.json) the way a run reads them; exit 2 if one is unusable."""
    from .hints import HintError, read_hints
    from .names import display

    bad = 0
    for path in files:
        try:
            hints, _ = read_hints(path)
        except HintError as exc:
            bad += 1
            click.echo(f"{display(path)}: {exc}", err=True)
            continue
        click.echo(f"{display(path)}: ok, {len(hints.points)} point(s){', a global tint' if hints.tint else ''}")
    if bad:
        raise click.exceptions.Exit(EXIT_USAGE)


if __name__ == "__main__":  # pragma: no cover
    main()
