"""What the ninth hostile run found, each proved on real files: a 16-bit TIFF stored MinIsWhite (0 is
white) came out as a negative; an uncompressed TIFF whose EXIF orientation swaps the axes (5-8) was
read raw with tifffile, so a MinIsWhite one came out a negative, a CMYK one a negative, a palette one
as its indices, an RGBA one without its white and a bilevel one failed, and the gallery's thumbnail of
any of them was scrambled; a 32-bit integer or signed 16-bit grey TIFF was clipped to 0-65535 without
a word; a JPEG whose data ends early behind an end marker was colorized with a flat grey band; the
Exif IFD's Interoperability pointer was copied into outputs pointing past their EXIF block;
``input.decode_timeout`` beyond the alarm's range failed every photo; an empty path given to any
command but run (``train --out ""`` trained into the current folder) or set in a config file was
taken as a folder; ``export`` replaced the run's own checkpoint; training settings torch refuses ended
in tracebacks; a run folder under the training photos trained on its own contact sheets after
``--resume``; ``report merge`` after re-sharding summed both job shapes; ``gallery --workers`` was
checked as ``loader.workers``; hint files and bundles lost points to a key given twice or one photo
spelled twice; and the Python API let a PIL image that fails to load out as a bare ``OSError`` and
took an empty hints, weights or config path as the current folder."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest
import tifffile
from conftest import save
from PIL import Image

from colorize_batch.decoding import DecodeError
from colorize_batch.exit_codes import ExitCode
from colorize_batch.gallery import thumbnail_image
from colorize_batch.manifest import report_path, state_dir

UPRIGHT = {1: lambda a: a, 6: lambda a: np.rot90(a, -1), 8: lambda a: np.rot90(a, 1)}


def ramp(h: int = 60, w: int = 90) -> np.ndarray:
    """An asymmetric grey ramp (uint8): a negative, a scramble or a wrong turn cannot match it."""
    y, x = np.mgrid[0:h, 0:w]
    return ((x * 2 + y) % 256).astype(np.uint8)


def exif(orientation: int) -> bytes:
    e = Image.Exif()
    e[0x0112] = orientation
    return e.tobytes()


def luma(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("L"), dtype=float)


def follows(out: np.ndarray, expected: np.ndarray) -> bool:
    """The output's grey levels are the expected ones (the colour moves them a little, never reverses them)."""
    return out.shape == expected.shape and np.corrcoef(out.ravel(), expected.ravel().astype(float))[0, 1] > 0.95


# ----------------------------------------------------------------------------- MinIsWhite and orientation
@pytest.mark.parametrize("orientation", [1, 6])
@pytest.mark.parametrize("bits", [8, 16])
def test_a_min_is_white_tiff_is_colorized_as_the_photo_not_its_negative(tmp_path, run_cli, bits, orientation):
    grey = ramp()
    stored = 255 - grey if bits == 8 else 65535 - grey.astype(np.uint16) * 257  # level 0 is white
    source = tmp_path / "in" / "scan.tif"
    source.parent.mkdir()
    tifffile.imwrite(source, stored, photometric="miniswhite", extratags=[(274, "H", 1, orientation, False)])
    run_cli("run", source.parent, tmp_path / "out", "-q", expect=ExitCode.OK)
    expected = UPRIGHT[orientation](grey)
    assert follows(luma(tmp_path / "out" / "scan.tif"), expected)
    with Image.open(source) as im:  # the gallery shows the scan as the run reads it
        assert follows(np.asarray(thumbnail_image(im, 1000), dtype=float), expected)


@pytest.mark.parametrize("mode", ["CMYK", "P", "RGBA", "1"])
def test_an_uncompressed_tiff_turned_by_its_orientation_is_read_as_the_same_tiff_upright(tmp_path, run_cli, mode):
    """Orientation 6 (uncompressed: Pillow scrambles these, so they take another road) gives the
    output of the same file stored upright, turned: same mode handling, same levels."""
    rgb = Image.fromarray(np.stack([ramp()] * 3, -1))
    alpha = Image.fromarray(np.where(np.mgrid[0:60, 0:90][1] < 45, 0, 255).astype(np.uint8))
    picture = {"CMYK": rgb.convert("CMYK"), "P": rgb.convert("L").quantize(64), "1": rgb.convert("1"),
               "RGBA": Image.merge("RGBA", (*rgb.split(), alpha))}[mode]
    save(tmp_path / "in" / "upright.tif", picture)
    save(tmp_path / "in" / "turned.tif", picture, exif=exif(6))
    run_cli("run", tmp_path / "in", tmp_path / "out", "-q", "--color-inputs", "recolor", expect=ExitCode.OK)
    upright, turned = luma(tmp_path / "out" / "upright.tif"), luma(tmp_path / "out" / "turned.tif")
    assert turned.shape == (90, 60)
    assert np.abs(turned - np.rot90(upright, -1)).mean() < 2  # the colour of one photo may differ by a level
    thumbs = []
    for name in ("upright.tif", "turned.tif"):
        with Image.open(tmp_path / "in" / name) as im:
            thumbs.append(np.asarray(thumbnail_image(im, 1000).convert("L"), dtype=float))
    assert thumbs[1].shape == (90, 60) and np.array_equal(thumbs[1], np.rot90(thumbs[0], -1))


# ----------------------------------------------------------------------------- damaged JPEG data
@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_a_jpeg_whose_image_data_is_damaged_fails_never_colorized_with_a_grey_band(tmp_path, run_cli, mode):
    """Cut short but closed by an end marker (a transfer cut and 'repaired'): libjpeg says 'Corrupt
    JPEG data: premature end of data segment' and fills the rest with grey; the photo was colorized
    and recorded as done, its lower part a flat grey band."""
    rng = np.random.default_rng(0)
    noisy = np.clip(np.kron(ramp(), np.ones((4, 4))) + rng.normal(0, 20, (240, 360)), 0, 255).astype(np.uint8)
    picture = Image.fromarray(noisy).convert(mode)
    whole = save(tmp_path / "whole.jpg", picture, quality=90).read_bytes()
    cut = len(whole) * 6 // 10
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "cut.jpg").write_bytes(whole[:cut] + b"\xff\xd9")
    (tmp_path / "in" / "whole.jpg").write_bytes(whole)
    result = run_cli("run", tmp_path / "in", tmp_path / "out", "--color-inputs", "recolor", expect=ExitCode.FAILED)
    assert "cut.jpg: damaged image data: Corrupt JPEG data: premature end of data segment" in result.output
    assert sorted(p.name for p in (tmp_path / "out").glob("*.jpg")) == ["whole.jpg"]


# ----------------------------------------------------------------------------- integer levels beyond 16 bits
def test_integer_grey_levels_beyond_16_bits_fail_their_photo_alone_never_clipped(tmp_path, run_cli):
    grey = ramp().astype(np.int32)
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "wide.tif", grey * 1000, photometric="minisblack")
    tifffile.imwrite(tmp_path / "in" / "signed.tif", (grey * 64 - 8192).astype(np.int16), photometric="minisblack")
    tifffile.imwrite(tmp_path / "in" / "fits.tif", grey * 200, photometric="minisblack")  # 32-bit, levels within 16 bits
    result = run_cli("run", tmp_path / "in", tmp_path / "out", expect=ExitCode.FAILED)
    assert "wide.tif: integer grey levels 0.." in result.output and "signed.tif: integer grey levels -8192.." in result.output
    assert sorted(p.name for p in (tmp_path / "out").glob("*.tif")) == ["fits.tif"]
    assert follows(luma(tmp_path / "out" / "fits.tif"), ramp())


# ----------------------------------------------------------------------------- configuration
@pytest.mark.parametrize("seconds", ["1e10", "99999999999"])
def test_a_decode_timeout_beyond_a_day_is_a_configuration_error_not_every_photo_failed(tmp_path, run_cli, seconds):
    save(tmp_path / "in" / "a.png", Image.fromarray(ramp()))
    config = tmp_path / "c.yaml"
    config.write_text(f"input:\n  decode_timeout: {seconds}\n")
    result = run_cli("run", tmp_path / "in", tmp_path / "out", "--config", config, expect=ExitCode.USAGE)
    assert "input.decode_timeout" in result.output and "86400" in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("setting", ["beta1: 1.5", "beta2: -0.1", "seed: 100000000000000000000000", "lr: 1e300",
                                     "threads: 1000000", "crop: 100000", "batch_size: 100000000"])
def test_a_training_setting_torch_cannot_take_is_a_configuration_error_not_a_traceback(tmp_path, run_cli, setting):
    for i in range(2):
        save(tmp_path / "photos" / f"{i}.png", Image.fromarray(np.stack([ramp()] * 3, -1)))
    config = tmp_path / "c.yaml"
    config.write_text(f"train: {{preset: tiny, steps: 1, l1_steps: 1, min_chroma: 0, workers: 0, {setting}}}\n")
    result = run_cli("train", tmp_path / "photos", "--config", config, "--out", tmp_path / "run", expect=ExitCode.USAGE)
    assert f"train.{setting.split(':')[0]}: Input should be" in result.output and not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- the Python API
def test_the_api_names_the_file_of_a_pil_image_that_cannot_be_loaded(tmp_path, tiny_weights):
    import colorize_batch

    whole = save(tmp_path / "whole.png", Image.fromarray(ramp()))
    data = whole.read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) - 40])
    session = colorize_batch.ColorizeSession(tiny_weights)
    with Image.open(tmp_path / "cut.png") as lazy, pytest.raises(DecodeError, match=r"cut\.png: cannot decode: .*truncated"):
        session.colorize(lazy)
    with pytest.raises(DecodeError, match="outside 0-65535"):
        session.colorize(Image.fromarray(np.full((8, 8), -5, np.int32), "I"))


# ----------------------------------------------------------------------------- an unset variable in a cron line
@pytest.mark.parametrize("args", [
    ["train", "{data}", "--config", "{tiny}", "--out", ""],
    ["eval", "{data}", "--report", ""],
    ["eval", "{data}", "--sheet", ""],
    ["gallery", "{out}", "--source", ""],
    ["info", "--weights", ""],
    ["run", "{data}", "{out}", "--config", ""],
    ["report", "merge", "{out}", "--output", ""],
], ids=lambda args: " ".join(a for a in args if a.startswith("-") or a.isalpha()))
def test_every_empty_path_option_is_refused_not_taken_as_the_current_folder(tmp_path, run_cli, monkeypatch, args):
    data = tmp_path / "photos"
    save(data / "a.png", Image.fromarray(np.stack([ramp()] * 3, -1)))
    out = tmp_path / "out"
    out.mkdir()
    tiny = tmp_path / "tiny.yaml"  # one step of the smallest network, should a train start at all
    tiny.write_text("train: {preset: tiny, steps: 1, l1_steps: 1, crop: 32, batch_size: 1, min_chroma: 0, workers: 0}\n")
    home = tmp_path / "home"  # cron's current folder
    home.mkdir()
    monkeypatch.chdir(home)
    result = run_cli(*[a.format(data=data, out=out, tiny=tiny) for a in args], weights=None, expect=ExitCode.USAGE)
    assert "is empty (an unset variable in a script?)" in result.output, result.output
    assert not list(home.iterdir())


@pytest.mark.parametrize("setting", ["model: {weights: ''}", "input: {hints_dir: ''}", "train: {data: [{path: ''}]}",
                                     "train: {val_dir: ''}"])
def test_an_empty_path_in_a_config_file_is_refused_not_taken_as_the_files_folder(tmp_path, run_cli, setting):
    save(tmp_path / "in" / "a.png", Image.fromarray(ramp()))
    config = tmp_path / "c.yaml"
    config.write_text(setting + "\n")
    result = run_cli("run", tmp_path / "in", tmp_path / "out", "--config", config, "--print-config", weights=None,
                     expect=ExitCode.USAGE)
    assert "an empty path" in result.output and str(tmp_path) + "\n" not in result.output


# ----------------------------------------------------------------------------- metadata
def test_an_interoperability_ifd_is_carried_not_left_pointing_into_nothing(tmp_path, run_cli):
    """Cameras and Picasa write an Interoperability IFD in the Exif IFD ("R98"); its pointer, copied as
    a number into the output's new, shorter EXIF block, pointed past its end: every reader of the
    output warned "Corrupt EXIF data" (the run's own writer on the terminal), the report noted a
    damaged EXIF block on a sound scan."""
    exif = Image.Exif()
    exif[0x0110] = "Camera"
    exif[0x8769] = {0x9000: b"0230", 0x9286: b"ASCII\0\0\0" + b"a long user comment" * 20,
                    0xA005: {1: "R98", 2: b"0100"}}
    save(tmp_path / "in" / "scan.jpg", Image.fromarray(ramp()), exif=exif.tobytes())
    run_cli("run", tmp_path / "in", tmp_path / "out", "--report", tmp_path / "run.json", expect=ExitCode.OK)
    assert json.loads((tmp_path / "run.json").read_text())["notes"] == []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with Image.open(tmp_path / "out" / "scan.jpg") as out:
            written = out.getexif()
            assert written.get_ifd(0xA005) == {1: "R98", 2: b"0100"}
            assert written.get_ifd(0x8769)[0x9000] == b"0230" and written[0x0110] == "Camera"


# ----------------------------------------------------------------------------- gallery
def test_gallery_workers_are_thumbnail_threads_not_the_runs_decode_processes(tmp_path, run_cli):
    """``gallery --workers`` shared its name with ``run --workers`` (loader.workers, at most 64): 100
    thumbnail threads were refused as '1 problem(s) in the configuration: loader.workers'."""
    save(tmp_path / "in" / "a.png", Image.fromarray(ramp()))
    run_cli("run", tmp_path / "in", tmp_path / "out", "-q", expect=ExitCode.OK)
    result = run_cli("gallery", tmp_path / "out", "--no-suggest", "--workers", "100", expect=ExitCode.OK)
    assert "loader.workers" not in result.output


# ----------------------------------------------------------------------------- shards
def test_report_merge_after_the_job_was_resharded_merges_only_the_new_shape(tmp_path, run_cli):
    import os

    for i in range(6):
        save(tmp_path / "in" / f"s{i}.png", Image.fromarray(np.roll(ramp(), i, 1)))
    (tmp_path / "in" / "bad.png").write_bytes(b"not a picture")
    out = tmp_path / "out"
    for shard in ("0/2", "1/2"):  # the old job shape: a failure, reported by one of its shards
        run_cli("run", tmp_path / "in", out, "-q", "--shard", shard)
    for old in state_dir(out).glob("last-run.shard-*-of-2.json"):
        os.utime(old, (1_000_000_000, 1_000_000_000))
    (tmp_path / "in" / "bad.png").unlink()
    for shard in ("0/3", "1/3", "2/3"):  # re-sharded onto three nodes, everything redone
        run_cli("run", tmp_path / "in", out, "-q", "--force", "--shard", shard, expect=ExitCode.OK)
    result = run_cli("report", "merge", out, expect=ExitCode.OK)
    assert "3 shard report(s): done 6, up to date 0, colour 0, failed 0" in result.output
    assert "left out 2 report(s) of an earlier job shape" in result.output
    merged = json.loads(report_path(out).read_text())
    assert merged["counts"]["done"] == 6 and merged["failures"] == [] and len(merged["shards"]) == 3


def test_the_gallery_reads_the_shards_reports_when_they_are_newer_than_the_last_merge(tmp_path, run_cli):
    """After ``report merge`` wrote last-run.json, the next night's shard runs are the current account:
    the gallery showed the old merged counts until the next merge."""
    import os

    from colorize_batch.gallery import _read_state

    for i in range(4):
        save(tmp_path / "in" / f"s{i}.png", Image.fromarray(np.roll(ramp(), i, 1)))
    out = tmp_path / "out"
    for shard in ("0/2", "1/2"):
        run_cli("run", tmp_path / "in", out, "-q", "--shard", shard, expect=ExitCode.OK)
    run_cli("report", "merge", out, expect=ExitCode.OK)
    assert _read_state(out, None, None).last_run.counts.done == 4  # the merge
    os.utime(report_path(out), (1_000_000_000, 1_000_000_000))  # the merge is older than the next runs
    save(tmp_path / "in" / "new.png", Image.fromarray(np.roll(ramp(), 9, 1)))
    for shard in ("0/2", "1/2"):  # the next night: one new photo
        run_cli("run", tmp_path / "in", out, "-q", "--shard", shard, expect=ExitCode.OK)
    state = _read_state(out, None, None)
    assert state.last_run.counts.done == 1 and state.last_run.counts.skipped_up_to_date == 4
    assert state.last_run_path.name.startswith("last-run.shard-")


@pytest.mark.parametrize("args", [("eval", "{in}", "--degrade", "nan"), ("train", "{in}", "--out", "{out}", "--max-minutes", "nan"),
                                  ("train", "{in}", "--out", "{out}", "--max-minutes", "-1"), ("run", "{in}", "{out}", "--temperature", "nan"),
                                  ("run", "{in}", "{out}", "--engine", "ray", "--gpus-per-actor", "nan")])
def test_a_float_option_given_nan_is_a_usage_error(tmp_path, run_cli, args):
    """``nan`` passes every range check: ``eval --degrade nan`` ended in a traceback, ``train --max-minutes
    nan`` never stopped (and a negative one stopped after one step)."""
    save(tmp_path / "in" / "a.png", Image.fromarray(ramp()))
    result = run_cli(*(a.format(**{"in": tmp_path / "in", "out": tmp_path / "out"}) for a in args), expect=ExitCode.USAGE)
    assert "Traceback" not in result.output and ("nan" in result.output or "-1" in result.output), result.output
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- train
def test_a_run_folder_under_the_training_photos_never_trains_on_its_own_contact_sheets(tmp_path, run_cli):
    """``train photos --out photos/run``: each validation writes a sheet PNG into the run folder, which
    ``--resume`` found among the training photos (and the resumed run drew other batches)."""
    import torch

    rng = np.random.default_rng(0)
    for i in range(6):
        save(tmp_path / "photos" / f"{i}.png", Image.fromarray(rng.integers(0, 255, (48, 48, 3)).astype(np.uint8)))
    save(tmp_path / "val" / "v.png", Image.fromarray(rng.integers(0, 255, (40, 40, 3)).astype(np.uint8)))
    config = tmp_path / "c.yaml"
    config.write_text(f"model: {{size: 32}}\ntrain: {{preset: tiny, steps: 4, l1_steps: 1, crop: 32, batch_size: 2, min_chroma: 0, "
                      f"workers: 0, val_every: 1, checkpoint_every: 1, val_dir: {tmp_path / 'val'}}}\n")
    inside, alone = tmp_path / "photos" / "run", tmp_path / "alone"
    run_cli("train", tmp_path / "photos", "--config", config, "--out", alone, expect=ExitCode.OK)  # the photos alone
    run_cli("train", tmp_path / "photos", "--config", config, "--out", inside, "--steps", "2", expect=ExitCode.OK)
    assert (inside / "sheet_000002.png").is_file()
    run_cli("train", tmp_path / "photos", "--config", config, "--out", inside, "--resume", expect=ExitCode.OK)
    a, b = (torch.load(run / "checkpoint.pt", weights_only=True)["generator"] for run in (inside, alone))
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)


# ----------------------------------------------------------------------------- export
def test_export_never_replaces_the_runs_checkpoint_or_its_own_source(tmp_path, run_cli, tiny_weights):
    rng = np.random.default_rng(0)
    for i in range(2):
        save(tmp_path / "photos" / f"{i}.png", Image.fromarray(rng.integers(0, 255, (48, 48, 3)).astype(np.uint8)))
    config = tmp_path / "tiny.yaml"
    config.write_text("train: {preset: tiny, steps: 1, l1_steps: 1, crop: 32, batch_size: 2, min_chroma: 0, workers: 0}\n")
    run = tmp_path / "run"
    run_cli("train", tmp_path / "photos", "--config", config, "--out", run, expect=ExitCode.OK)
    shutil.copy(tiny_weights, run / "generator_000005.pt")
    kept = {name: (run / name).read_bytes() for name in ("checkpoint.pt", "generator_000005.pt")}
    for dest, step in ((run / "checkpoint.pt", []), (run / "checkpoint.pt", ["--step", "5"]),
                       (run / "generator_000005.pt", ["--step", "5"]), (tmp_path / "run" / ".." / "run" / "checkpoint.pt", [])):
        result = run_cli("export", run, dest, *step, expect=ExitCode.USAGE)
        assert result.output.count("\n") == 1 and "the export would replace it" in result.output, result.output
    assert {name: (run / name).read_bytes() for name in kept} == kept
    run_cli("train", tmp_path / "photos", "--config", config, "--out", run, "--resume", "--steps", "2", expect=ExitCode.OK)


def test_the_api_refuses_an_empty_path_for_hints_weights_or_config(tmp_path, tiny_weights, monkeypatch):
    import colorize_batch
    from colorize_batch.config import ConfigError
    from colorize_batch.hints import HintError
    from colorize_batch.weights import WeightsError

    monkeypatch.chdir(tmp_path)  # what an empty path would have meant
    session = colorize_batch.ColorizeSession(tiny_weights)
    with pytest.raises(HintError, match="an empty path"):
        session.colorize(ramp(), hints="")
    with pytest.raises(WeightsError, match="an empty path"):
        colorize_batch.ColorizeSession("")
    with pytest.raises(WeightsError, match="an empty path"):
        colorize_batch.colorize(ramp(), weights="")
    with pytest.raises(ConfigError, match="an empty path"):
        colorize_batch.ColorizeSession(tiny_weights, config="")


# ----------------------------------------------------------------------------- hint bundles
def test_a_bundle_naming_one_photo_twice_writes_nothing(tmp_path, run_cli):
    """'a/photo.jpg', './a/photo.jpg' and 'a//photo.jpg' are one photo: the last document silently won
    (here: no points at all, the archivist's red and blue points gone)."""
    bundle = tmp_path / "bundle.json"
    bundle.write_text(json.dumps({"format": "colorize-batch-hints", "version": 1, "images": {
        "a/photo.jpg": {"points": [{"x": 0.1, "y": 0.1, "color": "#ff0000"}]},
        "a//photo.jpg": {"points": [{"x": 0.9, "y": 0.9, "color": "#0000ff"}]},
        "./a/photo.jpg": {"points": []}}}))
    result = run_cli("hints", "import", bundle, tmp_path / "hints", expect=ExitCode.USAGE)
    assert "'a/photo.jpg' and 'a//photo.jpg' name the same image" in result.output
    assert not (tmp_path / "hints").exists()


def test_a_hint_file_giving_a_key_twice_fails_its_photo_instead_of_losing_points(tmp_path, run_cli):
    save(tmp_path / "in" / "a.png", Image.fromarray(ramp()))
    save(tmp_path / "in" / "b.png", Image.fromarray(ramp()))
    red = '{"x": 0.5, "y": 0.5, "color": "#ff0000"}'
    (tmp_path / "in" / "a.hints.json").write_text(f'{{"points": [{red}], "points": []}}')  # an edit pasted below the old one
    (tmp_path / "in" / "b.hints.json").write_text(f'{{"points": [{red}]}}')
    result = run_cli("run", tmp_path / "in", tmp_path / "out", expect=ExitCode.FAILED)
    assert "a.hints.json: not a usable hint document (key 'points' is given twice in one object)" in result.output
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["b.png"]
    bundle = tmp_path / "bundle.json"
    bundle.write_text('{"format": "colorize-batch-hints", "images": {"a.png": {"points": []}, "a.png": {"points": []}}}')
    result = run_cli("hints", "import", bundle, tmp_path / "hints", expect=ExitCode.USAGE)
    assert "key 'a.png' is given twice" in result.output and not (tmp_path / "hints").exists()
