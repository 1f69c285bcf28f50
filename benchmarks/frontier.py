"""The quality frontier of one or more weights files: PSNR over grey against colourfulness / truth,
across decode temperatures, on several validation sets, clean and degraded like old scans.

    .venv/bin/python benchmarks/frontier.py --weights weights/colorize-effnet-lite0.pt runs/new.pt \\
        --label shipped new --set ../shared/data/val/set14 --set ../shared/data/val/scenes:150 \\
        --temperatures 0.55 0.65 0.8 1.0 --degrade 0 1 --json runs/frontier.json --plot runs/frontier.png

A decode temperature only slides a model along its curve; a better model's curve lies above and
to the right of the other's (issue 24). Each point is ``colorize-batch eval`` (same code: evaluate.evaluate)
of one weights file at one temperature on one set, with the grey input degraded at one strength.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from colorize_batch.evaluate import colour_photos, evaluate
from colorize_batch.inference import Colorizer
from colorize_batch.weights import load_weights


def parse_set(spec: str) -> tuple[Path, int | None]:
    """``DIR`` or ``DIR:N`` (the first N photos)."""
    path, _, limit = spec.partition(":")
    return Path(path), int(limit) if limit else None


def measure(weights: list[Path], labels: list[str], sets: list[str], temperatures: list[float], degrades: list[float],
            size: int) -> list[dict]:
    rows = []
    for path, label in zip(weights, labels):
        generator, _ = load_weights(path)
        for spec in sets:
            folder, limit = parse_set(spec)
            photos = colour_photos(folder, limit)
            for degrade in degrades:
                for t in temperatures:
                    summary = evaluate(Colorizer(generator, torch.device("cpu"), temperature=t), photos, size,
                                       degrade=degrade).summary()
                    model, grey, truth = summary["model"], summary["gray"], summary["truth"]
                    row = {"label": label, "weights": str(path), "set": folder.name, "photos": len(photos), "degrade": degrade,
                           "temperature": t, "psnr": model["psnr"], "psnr_over_grey": model["psnr"] - grey["psnr"],
                           "ssim": model["ssim"], "cf": model["cf"], "cf_over_truth": model["cf"] / truth["cf"],
                           "auc": model["auc"], "auc_grey": grey["auc"]}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    return rows


def gains_at_equal_cf(reference: list[dict], candidate: list[dict]) -> list[dict]:
    """For each candidate point, how far its PSNR over grey lies above (+) or below (-) the
    reference curve at the same CF / truth (linear interpolation between the reference's two
    neighbouring temperatures, extrapolated from the nearest two outside its range): the rule
    issue 24 judges a candidate by, since a temperature only slides a model along its curve."""
    out = []
    for row in candidate:
        curve = sorted((r["cf_over_truth"], r["psnr_over_grey"]) for r in reference
                       if r["set"] == row["set"] and r["degrade"] == row["degrade"])
        if len(curve) < 2:
            continue
        cf = row["cf_over_truth"]
        segment = next(((a, b) for a, b in zip(curve, curve[1:]) if a[0] <= cf <= b[0]), None)
        (c0, p0), (c1, p1) = segment or (curve[:2] if cf < curve[0][0] else curve[-2:])
        at_equal_cf = p0 + (p1 - p0) * (cf - c0) / (c1 - c0)
        out.append({**row, "reference_at_equal_cf": at_equal_cf, "gain": row["psnr_over_grey"] - at_equal_cf,
                    "extrapolated": segment is None})
    return out


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = list(dict.fromkeys(r["set"] for r in rows))
    degrades = sorted({r["degrade"] for r in rows})
    panels = [(name, degrade) for name in sets for degrade in degrades]  # one row per set, one column per degradation
    fig, axes = plt.subplots(len(sets), len(degrades), figsize=(4.6 * len(degrades), 3.4 * len(sets)), squeeze=False)
    for ax, (name, degrade) in zip(axes.ravel(), panels):
        for label in dict.fromkeys(r["label"] for r in rows):
            curve = sorted((r for r in rows if r["label"] == label and r["set"] == name and r["degrade"] == degrade),
                           key=lambda r: r["temperature"])
            xs, ys = [r["cf_over_truth"] for r in curve], [r["psnr_over_grey"] for r in curve]
            ax.plot(xs, ys, marker="o", label=label)
            for r in curve:
                ax.annotate(f"T{r['temperature']:g}", (r["cf_over_truth"], r["psnr_over_grey"]), fontsize=7,
                            textcoords="offset points", xytext=(3, 3))
        ax.axhline(0, color="grey", lw=0.6)
        ax.set_title(f"{name}" + (f", degraded {degrade:g}" if degrade else ", clean grey"), fontsize=9)
        ax.set_xlabel("colourfulness / truth")
        ax.set_ylabel("PSNR over grey input (dB)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, nargs="+", default=[])
    parser.add_argument("--label", nargs="+", help="one per weights file (default: file stems)")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="DIR or DIR:N; repeatable")
    parser.add_argument("--temperatures", type=float, nargs="+", default=[0.55, 0.65, 0.8, 1.0])
    parser.add_argument("--degrade", type=float, nargs="+", default=[0.0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--json", type=Path, help="append the rows here (JSON lines)")
    parser.add_argument("--plot", type=Path, help="PNG of the curves")
    parser.add_argument("--from-json", type=Path, nargs="*", default=[], help="plot rows measured earlier too")
    parser.add_argument("--against", type=Path, help="rows (JSON lines) of the reference curve: print each new point's "
                        "PSNR gain over it at equal CF")
    parser.add_argument("--only-compare", type=Path, help="measure nothing: compare these rows (JSON lines) --against")
    args = parser.parse_args()
    if args.only_compare:
        if not args.against:
            parser.error("--only-compare needs --against")
        return compare(read_rows(args.against), read_rows(args.only_compare))
    if args.plot and args.from_json and not args.weights:  # plot rows measured earlier, measure nothing
        return plot([row for f in args.from_json for row in read_rows(f)], args.plot)
    if not args.weights or not args.sets:
        parser.error("--weights and --set are needed to measure (or --only-compare ROWS --against REF, "
                     "or --from-json ROWS --plot PNG)")
    labels = args.label or [p.stem for p in args.weights]
    if len(labels) != len(args.weights):
        parser.error("--label needs one name per weights file")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = [row for f in args.from_json for row in read_rows(f)]
    new = measure(args.weights, labels, args.sets, args.temperatures, args.degrade, args.size)
    if args.json:
        with open(args.json, "a") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in new)
    if args.plot:
        plot(rows + new, args.plot)
    if args.against:
        compare(read_rows(args.against), new)


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def compare(reference: list[dict], candidate: list[dict]) -> None:
    for r in gains_at_equal_cf(reference, candidate):
        print(f'{r["label"]:14s} {r["set"]:11s} degrade {r["degrade"]:g} T {r["temperature"]:.2f}: '
              f'{r["psnr_over_grey"]:+.3f} dB / {r["cf_over_truth"]:.3f}x, reference at equal CF {r["reference_at_equal_cf"]:+.3f}: '
              f'{r["gain"]:+.3f} dB{" (extrapolated)" if r["extrapolated"] else ""}, AuC {r["auc"]:.3f} (grey {r["auc_grey"]:.3f})')


if __name__ == "__main__":
    main()
