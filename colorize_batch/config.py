"""The pipeline description: ``pipeline.yaml`` parsed into validated pydantic models.

Layers (lowest first): the built-in ``pipeline.yaml`` (the one place of the defaults; the
pydantic defaults below agree with it, a test checks), then ``--config FILE`` overlaid key by
key (mappings merge, lists and values replace), then the command-line flags actually given.
A relative path is resolved against the folder of the file that set it. Where each value
came from is kept (:meth:`PipelineConfig.sources`; ``--print-config -v`` shows it). Unknown
keys and wrong types are rejected with every problem listed.
"""

from __future__ import annotations

import hashlib
from importlib import resources
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from .reading import CONFIG_LIMIT, FileLimitError, read_user_file

PACKAGE_ROOT = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_ROOT.parent


def installed_file(*parts: str) -> Path:
    """A file that ships with the tool: inside an installed wheel (``colorize_batch/_data/``,
    copied there by ``setup.py``), else the checkout's own (editable install, tests)."""
    packaged = Path(str(resources.files("colorize_batch").joinpath("_data", *parts)))
    return packaged if packaged.is_file() else REPO_ROOT.joinpath(*parts)


DEFAULT_CONFIG = installed_file("pipeline.yaml")
DEFAULT_WEIGHTS = installed_file("weights", "colorize-effnet-lite0.pt")
MAX_CUDA_INDEX = 127  # torch keeps a device index in 8 bits: cuda:300 would be cuda:44
MAX_DECODE_TIMEOUT = 86_400.0  # a day; the decode alarm (setitimer) cannot hold 1e10 s: every file would fail


class ConfigError(Exception):
    """Raised with a message listing every problem in a configuration."""


def _given(value: Any) -> Any:
    if isinstance(value, str) and not value.strip():
        raise ValueError("an empty path: give a path, or leave the key out")
    return value


GivenPath = Annotated[Path, BeforeValidator(_given)]
"""A path a file sets: ``''`` would be resolved to the file's own folder (``weights: ''`` a folder,
``hints_dir: ''`` or a training root the config's folder), so it is refused."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)  # nan/inf: "a finite number"


class ModelSection(_Section):
    weights: GivenPath = DEFAULT_WEIGHTS
    size: int = Field(256, ge=32, le=2048, description="square side the network sees")
    device: str = "auto"
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    chroma_gain: float = Field(1.0, ge=0.0, le=3.0)
    temperature: float = Field(0.8, ge=0.05, le=5.0, description="annealed-mean temperature of classification-head "
                               "generators (effunet): lower = more vivid, 1.0 = the expectation; ignored by unet weights")
    hint_edges: bool = Field(True, description="colour hints respect the photo's edges: the hint branch's effect is cut "
                             "at edges of the grey and each hint's colour carried along its object (hint_edges.py); "
                             "false: as the hint branch gives them")

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        index = v[5:] if v.startswith("cuda:") else None  # N in ASCII digits, within torch's device index (int8)
        if v in ("auto", "cpu", "cuda") or (index and index.isascii() and index.isdigit() and int(index) <= MAX_CUDA_INDEX):
            return v
        raise ValueError(f"must be auto, cpu, cuda or cuda:N (N from 0 to {MAX_CUDA_INDEX})")


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
    decode_timeout: float = Field(120.0, gt=0, le=MAX_DECODE_TIMEOUT, description="seconds one file may take to decode before it is failed")
    color_inputs: Literal["skip", "copy", "recolor"] = "skip"
    color_threshold: float = Field(6.0, ge=0.0)
    tiff_pages: Literal["first", "all"] = "first"
    hints_dir: GivenPath | None = Field(None, description="colour hints under this folder (mirrored paths) instead of beside the scans")
    hints_only: bool = Field(False, description="only the images that have a hint file")

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
    path: GivenPath
    weight: float = Field(1.0, gt=0)


class TrainSection(_Section):
    data: list[TrainRoot] = []
    val_dir: GivenPath | None = None
    val_limit: int = Field(80, ge=1)
    preset: str = "lite"
    crop: int = Field(128, ge=32, le=2048)
    batch_size: int = Field(16, ge=1, le=1024)
    steps: int = Field(3000, ge=1)
    l1_steps: int = Field(3000, ge=0, description="generator-only L1 warm-up before the GAN starts")
    lambda_l1: float = Field(100.0, ge=0)
    lambda_ce: float = Field(1.0, ge=0, description="effunet: weight of the class-rebalanced cross-entropy over ab bins")
    rebalance: float = Field(0.5, ge=0, le=1, description="effunet: Zhang's lambda, mixing the ab prior with uniform")
    encoder_lr_scale: float = Field(1.0, gt=0, description="effunet: encoder learning rate = lr x this")
    pretrained: bool = Field(True, description="effunet: start the encoder from ImageNet weights (training extra)")
    freeze_base: bool = Field(False, description="effunet with hints: train only the hint branch; the automatic model stays as --init gave it")
    hint_mean_points: float = Field(8.0, ge=1, description="hint training: mean number of revealed points per photo (geometric, 1-24)")
    hint_free: float = Field(0.0, ge=0, le=1, description="hint training: share of crops shown with no hints (keeps the automatic model trained when the whole model learns)")
    hint_recolour: float = Field(0.0, ge=0, le=1, description="hint training: share of crops with one region (an object, grown over the grey photo) given a new colour in the target and the hints alike, so a hint learns to colour its object and not the whole photo")
    gan_mode: Literal["vanilla", "lsgan"] = "vanilla"
    lr: float = Field(2e-4, gt=0, le=1)
    lr_schedule: Literal["constant", "cosine"] = "constant"
    lr_warmup: int = Field(0, ge=0, description="steps of linear learning-rate warm-up from 0 (fresh optimiser state on trained weights)")
    ema: float = Field(0.0, ge=0, lt=1, description="decay of an exponential moving average of the generator's weights "
                       "(0.998: a half-life of about 350 steps), kept beside the trained ones; validation scores it and "
                       "export writes it; 0: off")
    ema_start: int = Field(0, ge=0, description="train.ema: the average starts after this step (the early weights are far from the end)")
    gan_lr: float = Field(5e-5, gt=0, le=1)
    beta1: float = Field(0.5, ge=0, lt=1, description="Adam's betas: torch refuses any other")
    beta2: float = Field(0.999, ge=0, lt=1)
    disc_layers: int = Field(3, ge=1, le=5)
    disc_channels: int = Field(32, ge=8, le=256)
    min_chroma: float = Field(3.0, ge=0, description="skip near-grey crops (mean ab magnitude)")
    degrade: float = Field(0.0, ge=0, le=1, description="share of crops whose grey input is degraded like an old scan "
                           "(fading, uneven exposure, blur, halftone, grain, dust and scratches, JPEG); the colour target stays clean")
    degrade_strength: float = Field(1.0, ge=0, le=2, description="scale of every degradation's magnitude (degrade.py)")
    workers: int = Field(1, ge=0, le=64)
    threads: int = Field(0, ge=0, le=256)
    checkpoint_every: int = Field(250, ge=1)
    val_every: int = Field(500, ge=1)
    log_every: int = Field(50, ge=1)
    seed: int = Field(0, ge=0, le=2**32 - 1)


class PipelineConfig(_Section):
    model: ModelSection = ModelSection()
    loader: LoaderSection = LoaderSection()
    input: InputSection = InputSection()
    output: OutputSection = OutputSection()
    train: TrainSection = TrainSection()
    _sources: dict[str, str] = PrivateAttr(default_factory=dict)

    def to_yaml(self, sources: bool = False) -> str:
        """The configuration as YAML; with ``sources``, each value followed by ``# from FILE``."""
        text = yaml.safe_dump(json.loads(self.model_dump_json()), sort_keys=False)
        return annotate_sources(text, self.sources()) if sources else text

    def sources(self) -> dict[str, str]:
        """Where each value came from: dotted key -> the file that set it, ``command line`` or
        ``built-in defaults`` (the pydantic defaults, when no file set the key). Lists count as one value."""
        return {key: self._sources.get(key, BUILTIN_DEFAULTS) for key in _leaf_keys(json.loads(self.model_dump_json()))}

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


BUILTIN_DEFAULTS = "built-in defaults"
COMMAND_LINE = "command line"
PATH_KEYS = ("model.weights", "train.val_dir", "input.hints_dir")  # + train.data[].path: paths resolved against their file's folder


def _leaf_keys(data: dict, prefix: str = "") -> list[str]:
    """Dotted keys of the values of a nested mapping (a list is one value)."""
    keys: list[str] = []
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        keys.extend(_leaf_keys(value, dotted + ".") if isinstance(value, dict) else [dotted])
    return keys


def annotate_sources(text: str, sources: dict[str, str]) -> str:
    """``to_yaml`` text with ``# from SOURCE`` after each top-level key's values (block style, as safe_dump writes)."""
    lines: list[str] = []
    stack: list[str] = []  # the keys of the mapping lines above, by indentation
    for line in text.splitlines():
        stripped = line.lstrip(" ")
        indent = len(line) - len(stripped)
        if stripped.startswith("- ") or ":" not in stripped or indent % 2:
            lines.append(line)
            continue
        key = stripped.split(":", 1)[0]
        depth = indent // 2
        stack[depth:] = [key]
        dotted = ".".join(stack)
        lines.append(f"{line}  # from {sources[dotted]}" if dotted in sources else line)
    return "\n".join(lines) + "\n"


def format_errors(exc: ValidationError, source: str, sources: dict[str, str] | None = None) -> str:
    """Every problem, one per line; the header names where they came from (the file, or the
    command line when every one of them came from there), each line its own source if another."""
    problems = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        problems.append((where, err["msg"], _origin(where, sources or {}) or source))
    origins = {origin for _, _, origin in problems}
    header = origins.pop() if len(origins) == 1 else source
    lines = [f"{header}: {len(problems)} problem(s) in the configuration:"]
    lines += [f"  - {where}: {msg}" + (f" (from {origin})" if origin != header else "") for where, msg, origin in problems]
    return "\n".join(lines)


def _origin(dotted: str, sources: dict[str, str]) -> str | None:
    """The source of ``dotted`` or of the nearest key above it that has one."""
    parts = dotted.split(".")
    while parts:
        found = sources.get(".".join(parts))
        if found:
            return found
        parts.pop()
    return None


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    node = data
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set {dotted}: {key} is not a section")
    node[leaf] = value


class _StrictLoader(yaml.SafeLoader):
    """``yaml.safe_load`` that refuses a key given twice in one mapping: PyYAML keeps the last one
    silently, so a second ``model:`` section would drop every key of the first."""


def _unique_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # "<<: *defaults" may be overridden key by key
            continue
        key = loader.construct_object(key_node, deep=deep)
        if isinstance(key, (str, int, float, bool)) and key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice in one mapping", key_node.start_mark)
        if isinstance(key, (str, int, float, bool)):
            seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def read_layer(path: Path) -> dict[str, Any]:
    """One YAML file's mapping, its relative paths resolved against the file's folder."""
    try:
        loaded = yaml.load(read_user_file(path, CONFIG_LIMIT, "config file").decode("utf-8"), Loader=_StrictLoader)  # a SafeLoader: no Python objects
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except FileLimitError as exc:
        raise ConfigError(str(exc)) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})".replace("\n", " ")) from None
    except RecursionError:
        raise ConfigError(f"{path}: not a usable config file (nested too deeply)") from None
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    if _too_many_values(loaded):
        raise ConfigError(f"{path}: not a usable config file (more than {CONFIG_VALUES:,} values once its YAML aliases "
                          "are expanded: an alias bomb or an alias that contains itself)")
    _resolve_paths(loaded, path.resolve().parent)
    return loaded


CONFIG_VALUES = 100_000  # pipeline.yaml holds ~100; merging and validating walk every value, aliases expanded


def _too_many_values(data: dict[str, Any]) -> bool:
    """Whether ``data`` holds more than :data:`CONFIG_VALUES` values with its aliases expanded. PyYAML
    shares an aliased node instead of copying it, so a 2 kB file of nested aliases (``b: [*a, *a]``,
    ``c: [*b, *b]``, ...) loads at once but is 2^40 values to walk, and ``a: &a [*a]`` never ends:
    counted here with a budget, in time proportional to the budget at most."""
    stack: list[Any] = [data]
    for _ in range(CONFIG_VALUES):
        if not stack:
            return False
        node = stack.pop()
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return bool(stack)


def _resolve(value: Any, base: Path) -> Any:
    if isinstance(value, str) and not value.strip():
        return value  # left for validation to refuse (GivenPath), not made the file's folder
    if isinstance(value, (str, Path)) and not Path(value).is_absolute():
        return str(base / value)
    return value


def _resolve_paths(data: dict[str, Any], base: Path) -> None:
    """Relative paths of one layer (or of the flags) -> absolute, against ``base``; other values untouched
    (wrong types are left for validation to report)."""
    for dotted in PATH_KEYS:
        section, key = dotted.split(".")
        node = data.get(section)
        if isinstance(node, dict) and node.get(key) is not None:
            node[key] = _resolve(node[key], base)
    train = data.get("train")
    roots = train.get("data") if isinstance(train, dict) else None
    if isinstance(roots, list):
        for root in roots:
            if isinstance(root, dict) and root.get("path") is not None:
                root["path"] = _resolve(root["path"], base)


def merge_layer(base: dict[str, Any], layer: dict[str, Any], source: str, sources: dict[str, str],
                prefix: str = "") -> dict[str, Any]:
    """``layer`` over ``base`` key by key: mappings merge, anything else (lists included) replaces.
    Records ``source`` in ``sources`` for every value ``layer`` sets."""
    merged = dict(base)
    for key, value in layer.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_layer(merged[key], value, source, sources, dotted + ".")
        else:
            merged[key] = value
            for stale in [k for k in sources if k == dotted or k.startswith(dotted + ".")]:
                del sources[stale]
            for leaf in _leaf_keys(value, dotted + ".") if isinstance(value, dict) else [dotted]:
                sources[leaf] = source
    return merged


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """The built-in ``pipeline.yaml``, overlaid by ``path`` (if given), then dotted ``overrides``.

    Relative paths in each file are resolved against that file's folder; relative paths among the
    ``overrides`` against the folder of the last file (the command line gives absolute ones).
    """
    layers = [DEFAULT_CONFIG] if DEFAULT_CONFIG.is_file() else []
    if path is not None and (not layers or not _same_file(Path(path), DEFAULT_CONFIG)):
        layers.append(Path(path))
    data: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for layer in layers:
        data = merge_layer(data, read_layer(layer), str(layer), sources)
    flags: dict[str, Any] = {}
    for dotted, value in (overrides or {}).items():
        _set_dotted(flags, dotted, value)
    if layers:
        _resolve_paths(flags, layers[-1].resolve().parent)
    data = merge_layer(data, flags, COMMAND_LINE, sources)
    source = str(layers[-1]) if layers else BUILTIN_DEFAULTS
    try:
        config = PipelineConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_errors(exc, source, sources)) from None
    config._sources = sources
    return config


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:
        return False
