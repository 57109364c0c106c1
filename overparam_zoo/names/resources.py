"""Where the shipped recipes live: ``overparam_zoo/recipes`` in a wheel (mapped from the
repository's top-level ``recipes/`` by pyproject's ``package-dir``), or the checkout itself."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["builtin_recipe_dir"]


def builtin_recipe_dir() -> Path:
    try:
        packaged = Path(str(resources.files("overparam_zoo.recipes")))
        if packaged.is_dir():
            return packaged
    except ModuleNotFoundError:
        pass
    return Path(__file__).resolve().parents[2] / "recipes"
