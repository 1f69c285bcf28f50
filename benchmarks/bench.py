"""Benchmark of ``colorize-batch run``: how close the real pipeline gets to the network's ceiling.

The script builds its own input tree (grey photos made from scikit-image's sample images,
nothing downloaded), then measures, in one process, with the configured weights (by
default pipeline.yaml's ``weights/colorize-effnet-lite0.pt``) on the chosen device:

forward_ips
    Images/s of the generator alone (:meth:`Colorizer.predict`) on ready-made uint8 batches
    ``(batch_size, 1, size, size)``, after warm-up: no decoding, no recombination, no disk;
    spread over the run's lanes (threads with their own intra-op threads) as the run does.
    The ceiling the pipeline can approach, never exceed. Timed before and after the pipeline
    runs (a shared VM's speed drifts by 10-20% over minutes); the mean is used.
pipeline_ips
    Images/s of the real run end to end (:func:`run_pipeline`: discovery, plan, lock, weights
    load, decode, forward, recombine, encode, atomic write, manifest, report) on the tree,
    warm (a small run on other files went first, in the same process): files done / mean
    wall seconds around the call, over 3 runs (1 with ``--quick``).
naive_ips
    Images/s of the seed prototype's way, one image at a time with the model loaded once:
    Pillow open + ``convert("L")``, ``skimage.color.rgb2lab`` on the float64 RGB, L resized
    to the inference size (Pillow, bicubic), forward with batch 1 (``L/50 - 1`` in,
    ``out * 110``), ab upsampled to full size (``skimage.transform.resize``, bilinear),
    ``skimage.color.lab2rgb`` at full resolution, Pillow JPEG save. It is timed on a subset
    and each class of file (small, big, 16-bit TIFF) is timed separately; the rate is
    ``files / sum(count_in_tree[class] * mean_seconds[class])``, i.e. what the naive loop
    would take on the whole tree, so the subset keeps exactly the tree's mix.
pipeline_vs_forward, pipeline_vs_naive
    pipeline_ips / forward_ips (how much of the ceiling is reached, 1.0 = all of it) and
    pipeline_ips / naive_ips (speed-up over the seed's way).
peak_rss_mb, peak_rss_workers_mb
    ``ru_maxrss`` of this process (a high-water mark: tree building, the forward
    measurement and the warm-up run included; the naive loop runs afterwards and is not
    counted) and the largest DataLoader worker (``RUSAGE_CHILDREN``; forked workers share the
    parent's pages copy-on-write, so this counts the shared part again).
stage_seconds
    The run's own split (``OUT/.colorize-batch/last-run.json``): decode, forward, recombine,
    encode, write. Summed over workers and writer threads, so it can exceed the wall time.
rss_20_mb, rss_2000_mb (``--memory-check``)
    Peak RSS of a fresh Python process running the pipeline on 20 and on 2,000 small grey
    PNGs (it reports its own ``ru_maxrss`` when done): should not grow with the file count.
    The table also shows a 200-file run (allocator caches fill during the first batches,
    so growth from 20 to 200 followed by a plateau is not a per-file leak).

A readable table goes to stdout, progress notes to stderr, and the LAST stdout line is one
JSON object with the numbers. Nothing here asserts a timing; it only measures.

    .venv/bin/python benchmarks/bench.py [--quick] [--device cuda] [--memory-check]
    .venv/bin/python benchmarks/bench.py --weights weights/colorize-lite.pt weights/colorize-effnet-lite0.pt

``--weights`` with two files measures both in one process, one after the other on the same
tree (each file with its own tables); the last line is then ``{"runs": [first, second],
"second_vs_first": {forward_ips, pipeline_ips ratios}}``.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import colorize_batch  # noqa: F401  (first: it sets OMP_WAIT_POLICY before torch loads OpenMP, as the CLI does)
import numpy as np
import torch
from PIL import Image
from rich.console import Console
from rich.table import Table

from colorize_batch.config import ConfigError, PipelineConfig, load_config
from colorize_batch.decoding import network_input
from colorize_batch.evaluate import grey_from_rgb
from colorize_batch.examples import COLOUR_SOURCES, colour_photo
from colorize_batch.inference import Colorizer, InferenceError, resolve_device, resolve_lanes
from colorize_batch.reporting import STAGES
from colorize_batch.runner import run_pipeline
from colorize_batch.weights import WeightsError, load_weights

SMALL_SIZE = (1024, 768)  # every 4th small file is portrait (768 x 1024)
BIG_SIZE = (4000, 3000)  # every 3rd big file is portrait
TIFF_SIZE = (2048, 1536)  # one 16-bit grey TIFF (LZW), as a flatbed scan would give
MEMORY_PNG_SIZE = (64, 48)
MEMORY_COUNTS = (20, 200, 2000)  # JSON: the first and last; 200 shows where a plateau starts


@dataclass(frozen=True)
class Plan:
    """How many files of each class the tree holds, and how many the naive loop times."""

    small: int
    big: int
    naive_small: int
    naive_big: int
    forward_min_batches: int
    forward_min_seconds: float
    pipeline_runs: int  # timed runs of the tree; the forward pass is timed before and after them


FULL = Plan(small=200, big=10, naive_small=20, naive_big=2, forward_min_batches=8, forward_min_seconds=8.0, pipeline_runs=3)
QUICK = Plan(small=24, big=1, naive_small=4, naive_big=1, forward_min_batches=3, forward_min_seconds=2.0, pipeline_runs=1)


def note(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def maxrss_mb(who: int) -> float:
    """``ru_maxrss`` in MB (kilobytes on Linux, bytes on macOS)."""
    raw = resource.getrusage(who).ru_maxrss
    return raw / (1024 * 1024) if sys.platform == "darwin" else raw / 1024


# --------------------------------------------------------------------------- input tree


def _grey_sources() -> dict[str, Image.Image]:
    return {name: Image.fromarray(grey_from_rgb(np.ascontiguousarray(colour_photo(name))), "L") for name in COLOUR_SOURCES}


def _variant(base: Image.Image, size: tuple[int, int], portrait: bool, flip: bool) -> Image.Image:
    w, h = size
    im = base.resize((h, w) if portrait else (w, h), Image.Resampling.BICUBIC)
    return im.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else im


def build_tree(root: Path, plan: Plan) -> dict[str, list[Path]]:
    """Deterministic tree of grey inputs under ``root``: {"small": [...], "big": [...], "tiff16": [...]}."""
    sources = _grey_sources()
    names = list(sources)
    files: dict[str, list[Path]] = {"small": [], "big": [], "tiff16": []}
    cache: dict[tuple[str, bool, bool], Image.Image] = {}  # small variants only (big ones would cost memory)
    for i in range(plan.small):
        name = names[i % len(names)]
        key = (name, i % 4 == 3, (i // len(names)) % 2 == 1)
        if key not in cache:
            cache[key] = _variant(sources[name], SMALL_SIZE, key[1], key[2])
        dest = root / "small" / f"part{i // 50:02d}" / f"{name}_{i:04d}.jpg"
        dest.parent.mkdir(parents=True, exist_ok=True)
        cache[key].save(dest, quality=90)
        files["small"].append(dest)
    cache.clear()
    for j in range(plan.big):
        name = names[j % len(names)]
        dest = root / "big" / f"{name}_{j:02d}.jpg"
        dest.parent.mkdir(parents=True, exist_ok=True)
        _variant(sources[name], BIG_SIZE, j % 3 == 2, j >= len(names)).save(dest, quality=90)
        files["big"].append(dest)
    grey8 = np.asarray(_variant(sources["rocket"], TIFF_SIZE, False, False))
    dest = root / "scans" / "rocket_16bit.tif"
    dest.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grey8.astype(np.uint16) * 257).save(dest, compression="tiff_lzw")
    files["tiff16"].append(dest)
    return files


def build_warmup_tree(root: Path, files: dict[str, list[Path]], count: int) -> None:
    """A few copies of tree files (small JPEGs and the 16-bit TIFF) for the warm-up run."""
    root.mkdir(parents=True, exist_ok=True)
    for src in files["small"][:count] + files["tiff16"]:
        shutil.copy2(src, root / src.name)


def build_png_tree(root: Path, count: int) -> None:
    """``count`` small grey PNGs (cheap to colorize: the memory check is about file count)."""
    base = np.asarray(Image.fromarray(grey_from_rgb(colour_photo("camera"))).resize((256, 192)))
    w, h = MEMORY_PNG_SIZE
    for i in range(count):
        y, x = (i * 7) % (192 - h), (i * 13) % (256 - w)
        dest = root / f"d{i // 500:02d}" / f"img_{i:05d}.png"
        dest.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(base[y:y + h, x:x + w])).save(dest)


# --------------------------------------------------------------------------- measurements


def _forward_once(colorizer: Colorizer, batch: torch.Tensor, device: torch.device) -> None:
    colorizer.predict(batch, on_device=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # time the work, not its launch


def measure_forward(config: PipelineConfig, device: torch.device, plan: Plan) -> tuple[float, int]:
    """Images/s of :meth:`Colorizer.predict` alone on real-content batches; returns (ips, batches timed).

    Spread over the run's lanes exactly as the run spreads them (each lane a thread with its
    own intra-op threads), so the ceiling is the network's best on this machine at this
    setting, not a single-threaded or single-lane figure the run could not be compared to.
    """
    generator, _ = load_weights(config.model.weights, device)
    colorizer = Colorizer(generator, device, config.model.precision)
    lanes = resolve_lanes(device, config.loader.lanes, config.loader.torch_threads)
    size, batch_size = config.model.size, config.loader.batch_size
    squares = [network_input(np.asarray(_grey_sources()[n]), size) for n in COLOUR_SOURCES]
    batch = torch.from_numpy(np.stack([squares[i % len(squares)] for i in range(batch_size)])[:, None])
    counts = [0] * lanes.count
    ready = threading.Barrier(lanes.count + 1)
    start = [0.0]

    def enough() -> bool:
        done = sum(counts)
        return done >= 500 or (done >= plan.forward_min_batches and time.perf_counter() - start[0] >= plan.forward_min_seconds)

    def lane(i: int) -> None:
        torch.set_num_threads(lanes.threads)
        for _ in range(2):  # untimed warm-up: allocator, kernels, lookup tables
            _forward_once(colorizer, batch, device)
        ready.wait()
        while not enough():
            _forward_once(colorizer, batch, device)
            counts[i] += 1

    threads = [threading.Thread(target=lane, args=(i,)) for i in range(lanes.count)]
    for t in threads:
        t.start()
    ready.wait()
    start[0] = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start[0]
    return sum(counts) * batch_size / elapsed, sum(counts)


@dataclass
class PipelineResult:
    exit_code: int
    walls: list[float]  # one per measured run
    report: dict[str, Any]  # of the last run
    rss_mb: float
    rss_workers_mb: float
    rss_before_mb: float

    @property
    def done(self) -> int:
        return int(self.report.get("counts", {}).get("done", 0))

    @property
    def wall(self) -> float:
        return sum(self.walls) / len(self.walls)

    @property
    def ips(self) -> float:
        return self.done / self.wall if self.wall > 0 else 0.0


def measure_pipeline(in_dir: Path, out_dir: Path, warm_in: Path, warm_out: Path, config: PipelineConfig,
                     runs: int = 1) -> PipelineResult:
    """A warm-up run on other files, then ``runs`` timed runs of the whole tree (``--force``)."""
    rss_before = maxrss_mb(resource.RUSAGE_SELF)
    code = run_pipeline(warm_in, warm_out, config, force=True, quiet=True)
    if code != 0:
        raise SystemExit(f"bench: the warm-up run exited {code}; see the messages above")
    walls = []
    for _ in range(runs):
        start = time.perf_counter()
        code = run_pipeline(in_dir, out_dir, config, force=True, quiet=True)
        walls.append(time.perf_counter() - start)
        report_file = out_dir / ".colorize-batch" / "last-run.json"
        if code not in (0, 1) or not report_file.is_file():
            raise SystemExit(f"bench: the measured run exited {code}; see the messages above")
    report = json.loads(report_file.read_text(encoding="utf-8"))
    return PipelineResult(code, walls, report, maxrss_mb(resource.RUSAGE_SELF), maxrss_mb(resource.RUSAGE_CHILDREN), rss_before)


def naive_colorize(src: Path, dest: Path, generator: torch.nn.Module, device: torch.device, size: int, quality: int) -> None:
    """The seed prototype's way for one file: float64 skimage Lab at full resolution, batch of 1."""
    from skimage.color import lab2rgb, rgb2lab
    from skimage.transform import resize

    with Image.open(src) as im:
        grey = np.asarray(im.convert("L"))
    rgb = np.repeat(grey[..., None], 3, axis=2).astype(np.float64) / 255.0
    lab = rgb2lab(rgb)
    small_l = np.asarray(Image.fromarray(lab[..., 0].astype(np.float32), "F").resize((size, size), Image.Resampling.BICUBIC))
    with torch.inference_mode():
        x = torch.from_numpy(small_l / 50.0 - 1.0).float()[None, None].to(device)
        ab_small = (generator(x)[0] * 110.0).float().cpu().numpy().transpose(1, 2, 0)
    ab = resize(ab_small.astype(np.float64), grey.shape + (2,), order=1, anti_aliasing=False)
    out = lab2rgb(np.concatenate([lab[..., :1], ab], axis=2))
    Image.fromarray((out * 255).round().astype(np.uint8), "RGB").save(dest, "JPEG", quality=quality)


@dataclass
class NaiveResult:
    ips: float
    seconds_per_file: dict[str, float] = field(default_factory=dict)
    timed: dict[str, int] = field(default_factory=dict)


def measure_naive(files: dict[str, list[Path]], plan: Plan, config: PipelineConfig, device: torch.device, out_dir: Path) -> NaiveResult:
    generator, _ = load_weights(config.model.weights, device)
    out_dir.mkdir(parents=True, exist_ok=True)
    size, quality = config.model.size, config.output.jpeg_quality
    naive_colorize(files["small"][0], out_dir / "warmup.jpg", generator, device, size, quality)  # untimed
    subset = {"small": files["small"][: plan.naive_small], "big": files["big"][: plan.naive_big], "tiff16": files["tiff16"]}
    result = NaiveResult(ips=0.0)
    for cls, paths in subset.items():
        if not paths:
            continue
        start = time.perf_counter()
        for n, src in enumerate(paths):
            naive_colorize(src, out_dir / f"{cls}_{n:03d}.jpg", generator, device, size, quality)
        result.seconds_per_file[cls] = (time.perf_counter() - start) / len(paths)
        result.timed[cls] = len(paths)
    total_files = sum(len(v) for v in files.values())
    whole_tree_seconds = sum(len(files[cls]) * s for cls, s in result.seconds_per_file.items())
    result.ips = total_files / whole_tree_seconds if whole_tree_seconds > 0 else 0.0
    del generator
    gc.collect()
    return result


# The child reports its own peak. On Linux it reads VmHWM (the peak of its own address space):
# ru_maxrss would not do, because exec() carries over the high-water mark of the process it
# replaces, and a subprocess starts as a copy of (or shares) this one, whose peak includes
# the naive loop's full-resolution float64 arrays.
_CHILD = """
import json, resource, sys
from pathlib import Path
from colorize_batch.config import load_config
from colorize_batch.runner import run_pipeline
config = load_config(sys.argv[1] or None, json.loads(sys.argv[2]))
code = run_pipeline(Path(sys.argv[3]), Path(sys.argv[4]), config, force=True, quiet=True)
try:
    with open("/proc/self/status") as fh:
        self_kb = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))
except (OSError, StopIteration):
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"exit_code": code, "self_kb": self_kb,
                  "workers_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""


def memory_check(root: Path, config_path: str | None, overrides: dict[str, Any]) -> dict[int, dict[str, float]]:
    """Peak RSS (main process, largest worker) of a fresh process per file count."""
    results: dict[int, dict[str, float]] = {}
    scale = 1024 * 1024 if sys.platform == "darwin" else 1024
    for count in MEMORY_COUNTS:
        in_dir, out_dir = root / f"mem{count}_in", root / f"mem{count}_out"
        build_png_tree(in_dir, count)
        note(f"memory check: {count} PNGs in a fresh process")
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-c", _CHILD, config_path or "", json.dumps(overrides), str(in_dir), str(out_dir)],
            capture_output=True, text=True, check=False,
        )
        lines = proc.stdout.strip().splitlines()
        if proc.returncode != 0 or not lines:
            raise SystemExit(f"bench: memory-check child failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
        child = json.loads(lines[-1])
        if child["exit_code"] != 0:
            raise SystemExit(f"bench: memory-check run on {count} files exited {child['exit_code']}:\n{proc.stderr[-2000:]}")
        results[count] = {
            "main_mb": child["self_kb"] / scale,
            "workers_mb": child["workers_kb"] / scale,
            "seconds": time.perf_counter() - start,
        }
    return results


# --------------------------------------------------------------------------- output


def render_tables(console: Console, summary: dict[str, Any], pipe: PipelineResult, naive: NaiveResult, plan: Plan,
                  files: dict[str, list[Path]], forward_batches: int, memory: dict[int, dict[str, float]] | None,
                  rss_imports_mb: float) -> None:
    sizes = f"{plan.small} x ~{SMALL_SIZE[0]}x{SMALL_SIZE[1]} JPEG, {plan.big} x ~{BIG_SIZE[0]}x{BIG_SIZE[1]} JPEG, 1 x {TIFF_SIZE[0]}x{TIFF_SIZE[1]} 16-bit TIFF"
    head = Table(title=f"colorize-batch benchmark: {summary['device']}, batch {summary['batch_size']}, size {summary['size']}, "
                       f"workers {summary['workers']}, lanes {summary['lanes']} x {summary['threads_per_lane']} thread(s)")
    head.add_column("measure")
    head.add_column("img/s", justify="right")
    head.add_column("vs pipeline", justify="right")
    head.add_column("how")
    head.add_row("forward (ceiling)", f"{summary['forward_ips']:.2f}", f"{summary['pipeline_vs_forward']:.2f}",
                 "Colorizer.predict, {} warm batches; mean of before/after the runs: {:.2f} / {:.2f}".format(
                     forward_batches, *summary["forward_ips_before_after"]))
    head.add_row("pipeline (run)", f"{summary['pipeline_ips']:.2f}", "1.00",
                 f"{pipe.done} files done / {pipe.wall:.2f} s mean wall of {len(pipe.walls)} runs "
                 f"({', '.join(f'{w:.2f}' for w in pipe.walls)}; {sizes})")
    timed = ", ".join(f"{n} {cls}" for cls, n in naive.timed.items())
    head.add_row("naive (seed way)", f"{summary['naive_ips']:.2f}", f"{summary['pipeline_vs_naive']:.2f}",
                 f"timed on {timed}; whole-tree mix")
    console.print(head)

    stages = Table(title="pipeline time per stage (summed over workers/threads)")
    for col in ("stage", "seconds", "ms / image", "share"):
        stages.add_column(col, justify="right" if col != "stage" else "left")
    total = sum(summary["stage_seconds"].values()) or 1.0
    done = max(pipe.done, 1)
    for stage in STAGES:
        s = summary["stage_seconds"].get(stage, 0.0)
        stages.add_row(stage, f"{s:.2f}", f"{1000 * s / done:.1f}", f"{100 * s / total:.0f}%")
    stages.add_row("wall (outer / report)", f"{pipe.wall:.2f} / {pipe.report.get('wall_seconds', 0):.2f}", f"{1000 * pipe.wall / done:.1f}", "")
    console.print(stages)

    naive_t = Table(title="naive loop, seconds per file")
    for col in ("class", "in tree", "timed", "s / file"):
        naive_t.add_column(col, justify="right" if col != "class" else "left")
    for cls, s in naive.seconds_per_file.items():
        naive_t.add_row(cls, str(len(files[cls])), str(naive.timed[cls]), f"{s:.3f}")
    console.print(naive_t)

    mem = Table(title="memory (peak RSS, MB)")
    mem.add_column("process")
    mem.add_column("MB", justify="right")
    mem.add_row("bench process after imports (torch, colorize_batch)", f"{rss_imports_mb:.0f}")
    mem.add_row("bench process before the pipeline runs (tree, forward)", f"{pipe.rss_before_mb:.0f}")
    mem.add_row("bench process after the pipeline runs: peak_rss_mb", f"{pipe.rss_mb:.0f}")
    mem.add_row("largest DataLoader worker: peak_rss_workers_mb", f"{pipe.rss_workers_mb:.0f}")
    for count, m in (memory or {}).items():
        mem.add_row(f"fresh run, {count} x {MEMORY_PNG_SIZE[0]}x{MEMORY_PNG_SIZE[1]} PNG: main / largest worker ({m['seconds']:.0f} s)",
                    f"{m['main_mb']:.0f} / {m['workers_mb']:.0f}")
    console.print(mem)
    counts = pipe.report.get("counts", {})
    if counts.get("failed"):
        console.print(f"[red]{counts['failed']} file(s) failed in the measured run[/red]: {pipe.report.get('failures', [])[:3]}")


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N (default: the config's model.device)")
    p.add_argument("--quick", action="store_true", help=f"small tree: {QUICK.small} + {QUICK.big} big + the TIFF; naive on {QUICK.naive_small + QUICK.naive_big + 1}")
    p.add_argument("--batch-size", type=int, help="loader.batch_size")
    p.add_argument("--workers", type=int, help="loader.workers")
    p.add_argument("--size", type=int, help="model.size (the network's square side)")
    p.add_argument("--lanes", type=int, help="loader.lanes (0: auto)")
    p.add_argument("--torch-threads", type=int, help="loader.torch_threads: intra-op threads per lane (0: cores / lanes)")
    p.add_argument("--config", help="pipeline.yaml to use (default: the repo's)")
    p.add_argument("--keep", metavar="DIR", type=Path, help="build the tree and outputs in DIR and keep them")
    p.add_argument("--memory-check", action="store_true", help="peak RSS of fresh runs on " + ", ".join(map(str, MEMORY_COUNTS)) + " small PNGs")
    p.add_argument("--weights", nargs="+", type=Path, metavar="FILE", help="weights file(s) to measure (model.weights); two are compared in one run")
    args = p.parse_args(argv)
    if args.weights and len(args.weights) > 2:
        p.error("--weights takes one or two files")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.weights or len(args.weights) == 1:
        code, summary = bench_one(args, args.weights[0] if args.weights else None)
        if summary is not None:
            print(json.dumps(summary), flush=True)
        return code
    results = []
    for weights in args.weights:
        note(f"=== {weights}")
        code, summary = bench_one(args, weights)
        if summary is None:
            return code
        results.append(summary)
    first, second = results
    ratios = {k: round(second[k] / first[k], 3) if first[k] else None for k in ("forward_ips", "pipeline_ips")}
    Console(file=sys.stdout).print(f"{args.weights[1].name} vs {args.weights[0].name}: forward x{ratios['forward_ips']}, "
                                   f"pipeline x{ratios['pipeline_ips']}")
    print(json.dumps({"runs": results, "second_vs_first": ratios}), flush=True)
    return code


def bench_one(args: argparse.Namespace, weights: Path | None) -> tuple[int, dict[str, Any] | None]:
    """The whole measurement for one weights file (default: the config's); prints its tables."""
    rss_imports_mb = maxrss_mb(resource.RUSAGE_SELF)
    overrides: dict[str, Any] = {}
    for flag, dotted in (
        ("device", "model.device"), ("batch_size", "loader.batch_size"), ("workers", "loader.workers"),
        ("size", "model.size"), ("lanes", "loader.lanes"), ("torch_threads", "loader.torch_threads"),
    ):
        if getattr(args, flag) is not None:
            overrides[dotted] = getattr(args, flag)
    if weights is not None:
        overrides["model.weights"] = str(weights.resolve())
    try:
        config = load_config(args.config, overrides)
        device = resolve_device(config.model.device)
    except (ConfigError, InferenceError) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2, None
    if not config.model.weights.is_file():
        print(f"bench: {config.model.weights}: weights file not found", file=sys.stderr)
        return 2, None
    plan = QUICK if args.quick else FULL

    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        root = args.keep.resolve()
    else:
        root = Path(tempfile.mkdtemp(prefix="colorize-bench-"))
    try:
        note(f"building the input tree in {root}")
        in_dir = root / "in"
        if in_dir.exists():
            shutil.rmtree(in_dir)
        files = build_tree(in_dir, plan)
        warm_in = root / "warmup_in"
        if warm_in.exists():
            shutil.rmtree(warm_in)
        build_warmup_tree(warm_in, files, min(config.loader.batch_size, 4))
        n_files = sum(len(v) for v in files.values())

        note(f"forward ceiling on {device} (batch {config.loader.batch_size}, {config.model.size}x{config.model.size})")
        forward_before, forward_batches = measure_forward(config, device, plan)
        note(f"pipeline: warm-up, then {plan.pipeline_runs} x {n_files} files")
        pipe = measure_pipeline(in_dir, root / "out", warm_in, root / "warmup_out", config, plan.pipeline_runs)
        note("forward ceiling again (the machine's speed drifts: the ratio uses the mean)")
        forward_after, more_batches = measure_forward(config, device, plan)
        forward_ips, forward_batches = (forward_before + forward_after) / 2, forward_batches + more_batches
        note(f"naive loop on {plan.naive_small} small + {plan.naive_big} big + 1 TIFF")
        naive = measure_naive(files, plan, config, device, root / "naive_out")
        memory = memory_check(root, args.config, overrides) if args.memory_check else None
    except (WeightsError, InferenceError) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2, None
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    lanes = resolve_lanes(device, config.loader.lanes, config.loader.torch_threads)
    summary: dict[str, Any] = {
        "weights": config.model.weights.name,
        "forward_ips": round(forward_ips, 3),
        "pipeline_ips": round(pipe.ips, 3),
        "naive_ips": round(naive.ips, 3),
        "pipeline_vs_forward": round(pipe.ips / forward_ips, 3) if forward_ips else None,
        "pipeline_vs_naive": round(pipe.ips / naive.ips, 3) if naive.ips else None,
        "peak_rss_mb": round(pipe.rss_mb, 1),
        "stage_seconds": {k: float(pipe.report.get("stage_seconds", {}).get(k, 0.0)) for k in STAGES},
        "device": str(device),
        "batch_size": config.loader.batch_size,
        "size": config.model.size,
        "workers": config.loader.workers,
        "lanes": lanes.count,
        "threads_per_lane": lanes.threads,
        "peak_rss_workers_mb": round(pipe.rss_workers_mb, 1),
        "forward_ips_before_after": [round(forward_before, 3), round(forward_after, 3)],
        "pipeline_walls": [round(w, 3) for w in pipe.walls],
        "files": n_files,
    }
    if memory is not None:
        for count in (MEMORY_COUNTS[0], MEMORY_COUNTS[-1]):  # rss_20_mb, rss_2000_mb
            summary[f"rss_{count}_mb"] = round(memory[count]["main_mb"], 1)

    console = Console(file=sys.stdout, width=None if sys.stdout.isatty() else 120)
    render_tables(console, summary, pipe, naive, plan, files, forward_batches, memory, rss_imports_mb)
    if args.keep:
        console.print(f"tree and outputs kept in {root}")
    sys.stdout.flush()
    return (1 if pipe.report.get("counts", {}).get("failed") else 0), summary


if __name__ == "__main__":
    sys.exit(main())
