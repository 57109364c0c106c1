"""Initialisation of a chain so its effective weight starts at a chosen scale.

Each factor ``i`` is drawn from ``N(0, 1/fan_in_i)``; then, in expectation, the effective
(collapsed, skip-free) weight has variance ``1/fan_in`` of the effective kernel, whatever the
depth, width and kernel split. Multiplying every factor by ``(std * sqrt(fan_in)) ** (1/L)``
moves that to any target while keeping the factors balanced. Identity skips are added on top
(they start the chain near the identity, as in the paper); batch norms start as identity.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .chain import OverparamChain

__all__ = ["default_weight_std", "init_chain_"]


def default_weight_std(chain: OverparamChain) -> float:
    """Std of a default-initialised stock layer of the effective shape.

    ``nn.Linear``/``nn.ConvNd`` draw from ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``.
    """
    return 1.0 / math.sqrt(3.0 * chain.plan.fan_in)


@torch.no_grad()
def init_chain_(chain: OverparamChain, weight_std: float | None = None, bias: Tensor | None = None) -> None:
    """Re-draw the factors so the effective weight has std ``weight_std`` (in expectation).

    Args:
        chain: the layer to initialise, in place.
        weight_std: target std of the effective weight; default: the stock layer's default.
            ``0`` zeroes the last factor only, so the effective weight is exactly zero but
            gradients still reach every factor (an all-zero chain would never move).
        bias: effective bias to start from (put on the last factor, the others are zero);
            default: the stock default ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``.
    """
    plan = chain.plan
    if weight_std is None:
        weight_std = default_weight_std(chain)
    fan_in = chain.plan.fan_in
    gain = (weight_std * math.sqrt(fan_in)) ** (1.0 / plan.depth) if weight_std > 0 else 1.0
    factors = chain.factor_layers
    for i, factor in enumerate(factors):
        factor_fan_in = plan.channels[i] // plan.groups * math.prod(plan.kernels[i])
        nn.init.normal_(factor.weight, std=gain / math.sqrt(factor_fan_in))
        if factor.bias is not None:
            nn.init.zeros_(factor.bias)
    if weight_std == 0:
        nn.init.zeros_(factors[-1].weight)
    for norm in chain.norm_layers or ():
        norm.reset_parameters()
    last_bias = factors[-1].bias
    if last_bias is not None:
        if bias is None:
            bound = 1.0 / math.sqrt(fan_in)
            nn.init.uniform_(last_bias, -bound, bound)
        else:
            last_bias.copy_(bias)
