"""The words stored in OUT/.colorize-batch/: typed where they are read and written."""

from __future__ import annotations

import json

import pytest

from colorize_batch.manifest import Manifest, ManifestRecord, RunIdentity, Status, manifest_path
from colorize_batch.planning import parse_source_key, source_key
from colorize_batch.reporting import RunCounts, RunReport, RunStats


def test_source_keys_parse_back_to_path_and_page():
    for relative, page, pages in [("a/b.jpg", 0, 1), ("roll 1/scan.tif", 0, 3), ("scan.tif", 2, 3), ("x#p1/y.png", 0, 1)]:
        key = source_key(relative, page, pages)
        assert parse_source_key(key) == (relative, page)
    assert source_key("scan.tif", 1, 2) == "scan.tif#p2"


def test_manifest_records_round_trip_and_unknown_statuses_are_redone(tmp_path, caplog):
    ident = RunIdentity("m" * 64, "c" * 16)
    manifest = Manifest(tmp_path)
    manifest.add("a.png", "size=1", ident, Status.DONE, "a.png", "s" * 64, hinted=False)
    manifest.add("b.png", "size=2", ident, Status.FAILED, reason="cannot decode", hinted=False)
    manifest.close()
    lines = manifest_path(tmp_path).read_text(encoding="utf-8").splitlines()
    first = json.loads(lines[0])
    assert first["status"] == "done" and "reason" not in first and json.loads(lines[1])["reason"] == "cannot decode"
    with manifest_path(tmp_path).open("a", encoding="utf-8") as fh:
        fh.write(json.dumps({**first, "source": "c.png", "status": "half-done"}) + "\n")
    again = Manifest(tmp_path)
    assert set(again.records) == {"a.png", "b.png"} and "line 3: damaged manifest record" in caplog.text
    rec = again.records["a.png"]
    assert isinstance(rec, ManifestRecord) and rec.status is Status.DONE and rec.output == "a.png"
    assert ManifestRecord.from_json(rec.to_json()) == rec
    assert again.outputs() == {"a.png"}
    assert not again.is_current("b.png", "size=2", ident, hinted=False)  # a failure is retried


def test_run_reports_round_trip_with_the_status_words_as_counters(tmp_path):
    stats = RunStats()
    for status in (Status.DONE, Status.DONE, Status.COPIED, Status.SKIPPED_COLOR):
        stats.counts.add(status)
    stats.fail("x.png", "broken")
    stats.counts.skipped_up_to_date = 4
    report = RunReport.of_run(stats, tool="colorize-batch test", input="IN", output="OUT", model="m@1")
    report.write(tmp_path / "r.json")
    data = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))
    assert data["counts"] == {"done": 2, "skipped_up_to_date": 4, "skipped_color": 1, "copied": 1, "failed": 1,
                              "with_hints": 0, "left_out_without_hints": 0}
    assert data["exit_code"] == 1 and data["failures"] == [{"path": "x.png", "reason": "broken"}]
    assert set(RunCounts.keys()) >= {s.value for s in Status}  # one spelling: every status is a counter
    back = RunReport.read(tmp_path / "r.json")
    assert back == report and back.counts["done"] == 2
    with pytest.raises(ValueError, match="counts"):
        RunReport.from_json({"tool": "t", "counts": []})
