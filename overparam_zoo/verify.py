"""Verification of a collapse: per layer and for the whole model, in float64."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from overparam import OverparamChain

from .export import collapse_error, probe_input, probe_shape, relative_difference
from .recipe import Variant
from .registry import build_base

__all__ = ["LayerCheck", "VerifyReport", "verify_collapse"]


@dataclass
class LayerCheck:
    path: str
    kind: str
    error: float


@dataclass
class VerifyReport:
    layers: list[LayerCheck]
    model_error_float64: float
    model_error_float32: float

    @property
    def max_layer_error(self) -> float:
        return max((c.error for c in self.layers), default=0.0)


def verify_collapse(model: nn.Module, variant: Variant, model_args: dict[str, Any]) -> VerifyReport:
    """Compare, on a seeded probe input of the model's input size: each chain's collapsed
    forward with its expanded forward on the input it really sees, and the whole op model
    with its collapsed stock model (float64 and float32)."""
    op = copy.deepcopy(model).double().eval()
    x = probe_input(probe_shape(build_base(variant, **model_args), variant), torch.float64)
    checks: list[LayerCheck] = []

    def hook(path: str):
        def check(module: OverparamChain, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            # a composed-only chain (timm's weight-standardised convs) has no factor-by-factor form:
            # its reference is the effective weight rebuilt now, not the cached one
            reference = module.expanded_forward if module.composed_only is None else module.composed_forward
            checks.append(LayerCheck(path, type(module).__name__, relative_difference(output, reference(inputs[0]))))

        return check

    handles = [m.register_forward_hook(hook(p)) for p, m in op.named_modules() if isinstance(m, OverparamChain)]
    try:
        with torch.no_grad():
            op(x)
    finally:
        for h in handles:
            h.remove()
    op32 = copy.deepcopy(model).float().eval()
    return VerifyReport(
        checks, collapse_error(op, variant, model_args, x), collapse_error(op32, variant, model_args, x.float())
    )
