"""Colour hints: "this point of the photo was this colour", as extra inputs of the network.

A hint file (``photo.hints.json`` beside the scan, or under ``input.hints_dir``) holds points
in coordinates relative to the image **as the output shows it** (after EXIF orientation), so
they survive resizing and rotation flags; ``schemas/hints.schema.json`` documents the format::

    {"points": [{"x": 0.42, "y": 0.31, "color": "#1f2a44", "radius": 0.01}],
     "global": {"tint": "#704214", "strength": 0.3}}

``x``, ``y``: 0-1 from the left / top edge; ``color``: sRGB hex of the wanted colour (only its
hue and chroma are used: the photo's own grey levels stay); ``radius``: the disc the colour
covers, as a share of the image's shorter side (default 0.01). ``global.tint``: a colour cast
mixed into the whole prediction, ``strength`` 0-1 (default 0.3) of the way (:func:`apply_tint`),
e.g. to match a hand-tinted print; it is applied after the network, the points go into it.

For the network, the points are rasterised (:func:`rasterize`) into three planes at its input
size: the hint's normalised ab where a point covers a pixel, 0 elsewhere, and the coverage mask.
An image without hints gives all-zero planes, for which the model's hint branch adds exactly
nothing. Training and ``eval --hints N`` reveal points of the ground truth with
:func:`sample_points`.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import math
import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath, PurePosixPath
from typing import Any

import torch

from .color import normalize_ab, rgb_to_lab
from .reading import BUNDLE_LIMIT, HINTS_LIMIT, FileLimitError, read_user_file
from .names import display

HINTS_SUFFIX = ".hints.json"
DEFAULT_RADIUS = 0.01
MAX_POINTS = 1000
_HEX = re.compile(r"^#?([0-9a-fA-F]{6})$")


class HintError(ValueError):
    """A hint file that cannot be used: the reason names the problem (the caller adds the path)."""


@dataclass(frozen=True)
class HintPoint:
    """One revealed colour: centre ``(x, y)`` relative to the upright image, its ab (Lab units)
    and its radius relative to the image's shorter side."""

    x: float
    y: float
    a: float
    b: float
    radius: float = DEFAULT_RADIUS


@dataclass(frozen=True)
class Tint:
    """``global.tint``: the whole prediction's ab moves ``strength`` of the way to ``(a, b)``."""

    a: float
    b: float
    strength: float = 0.3


@dataclass(frozen=True)
class Hints:
    """What one hint file says."""

    points: tuple[HintPoint, ...] = ()
    tint: Tint | None = None

    def to_json(self) -> str:
        """Lossless JSON of the parsed hints (what travels to a Ray actor)."""
        return json.dumps({"points": [dataclasses.astuple(p) for p in self.points],
                           "tint": dataclasses.astuple(self.tint) if self.tint else None})

    @classmethod
    def from_json(cls, text: str) -> Hints:
        data = json.loads(text)
        return cls(tuple(HintPoint(*p) for p in data["points"]), Tint(*data["tint"]) if data["tint"] else None)


def hex_to_ab(color: str) -> tuple[float, float]:
    """``"#1f2a44"`` -> the colour's (a, b) in CIE Lab (D65), as :mod:`color` computes it."""
    match = _HEX.match(color.strip()) if isinstance(color, str) else None
    if not match:
        raise HintError(f"colour {color!r} is not an sRGB hex colour like '#1f2a44'")
    value = int(match.group(1), 16)
    rgb = torch.tensor([(value >> 16) & 255, (value >> 8) & 255, value & 255], dtype=torch.float64).div(255)
    lab = rgb_to_lab(rgb.view(3, 1, 1))
    return float(lab[1]), float(lab[2])


def _number(point: dict, key: str, low: float, high: float, default: float | None = None) -> float:
    value = point.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(value, float) and not math.isfinite(value)):
        raise HintError(f"{key} must be a number, got {value!r}")
    if not low <= value <= high:  # compared as it is: a JSON integer of 400 digits has no float
        shown = repr(value) if len(repr(value)) <= 24 else f"{repr(value)[:12]}... ({len(repr(value))} digits)"
        raise HintError(f"{key} = {shown} is outside {low}-{high}")
    return float(value)


def _tint(data: object) -> Tint | None:
    if not isinstance(data, dict):
        raise HintError("'global' must be an object")
    extra = set(data) - {"tint", "strength"}
    if extra:
        raise HintError(f"global: unknown keys {sorted(extra)}")
    if "tint" not in data:
        return None
    a, b = hex_to_ab(data["tint"])
    return Tint(a, b, _number(data, "strength", 0, 1, 0.3))


def parse_hints(data: object) -> Hints:
    """What a decoded hint document says; :class:`HintError` names the first problem."""
    if not isinstance(data, dict):
        raise HintError("a hint file holds a JSON object with a 'points' list")
    unknown = set(data) - {"points", "global", "version", "comment"}
    if unknown:
        raise HintError(f"unknown keys {sorted(unknown)} (allowed: points, global, version, comment)")
    if data.get("version", 1) != 1:
        raise HintError(f"version {data['version']!r} is not supported (1)")
    points = data.get("points", [])
    if not isinstance(points, list):
        raise HintError("'points' must be a list")
    if len(points) > MAX_POINTS:
        raise HintError(f"{len(points)} points, more than {MAX_POINTS}")
    out = []
    for i, point in enumerate(points):
        if not isinstance(point, dict):
            raise HintError(f"point {i + 1}: not an object")
        try:
            extra = set(point) - {"x", "y", "color", "radius"}
            if extra:
                raise HintError(f"unknown keys {sorted(extra)}")
            if "color" not in point:
                raise HintError("no 'color'")
            a, b = hex_to_ab(point["color"])
            out.append(HintPoint(_number(point, "x", 0, 1), _number(point, "y", 0, 1), a, b,
                                 _number(point, "radius", 0.0005, 0.5, DEFAULT_RADIUS)))
        except HintError as exc:
            raise HintError(f"point {i + 1}: {exc}") from None
    try:
        tint = _tint(data.get("global", {}))
    except HintError as exc:
        raise HintError(f"global: {exc}" if not str(exc).startswith("global") else str(exc)) from None
    return Hints(tuple(out), tint)


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    """A JSON object whose keys differ: ``json`` keeps the last of a key given twice, so a second
    ``"points"`` would drop every point of the first, unseen (as config.py refuses a YAML key twice)."""
    seen: dict = {}
    for key, value in pairs:
        if key in seen:
            raise _DuplicateKey(f"key {key!r} is given twice in one object")
        seen[key] = value
    return seen


def _json_document(raw: bytes) -> Any:
    """Decoded JSON of a hint file or bundle; :class:`HintError` says why not."""
    try:  # a byte-order mark (Windows Notepad's UTF-8) is not an error
        return json.loads(raw.decode("utf-8-sig"), object_pairs_hook=_unique_keys)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HintError(f"not valid JSON: {exc}") from None
    except _DuplicateKey as exc:
        raise HintError(f"not a usable hint document ({exc})") from None
    except ValueError:  # Python's limit on an integer's digits (4300): not a number a hint can hold
        raise HintError("not a usable hint document (a number of thousands of digits)") from None
    except RecursionError:
        raise HintError("not a usable hint document (nested too deeply)") from None


def _read_bounded(path: Path, limit: int, what: str, short: str) -> bytes:
    """A named file's bytes (reading.read_user_file: regular, under ``limit``); problems as
    HintError ("cannot read the ``short``: ...")."""
    try:
        return read_user_file(path, limit, what)
    except FileLimitError as exc:
        raise HintError(exc.reason) from None
    except OSError as exc:
        raise HintError(f"cannot read the {short}: {exc.strerror or exc}") from None


def read_hint_document(path: Path) -> tuple[Any, bytes]:
    """A hint file's decoded JSON (not yet checked: :func:`parse_hints`) and its bytes."""
    raw = _read_bounded(path, HINTS_LIMIT, "hint file", "hint file")
    return _json_document(raw), raw


def read_editor_document(path: Path) -> dict:
    """A hint file as the gallery's editor shows it: checked (:func:`parse_hints`), every point with
    its ``#rrggbb`` colour and its radius (the default where it has none), its global tint if any.
    :class:`HintError` says why not."""
    data, _ = read_hint_document(path)
    parse_hints(data)
    points = [{"x": p["x"], "y": p["y"], "color": "#" + p["color"].strip().lstrip("#").lower(),
               "radius": p.get("radius", DEFAULT_RADIUS)} for p in data.get("points", [])]
    document: dict = {"points": points}
    if isinstance(data.get("global"), dict) and data["global"]:
        document["global"] = data["global"]
    return document


def read_hints(path: Path) -> tuple[Hints, str]:
    """What a hint file says and the sha256 of its bytes (the manifest keys reruns on it)."""
    data, raw = read_hint_document(path)
    return parse_hints(data), hashlib.sha256(raw).hexdigest()


def hints_document(points: list[tuple[float, float, str, float]]) -> dict:
    """A hint document from ``(x, y, "#rrggbb", radius)`` tuples (what the gallery and tests write)."""
    return {"points": [{"x": round(x, 5), "y": round(y, 5), "color": c, "radius": r} for x, y, c, r in points]}


def _disc(point: HintPoint, size: int, width: int, height: int) -> torch.Tensor:
    """``(size, size)`` bool mask of a point's disc on the square network input of a
    ``width x height`` image (a circle on the photo is an ellipse on the squashed square)."""
    r = point.radius * min(width, height)
    rx, ry = max(r * size / width, 0.5), max(r * size / height, 0.5)
    centres = torch.arange(size, dtype=torch.float32) + 0.5
    dx = ((centres - point.x * size) / rx).pow(2)
    dy = ((centres - point.y * size) / ry).pow(2)
    mask = dy[:, None] + dx[None, :] <= 1.0
    if not mask.any():  # smaller than a pixel: the pixel under the centre
        mask[min(int(point.y * size), size - 1), min(int(point.x * size), size - 1)] = True
    return mask


def rasterize(points: Sequence[HintPoint], size: int, width: int, height: int) -> torch.Tensor:
    """``(3, size, size)`` float32 planes for the network: normalised a, b where covered, and the
    coverage mask. Later points paint over earlier ones."""
    planes = torch.zeros(3, size, size)
    for point in points:
        mask = _disc(point, size, width, height)
        ab = normalize_ab(torch.tensor([point.a, point.b]))
        planes[0][mask], planes[1][mask], planes[2][mask] = float(ab[0]), float(ab[1]), 1.0
    return planes


def sample_points(true_ab: torch.Tensor, count: int, generator: torch.Generator, radius_px: tuple[float, float] = (2.5, 2.5),
                  width: int | None = None, height: int | None = None) -> list[HintPoint]:
    """``count`` points revealed from the truth ``(2, S, S)`` (ab in Lab units at the network's
    size): uniform centres, radius drawn from ``radius_px`` (pixels at size S), each point's colour
    the mean true ab over its disc (Zhang et al. 2017's revealed patches)."""
    size = true_ab.shape[-1]
    width, height = width or size, height or size
    points = []
    for _ in range(count):
        x, y = torch.rand(2, generator=generator).tolist()
        lo, hi = radius_px
        r_px = lo + (hi - lo) * float(torch.rand(1, generator=generator))
        probe = HintPoint(x, y, 0.0, 0.0, r_px / size)  # the disc's longer axis is r_px pixels at size S
        mask = _disc(probe, size, width, height)
        a, b = true_ab[:, mask].mean(1).tolist()
        points.append(HintPoint(x, y, a, b, probe.radius))
    return points


def revealed_planes(true_ab: torch.Tensor, centres: torch.Tensor, radii_px: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Batched :func:`sample_points` + :func:`rasterize` for training on square crops: ``(B, 2, S, S)``
    true ab (Lab units), ``(B, K, 2)`` relative centres ``(x, y)``, ``(B, K)`` radii in pixels and a
    ``(B, K)`` bool of the points in use -> ``(B, 3, S, S)`` planes, each point the mean truth over
    its disc, later points painting over earlier ones, on the truth's device. Each disc is worked
    out in the small window around its centre, not over the whole image."""
    b, _, size, _ = true_ab.shape
    device = true_ab.device
    reach = int(math.ceil(float(radii_px.max()))) + 1 if radii_px.numel() else 1
    offsets = torch.arange(-reach, reach + 1, device=device)
    cx = (centres[..., 0] * size).long().clamp(0, size - 1)  # the pixel under the centre (window middle)
    cy = (centres[..., 1] * size).long().clamp(0, size - 1)
    xs = cx[..., None, None] + offsets[None, None, None, :]  # (B, K, 1, P)
    ys = cy[..., None, None] + offsets[None, None, :, None]  # (B, K, P, 1)
    r = radii_px.clamp_min(0.5)[..., None, None]
    dx = ((xs + 0.5 - centres[..., 0, None, None] * size) / r).pow(2)
    dy = ((ys + 0.5 - centres[..., 1, None, None] * size) / r).pow(2)
    inside = (xs >= 0) & (xs < size) & (ys >= 0) & (ys < size)
    masks = (dx + dy <= 1.0) & inside & valid[..., None, None]  # (B, K, P, P)
    masks[..., reach, reach] |= valid  # a disc smaller than a pixel keeps the pixel under its centre
    xs, ys = xs.clamp(0, size - 1).expand_as(masks), ys.clamp(0, size - 1).expand_as(masks)
    batch = torch.arange(b, device=device).view(b, 1, 1, 1).expand_as(masks)
    values = true_ab.float().permute(0, 2, 3, 1)[batch, ys, xs]  # (B, K, P, P, 2)
    weights = masks.float()[..., None]
    means = normalize_ab((values * weights).sum((2, 3)) / weights.sum((2, 3)).clamp_min(1))  # (B, K, 2)
    planes = torch.zeros(b, 3, size, size, device=device)
    for k in range(masks.shape[1]):  # in order: later points paint over earlier ones
        bi, i, j = masks[:, k].nonzero(as_tuple=True)
        y, x = ys[bi, k, i, j], xs[bi, k, i, j]
        planes[bi, 0, y, x], planes[bi, 1, y, x], planes[bi, 2, y, x] = means[bi, k, 0], means[bi, k, 1], 1.0
    return planes


def training_hint_planes(true_ab: torch.Tensor, generator: torch.Generator, mean_points: float,
                         radius_px: tuple[float, float] = (1.0, 4.5), cap: int = 24, hint_free: float = 0.0,
                         anchors: torch.Tensor | None = None) -> torch.Tensor:
    """Hint planes revealing random points of each ``(B, 2, S, S)`` truth (Zhang et al. 2017): a
    geometric number of points (mean ``mean_points``, 1 to ``cap``), uniform centres, radii drawn
    from ``radius_px``, and for a ``hint_free`` share of the photos none at all; every draw comes
    from ``generator`` (CPU), the planes are made on the truth's device. ``anchors`` ``(B, 2)``
    (relative ``(x, y)``, NaN for none) puts a photo's first point there, and it always has one."""
    b = true_ab.shape[0]
    counts = torch.tensor([hint_count(generator, 1.0 / mean_points, cap) for _ in range(b)])
    if hint_free > 0:
        counts[torch.rand(b, generator=generator) < hint_free] = 0
    draws = torch.rand(b, cap, 3, generator=generator)
    if anchors is not None:
        anchors = anchors.cpu().float()
        anchored = ~anchors.isnan().any(1)
        draws[anchored, 0, :2] = anchors[anchored]
        counts[anchored] = counts[anchored].clamp_min(1)
    lo, hi = radius_px
    valid = torch.arange(cap)[None, :] < counts[:, None]
    device = true_ab.device
    return revealed_planes(true_ab, draws[..., :2].to(device), (lo + (hi - lo) * draws[..., 2]).to(device), valid.to(device))


def hint_count(generator: torch.Generator, p: float = 0.125, cap: int = 24) -> int:
    """A random number of points for training, geometric with mean 1/p (at least 1, at most ``cap``)."""
    u = float(torch.rand(1, generator=generator))
    return max(1, min(cap, 1 + int(math.log(max(u, 1e-12)) / math.log(1 - p))))


def apply_tint(ab: torch.Tensor, tint: Tint | None) -> torch.Tensor:
    """``(2, h, w)`` predicted ab (Lab units) moved ``tint.strength`` of the way to the tint's ab."""
    if tint is None or tint.strength == 0:
        return ab
    target = torch.tensor([tint.a, tint.b], dtype=ab.dtype, device=ab.device).view(2, 1, 1)
    return torch.lerp(ab, target.expand_as(ab), tint.strength)


BUNDLE_FORMAT = "colorize-batch-hints"


def hints_path_for(relative: str | PurePath, root: Path) -> Path:
    """Where the hints of the image at ``relative`` (to its input root) live under ``root``:
    ``a/b/photo.jpg`` -> ``root/a/b/photo.hints.json``."""
    relative = Path(relative)
    return root / relative.parent / (relative.stem + HINTS_SUFFIX)


def safe_relative(name: object) -> PurePosixPath:
    """``name`` as a path that stays under any root it is joined to: relative, not empty, without
    ``..`` or NUL; :class:`HintError` says why not. The one rule for paths that come from a file
    (bundle keys here, manifest paths in the gallery). ``\\`` is an ordinary character of a
    Linux file name, not a separator."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise HintError(f"image name {name!r} is not a relative path")
    try:
        os.fsencode(name)  # a lone surrogate (JSON's "\ud800") is no file name's bytes
    except UnicodeEncodeError:
        raise HintError(f"image name {name!r} is not a file name (a lone surrogate)") from None
    rel = PurePosixPath(name)
    if rel.is_absolute() or ".." in rel.parts:
        raise HintError(f"image name {name!r} leaves the hints folder")
    if not rel.parts:
        raise HintError(f"image name {name!r} is not a relative path")
    return rel


def read_bundle(data: object) -> dict[PurePosixPath, dict]:
    """The hint documents of a bundle (what the review gallery downloads):
    ``{"format": "colorize-batch-hints", "version": 1, "images": {"a/b/photo.jpg": {"points": [...]}}}``.
    Every document is checked with :func:`parse_hints`; an error names the image."""
    if not isinstance(data, dict) or data.get("format") != BUNDLE_FORMAT:
        raise HintError(f"not a hint bundle (its 'format' must be {BUNDLE_FORMAT!r})")
    if data.get("version", 1) != 1:
        raise HintError(f"bundle version {data.get('version')!r} is not supported (1)")
    images = data.get("images")
    if not isinstance(images, dict):
        raise HintError("a bundle's 'images' must map image paths to hint documents")
    out: dict[PurePosixPath, dict] = {}
    names: dict[PurePosixPath, str] = {}
    for name, document in images.items():
        rel = safe_relative(name)
        if rel in names:  # "a/photo.jpg", "./a/photo.jpg", "a//photo.jpg": one photo, one of them would win unseen
            raise HintError(f"{names[rel]!r} and {name!r} name the same image ({display(str(rel))}); nothing written")
        names[rel] = name
        try:
            parse_hints(document)
        except HintError as exc:
            raise HintError(f"{name}: {exc}") from None
        out[rel] = document
    return out


def import_bundle(bundle: Path, root: Path) -> list[Path]:
    """Unpack a bundle into the hints tree ``root`` (mirrored paths, each file written atomically);
    nothing is written unless every document in it is valid and every write can be made. Returns
    the files written."""
    from .safe_files import atomic_write_text, leads_outside

    raw = _read_bounded(bundle, BUNDLE_LIMIT, "hint bundle", "bundle")
    try:
        data = _json_document(raw)
    except HintError as exc:
        raise HintError(f"cannot read the bundle: {exc}") from None
    documents = read_bundle(data)
    claimed: dict[Path, PurePath | str] = {}  # hint file -> the bundle key that writes it
    for rel in sorted(documents):  # every write checked before the first: all or nothing
        dest = hints_path_for(rel, root)
        try:
            os.lstat(dest)
        except OSError as exc:  # a name over 255 bytes would fail halfway through the writes
            if exc.errno == errno.ENAMETOOLONG:
                raise HintError(f"{display(rel)}: {display(dest)}: name too long for the file system; nothing written") from None
        if leads_outside(dest.parent, root):  # the same rule as outputs: never through a link leading out of DEST
            raise HintError(f"{display(rel)}: {display(dest.parent)} leads outside {display(root)} (symlink); nothing written")
        if dest.is_symlink():
            raise HintError(f"{display(rel)}: {display(dest)} is a symlink; not replaced, nothing written")
        if dest in claimed:  # photo.jpg and photo.png share photo.hints.json
            raise HintError(f"{display(claimed[dest])} and {display(rel)} both have the hint file {display(dest)}; nothing written")
        claimed[dest] = rel
        for folder in reversed(dest.relative_to(root).parents[:-1]):
            if (root / folder).exists() and not (root / folder).is_dir():
                raise HintError(f"{display(rel)}: {display(root / folder)} is a file, not a folder; nothing written")
        if dest.exists() and not dest.is_file():
            raise HintError(f"{display(rel)}: {display(dest)} is not a regular file; not replaced, nothing written")
    written = []
    for rel, document in sorted(documents.items()):
        dest = hints_path_for(rel, root)
        dest.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(dest, json.dumps(document, indent=1) + "\n")
        written.append(dest)
    return written


def locate(source: Path, relative: str | PurePath, hints_root: Path | None) -> Path | None:
    """The hint file of an input image, if there is one: under ``hints_root`` (``input.hints_dir``,
    mirrored relative paths) when one is set, else beside the scan. Anything there but a folder
    counts: a FIFO or device named ``photo.hints.json`` fails that image when it is read
    (:func:`read_hints`), instead of colouring it without the hints its user meant it to have."""
    path = hints_path_for(relative, hints_root) if hints_root is not None else hints_path_for(Path(source).name, Path(source).parent)
    try:
        return None if stat.S_ISDIR(path.stat().st_mode) else path
    except OSError as err:
        # ENAMETOOLONG: a 245+ byte scan name, no hint file can sit beside it; the rest: nothing there
        if err.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EBADF, errno.ENAMETOOLONG):
            return None
        raise


def batch_planes(hint_sets: Sequence[Hints | None], shapes: Sequence[tuple[int, int]], size: int) -> torch.Tensor | None:
    """``(B, 3, size, size)`` hint planes for a batch (``shapes``: each upright image's (height,
    width)); ``None`` when no image of the batch has points, so the network runs as without hints."""
    if not any(h is not None and h.points for h in hint_sets):
        return None
    return torch.stack([rasterize(h.points if h is not None else (), size, w, hgt) for h, (hgt, w) in zip(hint_sets, shapes)])
