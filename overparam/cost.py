"""Counted multiply-adds of the two training paths, to choose between them per input shape.

Composing the effective weight costs the same whatever the batch, then one conv runs at the
stock layer's cost; running the factors in sequence costs every factor at every position.
Composing wins on large maps, expanding wins on small maps with many channels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .plan import ChainPlan

__all__ = ["expanded_macs", "composed_macs", "prefer_composed"]


def _factor_output_sizes(plan: ChainPlan, spatial: Sequence[int]) -> list[tuple[int, ...]]:
    size = tuple(n + left + right for n, (left, right) in zip(spatial, plan.padding))
    sizes = []
    for i, k in enumerate(plan.kernels):
        stride = plan.factor_stride(i)
        size = tuple(max((n - d * (kk - 1) - 1) // s + 1, 0) for n, kk, d, s in zip(size, k, plan.dilation, stride))
        sizes.append(size)
    return sizes


def _split(plan: ChainPlan, input_shape: Sequence[int]) -> tuple[int, tuple[int, ...]]:
    if plan.ndim == 0:
        return math.prod(input_shape[:-1]), ()
    return input_shape[0], tuple(input_shape[-plan.ndim :])


def expanded_macs(plan: ChainPlan, input_shape: Sequence[int]) -> int:
    """Multiply-adds of one forward through the factors, for an input of this shape."""
    batch, spatial = _split(plan, input_shape)
    total = 0
    for i, size in enumerate(_factor_output_sizes(plan, spatial)):
        per_position = plan.channels[i + 1] * plan.channels[i] // plan.groups * math.prod(plan.kernels[i])
        total += batch * math.prod(size) * per_position
    return total


def composed_macs(plan: ChainPlan, input_shape: Sequence[int]) -> int:
    """Multiply-adds of composing the effective weight plus one forward of the stock layer."""
    batch, spatial = _split(plan, input_shape)
    in_per_group = plan.in_channels // plan.groups
    compose = 0
    for i in range(1, plan.depth):
        compose += (
            plan.channels[i + 1]
            * plan.channels[i]
            // plan.groups
            * in_per_group
            * math.prod(plan.node_kernels[i + 1])
            * math.prod(plan.kernels[i])
        )
    out_size = _factor_output_sizes(plan, spatial)[-1]
    single = batch * math.prod(out_size) * plan.out_channels * in_per_group * math.prod(plan.kernel_size)
    return compose + single


def prefer_composed(plan: ChainPlan, input_shape: Sequence[int]) -> bool:
    """Whether composing is cheaper than expanding; chains with BN must expand in training."""
    if plan.batch_norm:
        return False
    return composed_macs(plan, input_shape) < expanded_macs(plan, input_shape)
