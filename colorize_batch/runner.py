"""One ``run`` from start to finish: plan, lock, colorize, record, report, exit code.

The CLI calls :func:`run_pipeline`; it turns every foreseeable problem into a message and
an exit code (0 ok, 1 some files failed, 2 usage/config, 75 locked, 130 interrupted).
"""

from __future__ import annotations

import logging
import platform
from collections.abc import Callable
from pathlib import Path

import click

from . import __version__
from .config import PipelineConfig
from .discovery import DiscoveryError, check_roots
from .engine import Engine, EngineError
from .exit_codes import ExitCode
from .inference import InferenceError
from .local_engine import LocalEngine
from .manifest import (
    LockedError,
    Manifest,
    RunIdentity,
    RunLock,
    StateError,
    StateLinkError,
    other_run_holds_a_lock,
    report_path as state_report_path,
)
from .names import display
from .planning import Plan, plan_run
from .ray_engine import RayEngine
from .reading import WEIGHTS_LIMIT, FileLimitError, open_user_file
from .reporting import ProgressDisplay, RunReport, RunStats, print_summary
from .sharding import Shard
from .signals import StopFlag
from .safe_files import clean_stale_temps, file_sha256
from .stages import ResultSink
from .weights import WeightsError, WeightsInfo, automatic_sha256_of, check_size

log = logging.getLogger("colorize_batch")


def _usage(message: str) -> int:
    click.echo(f"Error: {message}", err=True)
    return ExitCode.USAGE


ENGINES: dict[str, Callable[..., Engine]] = {"local": LocalEngine, "ray": RayEngine}


def make_engine(name: str, config: PipelineConfig, quiet: bool = False, options: dict | None = None) -> Engine:
    """The engine called ``name`` (``local`` or ``ray``), its settings checked; ``options``: the
    engine's own (Ray: address, actors, gpus_per_actor). Raises :class:`EngineError` or
    :class:`InferenceError` (a device that is not there)."""
    if name not in ENGINES:
        raise EngineError(f"unknown engine {name!r} (known: {', '.join(ENGINES)})")
    return ENGINES[name](config, quiet=quiet, **(options or {}))


def _cannot_write(message: str, report_path: Path | None, **context: str) -> int:
    """OUT cannot be written at all (read-only, full disk): say so, report it, exit 1."""
    click.echo(f"Error: {message}", err=True)
    if report_path is not None:
        stats = RunStats(stopped_reason=message)
        try:
            RunReport.of_run(stats, tool=f"colorize-batch {__version__}", **context).write(report_path, named=True)
        except OSError as exc:
            log.error("%s: cannot write the run report (%s)", display(report_path), exc)
    return ExitCode.FAILED


def run_pipeline(in_path: Path, out_path: Path, config: PipelineConfig, force: bool = False, checksum: bool = False,
                 dry_run: bool = False, report_path: Path | None = None, quiet: bool = False,
                 shard: Shard | None = None, engine: str = "local", engine_options: dict | None = None) -> int:
    """``engine``: a name of :data:`ENGINES` (``engine_options``: its own, :func:`make_engine`)."""
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
    hints_dir = config.input.hints_dir  # --hints is checked by click; the same key set in a YAML file is checked here
    if hints_dir is not None and not hints_dir.is_dir():
        problem = "is not a folder" if hints_dir.exists() else "does not exist"
        return _usage(f"{display(hints_dir)}: input.hints_dir {problem}; no hint would be found")
    try:
        runner = make_engine(engine, config, quiet, engine_options)
        if not dry_run:
            runner.check()
    except (EngineError, InferenceError) as exc:
        return _usage(str(exc))
    single = in_path.is_file()
    ident = RunIdentity(weights_sha256, config.pixel_hash(), automatic_sha256=automatic_sha256_of(weights_path, weights_sha256))
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
        return _print_dry_run(plan)
    run = _Run(runner, config, weights_path, ident, report_path, quiet, tag)
    if single:
        try:
            plan, _ = make_plan()
        except DiscoveryError as exc:
            return _usage(str(exc))
        return run.execute(plan, None)
    try:
        with RunLock(out_path, tag):  # plan under the lock: the manifest cannot change under us
            # temporary files of a killed run; never while another shard writes its own into OUT
            removed = 0 if other_run_holds_a_lock(out_path, tag) else clean_stale_temps(out_path)
            if removed:
                log.info("removed %d temporary file(s) left by an interrupted run", removed)
            plan, manifest = make_plan()
            return run.execute(plan, manifest)
    except LockedError as exc:
        click.echo(f"Error: {exc}", err=True)
        return ExitCode.LOCKED
    except StateLinkError as exc:  # a linked state file: nothing was done
        return _usage(str(exc))
    except StateError as exc:
        return _cannot_write(str(exc), report_path, input=str(in_path), output=str(out_path))
    except DiscoveryError as exc:
        return _usage(str(exc))


def _print_dry_run(plan: Plan) -> int:
    for job in plan.jobs:  # names as the log shows them: one line each, other bytes as \xNN
        click.echo(f"would colorize {display(job.item.source)} -> {display(job.output)}")
    for path, reason in plan.problems:
        click.echo(f"would fail {display(path)}: {reason}")
    click.echo(f"dry run: {len(plan.jobs)} to colorize, {plan.up_to_date} up to date, {len(plan.problems)} problems; nothing written")
    return ExitCode.OK


class _Run:
    """The part of one run after the plan: weights into the engine, the engine over the plan, the report."""

    def __init__(self, engine: Engine, config: PipelineConfig, weights_path: Path, ident: RunIdentity,
                 report_path: Path | None, quiet: bool, tag: str):
        self.engine, self.config, self.weights_path, self.ident = engine, config, weights_path, ident
        self.report_path, self.quiet, self.tag = report_path, quiet, tag
        self.stats = RunStats()
        self.model_id: str | None = None

    def execute(self, plan: Plan, manifest: Manifest | None) -> int:
        stats = self.stats
        stats.counts.skipped_up_to_date = plan.up_to_date
        stats.counts.with_hints = sum(1 for job in plan.jobs if job.hints is not None)
        stats.counts.left_out_without_hints = plan.without_hints
        for path, reason in plan.problems:  # collisions, unreadable sources: re-examined on every run
            stats.fail(path, reason)
        with StopFlag() as stop:
            try:
                if plan.jobs:
                    problem = self._load(plan)
                    if problem:
                        return _usage(problem)
                    self._colorize(plan, manifest, stop)
                elif not self.quiet:
                    log.info("nothing to do: %d file(s) up to date", plan.up_to_date)
            except EngineError as exc:
                return _usage(str(exc))
            finally:
                if manifest is not None:
                    manifest.close()
        return self._finish(plan, manifest)

    def _load(self, plan: Plan) -> str | None:
        """The engine takes the weights; the problem with them, if any, in one line."""
        try:
            info = self.engine.load(self.weights_path, self.ident.model_sha256)
        except WeightsError as exc:
            return str(exc)
        self.model_id = info.model_id
        problem = check_size(self.config.model.size, info, "model.size")
        if not problem:
            self._warn_unused_hints(plan, info)
        return problem

    def _warn_unused_hints(self, plan: Plan, info: WeightsInfo) -> None:
        hinted = sum(1 for job in plan.jobs if job.hints is not None and job.hints.points)
        if hinted and not getattr(info.architecture, "hint_channels", ()):
            log.warning("%d image(s) have hint points but %s has no hint branch: the points are ignored "
                        "(global tints still apply)", hinted, display(self.weights_path))

    def _colorize(self, plan: Plan, manifest: Manifest | None, stop: StopFlag) -> None:
        """The engine over the plan, its results into one sink (counters, manifest, progress display)."""
        log.info("colorizing %d file(s) (%d up to date) with %s on %s", len(plan.jobs), plan.up_to_date, self.model_id,
                 self.engine.description)
        progress = ProgressDisplay(len(plan.jobs), quiet=self.quiet)
        sink = ResultSink(self.stats, manifest, self.ident, plan.out_path, progress)
        try:
            self.engine.run(plan, sink, stop)
        except KeyboardInterrupt:  # a second Ctrl-C: stopped at once, the files already written are recorded
            self.stats.interrupted = True
            self.stats.stopped_reason = "interrupted twice: stopped at once"
        finally:
            progress.close()

    def _finish(self, plan: Plan, manifest: Manifest | None) -> int:
        """The report (into OUT's state, when the run has one, and ``--report``), the summary and the exit code."""
        stats, config = self.stats, self.config
        if stats.stopped_reason or stats.interrupted:  # a full disk or a signal: say which files were never tried
            stats.not_tried = [job.source_name for job in plan.jobs if job.source_key not in stats.settled]
        stats.finished = stats.started + stats.wall_seconds
        report = RunReport.of_run(
            stats,
            tool=f"colorize-batch {__version__}",
            model=self.model_id or self.weights_path.name,
            model_sha256=self.ident.model_sha256,
            config_hash=self.ident.config_hash,
            input=str(plan.in_path),
            output=str(plan.out_path),
            hints_dir=str(config.input.hints_dir) if config.input.hints_dir else None,  # where the gallery's hint editor looks
            device=self.engine.description,
            host=platform.node(),
        )
        report_failed = self._write_report(report, plan.out_path, manifest is not None)
        print_summary(stats, self.quiet)
        if stats.unrecorded:
            redo = ("the next run recognises them by their colorize-batch mark and redoes them" if config.output.metadata
                    else "output.metadata is off, so the next run needs --force for them")
            click.echo(f"interrupted: finished files are kept and recorded, except {stats.unrecorded} still being written "
                       f"({redo}); rerun to continue", err=True)
        elif stats.interrupted:
            click.echo("interrupted: finished files are kept and recorded; rerun to continue", err=True)
        code = stats.exit_code()
        # a report or manifest that cannot be written is a failure a cron job must see: the next run redoes the work
        unsaved = manifest is not None and manifest.unsaved  # said by the manifest when its append failed
        return ExitCode.FAILED if (report_failed or unsaved) and code == ExitCode.OK else code

    def _write_report(self, report: RunReport, out_root: Path, with_state: bool) -> bool:
        """Write the report into OUT's state (``with_state``) and to ``--report``; True when either
        failed (not written, exit 1: ``--report`` is an output the user asked for, and the state's
        report is what ``gallery``, ``review`` and ``report merge`` read)."""
        failed = False
        for dest in ([state_report_path(out_root, self.tag)] if with_state else []) + ([self.report_path] if self.report_path else []):
            try:
                report.write(dest, named=dest == self.report_path)
            except OSError as exc:
                log.error("%s: cannot write the run report (%s)", display(dest), exc.strerror or exc)
                failed = True
        return failed
