"""One ``run`` from start to finish: plan, lock, colorize, record, report, exit code.

The CLI calls :func:`run_pipeline`; it turns every foreseeable problem into a message and
an exit code (0 ok, 1 some files failed, 2 usage/config, 75 locked, 130 interrupted).
"""

from __future__ import annotations

import logging
import platform
import resource
from pathlib import Path

import click
import torch

from . import __version__
from .config import PipelineConfig
from .discovery import DiscoveryError, check_roots
from .engine import Engine
from .exit_codes import ExitCode
from .inference import Colorizer, InferenceError, resolve_device, resolve_lanes
from .local_engine import LocalEngine, fds_needed
from .manifest import LockedError, Manifest, RunIdentity, RunLock, StateError, StateLinkError, report_path as state_report_path
from .names import display
from .planning import Plan, plan_run
from .ray_engine import RayEngineError
from .reading import WEIGHTS_LIMIT, FileLimitError, open_user_file
from .reporting import RunReport, RunStats, print_summary
from .sharding import Shard
from .signals import StopFlag
from .weights import WeightsError, check_size, load_weights
from .safe_files import clean_stale_temps, file_sha256

log = logging.getLogger("colorize_batch")


def _usage(message: str) -> int:
    click.echo(f"Error: {message}", err=True)
    return ExitCode.USAGE


def ensure_fd_limit(needed: int) -> str | None:
    """Make sure this process may open ``needed`` file descriptors: the soft ``RLIMIT_NOFILE`` is
    raised to the hard one when that is enough; otherwise the problem, in one line. Too few
    descriptors would not fail cleanly: decoded batches would wait for their shared memory until
    ``input.decode_timeout``, twice per batch."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return None
    if hard == resource.RLIM_INFINITY or hard >= needed:
        for target in (hard, needed):  # the hard limit itself may be refused (above the kernel's nr_open)
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            except (ValueError, OSError):
                continue
            log.debug("file descriptor limit raised from %d to %d", soft, target)
            return None
    available = soft if hard == resource.RLIM_INFINITY else max(soft, hard)
    return f"too few file descriptors: {available}, need {needed} (raise the limit: ulimit -n {needed})"


def _cannot_write(message: str, report_path: Path | None, **context: str) -> int:
    """OUT cannot be written at all (read-only, full disk): say so, report it, exit 1."""
    click.echo(f"Error: {message}", err=True)
    if report_path is not None:
        stats = RunStats(stopped_reason=message)
        try:
            RunReport.of_run(stats, tool=f"colorize-batch {__version__}", **context).write(report_path)
        except OSError as exc:
            log.error("%s: cannot write the run report (%s)", display(report_path), exc)
    return ExitCode.FAILED


def run_pipeline(in_path: Path, out_path: Path, config: PipelineConfig, force: bool = False, checksum: bool = False,
                 dry_run: bool = False, report_path: Path | None = None, quiet: bool = False,
                 shard: Shard | None = None, engine: str = "local", engine_options: dict | None = None) -> int:
    """``engine``: ``local`` (this machine) or ``ray`` (``engine_options``: address, actors, gpus_per_actor)."""
    try:
        check_roots(in_path, out_path)
    except DiscoveryError as exc:
        return _usage(str(exc))
    weights_path = config.model.weights
    try:
        with open_user_file(weights_path, WEIGHTS_LIMIT, "weights file") as fh:
            weights_sha256 = file_sha256(fh)
    except FileNotFoundError:
        return _usage(f"{display(weights_path)}: weights file not found (set model.weights or --weights)")
    except FileLimitError as exc:
        return _usage(str(exc))
    except OSError as exc:
        return _usage(f"{display(weights_path)}: cannot read the weights file ({exc.strerror or exc})")
    if engine == "ray" and not dry_run:
        from .ray_engine import import_ray

        try:
            import_ray()
        except RayEngineError as exc:
            return _usage(str(exc))
    try:  # with ray the driver loads the weights only to check them; the actors pick their device
        device = resolve_device("cpu" if engine == "ray" else config.model.device)
    except InferenceError as exc:
        return _usage(str(exc))
    single = in_path.is_file()
    ident = RunIdentity(weights_sha256, config.pixel_hash())
    tag = shard.tag if shard else ""
    if shard is not None:
        log.info("shard %d of %d (0-based, from %s)", shard.index, shard.count, shard.source)

    def make_plan() -> tuple[Plan, Manifest | None]:
        manifest = None if single else Manifest(out_path, tag)
        return plan_run(in_path, out_path, config, manifest, ident, force=force, checksum=checksum, shard=shard), manifest

    if dry_run:  # no lock, no folders: nothing is written
        try:
            plan, _ = make_plan()
        except (DiscoveryError, StateLinkError) as exc:
            return _usage(str(exc))
        for job in plan.jobs:
            click.echo(f"would colorize {job.item.source} -> {job.output}")
        for path, reason in plan.problems:
            click.echo(f"would fail {path}: {reason}")
        click.echo(f"dry run: {len(plan.jobs)} to colorize, {plan.up_to_date} up to date, {len(plan.problems)} problems; nothing written")
        return ExitCode.OK

    if engine == "local":  # Ray's processes are Ray's to set up
        lanes = resolve_lanes(device, config.loader.lanes, config.loader.torch_threads).count
        problem = ensure_fd_limit(fds_needed(config.loader, lanes))
        if problem:
            return _usage(problem)
    stats = RunStats()
    if single:
        try:
            plan, _ = make_plan()
        except DiscoveryError as exc:
            return _usage(str(exc))
        return _execute(plan, config, device, weights_path, stats, None, ident, report_path, quiet,
                        engine=engine, engine_options=engine_options)
    try:
        with RunLock(out_path, tag):  # plan under the lock: the manifest cannot change under us
            removed = clean_stale_temps(out_path)
            if removed:
                log.info("removed %d temporary file(s) left by an interrupted run", removed)
            plan, manifest = make_plan()
            return _execute(plan, config, device, weights_path, stats, manifest, ident, report_path, quiet, tag,
                            engine=engine, engine_options=engine_options)
    except LockedError as exc:
        click.echo(f"Error: {exc}", err=True)
        return ExitCode.LOCKED
    except StateLinkError as exc:  # a linked state file: nothing was done
        return _usage(str(exc))
    except StateError as exc:
        return _cannot_write(str(exc), report_path, input=str(in_path), output=str(out_path))
    except DiscoveryError as exc:
        return _usage(str(exc))


def _execute(plan: Plan, config: PipelineConfig, device: torch.device, weights_path: Path, stats: RunStats,
             manifest: Manifest | None, ident: RunIdentity, report_path: Path | None, quiet: bool, tag: str = "",
             engine: str = "local", engine_options: dict | None = None) -> int:
    stats.counts.skipped_up_to_date = plan.up_to_date
    stats.counts.with_hints = sum(1 for job in plan.jobs if job.hints is not None)
    stats.counts.left_out_without_hints = plan.without_hints
    for path, reason in plan.problems:  # collisions, unreadable sources: re-examined on every run
        stats.fail(path, reason)
    model_id = None
    device_label = str(device)
    with StopFlag() as stop:
        if plan.jobs:
            try:
                generator, info = load_weights(weights_path, device, ident.model_sha256)
            except WeightsError as exc:
                return _usage(str(exc))
            model_id = info.model_id
            problem = check_size(config.model.size, info, "model.size")
            if problem:
                return _usage(problem)
            hinted = sum(1 for job in plan.jobs if job.hints is not None and job.hints.points)
            if hinted and not getattr(info.architecture, "hint_channels", ()):
                log.warning("%d image(s) have hint points but %s has no hint branch: the points are ignored "
                            "(global tints still apply)", hinted, display(weights_path))
            runner: Engine
            try:
                if engine == "ray":
                    from .ray_engine import RayEngine

                    runner = RayEngine(config, model_id, stats, manifest, ident, quiet=quiet, **(engine_options or {}))
                else:
                    colorizer = Colorizer(generator, device, config.model.precision, config.model.temperature,
                                         config.model.hint_edges)
                    runner = LocalEngine(config, colorizer, model_id, stats, manifest, ident, quiet=quiet)
                log.info("colorizing %d file(s) (%d up to date) with %s on %s", len(plan.jobs), plan.up_to_date, model_id,
                         runner.description)
                runner.run(plan, stop)
                device_label = runner.description
            except RayEngineError as exc:
                return _usage(str(exc))
            except KeyboardInterrupt:  # a second Ctrl-C: stopped at once, the files already written are recorded
                stats.interrupted = True
                stats.stopped_reason = "interrupted twice: stopped at once"
            finally:
                if manifest is not None:
                    manifest.close()
        elif not quiet:
            log.info("nothing to do: %d file(s) up to date", plan.up_to_date)
    if stats.stopped_reason or stats.interrupted:  # a full disk or a signal: say which files were never tried
        stats.not_tried = [str(job.item.source) for job in plan.jobs if job.source_key not in stats.settled]
    stats.finished = stats.started + stats.wall_seconds
    report = RunReport.of_run(
        stats,
        tool=f"colorize-batch {__version__}",
        model=model_id or weights_path.name,
        model_sha256=ident.model_sha256,
        config_hash=ident.config_hash,
        input=str(plan.in_path),
        output=str(plan.out_path),
        hints_dir=str(config.input.hints_dir) if config.input.hints_dir else None,  # where the gallery's hint editor looks
        device=device_label,
        host=platform.node(),
    )
    report_failed = False  # --report is an output the user asked for: not written, exit 1
    for dest in ([state_report_path(plan.out_path, tag)] if manifest is not None else []) + ([report_path] if report_path else []):
        try:
            report.write(dest)
        except OSError as exc:
            log.error("%s: cannot write the run report (%s)", display(dest), exc.strerror or exc)
            report_failed = report_failed or dest == report_path
    print_summary(stats, quiet)
    if stats.unrecorded:
        redo = ("the next run recognises them by their colorize-batch mark and redoes them" if config.output.metadata
                else "output.metadata is off, so the next run needs --force for them")
        click.echo(f"interrupted: finished files are kept and recorded, except {stats.unrecorded} still being written "
                   f"({redo}); rerun to continue", err=True)
    elif stats.interrupted:
        click.echo("interrupted: finished files are kept and recorded; rerun to continue", err=True)
    code = stats.exit_code()
    return ExitCode.FAILED if report_failed and code == ExitCode.OK else code
