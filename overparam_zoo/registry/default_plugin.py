"""The built-in plugin: the shipped recipes and the chains for timm's own layer types.

Registered by :mod:`overparam_zoo.registry.plugins` exactly like a third-party plugin.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from torch import nn

from overparam_zoo.registry.hookspecs import Converter, hookimpl

__all__ = ["builtin_recipe_dir"]


def builtin_recipe_dir() -> Path:
    """Where the shipped recipes live: ``overparam_zoo/recipes`` in a wheel (mapped from the
    repository's top-level ``recipes/`` by pyproject's ``package-dir``), or the checkout itself."""
    try:
        packaged = Path(str(resources.files("overparam_zoo.recipes")))
        if packaged.is_dir():
            return packaged
    except ModuleNotFoundError:
        pass
    return Path(__file__).resolve().parents[2] / "recipes"


@hookimpl
def overparam_zoo_recipe_paths() -> list[str | Path]:
    return [builtin_recipe_dir()]


@hookimpl
def overparam_zoo_converters() -> dict[type[nn.Module], Converter]:
    from overparam_zoo.layers.chains import TIMM_CONVERTERS

    return dict(TIMM_CONVERTERS)
