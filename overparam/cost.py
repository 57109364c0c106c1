"""Counted multiply-adds of the two training paths, to choose between them per input shape.

Composing the effective weight costs the same whatever the batch, then one conv runs at the
stock layer's cost; running the factors in sequence costs every factor at every position.
Composing wins on large maps, expanding wins on small maps with many channels.

A training step runs the forward and then the backward, which for every conv, linear and
matmul costs about twice its forward (the gradient of each operand), except the gradient of
an input that does not require grad (the image at the first layer). The path choice counts
both: ``3 * forward`` minus the input gradient that is not needed.

The effective weight is a product of kernels, and its cost depends on the order of the
products (a ``[k, 1, 1, 1]`` split is cheapest composed from the output side: three 1x1
products, then one with the big kernel). :func:`composition_order` picks the cheapest order by
dynamic programming over counted multiply-adds; :mod:`overparam.compose` follows it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

from .compat import is_compiling
from .plan import ChainPlan

__all__ = [
    "expanded_macs",
    "composed_macs",
    "compose_macs",
    "expanded_training_macs",
    "composed_training_macs",
    "prefer_composed",
    "composition_order",
    "segment_nodes",
    "Order",
]

#: An association order: a leaf index into the list of kernels, or ``(inner, outer)``.
Order = int | tuple["Order", "Order"]


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


def _product_macs(out_ch: int, mid_ch: int, in_ch: int, outer: tuple[int, ...], inner: tuple[int, ...]) -> int:
    """Multiply-adds of composing kernel ``outer`` after ``inner`` (channels per group)."""
    if all(k == 1 for k in outer):  # a (batched) matmul over the inner kernel's taps
        return out_ch * mid_ch * in_ch * math.prod(inner)
    if all(k == 1 for k in inner):  # a matmul over the outer kernel's taps
        return out_ch * mid_ch * in_ch * math.prod(outer)
    full = tuple(a + b - 1 for a, b in zip(outer, inner))  # full convolution, outer slides
    return out_ch * mid_ch * in_ch * math.prod(full) * math.prod(outer)


def _order(
    channels: tuple[int, ...], kernels: tuple[tuple[int, ...], ...], groups: int
) -> tuple[Order, int, tuple[int, ...]]:
    """Cheapest association of kernels ``0..n-1`` (kernel ``j`` maps ``channels[j]`` to
    ``channels[j+1]``); returns the order, its multiply-adds and the composed kernel size."""
    n = len(kernels)
    best: dict[tuple[int, int], tuple[Order, int, tuple[int, ...]]] = {(j, j): (j, 0, kernels[j]) for j in range(n)}
    for length in range(2, n + 1):
        for i in range(n - length + 1):
            j = i + length - 1
            choice = None
            for split in range(i, j):
                inner_order, inner_macs, inner_k = best[(i, split)]
                outer_order, outer_macs, outer_k = best[(split + 1, j)]
                macs = inner_macs + outer_macs
                macs += _product_macs(
                    channels[j + 1], channels[split + 1] // groups, channels[i] // groups, outer_k, inner_k
                )
                if choice is None or macs < choice[1]:
                    size = tuple(a + b - 1 for a, b in zip(outer_k, inner_k))
                    choice = ((inner_order, outer_order), macs, size)
            best[(i, j)] = choice  # type: ignore[assignment]
    return best[(0, n - 1)]


_order_cached = lru_cache(maxsize=4096)(_order)


def segment_nodes(plan: ChainPlan, with_skips: bool = True) -> tuple[int, ...]:
    """Nodes whose kernel the collapse must materialise: input, output, skip ends."""
    nodes = {0, plan.depth}
    if with_skips:
        for skip in plan.skips:
            nodes.update((skip.source, skip.target))
    return tuple(sorted(nodes))


def composition_order(plan: ChainPlan, start: int, end: int) -> tuple[Order, int]:
    """Cheapest order to compose node ``start``'s kernel with factors ``start+1..end``.

    Leaf 0 is node ``start``'s kernel when ``start > 0`` (node 0 is the identity and is left
    out); the other leaves are the factors in order. Returns the order and its multiply-adds.
    """
    channels = plan.channels
    if start > 0:
        dims = (channels[0],) + channels[start : end + 1]
        kernels = (plan.node_kernels[start],) + plan.kernels[start:end]
    else:
        dims = channels[: end + 1]
        kernels = plan.kernels[:end]
    # torch.compile traces the plain function (constant-folded); it warns on lru_cache wrappers
    order, macs, _ = (_order if is_compiling() else _order_cached)(dims, kernels, plan.groups)
    return order, macs


def compose_macs(plan: ChainPlan, with_skips: bool = True) -> int:
    """Multiply-adds of building the effective weight, in the order the collapse uses."""
    nodes = segment_nodes(plan, with_skips)
    return sum(composition_order(plan, a, b)[1] for a, b in zip(nodes, nodes[1:]))


def expanded_macs(plan: ChainPlan, input_shape: Sequence[int]) -> int:
    """Multiply-adds of one forward through the factors, for an input of this shape."""
    return sum(_expanded_per_factor(plan, input_shape))


def _expanded_per_factor(plan: ChainPlan, input_shape: Sequence[int]) -> list[int]:
    batch, spatial = _split(plan, input_shape)
    out = []
    for i, size in enumerate(_factor_output_sizes(plan, spatial)):
        per_position = plan.channels[i + 1] * plan.channels[i] // plan.groups * math.prod(plan.kernels[i])
        out.append(batch * math.prod(size) * per_position)
    return out


def _single_macs(plan: ChainPlan, input_shape: Sequence[int]) -> int:
    batch, spatial = _split(plan, input_shape)
    out_size = _factor_output_sizes(plan, spatial)[-1]
    return batch * math.prod(out_size) * plan.out_channels * plan.fan_in


def composed_macs(plan: ChainPlan, input_shape: Sequence[int]) -> int:
    """Multiply-adds of composing the effective weight plus one forward of the stock layer."""
    return compose_macs(plan) + _single_macs(plan, input_shape)


def expanded_training_macs(plan: ChainPlan, input_shape: Sequence[int], input_requires_grad: bool = True) -> int:
    """Forward plus backward through the factors (no input gradient at the first factor
    when the input does not require grad)."""
    per_factor = _expanded_per_factor(plan, input_shape)
    return 3 * sum(per_factor) - (0 if input_requires_grad else per_factor[0])


def composed_training_macs(plan: ChainPlan, input_shape: Sequence[int], input_requires_grad: bool = True) -> int:
    """Forward plus backward of the composition and of the single conv/linear."""
    single = _single_macs(plan, input_shape)
    return 3 * compose_macs(plan) + 3 * single - (0 if input_requires_grad else single)


def prefer_composed(plan: ChainPlan, input_shape: Sequence[int], input_requires_grad: bool = True) -> bool:
    """Whether composing is cheaper for a training step (forward + backward) on this input.

    Chains with BN must expand in training.
    """
    if plan.batch_norm:
        return False
    composed = composed_training_macs(plan, input_shape, input_requires_grad)
    return composed < expanded_training_macs(plan, input_shape, input_requires_grad)
