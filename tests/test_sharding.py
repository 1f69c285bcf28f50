import json

import pytest
from conftest import grey_image, save
from PIL import Image

from colorize_batch.manifest import report_path, shard_tag
from colorize_batch.sharding import Shard, ShardError, resolve_shard, shard_of


def test_shard_assignment_is_stable_and_covers_everything():
    names = [f"roll{i}/frame{j}.tif" for i in range(10) for j in range(30)]
    shards = [shard_of(n, 4) for n in names]
    assert set(shards) == {0, 1, 2, 3}
    assert shards == [shard_of(n, 4) for n in names]  # deterministic
    assert all(shard_of(n, 4) == s for n, s in zip(names + ["new.tif"], shards + [shard_of("new.tif", 4)]))


def test_shard_sources():
    assert resolve_shard("1/3", env={}) == Shard(1, 3)
    assert resolve_shard(None, env={}) is None
    slurm = resolve_shard(None, env={"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_MIN": "1"})
    assert (slurm.index, slurm.count) == (2, 3)
    k8s = resolve_shard(None, shard_count=5, env={"JOB_COMPLETION_INDEX": "4"})
    assert (k8s.index, k8s.count) == (4, 5)
    for bad in ("3/3", "x", "1/0"):
        with pytest.raises(ShardError):
            resolve_shard(bad, env={})
    with pytest.raises(ShardError):
        resolve_shard(None, env={"JOB_COMPLETION_INDEX": "0"})


def test_two_shards_split_the_tree_and_merge(tmp_path, run_cli):
    src, out = tmp_path / "in", tmp_path / "out"
    for i in range(12):
        save(src / f"d{i % 3}" / f"p{i}.png", Image.fromarray(grey_image(40, 30, seed=i)))
    (src / "bad.png").write_text("nope")
    codes = [run_cli("run", src, out, "--workers", "0", "-q", "--shard", f"{i}/2").exit_code for i in range(2)]
    reports = [json.loads(report_path(out, shard_tag(i, 2)).read_text()) for i in range(2)]
    done = [r["counts"]["done"] for r in reports]
    assert sum(done) == 12 and all(d > 0 for d in done)
    assert sorted(codes) == [0, 1]  # only the shard holding bad.png failed
    assert len(list(out.rglob("p*.png"))) == 12
    result = run_cli("report", "merge", out)
    assert result.exit_code == 1
    merged = json.loads(report_path(out).read_text())
    assert merged["counts"]["done"] == 12 and merged["counts"]["failed"] == 1
    # an unsharded rerun sees the shards' manifests: nothing left to do but the bad file
    run_cli("run", src, out, "--workers", "0", "-q")
    rep = json.loads(report_path(out).read_text())
    assert rep["counts"]["done"] == 0 and rep["counts"]["skipped_up_to_date"] == 12
