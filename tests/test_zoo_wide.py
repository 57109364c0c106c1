"""Zoo-wide exactness: one small model of every timm and torchvision architecture family is
converted at depth 2, trained one step, and collapsed into a fresh stock model that must load
the weights strictly and compute what the chains compute, run factor by factor.

The family -> model table is ``tests/zoo_families.json``, written by
``benchmarks/zoo_families.py``. A family whose layers cannot be turned into chains exactly is
listed in ``REFUSED`` with the layer types refused; every other layer must be converted.
"""

import json
from pathlib import Path
from typing import Any

import pytest
import timm
import torch
import torchvision
from torch import nn

import overparam_zoo
from overparam import OverparamChain, convert_model
from overparam_zoo.registry.variants import converters

from .helpers import relative_error

ROWS: list[dict[str, Any]] = json.loads((Path(__file__).parent / "zoo_families.json").read_text())

# family -> the layer types its conversion refuses (the reason names them); the rest must convert
REFUSED: dict[str, tuple[str, ...]] = {
    "torchvision:vision_transformer": ("nn.MultiheadAttention",),
}

# family -> why it fails today (strict: the mark flips when it is fixed); none at present
XFAIL: dict[str, str] = {}

TOLERANCE = {"float64": 1e-9, "float32": 1e-4}
NUM_CLASSES = 8  # as benchmarks/zoo_families.py builds every model


def build(row: dict[str, Any]) -> nn.Module:
    if row["zoo"] == "timm":
        return timm.create_model(row["model"], **row["kwargs"])
    return torchvision.models.get_model(row["model"], **row["kwargs"])


def tensors(out: Any) -> list[torch.Tensor]:
    """Every tensor of a model output (a tensor, or a tuple such as Inception's aux logits)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    return [t for o in out for t in tensors(o)]


def run_expanded(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The op model's output with every chain run factor by factor instead of collapsed (a
    composed-only chain, timm's weight-standardised convs, from its freshly composed weight)."""
    chains = {m for m in model.modules() if isinstance(m, OverparamChain)}

    def reference(chain: OverparamChain, args: tuple, out: torch.Tensor) -> torch.Tensor:
        return (chain.expanded_forward if chain.composed_only is None else chain.composed_forward)(*args)

    hooks = [c.register_forward_hook(reference) for c in chains]
    try:
        return tensors(model(x))[0]
    finally:
        for hook in hooks:
            hook.remove()


def param(row: dict[str, Any]) -> Any:
    family = f"{row['zoo']}:{row['family']}"
    marks = [pytest.mark.slow]
    if family in XFAIL:
        marks.append(pytest.mark.xfail(strict=True, reason=XFAIL[family]))
    return pytest.param(row, id=family, marks=marks)


@pytest.mark.parametrize("row", [param(r) for r in ROWS])
def test_family_converts_trains_and_collapses_exactly(row):
    assert row["model"], row["note"]
    dtype = getattr(torch, row["dtype"])
    size = row["input_size"]
    model = build(row).to(dtype)
    report = convert_model(model, depth=2, converters=converters())
    assert report.converted

    model.train()
    x = torch.randn(2, 3, size, size, dtype=dtype)
    target = torch.randint(NUM_CLASSES, (2,))
    logits = [t for t in tensors(model(x)) if t.shape == (2, NUM_CLASSES)]  # with aux / distillation heads
    sum(nn.functional.cross_entropy(t, target) for t in logits).backward()
    chains = [model.get_submodule(path) for path in report.converted]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for c in chains for p in c.parameters())
    # batch norm over 2 samples at tiny resolutions gives huge gradients: bound the step
    nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    torch.optim.SGD(model.parameters(), lr=0.1).step()

    model.eval()
    with torch.no_grad():
        expected = run_expanded(model, x)
        stock = build(row).to(dtype).eval()
        stock.load_state_dict(overparam_zoo.collapsed_state_dict(model), strict=True)
        assert relative_error(tensors(stock(x))[0], expected) < TOLERANCE[row["dtype"]]
        collapsed = overparam_zoo.collapse(model)
        assert [type(m) for m in collapsed.modules()] == [type(m) for m in stock.modules()]

    allowed = REFUSED.get(f"{row['zoo']}:{row['family']}", ())
    unexpected = {p: why for p, why in report.skipped.items() if not any(kind in why for kind in allowed)}
    assert not unexpected, f"layers left stock: {unexpected}"
    assert bool(report.skipped) == bool(allowed), "a family listed in REFUSED must still refuse"
