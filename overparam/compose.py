"""Closed-form collapse of a chain into one affine layer.

Every node is an affine map of the (padded) input, ``x_i = A_i * s + c_i``, with ``A_i`` a
kernel of shape ``[C_i, in/groups, *K_i]`` and ``c_i`` one value per channel. Because all
padding is applied once, before the first factor, and later factors are "valid", biases and
BN shifts stay constant over every intermediate map, so one pass over the factors gives
``A_L`` and ``c_L`` exactly, for any padding mode. All functions are differentiable: the
composed training path and the eval cache both call :func:`collapse_chain`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .cost import Order, composition_order, segment_nodes
from .plan import ChainPlan

__all__ = ["compose_kernels", "centre_pad", "identity_kernel", "collapse_chain", "bn_affine"]

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def compose_kernels(outer: Tensor, inner: Tensor, groups: int = 1) -> Tensor:
    """Kernel of ``outer`` applied after ``inner`` (both PyTorch cross-correlations).

    Composing correlations gives the *full convolution* of the two kernels, computed here
    with one grouped convolution. When either kernel is 1x1 (or a Linear weight) it is a
    batched matmul over the other kernel's taps, with no zero padding.
    """
    if outer.dim() == 2:
        return outer @ inner
    spatial = outer.shape[2:]
    out_ch, hid_per_group = outer.shape[:2]
    in_per_group = inner.shape[1]
    if all(k == 1 for k in spatial):
        w = outer.reshape(groups, out_ch // groups, hid_per_group)
        a = inner.reshape(groups, hid_per_group, -1)
        return torch.bmm(w, a).reshape(out_ch, in_per_group, *inner.shape[2:])
    if all(k == 1 for k in inner.shape[2:]):
        # [o, m, taps] x [m, c] per group: move the taps next to the output channels
        taps = outer.shape[2:].numel()
        w = outer.reshape(groups, out_ch // groups, hid_per_group, taps).transpose(2, 3)
        a = inner.reshape(groups, hid_per_group, in_per_group)
        composed = torch.matmul(w, a.unsqueeze(1))  # [g, o/g, taps, c]
        return composed.transpose(2, 3).reshape(out_ch, in_per_group, *spatial)
    # inner as a batch of `in/groups` images with `hidden` channels; padding k-1 gives the
    # full convolution, and flipping turns PyTorch's correlation into a convolution.
    images = inner.transpose(0, 1)
    flipped = outer.flip(list(range(2, outer.dim())))
    padding = tuple(k - 1 for k in spatial)
    composed = _CONV[len(spatial)](images, flipped, padding=padding, groups=groups)
    return composed.transpose(0, 1)


def centre_pad(kernel: Tensor, size: Sequence[int]) -> Tensor:
    """Zero-pad the spatial dims of ``kernel`` symmetrically to ``size``."""
    pads: list[int] = []
    for k, s in zip(reversed(kernel.shape[2:]), reversed(list(size))):
        half = (s - k) // 2
        pads += [half, half]
    return F.pad(kernel, pads) if any(pads) else kernel


def identity_kernel(channels: int, groups: int, ndim: int, *, dtype: torch.dtype, device: torch.device) -> Tensor:
    """The grouped Dirac kernel ``[channels, channels/groups, 1, ...]`` (a matrix when ndim=0)."""
    per_group = channels // groups
    eye = torch.zeros(channels, per_group, dtype=dtype, device=device)
    eye[torch.arange(channels), torch.arange(channels) % per_group] = 1
    return eye.reshape(channels, per_group, *((1,) * ndim))


def bn_affine(bn: torch.nn.modules.batchnorm._BatchNorm) -> tuple[Tensor, Tensor]:
    """Eval-mode batch norm as ``scale * x + shift`` per channel (running statistics)."""
    if bn.running_var is None or bn.running_mean is None:
        raise ValueError("a batch norm without running statistics has no eval-mode affine form")
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -scale * bn.running_mean
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale, shift


def _apply_to_constant(outer: Tensor, value: Tensor, groups: int) -> Tensor:
    """``outer`` applied to a map that is ``value`` (per channel) everywhere."""
    if outer.dim() == 2:
        return outer @ value
    out_ch, hid_per_group = outer.shape[:2]
    summed = outer.sum(dim=tuple(range(2, outer.dim()))).reshape(groups, out_ch // groups, hid_per_group)
    return torch.bmm(summed, value.reshape(groups, hid_per_group, 1)).reshape(out_ch)


def _add(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    if a is None:
        return b
    if b is None:
        return a
    return a + b


def _compose_in_order(order: Order, kernels: Sequence[Tensor], groups: int) -> Tensor:
    if isinstance(order, int):
        return kernels[order]
    inner, outer = order
    return compose_kernels(_compose_in_order(outer, kernels, groups), _compose_in_order(inner, kernels, groups), groups)


def collapse_chain(
    plan: ChainPlan,
    weights: Sequence[Tensor],
    biases: Sequence[Tensor | None],
    norms: Sequence[tuple[Tensor, Tensor] | None],
    *,
    with_skips: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """The effective weight and bias of a chain (bias ``None`` when the chain has none).

    The kernel of every node that a skip leaves from or enters is built from the previous
    such node's kernel and the factors in between, multiplied in the cheapest order
    (:func:`overparam.cost.composition_order`); a batch norm's scale is folded into the rows
    of its factor first. Shifts are vectors and are propagated factor by factor.

    Args:
        plan: the chain's structure.
        weights: factor weights, in order.
        biases: factor biases (``None`` where a factor has none).
        norms: per factor, the eval-mode ``(scale, shift)`` of its batch norm, or ``None``.
        with_skips: leave the identity skips out (used to size the initialisation).
    """
    skip_sources = plan.skip_sources if with_skips else frozenset()
    # shifts: node i's constant c_i, propagated through the (unscaled) factors
    shifts: dict[int, Tensor | None] = {0: None}
    shift: Tensor | None = biases[0]
    for i in range(1, plan.depth + 1):
        if i > 1:
            w = weights[i - 1]
            shift = _add(None if shift is None else _apply_to_constant(w, shift, plan.groups), biases[i - 1])
        norm = norms[i - 1]
        if norm is not None:
            scale, bn_shift = norm
            shift = bn_shift if shift is None else scale * shift + bn_shift
        if with_skips:
            for skip in plan.skips_into(i):
                shift = _add(shift, shifts[skip.source])
        if i in skip_sources:
            shifts[i] = shift
    # kernels: a batch norm after factor i scales factor i's output channels
    factors = [
        w if norm is None else w * norm[0].reshape(-1, *((1,) * (w.dim() - 1))) for w, norm in zip(weights, norms)
    ]
    kernels: dict[int, Tensor] = {}
    if 0 in skip_sources:
        kernels[0] = identity_kernel(
            plan.in_channels, plan.groups, plan.ndim, dtype=weights[0].dtype, device=weights[0].device
        )
    nodes = segment_nodes(plan, with_skips)
    kernel = factors[0]
    for start, end in zip(nodes, nodes[1:]):
        order, _ = composition_order(plan, start, end)
        leaves = ([kernel] if start > 0 else []) + factors[start:end]
        kernel = _compose_in_order(order, leaves, plan.groups)
        if with_skips:
            for skip in plan.skips_into(end):
                kernel = kernel + centre_pad(kernels[skip.source], kernel.shape[2:])
        if end in skip_sources:
            kernels[end] = kernel
    return kernel.contiguous(), shift
