"""The exit codes a cron job or Makefile can act on (the one place they are defined)."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0  # every file done, up to date or skipped by policy
    FAILED = 1  # some files failed (the report lists them), or outputs could not be written
    USAGE = 2  # usage or configuration error: nothing was done
    LOCKED = 75  # another run holds the output folder's lock (EX_TEMPFAIL: try again later)
    INTERRUPTED = 130  # SIGINT/SIGTERM: finished files are kept and recorded
