"""End-to-end runs of ``colorize-batch run`` on real files in temp dirs."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import grey_image, save
from PIL import Image
from skimage import color as skcolor

from colorize_batch.examples import build_example_tree
from colorize_batch.manifest import STATE_DIR, manifest_path, report_path


def lightness(arr: np.ndarray) -> np.ndarray:
    rgb = arr if arr.ndim == 3 else np.repeat(arr[..., None], 3, 2)
    return skcolor.rgb2lab(rgb[..., :3] / 255.0)[..., 0]


@pytest.fixture
def tree(tmp_path) -> Path:
    root = tmp_path / "in"
    build_example_tree(root)
    return root


@pytest.mark.parametrize("method", ["fast", "exact"])
def test_nested_tree_is_mirrored_with_sizes_and_grey_levels_kept(tree, tmp_path, run_cli, method):
    out = tmp_path / "out"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"output": {"recombination": method}}))
    run_cli("run", tree, out, "--workers", "0", "-q", "--config", cfg, expect=0)
    sources = sorted(p.relative_to(tree) for p in tree.rglob("*") if p.is_file())
    assert sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file() and STATE_DIR not in p.parts) == sources
    for rel in sources:
        with Image.open(tree / rel) as src, Image.open(out / rel) as dst:
            assert dst.mode == "RGB"
            src_arr = np.asarray(src)
            if src_arr.dtype == np.uint16:
                src_arr = (src_arr / 257).round().astype(np.uint8)
            if rel.name != "rotated.jpg":
                assert dst.size == src.size
            if rel.suffix in (".png", ".tif"):  # lossless outputs
                if method == "exact":  # Lab L of the output is the input's
                    assert np.abs(lightness(np.asarray(dst)) - lightness(src_arr)).mean() < 0.3, rel
                else:  # luma of the output (its grey version) is the input's grey level
                    luma = np.asarray(dst.convert("L")).astype(int)
                    assert np.abs(luma - src_arr.astype(int)).mean() < 1.0, rel
                    # the test net paints one strong colour everywhere; realistic colours: see test_recombination
                    assert np.abs(lightness(np.asarray(dst)) - lightness(src_arr)).mean() < 2.5, rel
            colourful = skcolor.rgb2lab(np.asarray(dst) / 255.0)[..., 1:]
            assert np.abs(colourful).mean() > 1.0, rel  # colour was added


def test_exif_rotated_jpeg_is_upright(tmp_path, run_cli):
    exif = Image.Exif()
    exif[0x0112] = 6
    save(tmp_path / "in" / "r.jpg", Image.fromarray(grey_image(80, 40)), exif=exif.tobytes())
    run_cli("run", tmp_path / "in", tmp_path / "out", "--workers", "0", "-q", expect=0)
    with Image.open(tmp_path / "out" / "r.jpg") as im:
        assert im.size == (40, 80) and im.getexif().get(0x0112, 1) == 1


def test_modes_rgba_palette_cmyk_16bit(tmp_path, run_cli):
    g = grey_image(64, 48)
    rgba = np.dstack([g, g, g, np.full_like(g, 200)])
    save(tmp_path / "in" / "rgba.png", Image.fromarray(rgba, "RGBA"))
    save(tmp_path / "in" / "pal.png", Image.fromarray(g).convert("P"))
    save(tmp_path / "in" / "cmyk.jpg", Image.fromarray(g).convert("RGB").convert("CMYK"))
    save(tmp_path / "in" / "deep.tif", Image.fromarray(g.astype(np.uint16) * 257))
    run_cli("run", tmp_path / "in", tmp_path / "out", "--workers", "0", "-q", expect=0)
    for name in ("rgba.png", "pal.png", "cmyk.jpg", "deep.tif"):
        with Image.open(tmp_path / "out" / name) as im:
            assert im.mode == "RGB" and im.size == (64, 48)


def test_bad_files_fail_alone_with_exit_1(tmp_path, run_cli):
    src = tmp_path / "in"
    save(src / "good.png", Image.fromarray(grey_image()))
    save(src / "full.jpg", Image.fromarray(grey_image(300, 200)), quality=95)
    data = (src / "full.jpg").read_bytes()
    (src / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (src / "full.jpg").unlink()
    (src / "notes.jpg").write_text("not a photo")
    (src / "empty.png").write_bytes(b"")
    report = tmp_path / "report.json"
    result = run_cli("run", src, tmp_path / "out", "--workers", "0", "--report", report, expect=1)
    assert (tmp_path / "out" / "good.png").is_file()
    assert not (tmp_path / "out" / "truncated.jpg").exists()
    rep = json.loads(report.read_text())
    reasons = {Path(f["path"]).name: f["reason"] for f in rep["failures"]}
    assert set(reasons) == {"truncated.jpg", "notes.jpg", "empty.png"}
    assert "truncated" in reasons["truncated.jpg"] and "not an image" in reasons["notes.jpg"]
    assert rep["counts"]["done"] == 1 and rep["counts"]["failed"] == 3 and rep["exit_code"] == 1
    assert "notes.jpg" in result.output
    assert not list((tmp_path / "out").rglob("*.cb-tmp"))


def test_out_equal_to_in_or_containing_it_is_refused(tmp_path, run_cli):
    save(tmp_path / "in" / "a.png", Image.fromarray(grey_image()))
    assert run_cli("run", tmp_path / "in", tmp_path / "in").exit_code == 2
    assert run_cli("run", tmp_path / "in", tmp_path).exit_code == 2
    run_cli("run", tmp_path / "in", tmp_path / "in" / "colour", "--workers", "0", "-q", expect=0)
    assert (tmp_path / "in" / "colour" / "a.png").is_file()
    # a second run must not pick up its own outputs
    run_cli("run", tmp_path / "in", tmp_path / "in" / "colour", "--workers", "0", "-q", "--force", expect=0)
    assert not (tmp_path / "in" / "colour" / "colour").exists()


def test_config_errors_are_all_listed(tmp_path, run_cli):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"model": {"size": "big", "colour": 1}, "loader": {"batch_size": 0}}))
    result = run_cli("run", tmp_path, tmp_path / "o", "--config", bad)
    assert result.exit_code == 2
    for needle in ("model.size", "model.colour", "loader.batch_size", "3 problem"):
        assert needle in result.output


def test_print_config_shows_overrides_and_dry_run_writes_nothing(tmp_path, run_cli):
    result = run_cli("run", tmp_path, tmp_path / "o", "--batch-size", "3", "--print-config", expect=0)
    cfg = yaml.safe_load(result.output)
    assert cfg["loader"]["batch_size"] == 3 and cfg["model"]["size"] == 256
    save(tmp_path / "in" / "a.png", Image.fromarray(grey_image()))
    result = run_cli("run", tmp_path / "in", tmp_path / "out", "--dry-run", expect=0)
    assert "would colorize" in result.output and "a.png" in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("workers", [0, 2])
def test_batch_size_does_not_change_pixels(tmp_path, run_cli, workers):
    for i in range(9):
        save(tmp_path / "in" / f"{i}.png", Image.fromarray(grey_image(50 + 7 * i, 40 + 3 * i, seed=i)))
    run_cli("run", tmp_path / "in", tmp_path / "b1", "--batch-size", "1", "--workers", str(workers), "-q", expect=0)
    run_cli("run", tmp_path / "in", tmp_path / "b7", "--batch-size", "7", "--workers", str(workers), "-q", expect=0)
    for i in range(9):
        a = np.asarray(Image.open(tmp_path / "b1" / f"{i}.png")).astype(int)
        b = np.asarray(Image.open(tmp_path / "b7" / f"{i}.png")).astype(int)
        assert np.abs(a - b).max() <= 1


def test_single_file_input(tmp_path, run_cli):
    src = save(tmp_path / "photo.jpg", Image.fromarray(grey_image()))
    run_cli("run", src, tmp_path / "result.png", "-q", expect=0)
    assert Image.open(tmp_path / "result.png").mode == "RGB"
    run_cli("run", src, tmp_path / "dir", "-q", expect=0)
    assert (tmp_path / "dir" / "photo.jpg").is_file()


def test_format_option_and_collisions(tmp_path, run_cli):
    save(tmp_path / "in" / "a.png", Image.fromarray(grey_image()))
    save(tmp_path / "in" / "a.tif", Image.fromarray(grey_image(seed=3)))
    result = run_cli("run", tmp_path / "in", tmp_path / "out", "--format", "jpg", "--workers", "0")
    assert result.exit_code == 1
    assert "also the output of" in result.output
    assert [p.name for p in (tmp_path / "out").glob("*.jpg")] == ["a.jpg"]


def test_help_and_version(run_cli):
    assert "Exit codes" in run_cli("run", "--help", expect=0).output
    assert "colorize-batch" in run_cli("--version", expect=0).output


def test_log_file_gets_failures_for_cron(tmp_path, run_cli):
    save(tmp_path / "in" / "good.png", Image.fromarray(grey_image()))
    (tmp_path / "in" / "bad.png").write_text("nope")
    log = tmp_path / "colorize.log"
    run_cli("run", tmp_path / "in", tmp_path / "out", "--workers", "0", "-q", "--log-file", log, expect=1)
    text = log.read_text()
    assert "bad.png" in text and "not an image" in text


def test_relative_weights_flag_is_relative_to_the_working_directory(tmp_path, run_cli, tiny_weights, monkeypatch):
    import shutil

    save(tmp_path / "in" / "a.png", Image.fromarray(grey_image()))
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "p.yaml").write_text("model: {size: 64}\n")
    shutil.copy(tiny_weights, tmp_path / "w.pt")
    monkeypatch.chdir(tmp_path)
    run_cli("run", "in", "out", "--config", "cfg/p.yaml", "--weights", "w.pt", "--workers", "0", "-q", weights=None, expect=0)
    assert (tmp_path / "out" / "a.png").is_file()


def test_size_not_fitting_the_network_is_a_usage_error(tmp_path, run_cli):
    save(tmp_path / "in" / "a.png", Image.fromarray(grey_image()))
    result = run_cli("run", tmp_path / "in", tmp_path / "out", "--size", "40", "--workers", "0")
    assert result.exit_code == 2 and "multiple of 16" in result.output


def test_batches_ramp_up_so_the_network_starts_after_one_decode():
    from colorize_batch.local_engine import ramped_batches

    batches = ramped_batches(20, 8)
    assert [len(b) for b in batches] == [1, 2, 4, 8, 5]
    assert [i for b in batches for i in b] == list(range(20))  # every file once, in order
    assert ramped_batches(0, 8) == [] and ramped_batches(3, 1) == [[0], [1], [2]]


def test_lanes_do_not_change_pixels_and_every_file_is_recorded(tmp_path, run_cli):
    for i in range(11):
        save(tmp_path / "in" / f"{i}.png", Image.fromarray(grey_image(50 + 7 * i, 40 + 3 * i, seed=i)))
    (tmp_path / "in" / "bad.png").write_text("not a picture")
    import torch

    threads = torch.get_num_threads()
    run_cli("run", tmp_path / "in", tmp_path / "one", "--lanes", "1", "-q", expect=1)
    run_cli("run", tmp_path / "in", tmp_path / "three", "--lanes", "3", "--batch-size", "2", "-q", expect=1)
    assert torch.get_num_threads() == threads  # the lanes' thread settings do not outlive the run
    for i in range(11):
        a = np.asarray(Image.open(tmp_path / "one" / f"{i}.png")).astype(int)
        b = np.asarray(Image.open(tmp_path / "three" / f"{i}.png")).astype(int)
        assert np.abs(a - b).max() <= 1
    report = json.loads(report_path(tmp_path / "three").read_text())
    assert report["counts"]["done"] == 11 and report["counts"]["failed"] == 1
    manifest = manifest_path(tmp_path / "three").read_text().splitlines()
    assert len({json.loads(line)["source"] for line in manifest}) == 12
    run_cli("run", tmp_path / "in", tmp_path / "three", "--lanes", "3", "-q", expect=1)  # rerun: only bad.png again
    report = json.loads(report_path(tmp_path / "three").read_text())
    assert report["counts"]["done"] == 0 and report["counts"]["skipped_up_to_date"] == 11


def test_a_lane_error_stops_the_run_and_is_raised(tmp_path, tiny_weights, monkeypatch):
    from colorize_batch.config import load_config
    from colorize_batch.inference import Colorizer
    from colorize_batch.runner import run_pipeline

    for i in range(6):
        save(tmp_path / "in" / f"{i}.png", Image.fromarray(grey_image(seed=i)))
    calls = []
    real_predict = Colorizer.predict

    def flaky(self, batch, on_device=False, hints=None):
        calls.append(len(batch))
        if len(calls) == 2:
            raise RuntimeError("CUDA out of memory (simulated)")
        return real_predict(self, batch, on_device, hints)

    monkeypatch.setattr(Colorizer, "predict", flaky)
    config = load_config(None, {"model.weights": str(tiny_weights), "loader.lanes": 2, "loader.batch_size": 1, "loader.workers": 0})
    with pytest.raises(RuntimeError, match="out of memory"):
        run_pipeline(tmp_path / "in", tmp_path / "out", config, quiet=True)


def test_lanes_default_to_two_on_a_multi_core_cpu_and_one_on_cuda():
    import torch

    from colorize_batch.inference import Lanes, resolve_lanes

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_lanes(cpu, cores=2) == Lanes(2, 1)
    assert resolve_lanes(cpu, cores=16) == Lanes(2, 8)
    assert resolve_lanes(cpu, cores=1) == Lanes(1, 1)
    assert resolve_lanes(cuda, cores=16) == Lanes(1, 16)
    assert resolve_lanes(cpu, lanes=3, torch_threads=2, cores=4) == Lanes(3, 2)


def test_a_copied_colour_input_keeps_its_suffix_in_the_result_not_in_the_job(tmp_path, run_cli, tiny_weights):
    """FileResult carries the path written: a colour JPEG copied under --format png stays .jpg, the
    manifest records that name, the planned job is left as planned, and a rerun finds it up to date."""
    from skimage import data

    from colorize_batch.batch_transport import DecodeDataset
    from colorize_batch.config import load_config
    from colorize_batch.planning import plan_run
    from colorize_batch.stages import Status, triage

    colour = save(tmp_path / "in" / "colour.jpg", Image.fromarray(data.astronaut()).resize((96, 96)))
    args = ("run", tmp_path / "in", tmp_path / "out", "--workers", "0", "-q", "--format", "png", "--color-inputs", "copy")
    run_cli(*args, expect=0)
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.is_file()) == ["colour.jpg"]
    assert (tmp_path / "out" / "colour.jpg").read_bytes() == colour.read_bytes()
    records = [json.loads(line) for line in manifest_path(tmp_path / "out").read_text().splitlines()]
    assert [(r["status"], r["output"]) for r in records] == [("copied", "colour.jpg")]
    run_cli(*args, expect=0)
    assert json.loads(report_path(tmp_path / "out").read_text())["counts"]["skipped_up_to_date"] == 1

    config = load_config(None, {"model.weights": str(tiny_weights), "output.format": "png", "input.color_inputs": "copy"})
    job = plan_run(tmp_path / "in", tmp_path / "again", config, None, None).jobs[0]
    planned = job.output
    result = triage(DecodeDataset([job.item.source], config.model.size)[0], job, config)
    assert result is not None and result.status is Status.COPIED
    assert result.output == tmp_path / "again" / "colour.jpg" and job.output == planned == tmp_path / "again" / "colour.png"
