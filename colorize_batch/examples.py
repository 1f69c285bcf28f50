"""Example inputs built from the photos scikit-image ships (no downloads).

Used by ``make demo``, the tests and the benchmark: a nested tree of grey photos in mixed
formats and modes, including a 16-bit TIFF and an EXIF-rotated JPEG, and (the README's worked
example of colour hints) a hint file that makes the red cup and saucer of the coffee photo blue.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data

from .evaluate import grey_from_rgb
from .hints import hints_path_for

COLOUR_SOURCES = ("astronaut", "coffee", "chelsea", "rocket", "coins", "camera")


def colour_photo(name: str) -> np.ndarray:
    img = getattr(data, name)()
    return np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img[..., :3]


def grey_photo(name: str) -> np.ndarray:
    return grey_from_rgb(np.ascontiguousarray(colour_photo(name)))


# The README's worked example (keep the two the same: tests/test_hints_example.py compares them):
# two points on the saucer and one on the cup, in the upright image's coordinates (0-1, from the
# top left). Six points of the same colour (four more on the saucer's rim) made the shipped hint
# branch tint the whole table blue as well: it sees the hints, not the image's edges.
COFFEE_HINTS: dict = {
    "points": [
        {"x": 0.25, "y": 0.76, "color": "#2456b4", "radius": 0.02},
        {"x": 0.73, "y": 0.68, "color": "#2456b4", "radius": 0.02},
        {"x": 0.45, "y": 0.60, "color": "#2456b4", "radius": 0.02},
    ]
}
COFFEE = "still life/coffee.jpg"


def build_example_tree(root: Path, hints_root: Path | None = None) -> list[Path]:
    """Write the demo tree under ``root`` (and, with ``hints_root``, the coffee photo's hint file
    under it, mirrored: ``hints_root/still life/coffee.hints.json``); returns the files written."""
    root = Path(root)
    files: list[tuple[str, Image.Image, dict]] = []
    astronaut = Image.fromarray(grey_photo("astronaut"))
    files.append(("portraits/astronaut.jpg", astronaut, {"quality": 92}))
    files.append(("portraits/cat/chelsea.png", Image.fromarray(grey_photo("chelsea")), {}))
    files.append(("still life/coffee.jpg", Image.fromarray(grey_photo("coffee")), {"quality": 90}))
    rocket16 = (grey_photo("rocket").astype(np.uint16) * 257).astype(np.uint16)
    files.append(("scans/16bit/rocket.tif", Image.fromarray(rocket16), {"compression": "tiff_lzw"}))
    files.append(("scans/camera.tif", Image.fromarray(data.camera()), {}))
    # A JPEG stored sideways with an EXIF orientation tag (6 = rotate 90° clockwise to view).
    exif = Image.Exif()
    exif[0x0112] = 6
    sideways = astronaut.resize((256, 256)).transpose(Image.Transpose.ROTATE_90)
    files.append(("scans/rotated.jpg", sideways, {"exif": exif.tobytes(), "quality": 90}))
    written = []
    for rel, im, kwargs in files:
        dest = root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        im.save(dest, **kwargs)
        written.append(dest)
    if hints_root is not None:
        dest = hints_path_for(COFFEE, Path(hints_root))
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(json.dumps(COFFEE_HINTS, indent=1) + "\n", encoding="utf-8")
        written.append(dest)
    return written


if __name__ == "__main__":  # pragma: no cover
    import sys

    root = Path(sys.argv[1] if len(sys.argv) > 1 else "demo/in")
    for path in build_example_tree(root, Path(sys.argv[2]) if len(sys.argv) > 2 else None):
        print(path)
