"""The built-in plugin: the shipped recipes and the timm layer converters.

Registered by :mod:`overparam_zoo.names.plugins` exactly like a third-party plugin.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from overparam_zoo.names.hookspecs import hookimpl
from overparam_zoo.names.resources import builtin_recipe_dir


@hookimpl
def overparam_zoo_recipe_paths() -> list[Path]:
    return [builtin_recipe_dir()]


@hookimpl
def overparam_zoo_converters() -> dict[type, Any]:
    from overparam_zoo.names.converters import TIMM_CONVERTERS

    return dict(TIMM_CONVERTERS)
