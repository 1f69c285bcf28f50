"""What the sixth hostile run found, each proved on real files: a file name holding rich markup
(``[/red]``) or a newline is said on one line in the log, the summary and the dry-run listing
(no traceback, no forged log line); shard variables that are not numbers and SLURM arrays with
a step; ``eval`` over photos it cannot read or score; a hint file's integer too large for a
float; a CUDA index torch cannot hold; ``--report``/``--log-file``/``--sheet`` naming an input
photo; a TIFF without resolution tags; ``-v`` filling the report's notes with Pillow's debug
lines; a name that is not UTF-8 under ``--shard``; ``input.hints_dir`` in a YAML file that is
not a folder; the failed page of a multi-page TIFF; a section given twice in a config file;
and (session 14) a hint file with a byte-order mark, `eval` of a grey truth (PSNR infinity in the
JSON), output to a full device (`> /dev/full`), a PNG whose XMP or ICC chunk inflates past Pillow's
1 MiB."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import grey_image, save
from PIL import Image
from test_bounded import error_lines

from colorize_batch.exit_codes import ExitCode
from colorize_batch.manifest import report_path
from colorize_batch.sharding import resolve_shard, shard_of


def scans(root: Path, n: int = 2) -> Path:
    for i in range(n):
        save(root / f"scan{i}.png", Image.fromarray(grey_image(64, 48, seed=i)))
    return root


# ----------------------------------------------------------------------------- names in the summary
def test_a_name_holding_rich_markup_is_shown_as_it_is_without_a_traceback(tmp_path, run_cli):
    src = scans(tmp_path / "in")
    (src / "x[").mkdir()
    (src / "x[" / "red] y.jpg").write_bytes(b"")  # the path "x[/red] y.jpg": a closing tag for rich
    (src / "[bold]gone.jpg").write_bytes(b"")
    result = run_cli("run", src, tmp_path / "out", expect=ExitCode.FAILED)
    failed = [line for line in error_lines(result.output) if line.startswith("failed ")]
    assert failed == [f"failed {src}/[bold]gone.jpg: empty file (0 bytes)", f"failed {src}/x[/red] y.jpg: empty file (0 bytes)"]


def test_a_long_failure_is_one_line_in_the_summary_of_a_cron_run(tmp_path, run_cli):
    src = scans(tmp_path / "in")
    deep = src.joinpath(*["archive-folder-of-1923"] * 6)
    deep.mkdir(parents=True)
    (deep / "wedding.jpg").write_bytes(b"")
    result = run_cli("run", src, tmp_path / "out", expect=ExitCode.FAILED)  # not a terminal: 80 columns
    (line,) = [line for line in error_lines(result.output) if line.startswith("failed ")]
    assert line == f"failed {deep}/wedding.jpg: empty file (0 bytes)"


def test_a_name_holding_a_newline_cannot_split_or_forge_a_log_line(tmp_path, run_cli):
    src = scans(tmp_path / "in")
    (src / "bad\nERROR forged.jpg").write_bytes(b"")
    result = run_cli("run", src, tmp_path / "out", expect=ExitCode.FAILED)
    lines = error_lines(result.output)
    assert not any(line.startswith("ERROR forged") for line in lines)
    assert sum("bad\\x0aERROR forged.jpg: empty file (0 bytes)" in line for line in lines) == 2  # the log and the summary
    assert (tmp_path / "out" / "scan0.png").exists()



def test_the_dry_run_listing_shows_names_as_the_log_does_one_line_each(tmp_path, run_cli):
    src = scans(tmp_path / "in", 1)
    save(src / "a\nb.png", Image.fromarray(grey_image(64, 48, seed=3)))
    save(src / os.fsdecode(b"caf\xe9.png"), Image.fromarray(grey_image(64, 48, seed=4)))
    result = run_cli("run", src, tmp_path / "out", "--dry-run", expect=0)
    lines = error_lines(result.output)
    assert all(line.startswith(("would colorize ", "dry run: ")) for line in lines), lines
    assert f"would colorize {src}/a\\x0ab.png -> {tmp_path}/out/a\\x0ab.png" in lines
    assert f"would colorize {src}/caf\\xe9.png -> {tmp_path}/out/caf\\xe9.png" in lines

# ----------------------------------------------------------------------------- shards from the environment
@pytest.mark.parametrize(("env", "word"), [
    ({"SLURM_ARRAY_TASK_ID": "abc", "SLURM_ARRAY_TASK_COUNT": "4"}, "SLURM_ARRAY_TASK_ID='abc'"),
    ({"JOB_COMPLETION_INDEX": "1", "COLORIZE_SHARD_COUNT": ""}, "COLORIZE_SHARD_COUNT=''"),
    ({"JOB_COMPLETION_INDEX": "one", "COLORIZE_SHARD_COUNT": "2"}, "JOB_COMPLETION_INDEX='one'"),
])
def test_a_shard_variable_that_is_not_a_number_is_a_usage_error(tmp_path, run_cli, monkeypatch, env, word):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = run_cli("run", scans(tmp_path / "in"), tmp_path / "out", expect=ExitCode.USAGE)
    assert f"Error: {word}: expected a whole number" in result.output
    assert not (tmp_path / "out").exists()


def test_a_slurm_array_with_a_step_gives_every_shard_once():
    tasks = [{"SLURM_ARRAY_TASK_ID": str(t), "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "2",
              "SLURM_ARRAY_TASK_STEP": "3"} for t in (2, 5, 8, 11)]  # --array=2-11:3
    assert [resolve_shard(None, env=env).index for env in tasks] == [0, 1, 2, 3]



def test_shards_take_a_name_that_is_not_utf8_and_keep_every_other_shard(tmp_path, run_cli):
    src = scans(tmp_path / "in", 4)
    save(src / os.fsdecode(b"caf\xe9.png"), Image.fromarray(grey_image(64, 48, seed=9)))
    for i in range(2):
        run_cli("run", src, tmp_path / "out", "--shard", f"{i}/2", "-q", expect=0)
    assert len(list((tmp_path / "out").glob("*.png"))) == 5
    assert shard_of("scan0.png", 7) == int.from_bytes(hashlib.sha256(b"scan0.png").digest()[:8], "big") % 7  # unchanged

# ----------------------------------------------------------------------------- eval over a folder with bad photos
def test_eval_leaves_out_a_photo_it_cannot_read_or_score_in_one_line_each(tmp_path, run_cli, tiny_weights):
    photos = tmp_path / "colour"
    rgb = np.stack([grey_image(64, 48, seed=s) for s in (0, 1, 2)], axis=2)
    save(photos / "good.png", Image.fromarray(rgb))
    (photos / "empty.jpg").write_bytes(b"")
    save(photos / "dot.png", Image.fromarray(rgb[:1, :1]))  # 1x1: SSIM has no 7x7 window
    result = run_cli("eval", photos, "--weights", tiny_weights, "--report", tmp_path / "eval.json", expect=ExitCode.FAILED)
    failed = [line for line in error_lines(result.output) if line.startswith("failed ")]
    assert failed == [f"failed {photos}/dot.png: 1x1 pixels: too small to score (SSIM needs 7x7)",
                      f"failed {photos}/empty.jpg: cannot read the photo (cannot identify image file '{photos}/empty.jpg')"]
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["images"] == 1 and [f["path"] for f in report["failures"]] == [str(photos / "dot.png"), str(photos / "empty.jpg")]


def test_eval_with_no_photo_it_can_score_says_so_in_one_line(tmp_path, run_cli, tiny_weights):
    photos = tmp_path / "colour"
    (photos / "sub").mkdir(parents=True)
    (photos / "sub" / "empty.jpg").write_bytes(b"")
    result = run_cli("eval", photos, "--weights", tiny_weights, "--sheet", tmp_path / "sheet.png", expect=ExitCode.FAILED)
    assert f"Error: {photos}: none of the 1 photo(s) could be scored" in result.output
    assert not (tmp_path / "sheet.png").exists()


# ----------------------------------------------------------------------------- hint files
def test_a_hint_file_with_an_integer_too_large_for_a_float_fails_only_its_photo(tmp_path, run_cli):
    src = scans(tmp_path / "in")
    (src / "scan0.hints.json").write_text('{"points": [{"x": 1' + "0" * 400 + ', "y": 0.5, "color": "#aa3300"}]}')
    result = run_cli("run", src, tmp_path / "out", expect=ExitCode.FAILED)
    (line,) = [line for line in error_lines(result.output) if line.startswith("failed ")]
    assert line.startswith(f"failed {src}/scan0.png: hint file") and "x = 100000000000... (401 digits) is outside 0-1" in line
    assert (tmp_path / "out" / "scan1.png").exists() and not (tmp_path / "out" / "scan0.png").exists()
    result = run_cli("hints", "check", src / "scan0.hints.json", expect=ExitCode.USAGE)
    assert "(401 digits) is outside 0-1" in result.output


# ----------------------------------------------------------------------------- --device
@pytest.mark.parametrize("device", ["cuda:99999999999999999999999", "cuda:300", "cuda:\u0663"])
def test_a_cuda_index_torch_cannot_hold_is_a_configuration_error(tmp_path, run_cli, device):
    result = run_cli("run", scans(tmp_path / "in"), tmp_path / "out", "--device", device, expect=ExitCode.USAGE)
    assert "model.device: Value error, must be auto, cpu, cuda or cuda:N (N from 0 to 127)" in result.output


# ----------------------------------------------------------------------------- named files that are input photos
@pytest.mark.parametrize("option", ["--report", "--log-file"])
def test_a_report_or_log_file_naming_an_input_photo_is_refused_and_the_photo_kept(tmp_path, run_cli, option):
    src = scans(tmp_path / "in")
    before = (src / "scan1.png").read_bytes()
    result = run_cli("run", src, tmp_path / "out", option, src / "scan1.png", expect=ExitCode.USAGE)
    assert f"Error: {option} {src}/scan1.png: that is an input photo of {src}" in result.output
    assert (src / "scan1.png").read_bytes() == before and not (tmp_path / "out").exists()


def test_a_report_through_a_link_to_an_input_photo_or_onto_the_one_input_is_refused(tmp_path, run_cli):
    src = scans(tmp_path / "in")
    before = (src / "scan0.png").read_bytes()
    (tmp_path / "report.json").symlink_to(src / "scan0.png")
    run_cli("run", src, tmp_path / "out", "--report", tmp_path / "report.json", expect=ExitCode.USAGE)
    run_cli("run", src / "scan0.png", tmp_path / "one.png", "--report", src / "scan0.png", expect=ExitCode.USAGE)
    assert (src / "scan0.png").read_bytes() == before
    run_cli("run", src, tmp_path / "out", "-q", "--report", src / "report.json", "--log-file", src / "run.log", expect=0)


def test_eval_refuses_a_sheet_that_is_one_of_its_photos(tmp_path, run_cli, tiny_weights):
    photos = scans(tmp_path / "colour")
    before = (photos / "scan0.png").read_bytes()
    result = run_cli("eval", photos, "--weights", tiny_weights, "--sheet", photos / "scan0.png", expect=ExitCode.USAGE)
    assert f"--sheet {photos}/scan0.png: that is an input photo" in result.output
    assert (photos / "scan0.png").read_bytes() == before


# ----------------------------------------------------------------------------- resolution
def test_a_tiff_without_resolution_tags_does_not_give_outputs_of_1_dpi(tmp_path, run_cli):
    src = tmp_path / "in"
    save(src / "nores.tif", Image.fromarray(grey_image(64, 48)))  # Pillow writes no XResolution: it reads (1, 1)
    save(src / "scan300.tif", Image.fromarray(grey_image(64, 48, seed=1)), dpi=(300, 300))
    run_cli("run", src, tmp_path / "out", "-q", expect=0)
    run_cli("run", src, tmp_path / "png", "-q", "--format", "png", expect=0)
    with Image.open(tmp_path / "out" / "nores.tif") as im:
        assert 282 not in im.tag_v2 and 283 not in im.tag_v2  # XResolution, YResolution
    with Image.open(tmp_path / "png" / "nores.png") as im:
        assert "dpi" not in im.info
    with Image.open(tmp_path / "out" / "scan300.tif") as im:
        assert im.tag_v2[282] == 300
    with Image.open(tmp_path / "png" / "scan300.png") as im:
        assert [round(d) for d in im.info["dpi"]] == [300, 300]


# ----------------------------------------------------------------------------- -v
def test_verbose_does_not_fill_the_report_notes_with_pillows_debug_lines(tmp_path, tiny_weights):
    src, out = scans(tmp_path / "in"), tmp_path / "out"
    save(src / "page.tif", Image.fromarray(grey_image(64, 48, seed=5)))
    cmd = [sys.executable, "-m", "colorize_batch", "run", src, out, "--weights", tiny_weights, "-v", "--workers", "1"]
    proc = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, timeout=300)  # a real decode worker
    assert proc.returncode == 0, proc.stderr
    assert json.loads(report_path(out).read_text())["notes"] == []
    assert "STREAM b'IHDR'" not in proc.stderr and "TiffImageFile._open" not in proc.stderr


# ----------------------------------------------------------------------------- input.hints_dir in a YAML file
@pytest.mark.parametrize("where", ["missing", "scan0.png"])
def test_a_hints_dir_in_the_config_that_is_not_a_folder_is_a_usage_error(tmp_path, run_cli, where):
    src = scans(tmp_path / "in")
    config = tmp_path / "cron.yaml"
    config.write_text(f"input:\n  hints_dir: in/{where}\n  hints_only: true\n")  # a typo would silently do nothing
    result = run_cli("run", src, tmp_path / "out", "--config", config, expect=ExitCode.USAGE)
    problem = "does not exist" if where == "missing" else "is not a folder"
    assert f"Error: {src}/{where}: input.hints_dir {problem}; no hint would be found" in result.output
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- pages of a multi-page TIFF
def test_a_failed_page_of_a_multi_page_tiff_is_named_with_its_page(tmp_path, run_cli):
    src, out = tmp_path / "in", tmp_path / "out"
    pages = [Image.fromarray(grey_image(64, 48, seed=s)) for s in range(3)]
    save(src / "roll.tif", pages[0], save_all=True, append_images=pages[1:])
    data = (src / "roll.tif").read_bytes()
    (src / "roll.tif").write_bytes(data[: len(data) - 3000])  # the last page's pixels cut off
    config = tmp_path / "pages.yaml"
    config.write_text("input:\n  tiff_pages: all\n")
    result = run_cli("run", src, out, "--config", config, expect=ExitCode.FAILED)
    assert sorted(p.name for p in out.glob("*.tif")) == ["roll_p1.tif", "roll_p2.tif"]
    (failure,) = json.loads(report_path(out).read_text())["failures"]
    assert failure["path"] == f"{src}/roll.tif#p3"
    assert any(line.startswith(f"failed {src}/roll.tif#p3: ") for line in error_lines(result.output))


# ----------------------------------------------------------------------------- pipeline.yaml
def test_a_section_given_twice_in_a_config_file_is_refused_not_half_dropped(tmp_path, run_cli):
    config = tmp_path / "cron.yaml"
    config.write_text("model:\n  size: 128\nloader:\n  batch_size: 4\nmodel:\n  temperature: 0.5\n")
    result = run_cli("run", scans(tmp_path / "in"), tmp_path / "out", "--config", config, expect=ExitCode.USAGE)
    (line,) = [line for line in error_lines(result.output) if line.startswith("Error:")]
    assert line.startswith(f"Error: {config}: not valid YAML (key 'model' is given twice in one mapping")
    assert "line 5" in line and not (tmp_path / "out").exists()
    config.write_text("model: &m\n  size: 128\n  temperature: 0.5\n")  # one section each: fine (an anchor too)
    run_cli("run", scans(tmp_path / "in"), tmp_path / "out", "--config", config, "--dry-run", expect=0)


@pytest.mark.parametrize("args", [["--limit", "-2"], ["--sheet-images", "0"]])
def test_eval_refuses_a_count_below_one(tmp_path, run_cli, tiny_weights, args):
    photos = scans(tmp_path / "colour", 3)  # --limit -2 scored one photo, --sheet-images 0 was a traceback
    result = run_cli("eval", photos, "--weights", tiny_weights, *args, expect=ExitCode.USAGE)
    assert f"Invalid value for '{args[0]}'" in result.output


# ----------------------------------------------------------------------------- an unset variable in a cron line
@pytest.mark.parametrize("which", ["IN", "OUT", "--report"])
def test_an_empty_path_argument_is_refused_not_taken_as_the_current_folder(tmp_path, run_cli, monkeypatch, which):
    src = scans(tmp_path / "in")
    home = tmp_path / "home"  # cron's current folder
    scans(home / "Pictures", 1)
    monkeypatch.chdir(home)
    args = {"IN": ["", tmp_path / "out"], "OUT": [src, ""], "--report": [src, tmp_path / "out", "--report", ""]}[which]
    result = run_cli("run", *args, expect=ExitCode.USAGE)
    assert f"Invalid value for '{which}': is empty (an unset variable in a script?)" in result.output
    assert sorted(p.name for p in home.rglob("*")) == ["Pictures", "scan0.png"] and not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- found in session 14
def test_a_hint_file_saved_with_a_byte_order_mark_is_read_like_any_other(tmp_path, run_cli):
    src = scans(tmp_path / "in")
    document = '{"points": [{"x": 0.5, "y": 0.5, "color": "#2050d0"}]}'
    (src / "scan0.hints.json").write_bytes(b"\xef\xbb\xbf" + document.encode())  # Notepad's "UTF-8 with BOM"
    run_cli("hints", "check", src / "scan0.hints.json", expect=ExitCode.OK)
    run_cli("run", src, tmp_path / "out", "--report", tmp_path / "report.json", expect=ExitCode.OK)
    assert json.loads((tmp_path / "report.json").read_text())["counts"]["with_hints"] == 1


def test_eval_of_a_grey_truth_writes_valid_json_not_infinity(tmp_path, run_cli, tiny_weights):
    photos = tmp_path / "colour"
    save(photos / "grey.png", Image.fromarray(np.repeat(grey_image(64, 48, seed=3)[..., None], 3, axis=2)))
    run_cli("eval", photos, "--weights", tiny_weights, "--report", tmp_path / "eval.json", expect=ExitCode.OK)
    text = (tmp_path / "eval.json").read_text()
    scores = json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in the JSON report"))
    assert scores["gray"]["psnr"] == pytest.approx(58.92, abs=0.01)  # the grey input is the truth: 8 bits' ceiling


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("args", [["--version"], ["info"], ["run", "--help"]])
def test_output_that_cannot_be_written_is_one_line_and_exit_1_not_a_traceback(args):
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-m", "colorize_batch", *args], stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
    assert proc.returncode == ExitCode.FAILED
    assert proc.stderr.strip() == "Error: cannot write the output (No space left on device)"


def test_a_png_with_a_large_xmp_packet_is_colorized_and_a_text_bomb_fails_alone(tmp_path, run_cli):
    from PIL import PngImagePlugin

    src = tmp_path / "in"
    src.mkdir()
    grey = Image.fromarray(grey_image(64, 48, seed=5))
    history = PngImagePlugin.PngInfo()  # Photoshop's edit history: 3 MB of XMP, 9 KB compressed
    history.add_itxt("XML:com.adobe.xmp", "<x>" + "history " * 400_000 + "</x>", zip=True)
    grey.save(src / "edited.png", pnginfo=history)
    grey.save(src / "icc.png", icc_profile=b"\0" * 3 * 2**20)
    bomb = PngImagePlugin.PngInfo()
    bomb.add_text("Comment", "a" * 40 * 2**20, zip=True)  # inflates to 40 MiB
    grey.save(src / "bomb.png", pnginfo=bomb)
    result = run_cli("run", src, tmp_path / "out", expect=ExitCode.FAILED)
    (line,) = [line for line in error_lines(result.output) if line.startswith("failed ")]
    assert line == (f"failed {src}/bomb.png: cannot decode: a metadata chunk inflates beyond 32 MiB (64 MiB in all): "
                    "decompression bomb guard")
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.is_file()) == ["edited.png", "icc.png"]


@pytest.mark.parametrize("option", ["--report", "--log-file"])
def test_a_report_or_log_file_in_outs_state_folder_is_refused_and_the_manifest_kept(tmp_path, run_cli, option):
    src, out = scans(tmp_path / "in"), tmp_path / "out"
    run_cli("run", src, out, expect=ExitCode.OK)
    manifest = out / ".colorize-batch" / "manifest.jsonl"
    before = manifest.read_bytes()
    (tmp_path / "state").symlink_to(out / ".colorize-batch")  # the same folder under another name
    for target in (manifest, tmp_path / "state" / "manifest.jsonl", out / ".colorize-batch" / "new.json"):
        result = run_cli("run", src, out, "--force", option, target, expect=ExitCode.USAGE)
        assert f"{option} {target}: that is inside {out}/.colorize-batch, the run's own state" in result.output
    assert manifest.read_bytes() == before and not (out / ".colorize-batch" / "new.json").exists()
    run_cli("run", src, out, option, tmp_path / "elsewhere.json", expect=ExitCode.OK)  # outside the state: fine
