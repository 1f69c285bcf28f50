#!/usr/bin/env bash
# Issue 24's GPU leg, in two halves: `prepare` here (pack the training photos and the wheels the
# device image lacks, under the device machine's 64 MiB working-tree limit), `device` there
# (from the repository root on the GPU machine; $OUT is the folder whose files come back).
#
#   benchmarks/gpu_campaign.sh prepare          # here: .pack/train.zip (about 42 MiB) + .whl/
#   # the device tool: run(command="benchmarks/gpu_campaign.sh device", carry=[".pack/train.zip", ".whl"], timeout_s=595)
#
# The tracked files travel too (about 30 MB, 20 of them weights/colorize-lite.pt, which training
# does not need: leave it out of the index and the tree for that call, then `git reset` it back).
# `device` trains two candidates on the same batches for MINUTES (default 7) of wall clock, then
# each one's hint branch for HINT_MINUTES (1.4), and leaves in $OUT: {base,wide}-auto.pt,
# {base,wide}-auto-half.pt (mid-schedule), {base,wide}-hints.pt (what would ship), campaign.log,
# train_logs.jsonl. Score them here with benchmarks/frontier.py and `colorize-batch eval --hints`.
set -euo pipefail
case "${1:-}" in
prepare)
    PY=${PY:-.venv/bin/python}
    rm -rf .pack/train .pack/train.zip && mkdir -p .pack .whl
    "$PY" benchmarks/pack_train.py ../shared/data/train .pack/train --side 176 --quality 72 --limit scenes=3200
    "$PY" - <<'PYEOF'
import pathlib, zipfile
with zipfile.ZipFile(".pack/train.zip", "w", zipfile.ZIP_STORED) as z:  # tar pads every file to 512 bytes
    for p in sorted(pathlib.Path(".pack/train").rglob("*.webp")):
        z.write(p, p.relative_to(".pack"))
PYEOF
    # what colorize_batch.train imports that the device image (Python 3.12) does not hold
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux2014_x86_64 -d .whl pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 \
        typing-inspection==0.4.5 typing_extensions==4.16.0
    grep -qx '/.pack/' .git/info/exclude || echo '/.pack/' >> .git/info/exclude
    grep -qx '/.whl/' .git/info/exclude || echo '/.whl/' >> .git/info/exclude
    ls -la .pack/train.zip .whl
    ;;
device)
    export PYTHONUNBUFFERED=1
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD
    python3 -c "import zipfile; zipfile.ZipFile('.pack/train.zip').extractall('.pack')"
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; nproc; df -h /dev/shm | tail -1
    python3 benchmarks/campaign.py --minutes "${MINUTES:-7}" --hint-minutes "${HINT_MINUTES:-1.4}" \
        --export "$OUT" --out /tmp/runs --workers "${WORKERS:-14}" \
        --run base recipes/effnet-gpu.yaml weights/colorize-effnet-lite0.pt recipes/effnet-gpu-hints.yaml \
        --run wide recipes/effnet-gpu-wide.yaml encoder:weights/colorize-effnet-lite0.pt recipes/effnet-gpu-wide-hints.yaml \
        2>&1 | tee "$OUT/campaign.log"
    cat /tmp/runs/*/train_log.jsonl > "$OUT/train_logs.jsonl"
    ;;
*)
    echo "usage: $0 prepare|device" >&2
    exit 2
    ;;
esac
