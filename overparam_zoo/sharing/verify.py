"""Measuring a collapse: per layer and for the whole model, on a seeded probe input.

Export records the model-level error in its provenance and refuses a collapse above
:data:`COLLAPSE_ERROR_BOUND`, naming the first chain that disagrees with its stock layer
(:func:`chain_errors`); ``overparam-zoo verify`` prints both levels.

Invariant: every error here is a float64 (or float32, where named) *relative* difference, the
largest absolute difference over the largest magnitude of the reference, on the same seeded
probe input for every check of a model.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from overparam import OverparamChain, collapsed_state_dict
from overparam.bias_fold import needs_bias_fold
from overparam_zoo.errors import ExportError
from overparam_zoo.registry.recipe import Variant
from overparam_zoo.registry.variants import build_base, get_variant
from overparam_zoo.registry.zoos import get_zoo

__all__ = [
    "COLLAPSE_ERROR_BOUND",
    "LayerCheck",
    "VerifyReport",
    "verify_collapse",
    "variant_of",
    "collapse_error",
    "collapsed_stock",
    "chain_errors",
    "probe_input",
    "probe_shape",
    "relative_difference",
    "non_finite",
    "non_finite_output",
    "first_names",
]

COLLAPSE_ERROR_BOUND = 1e-6
"""The largest float64 collapse error (relative, op model vs its collapsed stock model on the
probe input) an export accepts without ``allow_collapse_error``.

An exact collapse is rounding only. Measured by ``benchmarks/collapse_errors.py`` (2026-12-06,
torch 2.14.1, timm 1.0.31, torchvision 0.29.1; ``benchmarks/collapse_errors.jsonl``): one small
model of each of the 115 timm and torchvision families of ``tests/zoo_families.json``, converted
at depth 2, at depth 4 with a skip over each chain, and at depth 4 with batch norm inside (69
families can fold the bias it gains), each trained one SGD step: 299 models, 20,734 chains. The
largest whole-model error was 5.4e-15 (inception_v3, depth 4 with batch norm), the largest
chain-vs-stock-layer error 9.1e-15, and even the stock model against the chains run factor by
factor (a different rounding) stayed within 2.4e-13. 1e-6 leaves a margin above 1e8 over the
first two and 4e6 over the third, and is still far below a real mistake: a chain output off by
0.1 (a forward hook on ``layer2.0.downsample.0`` of an untrained ``resnet18_op_d2``) gives 5.8e-1,
a converter whose forward is 1.5x its ``fuse()`` 3.3e-1."""


@dataclass
class LayerCheck:
    """One chain's collapse error: ``kind`` is the chain's class (and, from
    :func:`chain_errors`, the stock layer's: ``"OverparamConv2d -> Conv2d"``)."""

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


def variant_of(model: nn.Module) -> tuple[Variant, dict[str, Any]]:
    """The variant an op model was built from, and the kwargs its base was built with.

    Raises:
        ExportError: for a model that ``overparam_zoo`` did not build.
    """
    info = getattr(model, "overparam_zoo", None)
    if not isinstance(info, dict) or "variant" not in info:
        raise ExportError(
            "the model is not an op variant built by overparam_zoo, so there is nothing to collapse "
            "(for an op model built by hand, pass variant=NAME)"
        )
    return get_variant(info["variant"], info["zoo"]), dict(info.get("model_args", {}))


def probe_shape(stock: nn.Module, variant: Variant) -> tuple[int, ...]:
    """The input size (without batch) the collapse is checked on: the model's own input size."""
    return get_zoo(variant.zoo).input_size(stock)


def probe_input(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A seeded batch of two, so every check of the same model sees the same input."""
    return torch.randn(2, *shape, generator=torch.Generator().manual_seed(0), dtype=dtype)


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max absolute difference, relative to the largest magnitude of ``b``."""
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def non_finite(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors holding a NaN or an infinity, in order: a diverged run."""
    return [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]


def first_names(names: list[str], total: int) -> str:
    """``"a, b, c and 4 more (7 of 120 tensors)"``: the tensors an error names, on one line."""
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return f"{shown} ({len(names)} of {total} tensors)"


def _run_hooked(model: nn.Module, x: torch.Tensor, hook: Callable[[str], Callable], chains_only: bool = False) -> None:
    """Run ``model`` on ``x`` without gradients, with ``hook(path)`` as a forward hook on every
    module (every chain, with ``chains_only``), removed afterwards."""
    modules = [(p, m) for p, m in model.named_modules() if not chains_only or isinstance(m, OverparamChain)]
    handles = [m.register_forward_hook(hook(p)) for p, m in modules]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()


def non_finite_output(model: nn.Module, x: torch.Tensor) -> str | None:
    """The first module, in call order, whose output on ``x`` holds a NaN or an infinity
    (``""`` for the model's own output alone); ``None`` when every output is finite."""
    found: list[str] = []

    def hook(path: str):
        def check(module: nn.Module, inputs: Any, output: Any) -> None:
            outputs = output if isinstance(output, (tuple, list)) else (output,)
            tensors = [o for o in outputs if isinstance(o, torch.Tensor) and o.is_floating_point()]
            if not found and any(not bool(torch.isfinite(t).all()) for t in tensors):
                found.append(path)

        return check

    _run_hooked(model, x, hook)
    return found[0] if found else None


def collapsed_stock(model: nn.Module, variant: Variant, args: dict[str, Any], dtype: torch.dtype) -> nn.Module:
    """``variant``'s base built with ``args`` in ``dtype`` (eval), holding ``model``'s collapsed weights."""
    stock = build_base(variant, **args).to(dtype).eval()
    stock.load_state_dict(collapsed_state_dict(model), strict=True)
    return stock


def collapse_error(model: nn.Module, variant: Variant, args: dict[str, Any], x: torch.Tensor) -> float:
    """Output difference between ``model`` (eval, in ``x``'s dtype) and its collapsed stock model."""
    stock = collapsed_stock(model, variant, args, x.dtype)
    with torch.no_grad():
        return relative_difference(stock(x), model(x))


def chain_errors(op: nn.Module, stock: nn.Module, x: torch.Tensor) -> list[LayerCheck]:
    """Each chain of ``op`` against the layer at its path in ``stock`` (its collapsed stock
    layer), on the input the chain really sees in ``op``'s forward on ``x``, in call order.

    The chain's output is what the op model computes there (forward hooks included); the stock
    layer's is computed fresh on the same input, plus the bias the collapse folded into the
    BatchNorm after it (a bias-free layer whose chain has batch norm inside), so an exact collapse
    gives rounding only, and a chain whose function its stock layer does not compute stands out
    alone (the chains after it see its output in both computations).

    Args:
        op: the op model, eval, in ``x``'s dtype.
        stock: its collapsed stock model (:func:`collapsed_stock`), eval, in ``x``'s dtype.
        x: the probe input.
    """
    checks: list[LayerCheck] = []

    def hook(path: str):
        def check(chain: OverparamChain, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            try:
                layer = stock.get_submodule(path)
            except AttributeError:
                checks.append(LayerCheck(path, f"{type(chain).__name__} -> nothing", float("inf")))
                return
            reference = layer(*inputs)
            if needs_bias_fold(chain) and chain.bias is not None:  # folded into the next BatchNorm's running mean
                bias = chain.bias.to(reference.dtype)
                reference = reference + (bias if chain.plan.ndim == 0 else bias.reshape(-1, *[1] * chain.plan.ndim))
            checks.append(
                LayerCheck(
                    path, f"{type(chain).__name__} -> {type(layer).__name__}", relative_difference(output, reference)
                )
            )

        return check

    _run_hooked(op, x, hook, chains_only=True)
    return checks


def verify_collapse(model: nn.Module, variant: Variant, model_args: dict[str, Any]) -> VerifyReport:
    """Compare, on a seeded probe input of the model's input size: each chain's collapsed
    forward with its expanded forward on the input it really sees, and the whole op model
    with its collapsed stock model (float64 and float32)."""
    op = copy.deepcopy(model).to("cpu", torch.float64).eval()  # probes and stock models are built on the CPU
    x = probe_input(probe_shape(build_base(variant, **model_args), variant), torch.float64)
    checks: list[LayerCheck] = []

    def hook(path: str):
        def check(module: OverparamChain, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            # a composed-only chain (timm's weight-standardised convs) has no factor-by-factor form:
            # its reference is the effective weight rebuilt now, not the cached one
            reference = module.expanded_forward if module.composed_only is None else module.composed_forward
            checks.append(LayerCheck(path, type(module).__name__, relative_difference(output, reference(inputs[0]))))

        return check

    _run_hooked(op, x, hook, chains_only=True)
    op32 = copy.deepcopy(model).to("cpu", torch.float32).eval()
    return VerifyReport(
        checks, collapse_error(op, variant, model_args, x), collapse_error(op32, variant, model_args, x.float())
    )
