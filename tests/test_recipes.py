"""The training recipes in recipes/: each loads through the real config loader, names a known
architecture, and reads its photos from where the docs say (../shared/data beside the checkout,
or the GPU campaign's .pack/ in it); every recipe the Makefile and the docs name exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from colorize_batch.config import load_config
from colorize_batch.model import PRESETS

REPO = Path(__file__).resolve().parent.parent
RECIPES = sorted((REPO / "recipes").glob("*.yaml"))
DATA_HOMES = (REPO.parent / "shared" / "data", REPO / ".pack")


def test_recipes_folder_holds_every_recipe():
    assert len(RECIPES) >= 10
    assert sorted(p.name for p in REPO.glob("*.yaml")) == ["pipeline.yaml"]  # nothing else at the top


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_recipe_loads_with_known_preset_and_data(recipe: Path):
    config = load_config(recipe)
    assert config.train.preset in PRESETS, recipe.name
    assert config.train.data, f"{recipe.name} lists no training photos"
    for root in [r.path for r in config.train.data] + ([config.train.val_dir] if config.train.val_dir else []):
        resolved = Path(root).resolve()
        assert any(resolved.is_relative_to(home.resolve()) for home in DATA_HOMES), f"{recipe.name}: {root}"
        assert resolved.name in {"scenes", "objects", "bsds", "people", "faces", "sun_hays80", "set14"}


def test_every_named_recipe_exists():
    named = set()
    for doc in ["Makefile", "README.md", "architecture.md", "weights/README.md",
                *(str(p.relative_to(REPO)) for p in (REPO / "benchmarks").iterdir() if p.suffix in {".py", ".sh", ".md"})]:
        named |= set(re.findall(r"recipes/[\w.-]+\.yaml", (REPO / doc).read_text(encoding="utf-8")))
    assert "recipes/effnet-stage1.yaml" in named
    missing = sorted(n for n in named if not (REPO / n).is_file())
    assert not missing, missing
