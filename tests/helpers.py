"""Shared test helpers (imported as ``from .helpers import ...``; fixtures live in conftest.py)."""

import torch

from overparam import OverparamChain


def randomize_(layer: OverparamChain, seed: int = 0) -> OverparamChain:
    """Give biases and BN statistics non-trivial values so the collapse is really tested."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for f in layer.factors:
            if f.bias is not None:
                f.bias.copy_(torch.randn(f.bias.shape, generator=g, dtype=f.bias.dtype))
        if layer.norms is not None:
            for bn in layer.norms:
                bn.weight.copy_(torch.rand(bn.weight.shape, generator=g, dtype=bn.weight.dtype) + 0.5)
                bn.bias.copy_(torch.randn(bn.bias.shape, generator=g, dtype=bn.bias.dtype))
                bn.running_mean.copy_(torch.randn(bn.running_mean.shape, generator=g, dtype=bn.running_mean.dtype))
                bn.running_var.copy_(torch.rand(bn.running_var.shape, generator=g, dtype=bn.running_var.dtype) + 0.5)
    return layer


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))
