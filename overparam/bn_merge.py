"""The training-time batch-norm merge: a batch norm between two factors of an expanded chain,
merged into the next factor.

Invariant: same function, same gradients and same running statistics as running the
``BatchNormNd`` module, for a plain affine batch norm with running statistics in the map's
dtype. The batch statistics are taken from the map in one pass; the next factor runs with its
weight scaled per input channel and the shift as a bias, so the normalised map is never
written, read again or saved for backward. Anything else (autocast, ``SyncBatchNorm``, maps
too small to gain) returns ``None`` and the module runs itself.

Not to be confused with the collapse-time bias fold (:mod:`overparam.bias_fold`), which moves a
bias gained inside a chain into the BatchNorm *after* the collapsed layer.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .compat import is_autocast_enabled
from .compose import _apply_to_constant

__all__ = ["MERGE_MIN_ELEMENTS", "merge_batch_norm", "scale_input_channels"]

_PLAIN_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
#: Smallest map (elements) whose batch norm is merged. Merging saves about four passes over
#: the map per step (~16 bytes per float32 element, ~1.6 ns at 10 GB/s) and costs about 25
#: small tensor operations (~5 us each, ~125 us) for the statistics and the scaled weight:
#: the two break even near 2**16 elements; below 2**17 the module runs.
MERGE_MIN_ELEMENTS = 2**17


class _BatchMoments(torch.autograd.Function):
    """Per-channel batch mean and biased variance of ``x`` (``[N, C, *]``), updating the
    running statistics as a training batch norm does, with a one-pass backward."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx, x: Tensor, running_mean: Tensor, running_var: Tensor, momentum: float
    ) -> tuple[Tensor, Tensor]:
        mean, var = torch.batch_norm_update_stats(x, running_mean, running_var, momentum)
        ctx.save_for_backward(x, mean)
        return mean, var

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad_mean: Tensor, grad_var: Tensor
    ) -> tuple[Tensor, None, None, None]:
        x, mean = ctx.saved_tensors  # type: ignore[attr-defined]
        n = x.numel() // x.shape[1]
        shape = (1, -1) + (1,) * (x.dim() - 2)
        # d mean / dx = 1/n, d var / dx = 2 (x - mean) / n: one fused pass over x
        beta = grad_var * (2.0 / n)
        alpha = grad_mean / n - beta * mean
        return torch.addcmul(alpha.view(shape), x, beta.view(shape)), None, None, None


def merge_batch_norm(bn: nn.Module, x: Tensor) -> tuple[Tensor, Tensor] | None:
    """A training-mode batch norm of ``x`` as a per-channel ``(scale, shift)`` of its batch
    statistics, with the module's running statistics and batch count updated exactly as its
    forward would; ``None`` (the module must run itself) for anything but a plain affine
    ``BatchNormNd`` with running statistics in ``x``'s dtype (autocast, SyncBatchNorm,
    a single value per channel, which the module refuses), and for maps too small to gain
    (:data:`MERGE_MIN_ELEMENTS`)."""
    if (
        not isinstance(bn, _PLAIN_BATCH_NORMS)
        or type(bn) not in _PLAIN_BATCH_NORMS
        or not bn.training
        or not bn.affine
        or not bn.track_running_stats
        or bn.running_mean is None
        or bn.running_var is None
        or bn.num_batches_tracked is None
        or bn.weight.dtype != x.dtype
        or x.numel() < max(MERGE_MIN_ELEMENTS, x.shape[1] + 1)
        or is_autocast_enabled(x.device.type)
    ):
        return None
    bn.num_batches_tracked.add_(1)
    momentum = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    mean, var = _BatchMoments.apply(x, bn.running_mean, bn.running_var, momentum)
    scale = bn.weight * torch.rsqrt(var + bn.eps)
    return scale, bn.bias - mean * scale


def scale_input_channels(
    weight: Tensor, bias: Tensor | None, scale: Tensor, shift: Tensor, groups: int
) -> tuple[Tensor, Tensor]:
    """Weight and bias of ``factor(scale * x + shift)`` for a factor without padding: the
    weight scaled per input channel, and the factor applied to the constant ``shift`` map."""
    if weight.dim() == 2:
        scaled, extra = weight * scale, weight @ shift
    else:
        out_ch, per_group = weight.shape[:2]
        kernel = weight.shape[2:]
        grouped = weight.reshape(groups, out_ch // groups, per_group, *kernel)
        scaled = (grouped * scale.reshape(groups, 1, per_group, *(1,) * len(kernel))).reshape(weight.shape)
        extra = _apply_to_constant(weight, shift, groups)
    return scaled, extra if bias is None else extra + bias
