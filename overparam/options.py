"""Chain options: how one layer is over-parameterized, declared and validated once.

The layers, :func:`overparam.from_stock`, :func:`overparam.convert_model` and the zoo's recipe
loader all take these seven options; each builds a :class:`ChainOptions`, whose validator is the
only place that says what a valid value is. Checks that need the layer (kernel tuples of the
right length, a depth that agrees with a kernel list, skips the shape can carry) stay in
:func:`overparam.plan.make_plan`.
"""

from __future__ import annotations

import dataclasses
import math
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard

__all__ = ["ChainOptions", "ChainOptionError", "CHAIN_OPTION_NAMES"]

KernelSizes = int | Sequence[int | Sequence[int]]


class ChainOptionError(ValueError):
    """A chain option with a value no layer can take; ``option`` names it."""

    def __init__(self, option: str, value: Any, expected: str, message: str | None = None) -> None:
        super().__init__(message or f"{option} must be {expected}, got {value!r}")
        self.option, self.value, self.expected = option, value, expected


def as_int(value: object) -> int | None:
    """``value`` as an int if it is an integer (numpy integers too, not bools), else None."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        return None


def _is_positive_int(value: object) -> bool:
    number = as_int(value)
    return number is not None and number >= 1


def _is_interval(value: object) -> bool:
    number = as_int(value)
    return number is not None and (number >= 1 or number == -1)


def _is_list(value: object) -> TypeGuard[Sequence[Any]]:
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes))


def _freeze(value: Any) -> Any:
    """Lists become tuples (all the way down), so options are hashable and immutable."""
    return tuple(_freeze(v) for v in value) if _is_list(value) else value


@dataclass(frozen=True)
class ChainOptions:
    """How to over-parameterize one layer (the paper's arguments).

    Args:
        depth: number of factors (``None``: 2, or the length of a ``kernel_sizes`` list).
        width: hidden channels are ``int(out * width)``.
        batch_norm: batch norm after every factor (forces the expanded path in training).
        residual: identity skips (need equal channels at both ends of each skip).
        residual_intervals: an interval or several; ``n`` adds node ``m - n`` into node ``m``
            for ``m = n, 2n, ...``; ``-1`` is one skip over the whole chain.
        kernel_sizes: an int ``k`` (``[k, 1, ..., 1]``) or one kernel size (int or per-dim
            sequence) per factor; a list sets the depth. Ignored by Linear layers.
        init_scale: the effective weight starts at ``init_scale`` times the stock layer's
            scale (its default init, or with ``init="match"`` the std of the weight it
            replaces); the factors share the factor ``init_scale ** (1 / depth)``. Below 1 it
            starts the chain small, where depth's pull towards low rank is strongest (deep
            matrix factorization); ``0`` starts the effective weight at exactly zero (the
            last factor is zero, so gradients still reach every factor). Only the starting
            point: the bias, the exact collapse and ``init="expand"`` are unchanged by it.
    """

    depth: int | None = None
    width: float = 1
    batch_norm: bool = False
    residual: bool = False
    residual_intervals: int | Sequence[int] = 2  # stored as a tuple
    kernel_sizes: KernelSizes | None = None
    init_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.depth is not None and not _is_positive_int(self.depth):
            raise ChainOptionError("depth", self.depth, "an int >= 1")
        width = self.width
        if not isinstance(width, (int, float)) or isinstance(width, bool) or not math.isfinite(width) or width <= 0:
            raise ChainOptionError("width", width, "a positive number")
        scale = self.init_scale
        if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not math.isfinite(scale) or scale < 0:
            raise ChainOptionError("init_scale", scale, "a finite number >= 0 (1: the stock layer's scale)")
        for name in ("batch_norm", "residual"):
            if not isinstance(getattr(self, name), bool):
                raise ChainOptionError(name, getattr(self, name), "a bool (true or false)")
        intervals = self.residual_intervals
        if not (_is_interval(intervals) or (_is_list(intervals) and intervals and all(map(_is_interval, intervals)))):
            raise ChainOptionError(
                "residual_intervals",
                intervals,
                "an int >= 1, -1, or a list of them",
                f"residual_intervals entries must be ints >= 1 or -1 (one skip over the whole chain), "
                f"got {intervals!r}",
            )
        kernels = self.kernel_sizes
        if _is_list(kernels) and not kernels:
            raise ChainOptionError(
                "kernel_sizes",
                kernels,
                "a non-empty list of kernel sizes",
                "kernel_sizes must not be empty: give one kernel size per factor",
            )
        if kernels is not None and not (
            _is_positive_int(kernels)
            or _is_list(kernels)
            and all(_is_positive_int(k) or (_is_list(k) and k and all(map(_is_positive_int, k))) for k in kernels)
        ):
            raise ChainOptionError(
                "kernel_sizes", kernels, "an int >= 1 or a list of kernel sizes (ints >= 1 or per-dim lists of them)"
            )
        object.__setattr__(self, "residual_intervals", _freeze(intervals))
        object.__setattr__(self, "kernel_sizes", _freeze(kernels))

    @classmethod
    def of(cls, options: ChainOptions | Mapping[str, Any] | None = None, **overrides: Any) -> ChainOptions:
        """``options`` (an instance, a mapping or ``None``) with ``overrides`` applied.

        Raises:
            ChainOptionError: for an unknown option name or an invalid value.
        """
        base = options if isinstance(options, ChainOptions) else cls()
        changes = {**(dict(options) if isinstance(options, Mapping) else {}), **overrides}
        unknown = sorted(set(changes) - set(CHAIN_OPTION_NAMES))
        if unknown:
            raise ChainOptionError(unknown[0], changes[unknown[0]], f"a chain option: {', '.join(CHAIN_OPTION_NAMES)}")
        return dataclasses.replace(base, **changes) if changes else base

    @property
    def factor_count(self) -> int:
        """How many factors a chain with these options has."""
        if _is_list(self.kernel_sizes):
            return len(self.kernel_sizes)
        return 2 if self.depth is None else int(self.depth)

    def as_kwargs(self) -> dict[str, Any]:
        """The options as keyword arguments of the layers and converters."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


CHAIN_OPTION_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(ChainOptions))
