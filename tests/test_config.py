"""Configuration layers: the built-in pipeline.yaml, then --config FILE key by key, then flags."""

from __future__ import annotations

import json

import pytest
import yaml

from colorize_batch.config import (
    BUILTIN_DEFAULTS,
    COMMAND_LINE,
    DEFAULT_CONFIG,
    ConfigError,
    PipelineConfig,
    load_config,
    read_layer,
)

# train.data / train.val_dir are where this checkout keeps its training photos (../shared/data):
# the code's default is "no data", a layout is not a default.
NOT_COMPARED = {"train.data", "train.val_dir"}


def _flat(data: dict, prefix: str = "") -> dict:
    out: dict = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_code_defaults_agree_with_the_built_in_pipeline_yaml():
    """Defaults in one place: every key pipeline.yaml sets has the same value as the pydantic default."""
    code = _flat(json.loads(PipelineConfig().model_dump_json()))
    built_in = _flat(json.loads(PipelineConfig.model_validate(read_layer(DEFAULT_CONFIG)).model_dump_json()))
    in_yaml = _flat(yaml.safe_load(DEFAULT_CONFIG.read_text()))
    assert set(in_yaml) <= set(code), sorted(set(in_yaml) - set(code))
    differ = {k: (code[k], built_in[k]) for k in in_yaml if k not in NOT_COMPARED and code[k] != built_in[k]}
    assert not differ, differ


def test_a_small_file_overlays_the_built_in_one_key_by_key(tmp_path):
    overlay = tmp_path / "small.yaml"
    overlay.write_text("model: {size: 64}\ntrain: {steps: 7}\ninput: {extensions: [.png]}\n")
    config = load_config(overlay)
    built_in = load_config()
    assert config.model.size == 64 and config.train.steps == 7
    assert config.input.extensions == [".png"]  # a list replaces, it is not merged
    assert config.model.weights == built_in.model.weights  # everything else as pipeline.yaml
    assert config.train.lr == built_in.train.lr and config.output == built_in.output
    sources = config.sources()
    assert sources["model.size"] == sources["train.steps"] == sources["input.extensions"] == str(overlay)
    assert sources["model.weights"] == sources["train.lr"] == str(DEFAULT_CONFIG)
    assert set(sources.values()) <= {str(overlay), str(DEFAULT_CONFIG), BUILTIN_DEFAULTS}


def test_relative_paths_resolve_against_the_file_that_set_them(tmp_path):
    (tmp_path / "cfg").mkdir()
    overlay = tmp_path / "cfg" / "train.yaml"
    overlay.write_text("train:\n  data: [{path: photos, weight: 1.0}]\n")
    config = load_config(overlay)
    assert config.train.data[0].path == tmp_path / "cfg" / "photos"
    # not set by the overlay: pipeline.yaml's own relative paths, against pipeline.yaml's folder
    assert config.model.weights == (DEFAULT_CONFIG.parent / "weights" / "colorize-effnet-lite0.pt").resolve()
    assert config.train.val_dir == DEFAULT_CONFIG.resolve().parent / "../shared/data/val/sun_hays80"
    overlay.write_text("model: {weights: w.pt}\n")
    assert load_config(overlay).model.weights == tmp_path / "cfg" / "w.pt"


def test_flags_are_the_top_layer_and_say_so(tmp_path):
    overlay = tmp_path / "o.yaml"
    overlay.write_text("loader: {batch_size: 4}\n")
    config = load_config(overlay, {"loader.batch_size": 3, "model.device": "cpu"})
    assert config.loader.batch_size == 3 and config.model.device == "cpu"
    assert config.sources()["loader.batch_size"] == config.sources()["model.device"] == COMMAND_LINE


def test_print_config_verbose_shows_where_each_value_came_from(tmp_path, run_cli):
    overlay = tmp_path / "o.yaml"
    overlay.write_text("model: {size: 64}\n")
    result = run_cli("run", tmp_path, tmp_path / "o", "--config", overlay, "--batch-size", "3", "--print-config", "-v",
                     expect=0)
    lines, section = {}, ""
    for line in result.output.splitlines():
        if not line.startswith(" "):
            section = line.split(":")[0]
        elif not line.lstrip().startswith("-"):
            lines[f"{section}.{line.split(':')[0].strip()}"] = line
    assert lines["model.size"].endswith(f"# from {overlay}")
    assert lines["loader.batch_size"].endswith(f"# from {COMMAND_LINE}")
    assert lines["output.jpeg_quality"].endswith(f"# from {DEFAULT_CONFIG}")
    merged = yaml.safe_load(result.output)  # still the plain merged configuration
    assert merged["model"]["size"] == 64 and merged["loader"]["batch_size"] == 3
    plain = run_cli("run", tmp_path, tmp_path / "o", "--config", overlay, "--print-config", expect=0)
    assert "# from" not in plain.output


def test_problems_name_the_file_that_set_the_value(tmp_path):
    overlay = tmp_path / "bad.yaml"
    overlay.write_text("model: {size: big}\n")
    with pytest.raises(ConfigError) as err:
        load_config(overlay, {"loader.batch_size": 0})
    text = str(err.value)
    assert text.startswith(f"{overlay}: 2 problem(s)")
    assert "model.size" in text and "loader.batch_size: " in text and f"(from {COMMAND_LINE})" in text


def test_the_built_in_file_given_as_config_counts_once():
    config = load_config(DEFAULT_CONFIG)
    assert config == load_config()
    assert str(DEFAULT_CONFIG) in set(config.sources().values())
