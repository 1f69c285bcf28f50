"""Re-encode the training photos into a small tree that can travel to a remote accelerator.

A device machine receives at most 64 MiB with the working tree, and ``../shared/data/train``
is 200 MB of JPEGs. This writes the same folders (``scenes``, ``objects``, ...) as WebP at
``--quality``, shrunk so the short side is at most ``--side`` (never enlarged), so the
``train`` configs only change their data paths. It is what the GPU campaign of issue 24 trained
on (``recipes/effnet-gpu.yaml``). Files are processed in sorted order; ``--limit ROOT=N`` keeps the
first N of a folder (after a seeded shuffle), to fit the budget.

    python benchmarks/pack_train.py ../shared/data/train .pack/train --side 176 --limit scenes=4000
"""

from __future__ import annotations

import argparse
import random
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from colorize_batch.discovery import find_images  # noqa: E402


def pack_one(job: tuple[Path, Path, int, int]) -> int:
    source, dest, side, quality = job
    try:
        with Image.open(source) as im:
            im = ImageOps.exif_transpose(im).convert("RGB")
    except OSError as exc:
        print(f"{source}: skipped ({exc})", file=sys.stderr)
        return 0
    scale = side / min(im.size)
    if scale < 1:
        im = im.resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.LANCZOS)
    dest.parent.mkdir(parents=True, exist_ok=True)
    im.save(dest, "WEBP", quality=quality, method=6)
    return dest.stat().st_size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="folder of training folders (../shared/data/train)")
    parser.add_argument("dest", type=Path)
    parser.add_argument("--side", type=int, default=176, help="short side at most this (default 176)")
    parser.add_argument("--quality", type=int, default=72, help="WebP quality (default 72)")
    parser.add_argument("--limit", action="append", default=[], metavar="ROOT=N", help="keep N files of ROOT")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    limits = {k: int(v) for k, v in (item.split("=", 1) for item in args.limit)}
    jobs = []
    for root in sorted(p for p in args.source.iterdir() if p.is_dir()):
        files = sorted(item.source for item in find_images(root))
        if root.name in limits:
            random.Random(0).shuffle(files)
            files = sorted(files[: limits[root.name]])
        jobs += [(f, args.dest / root.name / f.relative_to(root).with_suffix(".webp"), args.side, args.quality) for f in files]
    with ProcessPoolExecutor(args.workers) as pool:
        total = sum(pool.map(pack_one, jobs, chunksize=64))
    print(f"{len(jobs)} photos, {total / 2**20:.1f} MiB in {args.dest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
