"""``colorize-batch info``: what a newcomer (or a bug report) needs to know about an installation."""

from __future__ import annotations

import hashlib
import json

import torch

from colorize_batch import __version__
from colorize_batch.config import DEFAULT_CONFIG, DEFAULT_WEIGHTS


def test_info_names_version_weights_hash_architecture_and_device(run_cli, tiny_weights):
    result = run_cli("info", "--weights", tiny_weights, "--json", expect=0)
    facts = json.loads(result.output)
    sha = hashlib.sha256(tiny_weights.read_bytes()).hexdigest()
    assert facts["version"] == __version__ and facts["torch"] == torch.__version__
    assert facts["weights"] == str(tiny_weights) and facts["sha256"] == sha
    assert facts["model_id"] == f"tiny-test@{sha[:12]}"
    assert facts["family"] == "unet" and facts["preset"] == "tiny" and facts["architecture"]["base_channels"] == 8
    assert facts["parameters"] > 0 and facts["weights_from"] == "command line"
    assert facts["device"].split()[0] in ("cpu", "cuda") or facts["device"].startswith("cuda")
    text = run_cli("info", "--weights", tiny_weights, expect=0).output
    assert f"colorize-batch {__version__}" in text and sha in text and f"tiny-test@{sha[:12]}" in text
    assert "unet (preset tiny)" in text and f"torch:        {torch.__version__}" in text


def test_info_without_flags_describes_the_shipped_default(run_cli):
    facts = json.loads(run_cli("info", "--json", expect=0).output)
    assert facts["weights"] == str(DEFAULT_WEIGHTS.resolve()) and facts["weights_from"] == str(DEFAULT_CONFIG)
    assert facts["family"] == "effunet" and facts["preset"] == "effnet-lite0-hints"


def test_info_on_a_missing_weights_file_is_a_usage_error(run_cli, tmp_path):
    result = run_cli("info", "--weights", tmp_path / "nope.pt")
    assert result.exit_code == 2 and "weights file not found" in result.output
