"""Average the weights of several generators of one architecture (a "model soup", Wortsman et al. 2022).

    .venv/bin/python benchmarks/soup.py weights/colorize-effnet-lite0.pt runs/narrow-ema/generator.pt \
        --out runs/soup.pt

Issue 24: the plain average of the shipped weights and a continuation of them lay above the shipped
curve where each alone was on it. Every floating-point tensor (batch-norm statistics included) is
the mean over the files, accumulated in float32; integer tensors (batch counters) come from the
first file. The first file names the architecture: a later file may lack some of its tensors (an
automatic model beside one with a hint branch), and those are copied from the first file alone and
listed. A tensor whose shape differs, or one the first file lacks, is an error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from colorize_batch.weights import WeightsError, load_weights, save_weights


def soup(paths: list[Path]) -> tuple[torch.nn.Module, dict, list[str]]:
    """The averaged generator (the first file's architecture), its provenance, and the names of the
    tensors only the first file has."""
    base, base_info = load_weights(paths[0])
    states = [base.state_dict()] + [load_weights(p)[0].state_dict() for p in paths[1:]]
    first = states[0]
    for path, state in zip(paths[1:], states[1:]):
        extra = sorted(set(state) - set(first))
        if extra:
            raise WeightsError(f"{path}: tensors the first file lacks: {', '.join(extra[:3])}")
        for name, tensor in state.items():
            if tensor.shape != first[name].shape:
                raise WeightsError(f"{path}: {name} has shape {tuple(tensor.shape)}, the first file {tuple(first[name].shape)}")
    averaged, first_only = {}, []
    for name, tensor in first.items():
        present = [s[name] for s in states if name in s]
        if len(present) < len(states):
            first_only.append(name)
        if tensor.is_floating_point():
            averaged[name] = torch.stack([t.float() for t in present]).mean(0)
        else:
            averaged[name] = tensor
    base.load_state_dict(averaged)
    provenance = {**base_info.provenance, "soup": [str(p) for p in paths]}
    return base, provenance, first_only


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("weights", nargs="+", type=Path, help="weights files; the first names the architecture")
    parser.add_argument("--out", type=Path, required=True, help="the averaged weights file (fp16)")
    parser.add_argument("--name", help="provenance name (default: the output's stem)")
    args = parser.parse_args(argv)
    if len(args.weights) < 2:
        parser.error("give at least two weights files")
    try:
        generator, provenance, first_only = soup(args.weights)
    except WeightsError as exc:
        print(f"soup: {exc}", file=sys.stderr)
        return 2
    provenance["name"] = args.name or args.out.stem
    save_weights(args.out, generator, provenance)  # type: ignore[arg-type]
    if first_only:
        print(f"{len(first_only)} tensors from {args.weights[0]} alone (the others lack them), e.g. {first_only[0]}")
    print(f"wrote {args.out}: the mean of {len(args.weights)} files")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
