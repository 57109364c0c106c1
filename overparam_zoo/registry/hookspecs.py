"""Hook specifications of the ``overparam_zoo`` plugin host (pluggy).

A plugin is any object or module with functions named like these, marked with
:data:`hookimpl`, registered through the ``overparam_zoo`` entry-point group::

    [project.entry-points.overparam_zoo]
    my_plugin = "my_package.overparam_plugin"
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pluggy
from torch import nn

__all__ = ["hookspec", "hookimpl", "PROJECT_NAME", "Converter"]

PROJECT_NAME = "overparam_zoo"
hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

#: ``fn(module, **chain_options) -> nn.Module``: a layer converter (see :func:`overparam_zoo_converters`)
Converter = Callable[..., nn.Module]


@hookspec
def overparam_zoo_recipe_paths() -> list[str | Path]:
    """Recipe files or folders (``*.yaml`` inside) to register variants from."""


@hookspec
def overparam_zoo_converters() -> dict[type[nn.Module], Converter]:
    """Converters for layer types that are not stock ``nn.Linear``/``nn.ConvNd``.

    Each maps an exact class to ``fn(module, **options) -> nn.Module`` that returns an
    over-parameterized module whose ``fuse()`` gives back an instance of that class, or raises
    ``NotImplementedError`` with the reason the layer must stay stock.
    """


@hookspec
def overparam_zoo_export(model: nn.Module, out_dir: Path, config: dict[str, Any]) -> list[Path] | None:
    """Called after an export has written ``model.safetensors`` and ``config.json``.

    Args:
        model: the collapsed stock model (eval mode).
        out_dir: the export folder, still a temporary folder renamed into place afterwards,
            so files written here appear atomically with the export.
        config: the ``config.json`` content.

    Returns:
        Paths of extra files written (e.g. an ONNX file), for the export's report.
    """
