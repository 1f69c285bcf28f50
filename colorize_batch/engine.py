"""The engine interface: what :func:`~colorize_batch.runner.run_pipeline` asks of an engine.

An engine executes a :class:`~colorize_batch.planning.Plan`: every job goes through the
stages of :mod:`~colorize_batch.stages`, and every result is recorded through a
:class:`~colorize_batch.stages.ResultSink` as it finishes (counters, manifest, progress). It
returns when the plan is done or the :class:`~colorize_batch.signals.StopFlag` is set (then
with ``stats.interrupted`` set). Two implementations:

- :class:`colorize_batch.local_engine.LocalEngine`: this machine (``--engine local``);
- :class:`colorize_batch.ray_engine.RayEngine`: a Ray cluster's actors (``--engine ray``).
"""

from __future__ import annotations

from typing import Protocol

from .planning import Plan
from .signals import StopFlag


class Engine(Protocol):
    """Runs a plan's jobs and records their results."""

    @property
    def description(self) -> str:
        """Where the run ran, for the log and the report's ``device`` (e.g. ``cpu``, ``ray: 2 actor(s) on cpu``)."""
        ...

    def run(self, plan: Plan, stop: StopFlag) -> None:
        """Execute ``plan``; results go to the engine's sink as they finish."""
        ...
