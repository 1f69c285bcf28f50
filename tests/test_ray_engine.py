"""The Ray engine (``--engine ray``) gives the local engine's results: same files, pixels, failures.

One local Ray session (2 CPUs) serves every test: Ray starts slowly. The engine is driven
through ``run_pipeline(..., engine="ray")`` (:func:`run_with_ray` below), as ``--engine ray`` does.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import grey_image, save
from PIL import Image

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

from colorize_batch.config import load_config  # noqa: E402
from colorize_batch.manifest import STATE_DIR, manifest_path, report_path  # noqa: E402
from colorize_batch.planning import plan_run  # noqa: E402
from colorize_batch.ray_engine import RayEngine, RayEngineError, import_ray  # noqa: E402
from colorize_batch.reporting import RunStats  # noqa: E402
from colorize_batch.runner import run_pipeline  # noqa: E402
from colorize_batch.signals import StopFlag  # noqa: E402
from colorize_batch.stages import ResultSink  # noqa: E402
from colorize_batch.weights import load_weights  # noqa: E402


def run_with_ray(in_path: Path, out_path: Path, config, **engine_options) -> int:
    """The whole run (lock, plan, manifest, report, exit code) on the Ray engine, quietly."""
    return run_pipeline(in_path, out_path, config, quiet=True, engine="ray", engine_options=engine_options)


@pytest.fixture(scope="session")
def ray_session():
    ray.init(num_cpus=2, object_store_memory=100 * 1024 * 1024, include_dashboard=False, log_to_driver=False,
             ignore_reinit_error=True)
    yield ray
    ray.shutdown()


def make_tree(root: Path) -> Path:
    """Nested grey PNGs/JPEGs, a two-page TIFF, one colour photo, a text file named .jpg and a truncated PNG."""
    for i, rel in enumerate(["top.png", "a/one.png", "a/two.jpg", "a/b/three.png", "a/b/four.jpg", "c/five.png"]):
        kwargs = {"quality": 90} if rel.endswith(".jpg") else {}
        save(root / rel, Image.fromarray(grey_image(60 + 9 * i, 40 + 5 * i, seed=i)), **kwargs)
    rng = np.random.default_rng(7)
    save(root / "c" / "colour.jpg", Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)), quality=95)
    (root / "a" / "notes.jpg").write_text("not a photo")
    pages = [Image.fromarray(grey_image(50, 30, seed=s)) for s in (8, 9)]  # a roll of two pages: a report note
    pages[0].save(root / "c" / "roll.tif", save_all=True, append_images=pages[1:])
    png = (root / "top.png").read_bytes()
    (root / "c" / "truncated.png").write_bytes(png[: len(png) // 2])
    return root


def outputs(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and STATE_DIR not in p.parts)


def report(out: Path) -> dict:
    return json.loads(report_path(out).read_text())


def failures(rep: dict) -> list[tuple[str, str]]:
    return sorted((f["path"], f["reason"]) for f in rep["failures"])


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_weights, ray_session):
    """The same tree through the local engine and the Ray engine (2 actors), once for all tests here."""
    base = tmp_path_factory.mktemp("ray")
    src = make_tree(base / "in")
    config = load_config(None, {"model.weights": str(tiny_weights), "model.size": 32, "loader.workers": 0,
                                "loader.batch_size": 3})
    local_code = run_pipeline(src, base / "local", config, quiet=True)
    ray_code = run_with_ray(src, base / "ray", config, actors=2)
    return {"src": src, "local": base / "local", "ray": base / "ray", "config": config,
            "local_code": local_code, "ray_code": ray_code}


def test_ray_outputs_equal_the_local_engine_outputs(runs):
    local, remote = runs["local"], runs["ray"]
    names = outputs(local)
    assert names == outputs(remote)
    assert sorted(names) == sorted(["top.png", "a/one.png", "a/two.jpg", "a/b/three.png", "a/b/four.jpg", "c/five.png",
                                    "c/roll.tif"])
    for rel in names:
        with Image.open(local / rel) as a, Image.open(remote / rel) as b:
            assert a.size == b.size and a.mode == b.mode == "RGB", rel
            assert np.abs(np.asarray(a).astype(int) - np.asarray(b).astype(int)).max() <= 1, rel
            assert a.getexif().get(0x0131) == b.getexif().get(0x0131), rel  # Software: machine-colorized mark
    rep_local, rep_ray = report(local), report(remote)
    assert rep_local["counts"] == rep_ray["counts"]
    assert rep_ray["counts"]["done"] == 7 and rep_ray["counts"]["skipped_color"] == 1
    assert rep_ray["model"] == rep_local["model"]
    assert rep_ray["stage_seconds"]["forward"] > 0 and rep_ray["stage_seconds"]["decode"] > 0


def test_failures_are_reported_the_same_way(runs):
    assert runs["local_code"] == runs["ray_code"] == 1
    rep_local, rep_ray = report(runs["local"]), report(runs["ray"])
    assert failures(rep_ray) == failures(rep_local)
    reasons = {Path(path).name: reason for path, reason in failures(rep_ray)}
    assert set(reasons) == {"notes.jpg", "truncated.png"}
    assert "not an image" in reasons["notes.jpg"]
    assert rep_ray["exit_code"] == 1
    assert not list(runs["ray"].rglob("*.cb-tmp"))


def test_report_notes_are_the_local_engines(runs):
    def notes(out: Path) -> list[tuple[str, str]]:
        return sorted((Path(n["path"]).name, n["message"]) for n in report(out)["notes"])

    assert notes(runs["ray"]) == notes(runs["local"])  # the decoders' notes come back from the actors too
    assert ("roll.tif", "TIFF of 2 pages: the first is colorized (input.tiff_pages: all for every page)") in notes(runs["ray"])


def test_manifest_records_match_and_a_rerun_skips_done_files(runs):
    def records(out: Path) -> dict:
        lines = manifest_path(out).read_text().splitlines()
        return {r["source"]: (r["status"], r["output"]) for r in map(json.loads, lines)}

    assert records(runs["ray"]) == records(runs["local"])
    remote = runs["ray"]
    stamps = {rel: (remote / rel).stat().st_mtime_ns for rel in outputs(remote)}
    code = run_with_ray(runs["src"], remote, runs["config"], actors=2)
    rep = report(remote)
    assert code == 1  # the two bad files are tried again, and fail again
    assert rep["counts"]["skipped_up_to_date"] == 8 and rep["counts"]["done"] == 0 and rep["counts"]["failed"] == 2
    assert {rel: (remote / rel).stat().st_mtime_ns for rel in outputs(remote)} == stamps


def test_stop_flag_finishes_what_came_back_and_exits_130(tmp_path, tiny_weights, ray_session):
    src = tmp_path / "in"
    for i in range(12):
        save(src / f"{i:02d}.png", Image.fromarray(grey_image(48, 32, seed=i)))
    config = load_config(None, {"model.weights": str(tiny_weights), "model.size": 32, "loader.batch_size": 2})
    plan = plan_run(src, tmp_path / "out", config, None, None)
    stats = RunStats()
    stop = StopFlag()
    stop.event.set()  # as if Ctrl-C came at once: the first results are recorded, then the run stops
    engine = RayEngine(config, quiet=True, actors=1)
    engine.load(tiny_weights, load_weights(tiny_weights)[1].sha256)
    engine.run(plan, ResultSink(stats, None, None, plan.out_path), stop)
    assert stats.interrupted and stats.exit_code() == 130
    assert 1 <= stats.counts["done"] < 12
    assert len(outputs(tmp_path / "out")) >= stats.counts["done"]


def test_gpus_requested_on_a_cluster_without_gpus_fail_fast(tmp_path, tiny_weights, ray_session, capsys):
    if ray.cluster_resources().get("GPU", 0):
        pytest.skip("this machine has GPUs")
    save(tmp_path / "in" / "a.png", Image.fromarray(grey_image()))
    config = load_config(None, {"model.weights": str(tiny_weights), "model.size": 32})
    assert run_with_ray(tmp_path / "in", tmp_path / "out", config, actors=1, gpus_per_actor=1) == 2
    assert "has no GPUs" in capsys.readouterr().err
    with pytest.raises(RayEngineError, match="need 3 CPUs"):
        plan = plan_run(tmp_path / "in", tmp_path / "out2", config, None, None)
        engine = RayEngine(config, actors=3)
        engine.load(tiny_weights, load_weights(tiny_weights)[1].sha256)
        engine.run(plan, ResultSink(RunStats(), None, None, plan.out_path), StopFlag())


def test_missing_ray_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(RayEngineError, match=r"pip install 'colorize-batch\[ray\]'"):
        import_ray()


def test_cli_engine_ray(tmp_path, run_cli, ray_session):
    from colorize_batch.cli import run as run_command

    if "engine" not in {p.name for p in run_command.params}:
        pytest.skip("cli.py has no --engine yet")
    for i in range(3):
        save(tmp_path / "in" / "d" / f"{i}.png", Image.fromarray(grey_image(seed=i)))
    run_cli("run", tmp_path / "in", tmp_path / "out", "--engine", "ray", "--actors", "2", "--size", "32", "-q", expect=0)
    assert outputs(tmp_path / "out") == [os.path.join("d", f"{i}.png") for i in range(3)]
    result = run_cli("run", tmp_path / "in", tmp_path / "o2", "--engine", "ray", "--gpus-per-actor", "1", "--size", "32")
    if not ray.cluster_resources().get("GPU", 0):
        assert result.exit_code == 2 and "has no GPUs" in result.output
