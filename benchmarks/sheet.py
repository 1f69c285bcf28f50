"""A side-by-side contact sheet of `run` outputs: one row per photo, one column per folder.

    .venv/bin/python benchmarks/sheet.py --out runs/archive_sheet.png --label grey old new \\
        ../shared/data/archive_bw runs/archive-old runs/archive-new

The first folder is walked (sorted); each other folder is looked up by the same relative path
(`run` mirrors the tree), so the columns are the same photo as each model colours it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from colorize_batch.discovery import find_images
from colorize_batch.evaluate import contact_sheet


def thumbnail(path: Path, height: int) -> np.ndarray:
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im).convert("RGB")
        im = im.resize((max(1, round(im.width * height / im.height)), height), Image.Resampling.LANCZOS)
        return np.asarray(im)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", type=Path, nargs="+")
    parser.add_argument("--label", nargs="+")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--height", type=int, default=200)
    parser.add_argument("--limit", type=int)
    parser.add_argument("--per-sheet", type=int, default=6, help="photos per PNG (OUT-1.png, OUT-2.png, ...)")
    args = parser.parse_args()
    first, others = args.folders[0], args.folders[1:]
    rows = []
    for item in sorted(find_images(first), key=lambda i: str(i.source))[: args.limit]:
        rel = item.source.relative_to(first)
        paths = [item.source] + [folder / rel for folder in others]
        if all(p.is_file() for p in paths):
            rows.append(tuple(thumbnail(p, args.height) for p in paths))
    labels = tuple(args.label or [f.name for f in args.folders])
    for n, start in enumerate(range(0, len(rows), args.per_sheet), 1):
        path = args.out.with_name(f"{args.out.stem}-{n}{args.out.suffix}")
        contact_sheet(rows[start : start + args.per_sheet], path, height=args.height, labels=labels)
        print(f"{path}: {len(rows[start : start + args.per_sheet])} photos")


if __name__ == "__main__":
    main()
