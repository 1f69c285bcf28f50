"""The engine contract: what :func:`~colorize_batch.runner.run_pipeline` asks of an engine.

An engine executes a :class:`~colorize_batch.planning.Plan`: every job goes through the
stages of :mod:`~colorize_batch.stages` (:func:`~colorize_batch.stages.stage_batch`, then
:func:`~colorize_batch.stages.render_result`), and every result goes to the run's one
:class:`~colorize_batch.stages.ResultSink` as it finishes. The runner builds the sink (and
the progress display in it) once, whatever the engine; an engine only produces results. It
returns when the plan is done or the :class:`~colorize_batch.signals.StopFlag` is set (then
with ``sink.stats.interrupted`` set). The runner takes an engine from
:func:`~colorize_batch.runner.make_engine`, by name:

- ``local``, :class:`colorize_batch.local_engine.LocalEngine`: this machine;
- ``ray``, :class:`colorize_batch.ray_engine.RayEngine`: a Ray cluster's actors.

Their constructors take ``(config, quiet=False, **options)`` and check only the settings
(``InferenceError`` for a device that is not there, :class:`EngineError` otherwise).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from .planning import Plan
from .signals import StopFlag
from .stages import ResultSink
from .weights import WeightsInfo


class EngineError(Exception):
    """The engine cannot run here as asked (Ray missing or unreachable, too few file descriptors,
    resources the cluster lacks): a usage error, exit 2, before any file is touched."""


class Engine(Protocol):
    """Runs a plan's jobs and hands their results to the run's sink."""

    @property
    def description(self) -> str:
        """Where the run ran, for the log and the report's ``device`` (e.g. ``cpu``, ``ray: 2 actor(s) on cpu``)."""
        ...

    def check(self) -> None:
        """Raise :class:`EngineError` when this machine cannot run the engine (before the plan is made)."""
        ...

    def load(self, weights: Path, sha256: str) -> WeightsInfo:
        """Take the weights file (``sha256``: its hash, read by the runner) and describe it; raises
        :class:`~colorize_batch.weights.WeightsError`. Called once, only when there is work to do."""
        ...

    def run(self, plan: Plan, sink: ResultSink, stop: StopFlag) -> None:
        """Execute ``plan``; each result goes to ``sink`` as it finishes."""
        ...
