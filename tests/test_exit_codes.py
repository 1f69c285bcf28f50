"""ExitCode.worst: the exit code of several runs together (report merge of shards)."""

from __future__ import annotations

from colorize_batch.exit_codes import ExitCode


def test_worst_orders_by_severity_not_by_number_by_accident():
    assert ExitCode.worst([]) is ExitCode.OK
    assert ExitCode.worst([0, 0]) is ExitCode.OK
    assert ExitCode.worst([ExitCode.OK, ExitCode.FAILED]) is ExitCode.FAILED
    assert ExitCode.worst([1, 2, 0]) is ExitCode.USAGE
    assert ExitCode.worst([130, 75, 1]) is ExitCode.INTERRUPTED
    assert ExitCode.worst(iter([75, 2])) is ExitCode.LOCKED
