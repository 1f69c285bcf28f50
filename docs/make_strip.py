"""Make the README's before/after strip (docs/before-after.jpg) with the shipped weights, through the Python API.

Public-domain photographs only: three of scikit-image's sample photos (made grey here) and three
scans of the public-domain part of the archive_bw collection (``MANIFEST.csv`` rights "PD (...)").

    python docs/make_strip.py /path/to/shared/data/archive_bw
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image

import colorize_batch
from colorize_batch.examples import grey_photo

SKIMAGE = {  # scikit-image's data: licence as its docstrings state it
    "astronaut": "NASA, public domain",
    "rocket": "SpaceX, public domain",
    "coffee": "Rachel Michetti, CC0 (public-domain dedication)",
}
ARCHIVE = {  # archive_bw/MANIFEST.csv: file -> rights
    "ddcolor/Louis Armstrong practicing in his dressing room, ca 1946.jpg": "PD (W.P. Gottlieb coll., LoC)",
    "loc_enclaves/images_fish-market-crop.jpg": "PD (Arnold Genthe, LoC, 1896-1906)",
    "ffdnet_rni6/David_Hilbert.png": "PD (1912 portrait)",
}
HEIGHT = 200  # pixels of each tile
GAP = 4
OUT = Path(__file__).resolve().parent / "before-after.jpg"


def tile(image: Image.Image) -> Image.Image:
    width = round(image.width * HEIGHT / image.height)
    return image.convert("RGB").resize((width, HEIGHT), Image.Resampling.LANCZOS)


def main(archive: Path) -> None:
    session = colorize_batch.ColorizeSession()  # the shipped default weights, run's default settings
    pairs = []
    for name in SKIMAGE:
        grey = grey_photo(name)
        pairs.append((Image.fromarray(grey), session.colorize(grey)))
    for rel in ARCHIVE:
        with Image.open(archive / rel) as im:
            before = im.convert("L")
        pairs.append((before, session.colorize(archive / rel)))
    tiles = [(tile(b), tile(a)) for b, a in pairs]
    width = sum(t.width for t, _ in tiles) + GAP * (len(tiles) - 1)
    strip = Image.new("RGB", (width, 2 * HEIGHT + GAP), "white")
    x = 0
    for before, after in tiles:
        strip.paste(before, (x, 0))
        strip.paste(after, (x, HEIGHT + GAP))
        x += before.width + GAP
    strip.save(OUT, quality=85, optimize=True, progressive=True)
    print(f"{OUT}: {strip.size[0]}x{strip.size[1]}, {OUT.stat().st_size // 1024} KB")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
