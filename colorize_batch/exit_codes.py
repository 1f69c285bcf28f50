"""The exit codes a cron job or Makefile can act on (the one place they are defined)."""

from __future__ import annotations

from collections.abc import Iterable
from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0  # every file done, up to date or skipped by policy
    FAILED = 1  # some files failed (the report lists them), or outputs could not be written
    USAGE = 2  # usage or configuration error: nothing was done
    LOCKED = 75  # another run holds the output folder's lock (EX_TEMPFAIL: try again later)
    INTERRUPTED = 130  # SIGINT/SIGTERM: finished files are kept and recorded

    @classmethod
    def worst(cls, codes: Iterable[int]) -> ExitCode:
        """The code of several runs together (``report merge`` of shards): the most severe one, in
        the order defined above, OK < FAILED < USAGE < LOCKED < INTERRUPTED (a shard that was
        locked out or interrupted must be run again, which says more than its failures)."""
        order = list(cls)
        return max((cls(code) for code in codes), key=order.index, default=cls.OK)
