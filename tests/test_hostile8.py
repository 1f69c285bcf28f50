"""What the eighth hostile run found, each proved on real files: a 2 kB ``--config`` of nested YAML
aliases (an alias bomb) hung every command that read it; a colour input copied with ``--format
png|jpg|tif`` (``input.color_inputs: copy``) replaced a foreign file in OUT of the source's name;
two shards of a run with ``input.tiff_pages: all`` both wrote ``scan_p2.tif`` (a page of
``scan.tif`` and a scan of that name), the later one replacing the other's output; the gallery made
no thumbnail for a scan named with 252 bytes or more (``name.png.jpg`` is too long a name); ``run
--gallery`` stopped by Ctrl-C or SIGTERM went on to build the whole gallery (thumbnails and a
forward pass per photo); and a further Ctrl-C while the decode workers were being shut down
printed a traceback from torch's ``__del__`` (and was lost)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from colorize_batch.exit_codes import ExitCode
from colorize_batch.manifest import state_dir

REPO = Path(__file__).resolve().parent.parent


def _records(out: Path) -> list[dict]:
    """Every record of every manifest of OUT (shards included)."""
    return [json.loads(line) for path in sorted(state_dir(out).glob("manifest*.jsonl"))
            for line in path.read_text().splitlines() if line.strip()]


def _outputs(out: Path) -> list[Path]:
    return sorted(p for p in out.rglob("*") if p.is_file() and state_dir(out) not in p.parents)


# ----------------------------------------------------------------------------- config
def test_a_config_of_nested_yaml_aliases_is_refused_at_once_not_walked_for_ever(tmp_path):
    lines = ["l0: &l0 {x: 1, y: 2}"] + [f"l{i}: &l{i} {{a: *l{i - 1}, b: *l{i - 1}}}" for i in range(1, 40)]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n")  # 2 kB; 2^40 values once its aliases are expanded
    looped = tmp_path / "loop.yaml"
    looped.write_text("a: &a [*a]\nmodel: {size: 256}\n")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for config in (bomb, looped):
        proc = subprocess.run([sys.executable, "-m", "colorize_batch", "run", tmp_path, tmp_path / "out", "--config", config,
                               "--print-config"], capture_output=True, text=True, timeout=60, env=env)
        assert proc.returncode == ExitCode.USAGE, proc.stderr
        assert proc.stderr.count("\n") == 1 and str(config) in proc.stderr and "aliases" in proc.stderr, proc.stderr


def test_yaml_aliases_of_an_ordinary_size_still_work(tmp_path, run_cli):
    config = tmp_path / "c.yaml"
    config.write_text("x-size: &size 128\nmodel:\n  size: *size\n")
    result = run_cli("run", tmp_path, tmp_path / "out", "--config", config, "--print-config")
    assert "Extra inputs" in result.output  # read, then validated as usual (x-size is no key of ours)
    config.write_text("model: &m {size: 128}\n")
    assert "size: 128" in run_cli("run", tmp_path, tmp_path / "out", "--config", config, "--print-config", expect=0).output
