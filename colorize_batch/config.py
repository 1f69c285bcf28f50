"""The pipeline description: ``pipeline.yaml`` parsed into validated pydantic models.

Precedence (lowest first): built-in defaults, the YAML file, then command-line flags that
were actually given. Unknown keys and wrong types are rejected with every problem listed.
"""

from __future__ import annotations

import hashlib
from importlib import resources
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

PACKAGE_ROOT = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_ROOT.parent


def installed_file(*parts: str) -> Path:
    """A file that ships with the tool: inside an installed wheel (``colorize_batch/_data/``,
    copied there by ``setup.py``), else the checkout's own (editable install, tests)."""
    packaged = Path(str(resources.files("colorize_batch").joinpath("_data", *parts)))
    return packaged if packaged.is_file() else REPO_ROOT.joinpath(*parts)


DEFAULT_CONFIG = installed_file("pipeline.yaml")
DEFAULT_WEIGHTS = installed_file("weights", "colorize-effnet-lite0.pt")


class ConfigError(Exception):
    """Raised with a message listing every problem in a configuration."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSection(_Section):
    weights: Path = DEFAULT_WEIGHTS
    size: int = Field(256, ge=32, le=2048, description="square side the network sees")
    device: str = "auto"
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    chroma_gain: float = Field(1.0, ge=0.0, le=3.0)
    temperature: float = Field(1.0, ge=0.05, le=5.0, description="annealed-mean temperature of classification-head "
                               "generators (effunet): lower = more vivid, 1.0 = the expectation; ignored by unet weights")

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v in ("auto", "cpu", "cuda") or (v.startswith("cuda:") and v[5:].isdigit()):
            return v
        raise ValueError("must be auto, cpu, cuda or cuda:N")


class LoaderSection(_Section):
    batch_size: int = Field(8, ge=1, le=1024)
    workers: int = Field(1, ge=0, le=64)
    prefetch_factor: int = Field(2, ge=1, le=16)
    lanes: int = Field(0, ge=0, le=64, description="inference threads; 0: auto (2 on a multi-core CPU, 1 on CUDA)")
    torch_threads: int = Field(0, ge=0, le=256, description="intra-op threads per lane; 0: cores / lanes")
    writer_threads: int = Field(2, ge=1, le=64)


class InputSection(_Section):
    extensions: list[str] = [".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp"]
    include: list[str] = ["**"]
    exclude: list[str] = []
    max_pixels: int = Field(400_000_000, ge=1)
    decode_timeout: float = Field(120.0, gt=0, description="seconds one file may take to decode before it is failed")
    color_inputs: Literal["skip", "copy", "recolor"] = "skip"
    color_threshold: float = Field(6.0, ge=0.0)
    tiff_pages: Literal["first", "all"] = "first"

    @field_validator("extensions")
    @classmethod
    def _exts(cls, v: list[str]) -> list[str]:
        return [e.lower() if e.startswith(".") else "." + e.lower() for e in v]


class OutputSection(_Section):
    format: Literal["same", "jpg", "png", "tif"] = "same"
    jpeg_quality: int = Field(92, ge=1, le=100)
    png_compress_level: int = Field(3, ge=0, le=9)
    tiff_compression: Literal["none", "lzw", "deflate", "jpeg"] = "lzw"
    bit_depth: Literal[8, 16, "same"] = 8
    recombination: Literal["fast", "exact"] = "fast"
    metadata: bool = True
    overwrite: Literal["own", "foreign"] = Field(
        "own", description="own: replace only files this tool wrote (manifest or provenance mark); foreign: any file")


class TrainRoot(_Section):
    path: Path
    weight: float = Field(1.0, gt=0)


class TrainSection(_Section):
    data: list[TrainRoot] = []
    val_dir: Path | None = None
    val_limit: int = Field(80, ge=1)
    preset: str = "lite"
    crop: int = Field(128, ge=32)
    batch_size: int = Field(16, ge=1)
    steps: int = Field(20000, ge=1)
    l1_steps: int = Field(3000, ge=0, description="generator-only L1 warm-up before the GAN starts")
    lambda_l1: float = Field(100.0, ge=0)
    lambda_ce: float = Field(1.0, ge=0, description="effunet: weight of the class-rebalanced cross-entropy over ab bins")
    rebalance: float = Field(0.5, ge=0, le=1, description="effunet: Zhang's lambda, mixing the ab prior with uniform")
    encoder_lr_scale: float = Field(1.0, gt=0, description="effunet: encoder learning rate = lr x this")
    pretrained: bool = Field(True, description="effunet: start the encoder from ImageNet weights (training extra)")
    freeze_base: bool = Field(False, description="effunet with hints: train only the hint branch; the automatic model stays as --init gave it")
    hint_mean_points: float = Field(8.0, ge=1, description="hint training: mean number of revealed points per photo (geometric, 1-24)")
    gan_mode: Literal["vanilla", "lsgan"] = "vanilla"
    lr: float = Field(2e-4, gt=0)
    lr_schedule: Literal["constant", "cosine"] = "constant"
    gan_lr: float = Field(1e-4, gt=0)
    beta1: float = 0.5
    beta2: float = 0.999
    disc_layers: int = Field(3, ge=1, le=5)
    disc_channels: int = Field(32, ge=8, le=256)
    min_chroma: float = Field(3.0, ge=0, description="skip near-grey crops (mean ab magnitude)")
    workers: int = Field(1, ge=0)
    threads: int = Field(0, ge=0)
    checkpoint_every: int = Field(500, ge=1)
    val_every: int = Field(1000, ge=1)
    log_every: int = Field(50, ge=1)
    seed: int = 0


class PipelineConfig(_Section):
    model: ModelSection = ModelSection()
    loader: LoaderSection = LoaderSection()
    input: InputSection = InputSection()
    output: OutputSection = OutputSection()
    train: TrainSection = TrainSection()

    def to_yaml(self) -> str:
        return yaml.safe_dump(json.loads(self.model_dump_json()), sort_keys=False)

    def pixel_hash(self) -> str:
        """Hash of the settings that change output pixels (not workers, threads, batch size)."""
        relevant = {
            "size": self.model.size,
            "chroma_gain": self.model.chroma_gain,
            "temperature": self.model.temperature,
            "output": json.loads(self.output.model_dump_json(exclude={"overwrite"})),
            "color_inputs": self.input.color_inputs,
            "tiff_pages": self.input.tiff_pages,
        }
        return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def _format_errors(exc: ValidationError, source: str) -> str:
    lines = [f"{source}: {exc.error_count()} problem(s) in the configuration:"]
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"  - {where}: {err['msg']}")
    return "\n".join(lines)


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    node = data
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set {dotted}: {key} is not a section")
    node[leaf] = value


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """Load ``path`` (default: the repo's ``pipeline.yaml`` if present), apply dotted overrides.

    Relative paths in the file are resolved against the file's directory.
    """
    data: dict[str, Any] = {}
    source = "defaults"
    if path is None and DEFAULT_CONFIG.is_file():
        path = DEFAULT_CONFIG
    if path is not None:
        path = Path(path)
        source = str(path)
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the config file ({exc.strerror or exc})") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc})".replace("\n", " ")) from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
        data = loaded
    for dotted, value in (overrides or {}).items():
        _set_dotted(data, dotted, value)
    try:
        config = PipelineConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source)) from None
    if path is not None:
        base = Path(path).resolve().parent
        if not config.model.weights.is_absolute():
            config.model.weights = base / config.model.weights
        for root in config.train.data:
            if not root.path.is_absolute():
                root.path = base / root.path
        if config.train.val_dir is not None and not config.train.val_dir.is_absolute():
            config.train.val_dir = base / config.train.val_dir
    return config
