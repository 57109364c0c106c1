"""Why a state dict does not fit a model: the one describer of missing, unexpected and
misshapen keys, so every loader says it the same way."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["describe_mismatch"]


def _shape(value: Any) -> tuple[int, ...]:
    return tuple(value.shape) if hasattr(value, "shape") else tuple(value)


def describe_mismatch(expected: Mapping[str, Any], given: Mapping[str, Any]) -> str:
    """One line naming what keeps ``given`` from loading with ``strict=True`` where ``expected``
    is wanted, or ``""`` when it fits.

    Args:
        expected: the keys the model wants, each with a tensor or a shape.
        given: the state dict offered, each with a tensor or a shape.
    """
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    shapes = [k for k in expected if k in given and _shape(expected[k]) != _shape(given[k])]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
    if shapes:
        k = shapes[0]
        parts.append(
            f"{len(shapes)} shape mismatches (e.g. {k}: {_shape(given[k])} given, {_shape(expected[k])} expected)"
        )
    return ", ".join(parts)
