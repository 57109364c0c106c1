"""One way to say "this feature needs an optional extra": :func:`require` imports the module
or raises :class:`~overparam_zoo.errors.MissingExtraError` naming the pip extra that brings it."""

from __future__ import annotations

import importlib
from types import ModuleType

from overparam_zoo.errors import MissingExtraError

__all__ = ["require"]


def require(module: str, extra: str, feature: str) -> ModuleType:
    """``module`` imported, or a one-line error naming what needs it and how to install it.

    Args:
        module: the import name, e.g. ``"sklearn.datasets"``.
        extra: the ``overparam-zoo`` extra that installs it, e.g. ``"demo"``.
        feature: what needs it, as the user asked for it, e.g. ``"the digits dataset"``.
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        package = module.split(".")[0]
        raise MissingExtraError(
            f"{feature} needs {package}, which is not installed: pip install 'overparam-zoo[{extra}]'"
        ) from err
