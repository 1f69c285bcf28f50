"""Signals: how a run is asked to stop.

SIGINT (Ctrl-C) and SIGTERM (systemctl stop, timeout, scancel) set a :class:`StopFlag`: the
engines finish the files in flight, the manifest and the report are flushed, and the run exits
130. A second signal raises :class:`KeyboardInterrupt` at once: the run drops the files queued
for writing, lets the ones being written finish and records them, and exits 130 all the same.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

log = logging.getLogger("colorize_batch")


class StopFlag:
    """Set by SIGINT/SIGTERM: finish in-flight writes, flush, exit 130."""

    def __init__(self, stopping: str = "finishing in-flight files, then stopping") -> None:
        self.stopping = stopping  # what the log says happens next
        self.event = threading.Event()
        self._previous: dict[int, Any] = {}
        self._holding = False
        self.held = False  # a further signal came inside :meth:`holding`: raise it once the block is done

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.event.is_set():  # a second signal: stop now
            if self._holding:
                self.held = True
                return
            raise KeyboardInterrupt
        self.event.set()  # before the warning: a second signal may arrive while it is being written
        log.warning("%s received: finishing in-flight files, then stopping", signal.Signals(signum).name)

    @contextlib.contextmanager
    def holding(self) -> Iterator[None]:
        """A further signal inside the block sets :attr:`held` instead of raising: for code that a
        ``KeyboardInterrupt`` must not land in (torch's decode-worker shutdown runs in ``__del__``,
        which would print it as a traceback and drop it)."""
        self._holding = True
        try:
            yield
        finally:
            self._holding = False

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def __bool__(self) -> bool:
        return self.event.is_set()
