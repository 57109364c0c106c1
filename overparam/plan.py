"""The shape of a chain: argument parsing, validation and geometry, with no tensors.

A chain maps node 0 (the padded input) to node ``L`` (the output) through ``L`` factors.
Node ``i`` is ``BN_i(F_i(node_{i-1})) + sum of skips into i``. Everything the expanded
forward, the closed-form collapse and the cost model need to agree on lives here, so the
three can never disagree about where the stride sits or how a skip is cropped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import cast

from .options import ChainOptions
from .options import as_int as _as_int

__all__ = ["ChainPlan", "Skip", "SkipError", "make_plan", "PADDING_MODES"]

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


class SkipError(ValueError):
    """An identity skip the chain's shape cannot carry exactly (unequal channels, odd growth)."""


@dataclass(frozen=True)
class Skip:
    """An identity skip from node ``source`` into node ``target``.

    The source map is cropped by ``offset`` positions at the start of each spatial dim
    (half the receptive-field growth between the nodes) and subsampled by ``step``.
    """

    source: int
    target: int
    offset: tuple[int, ...]
    step: tuple[int, ...]


@dataclass(frozen=True)
class ChainPlan:
    """Validated structure of one over-parameterized layer.

    ``ndim`` is the number of spatial dims (0 for Linear). Kernel sizes are in undilated
    taps; ``node_kernels[i]`` is the composed kernel from the input to node ``i``.
    """

    ndim: int
    channels: tuple[int, ...]
    kernels: tuple[tuple[int, ...], ...]
    node_kernels: tuple[tuple[int, ...], ...]
    stride: tuple[int, ...]
    stride_factor: int
    dilation: tuple[int, ...]
    groups: int
    padding: tuple[tuple[int, int], ...]
    padding_mode: str
    bias: bool
    batch_norm: bool
    skips: tuple[Skip, ...]
    #: the padding to hand to the conv itself (symmetric zeros), or ``None`` when the input
    #: must be padded explicitly first (another mode, or an asymmetric ``'same'``)
    conv_padding: tuple[int, ...] | None = field(init=False)
    #: nodes that some skip starts from
    skip_sources: frozenset[int] = field(init=False)

    def __post_init__(self) -> None:
        # derived once here: forward reads them on every call, also under torch.compile
        symmetric = self.padding_mode == "zeros" and all(left == right for left, right in self.padding)
        object.__setattr__(self, "conv_padding", tuple(left for left, _ in self.padding) if symmetric else None)
        object.__setattr__(self, "skip_sources", frozenset(s.source for s in self.skips))

    @property
    def depth(self) -> int:
        return len(self.kernels)

    @property
    def in_channels(self) -> int:
        return self.channels[0]

    @property
    def out_channels(self) -> int:
        return self.channels[-1]

    @property
    def kernel_size(self) -> tuple[int, ...]:
        """The effective (collapsed) kernel size."""
        return self.node_kernels[-1]

    @property
    def weight_shape(self) -> tuple[int, ...]:
        """Shape of the effective weight: ``[out, in / groups, *kernel]`` (``[out, in]`` for Linear)."""
        return (self.out_channels, self.in_channels // self.groups, *self.kernel_size)

    @property
    def fan_in(self) -> int:
        """Inputs per output of the effective layer, as ``nn.init`` counts them."""
        return self.in_channels // self.groups * math.prod(self.kernel_size)

    @property
    def has_bias(self) -> bool:
        """Whether the collapsed layer has a bias (factor biases or BN shifts)."""
        return self.bias or self.batch_norm

    def factor_stride(self, index: int) -> tuple[int, ...]:
        return self.stride if index == self.stride_factor else (1,) * self.ndim

    def skips_into(self, node: int) -> tuple[Skip, ...]:
        return tuple(s for s in self.skips if s.target == node)


def _ntuple(value: object, ndim: int, name: str) -> tuple[int, ...]:
    """``value`` (an int, or a sequence of ``ndim`` ints, as the user gave it) as ``ndim`` ints."""
    single = _as_int(value)
    if single is not None:
        return (single,) * ndim
    if isinstance(value, Sequence) and len(value) == ndim:
        items = [_as_int(v) for v in value]
        ints = [v for v in items if v is not None]
        if len(ints) == ndim:
            return tuple(ints)
    raise ValueError(f"{name} must be an int or a tuple of {ndim} ints, got {value!r}")


def _positive(values: tuple[int, ...], name: str, minimum: int = 1) -> tuple[int, ...]:
    if any(v < minimum for v in values):
        raise ValueError(f"{name} must be >= {minimum}, got {values}")
    return values


def _factor_kernels(
    kernel_sizes: int | Sequence[int | Sequence[int]] | None, depth: int | None, ndim: int
) -> tuple[tuple[int, ...], ...]:
    """``k`` means ``[k, 1, ..., 1]`` of length ``depth`` (default 2); a list sets the depth.
    Values are already valid :class:`ChainOptions`; this checks them against the layer."""
    if ndim == 0 or kernel_sizes is None or _as_int(kernel_sizes) is not None:
        depth = 2 if depth is None else depth
        if ndim == 0:
            return ((),) * depth
        first = _ntuple(1 if kernel_sizes is None else kernel_sizes, ndim, "kernel_sizes")
        return (first,) + ((1,) * ndim,) * (depth - 1)
    split = cast("Sequence[int | Sequence[int]]", kernel_sizes)  # not an int: one kernel per factor
    if depth is not None and depth != len(split):
        raise ValueError(
            f"depth={depth} disagrees with kernel_sizes={list(split)} "
            f"({len(split)} factors); a list of kernel sizes sets the depth"
        )
    return tuple(_ntuple(k, ndim, f"kernel_sizes[{i}]") for i, k in enumerate(split))


def _intervals(residual_intervals: int | Sequence[int], depth: int) -> list[int]:
    """Distinct intervals, ``-1`` resolved to the whole chain (values already validated)."""
    single = _as_int(residual_intervals)
    raw = [single] if single is not None else list(cast("Sequence[int]", residual_intervals))
    out: list[int] = []
    for n in raw:
        n = depth if n == -1 else int(n)
        if n not in out:
            out.append(n)
    return out


def _padding(
    padding: int | Sequence[int] | str,
    ndim: int,
    kernel: tuple[int, ...],
    dilation: tuple[int, ...],
    stride: tuple[int, ...],
) -> tuple[tuple[int, int], ...]:
    if padding == "valid":
        return ((0, 0),) * ndim
    if padding == "same":
        if any(s != 1 for s in stride):
            raise ValueError(f"padding='same' needs stride 1 (as in torch.nn.Conv), got stride={stride}")
        totals = [d * (k - 1) for d, k in zip(dilation, kernel)]
        return tuple((t // 2, t - t // 2) for t in totals)
    if isinstance(padding, str):
        raise ValueError(f"padding must be an int, a tuple, 'same' or 'valid', got {padding!r}")
    pads = _positive(_ntuple(padding, ndim, "padding"), "padding", minimum=0)
    return tuple((p, p) for p in pads)


def make_plan(
    in_channels: int,
    out_channels: int,
    *,
    ndim: int,
    options: ChainOptions | None = None,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] | str = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
    bias: bool = True,
) -> ChainPlan:
    """Lay out the chain of one layer: ``options`` say how it is over-parameterized, the
    other arguments are the effective layer's own (as in ``nn.ConvNd``).

    Raises:
        ValueError: naming the argument and what was expected, for any configuration that
            cannot be collapsed exactly.
    """
    for name, value in (("in_channels", in_channels), ("out_channels", out_channels), ("groups", groups)):
        number = _as_int(value)
        if number is None or number < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    in_channels, out_channels, groups = int(in_channels), int(out_channels), int(groups)
    if in_channels % groups or out_channels % groups:
        raise ValueError(
            f"in_channels={in_channels} and out_channels={out_channels} must both be divisible by groups={groups}"
        )
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")

    options = options or ChainOptions()
    kernels = _factor_kernels(options.kernel_sizes, options.depth, ndim)
    depth = len(kernels)
    stride_t = _positive(_ntuple(stride, ndim, "stride"), "stride")
    dilation_t = _positive(_ntuple(dilation, ndim, "dilation"), "dilation")

    width = options.width
    hidden = int(out_channels * width)
    if depth > 1:
        if hidden < 1:
            raise ValueError(
                f"width={width} leaves no hidden channel: int(out_channels * width) = "
                f"int({out_channels} * {width}) = {hidden}; expected >= 1"
            )
        if hidden % groups:
            raise ValueError(
                f"hidden channels int(out_channels * width) = {hidden} must be divisible by "
                f"groups={groups}; choose another width"
            )
    channels = (in_channels,) + (hidden,) * (depth - 1) + (out_channels,)

    node_kernels = [(1,) * ndim]
    for k in kernels:
        node_kernels.append(tuple(a + b - 1 for a, b in zip(node_kernels[-1], k)))
    effective = node_kernels[-1]

    # The stride sits on the last factor with a kernel larger than 1: every factor after it is
    # 1x1, which commutes with subsampling, so the collapse stays exact and big kernels run at
    # the reduced resolution whenever the split allows.
    big = [i for i, k in enumerate(kernels) if any(v > 1 for v in k)]
    stride_factor = big[-1] if big else 0

    pad = _padding(padding, ndim, effective, dilation_t, stride_t)

    skips: list[Skip] = []
    residual_intervals = options.residual_intervals
    if options.residual:
        pairs: list[tuple[int, int]] = []
        for n in _intervals(residual_intervals, depth):
            for target in range(n, depth + 1, n):
                if (target - n, target) not in pairs:
                    pairs.append((target - n, target))
        for source, target in sorted(pairs, key=lambda p: (p[1], p[0])):
            if channels[source] != channels[target]:
                raise SkipError(
                    f"residual_intervals={residual_intervals!r}: a skip from node {source} "
                    f"({channels[source]} channels) to node {target} ({channels[target]} "
                    f"channels) needs equal channel counts (in_channels={in_channels}, hidden="
                    f"int(out_channels * width)={hidden}, out_channels={out_channels})"
                )
            growth = tuple(b - a for a, b in zip(node_kernels[source], node_kernels[target]))
            if any(g % 2 for g in growth):
                raise SkipError(
                    f"residual_intervals={residual_intervals!r}: a skip from node {source} to "
                    f"node {target} spans a receptive-field growth of {growth} taps; it must be "
                    f"even in every dim to centre the identity (use odd kernel sizes)"
                )
            before_stride = source <= stride_factor < target
            skips.append(
                Skip(
                    source=source,
                    target=target,
                    offset=tuple(d * g // 2 for d, g in zip(dilation_t, growth)),
                    step=stride_t if before_stride else (1,) * ndim,
                )
            )

    return ChainPlan(
        ndim=ndim,
        channels=channels,
        kernels=kernels,
        node_kernels=tuple(node_kernels),
        stride=stride_t,
        stride_factor=stride_factor,
        dilation=dilation_t,
        groups=groups,
        padding=pad,
        padding_mode=padding_mode,
        bias=bool(bias),
        batch_norm=options.batch_norm,
        skips=tuple(skips),
    )
