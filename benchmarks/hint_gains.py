"""What colour hints buy: ``eval --hints N`` of one or more weights files, as PSNR over the same
model without hints, with and without the edge-aware reshaping (``model.hint_edges``).

    .venv/bin/python benchmarks/hint_gains.py --weights weights/colorize-effnet-lite0.pt runs/guided.pt \\
        --label shipped guided --set ../shared/data/val/sun_hays80 --hints 0 1 10 --json runs/hints.jsonl

``--keep`` / ``--keep-range`` / ``--reach`` / ``--pull``: try other values of hint_edges.KEEP /
KEEP_RANGE / REACH / PULL (choose them on val only).
Each row is evaluate.evaluate (the code of ``colorize-batch eval``) at the weights' own temperature.
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

import torch

from colorize_batch import hint_edges, inference
from colorize_batch.config import load_config
from colorize_batch.evaluate import colour_photos, evaluate
from colorize_batch.inference import Colorizer
from colorize_batch.weights import load_weights
from frontier import parse_set  # benchmarks/frontier.py: DIR or DIR:N


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", nargs="+", type=Path, required=True)
    parser.add_argument("--label", nargs="+")
    parser.add_argument("--set", dest="sets", action="append", required=True, help="DIR or DIR:N (the first N photos)")
    parser.add_argument("--hints", nargs="+", type=int, default=[0, 1, 10])
    parser.add_argument("--edges", nargs="+", choices=["on", "off"], default=["on"])
    parser.add_argument("--keep", type=float, default=hint_edges.KEEP)
    parser.add_argument("--pull", type=float, default=hint_edges.PULL)
    parser.add_argument("--keep-range", type=float, default=hint_edges.KEEP_RANGE)
    parser.add_argument("--reach", type=float, default=hint_edges.REACH)
    parser.add_argument("--json", type=Path, help="append the rows to this JSON-lines file")
    args = parser.parse_args()
    labels = args.label or [p.stem for p in args.weights]
    settings = {"keep": args.keep, "keep_range": args.keep_range, "reach": args.reach, "pull": args.pull}
    inference.edge_aware = functools.partial(hint_edges.edge_aware, **settings)  # type: ignore[assignment]
    model = load_config(None).model
    for path, label in zip(args.weights, labels):
        generator, _ = load_weights(path)
        for spec in args.sets:
            folder, limit = parse_set(spec)
            photos = colour_photos(folder, limit)
            baseline = None
            for edges in args.edges:
                for count in args.hints:
                    colorizer = Colorizer(generator, torch.device("cpu"), model.precision, model.temperature, edges == "on")
                    psnr = evaluate(colorizer, photos, model.size, hints=count).summary()["model"]["psnr"]
                    baseline = psnr if count == 0 else baseline
                    row = {"label": label, "weights": str(path), "set": folder.name, "photos": len(photos), "edges": edges,
                           **settings, "hints": count, "psnr": psnr,
                           "over_no_hints": None if baseline is None else psnr - baseline}
                    print(json.dumps(row), flush=True)
                    if args.json:
                        with args.json.open("a", encoding="utf-8") as f:
                            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
