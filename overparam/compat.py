"""The oldest releases the project runs on, checked on import, and the shims for what they lack.

Invariants: importing ``overparam`` on a torch older than :data:`MIN_TORCH` fails with one line
naming the version needed (never an ``ImportError`` from deep inside); every newer torch API the
package uses where the oldest release lacks it goes through a shim here, and CI's
lowest-versions job (``.ci/run``) runs the fast tests on the oldest releases ``pyproject.toml``
declares, so the bounds there stay true.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

__all__ = ["MIN_TORCH", "version_tuple", "require_version", "is_compiling", "is_autocast_enabled", "safe_globals"]

#: The oldest torch ``overparam`` supports; ``pyproject.toml``'s ``torch>=`` bound says the same.
MIN_TORCH = "2.2"


def version_tuple(version: str) -> tuple[int, ...]:
    """The release numbers of a version string, ignoring pre-release and local tags.

    Args:
        version: e.g. ``"2.3.1+cu121"`` or ``"2.5.0a0+git1234"``.

    Returns:
        e.g. ``(2, 3, 1)``; ``()`` when the string does not start with a number.
    """
    match = re.match(r"\d+(?:\.\d+)*", version)
    return tuple(int(part) for part in match.group(0).split(".")) if match else ()


def require_version(importer: str, package: str, found: str, minimum: str) -> None:
    """Raise a one-line ``ImportError`` when ``found`` is older than ``minimum``.

    Args:
        importer: what is being imported, e.g. ``"overparam"``.
        package: the distribution name, e.g. ``"torch"``.
        found: its installed version (``package.__version__``).
        minimum: the oldest release that works, e.g. ``"2.2"``.

    Raises:
        ImportError: ``found`` is older than ``minimum``.
    """
    if version_tuple(found) < version_tuple(minimum):
        raise ImportError(
            f"{importer} needs {package}>={minimum}, but {package} {found} is installed: pip install '{package}>={minimum}'"
        )


require_version("overparam", "torch", torch.__version__, MIN_TORCH)

try:
    from torch.compiler import is_compiling
except ImportError:  # torch < 2.3; torch.compile folds this one to True while it traces, too
    from torch._utils import is_compiling


def _autocast_check_takes_a_device() -> bool:
    try:
        torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4: one function per device type
        return False
    return True


def _per_device_type(device_type: str) -> bool:
    """``torch.is_autocast_enabled(device_type)`` before torch 2.4: CPU's flag, or CUDA's for any other device."""
    return torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()


#: ``torch.is_autocast_enabled(device_type)``; chosen once here, as it is called on every chain forward
is_autocast_enabled: Callable[[str], bool] = (
    torch.is_autocast_enabled if _autocast_check_takes_a_device() else _per_device_type
)


@contextmanager
def safe_globals(allowed: list[Any]) -> Iterator[None]:
    """``torch.serialization.safe_globals`` (torch >= 2.5): ``allowed`` may be unpickled by
    ``weights_only`` loads inside the block. torch 2.4 has only a process-wide list, which is put
    back afterwards; older torch cannot extend it (``overparam_zoo`` needs torch >= 2.4 for this)."""
    serialization = torch.serialization
    if hasattr(serialization, "safe_globals"):
        with serialization.safe_globals(allowed):
            yield
        return
    before = list(serialization.get_safe_globals())  # a copy: torch 2.4 returns its list, which adding extends
    serialization.add_safe_globals(allowed)
    try:
        yield
    finally:
        serialization.clear_safe_globals()
        serialization.add_safe_globals(before)
