"""Weights files: the generator's fp16 state dict plus everything needed to rebuild it.

A file carries its architecture (its ``family``, ``unet`` or ``effunet``, and that family's
config: :class:`~colorize_batch.model.UNetConfig` / :class:`~colorize_batch.model.EffUNetConfig`;
files written before families existed have no ``family`` key and are ``unet``), the Lab
normalisation it was trained with and its provenance, so ``run`` builds the right network
from the file alone. Files load with ``torch.load(weights_only=True)``: no pickled code runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import torch

from . import color
from .model import FAMILIES, PRESETS, EffUNetConfig, EffUNetGenerator, UNetConfig, UNetGenerator, count_parameters, family_of
from .reading import WEIGHTS_LIMIT, FileLimitError, open_user_file
from .safe_files import atomic_write_with, file_sha256

__all__ = ["FORMAT", "WeightsError", "WeightsInfo", "WeightsSummary", "automatic_sha256", "automatic_sha256_of", "check_size",
           "describe_weights", "file_sha256", "load_weights", "save_weights", "torch_save_atomic"]

FORMAT = "colorize-batch-weights/1"


class WeightsError(Exception):
    """A weights file that is missing, unreadable or does not fit the model code."""


@dataclass
class WeightsInfo:
    path: Path
    sha256: str
    architecture: UNetConfig | EffUNetConfig
    provenance: dict = field(default_factory=dict)
    automatic_sha256: str = ""  # of the automatic model alone (:func:`automatic_sha256`)

    @property
    def model_id(self) -> str:
        name = self.provenance.get("name") or self.path.stem
        return f"{name}@{self.sha256[:12]}"


def torch_save_atomic(obj: object, path: str | os.PathLike, mode: int = 0o644) -> Path:
    """``torch.save`` into ``path`` atomically (temporary name in the same folder, fsync, ``os.replace``):
    weights files and training checkpoints are never seen half-written."""
    return atomic_write_with(path, lambda fh: torch.save(obj, fh), mode)


def save_weights(path: str | os.PathLike, generator: UNetGenerator | EffUNetGenerator, provenance: dict | None = None) -> Path:
    """Write the generator alone as fp16, atomically."""
    path = Path(path)
    payload = {
        "format": FORMAT,
        "family": family_of(generator.config),
        "architecture": generator.config.to_dict(),
        "normalization": {"l_scale": color.L_SCALE, "l_shift": color.L_SHIFT, "ab_scale": color.AB_SCALE},
        "provenance": dict(provenance or {}),
        "state_dict": {k: (v.half() if v.is_floating_point() else v) for k, v in generator.state_dict().items()},
    }
    return torch_save_atomic(payload, path)


def check_size(size: int, info: WeightsInfo, what: str = "model.size") -> str | None:
    """Why the network input side ``size`` does not fit these weights (``what`` names the setting), or ``None``."""
    multiple = info.architecture.multiple
    if size % multiple:
        return f"{what} {size} must be a multiple of {multiple} for {info.path.name}"
    return None


def _read_payload(path: Path, sha256: str | None) -> tuple[dict, str]:
    """A weights file's checked payload and its sha256 (``sha256``: the caller's, when it has it)."""
    try:
        with open_user_file(path, WEIGHTS_LIMIT, "weights file") as fh:  # never a FIFO, never unbounded
            with warnings.catch_warnings():  # torch's notes on pickle protocols are not for the user
                warnings.simplefilter("ignore")
                payload = torch.load(fh, map_location="cpu", weights_only=True)
            if sha256 is None:  # of the bytes just loaded, not of whatever the name holds by now
                fh.seek(0)
                sha256 = file_sha256(fh)
    except FileNotFoundError:
        raise WeightsError(f"{path}: weights file not found") from None
    except FileLimitError as exc:
        raise WeightsError(str(exc)) from None
    except pickle.UnpicklingError:  # torch's message suggests weights_only=False: never pass that on
        raise WeightsError(f"{path}: not a colorize-batch weights file (it holds Python objects other than tensors; "
                           "refused, nothing in it was run)") from None
    except Exception as exc:  # noqa: BLE001 - any unpickling problem means "not our file"
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0] if "weights_only" not in str(exc) else type(exc).__name__
        raise WeightsError(f"{path}: not a colorize-batch weights file, or a damaged one ({reason})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise WeightsError(f"{path}: not a colorize-batch weights file (expected format {FORMAT!r})")
    norm = payload.get("normalization", {})
    expected = {"l_scale": color.L_SCALE, "l_shift": color.L_SHIFT, "ab_scale": color.AB_SCALE}
    if norm != expected:
        raise WeightsError(f"{path}: trained with Lab normalisation {norm}, this version uses {expected}")
    family = payload.get("family", "unet")
    if family not in FAMILIES:
        raise WeightsError(f"{path}: generator family {family!r} is not known to this version (known: {sorted(FAMILIES)})")
    state = payload.get("state_dict")
    for name, tensor in state.items() if isinstance(state, dict) else ():
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            # a diverged training run exported: every colour would be NaN
            raise WeightsError(f"{path}: damaged weights: {name} holds NaN or infinite values")
    return payload, sha256


HINT_PARTS = ("hints.", "guide.")  # state-dict prefixes of the parts that only photos with hint points use


def automatic_sha256(payload: dict) -> str:
    """sha256 of everything in a weights file that a photo without hints depends on: the family,
    the architecture without its hint branch and guide, the Lab normalisation and every tensor but
    the hint branch's and the guide's. Those parts are bias-free or run only for photos with hint
    points (model.HintBranch, model.GuideEncoder), so two files that differ only there colour a
    photo without hints bit for bit alike: a retrained hint branch leaves such photos current."""
    architecture = dict(payload.get("architecture") or {})
    for key, absent in (("hint_channels", []), ("guide", False)):
        if key in architecture:
            architecture[key] = absent
    digest = hashlib.sha256(json.dumps({"family": payload.get("family", "unet"), "architecture": architecture,
                                        "normalization": payload.get("normalization")}, sort_keys=True, default=str).encode())
    for name, tensor in sorted((payload.get("state_dict") or {}).items()):
        if name.startswith(HINT_PARTS) or not isinstance(tensor, torch.Tensor):
            continue
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}\n".encode())
        digest.update(tensor.detach().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _mismatch(path: Path, exc: Exception) -> WeightsError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return WeightsError(f"{path}: weights do not match the model code ({first})")


def _info(path: Path, payload: dict, sha256: str) -> WeightsInfo:
    config_type = FAMILIES[payload.get("family", "unet")][0]
    try:
        config = cast("type[UNetConfig | EffUNetConfig]", config_type).from_dict(payload["architecture"])
    except (KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise _mismatch(path, exc) from None
    return WeightsInfo(path=path, sha256=sha256, architecture=config, provenance=payload.get("provenance", {}),
                       automatic_sha256=automatic_sha256(payload))


def automatic_sha256_of(path: str | os.PathLike, sha256: str | None = None) -> str:
    """The :func:`automatic_sha256` of a weights file, "" for one that does not load (whoever must
    load it reports why)."""
    try:
        return read_weights_info(path, sha256).automatic_sha256
    except WeightsError:
        return ""


def read_weights_info(path: str | os.PathLike, sha256: str | None = None) -> WeightsInfo:
    """What :func:`load_weights` checks and says about a weights file, without building the network
    (a driver that only hands the file to the processes that run it)."""
    path = Path(path)
    payload, sha256 = _read_payload(path, sha256)
    return _info(path, payload, sha256)


def load_weights(path: str | os.PathLike, device: str | torch.device = "cpu", sha256: str | None = None) -> tuple[UNetGenerator | EffUNetGenerator, WeightsInfo]:
    """Build the generator described by a weights file, in eval mode, in float32 on ``device``.

    ``sha256``: the file's hash when the caller has it already (it is not read twice).
    """
    path = Path(path)
    payload, sha256 = _read_payload(path, sha256)
    info = _info(path, payload, sha256)
    generator_type = FAMILIES[payload.get("family", "unet")][1]
    try:
        generator = generator_type(info.architecture)  # no pretrained download: every tensor comes from the file
        generator.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in payload["state_dict"].items()})
    except (KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise _mismatch(path, exc) from None
    generator.to(device).eval()
    return generator, info


@dataclass
class WeightsSummary:
    """What ``colorize-batch info`` says about a weights file."""

    path: Path
    sha256: str
    model_id: str
    family: str
    preset: str | None  # the preset whose architecture the file has, if any
    architecture: dict
    parameters: int
    provenance: dict = field(default_factory=dict)


def describe_weights(path: str | os.PathLike) -> WeightsSummary:
    """Load ``path`` (on the CPU) and describe it; raises :class:`WeightsError`."""
    generator, info = load_weights(path)
    arch = info.architecture
    preset = next((name for name, config in PRESETS.items() if config == arch), None)
    return WeightsSummary(info.path, info.sha256, info.model_id, family_of(arch), preset, arch.to_dict(),
                          count_parameters(generator), dict(info.provenance))
