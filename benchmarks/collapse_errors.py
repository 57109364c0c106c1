"""The evidence for the export's collapse-error bound (``overparam_zoo.sharing.verify.COLLAPSE_ERROR_BOUND``).

For one small model of every timm and torchvision architecture family (``tests/zoo_families.json``,
the zoo-wide test's table) and each chain configuration below, the model is converted, trained one
SGD step (as the zoo-wide test does, so factors, biases and batch-norm statistics are not their
initial values), and its collapse is measured as the export measures it: in float64 on a seeded
probe input, the whole op model against its collapsed stock model, and every chain against its
stock layer on the input it sees (``overparam_zoo.sharing.verify.chain_errors``); and, for scale,
the stock model against the op model with every chain run factor by factor (the zoo-wide test's
reference, which rounds differently from the collapsed weights the op model uses in eval). A configuration a
family cannot collapse (batch norm inside a chain whose bias no BatchNorm can absorb) is counted,
not measured. Prints one JSON line per model and configuration, then the largest errors.

    python benchmarks/collapse_errors.py                          # every family (~90 min, one thread)
    python benchmarks/collapse_errors.py --families timm:resnet --configs d2
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from typing import Any

import timm
import torch
import torchvision
from torch import nn

import overparam_zoo
from overparam import OverparamChain, convert_model
from overparam_zoo.registry.variants import converters
from overparam_zoo.sharing.verify import chain_errors, probe_input, relative_difference

TABLE = Path(__file__).resolve().parent.parent / "tests" / "zoo_families.json"
NUM_CLASSES = 8  # as the table's models are built
CONFIGS: dict[str, dict[str, Any]] = {
    "d2": {"depth": 2},
    "d4_res": {"depth": 4, "residual": True, "residual_intervals": -1},
    "d4_bn": {"depth": 4, "batch_norm": True},
}


def build(row: dict[str, Any]) -> nn.Module:
    if row["zoo"] == "timm":
        return timm.create_model(row["model"], **row["kwargs"])
    return torchvision.models.get_model(row["model"], **row["kwargs"])


def first_tensor(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        out = list(out.values())
    return first_tensor(out[0])


def run_expanded(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The op model's output with every chain run factor by factor (composed-only chains from a
    freshly composed weight), as the zoo-wide test computes its reference."""

    def reference(chain: OverparamChain, args: tuple, out: torch.Tensor) -> torch.Tensor:
        return (chain.expanded_forward if chain.composed_only is None else chain.composed_forward)(*args)

    hooks = [m.register_forward_hook(reference) for m in model.modules() if isinstance(m, OverparamChain)]
    try:
        return first_tensor(model(x))
    finally:
        for hook in hooks:
            hook.remove()


def measure(row: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    dtype = getattr(torch, row["dtype"])
    size = row["input_size"]
    torch.manual_seed(0)
    model = build(row).to(dtype)
    convert_model(model, options, converters=converters())
    model.train()
    x = torch.randn(2, 3, size, size, dtype=dtype)
    target = torch.randint(NUM_CLASSES, (2,))
    nn.functional.cross_entropy(first_tensor(model(x)), target).backward()
    nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    op = copy.deepcopy(model).to(torch.float64).eval()
    try:
        state = overparam_zoo.collapsed_state_dict(op)
    except ValueError as err:
        return {"collapses": False, "why": str(err)[:120]}
    stock = build(row).to(torch.float64).eval()
    stock.load_state_dict(state, strict=True)
    probe = probe_input((3, size, size), torch.float64)
    with torch.no_grad():
        out = first_tensor(stock(probe))
        model_error = relative_difference(out, first_tensor(op(probe)))
        expanded_error = relative_difference(out, run_expanded(op, probe))
    layers = chain_errors(op, stock, probe)
    worst = max(layers, key=lambda c: c.error)
    return {
        "collapses": True,
        "model_error": model_error,
        "expanded_error": expanded_error,
        "max_layer_error": worst.error,
        "worst_layer": worst.path,
        "chains": len(layers),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", nargs="+", help="zoo:family rows to run (default: all)")
    parser.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = json.loads(TABLE.read_text())
    if args.families:
        rows = [r for r in rows if f"{r['zoo']}:{r['family']}" in args.families]
    results = []
    for row in rows:
        for name in args.configs:
            start = time.perf_counter()
            try:
                result = measure(row, CONFIGS[name])
            except Exception as err:  # a model that does not run a configuration: reported, not measured
                result = {"collapses": None, "why": f"{type(err).__name__}: {str(err)[:120]}"}
            result = {"family": f"{row['zoo']}:{row['family']}", "model": row["model"], "config": name, **result}
            result["seconds"] = round(time.perf_counter() - start, 2)
            results.append(result)
            print(json.dumps(result), flush=True)
    measured = [r for r in results if r["collapses"]]
    print(
        f"\n{len(measured)} measured, {sum(r['collapses'] is False for r in results)} cannot collapse "
        f"(no BatchNorm to fold into), {sum(r['collapses'] is None for r in results)} failed to run"
    )
    for key in ("model_error", "max_layer_error", "expanded_error"):
        worst = max(measured, key=lambda r: r[key])
        print(f"largest {key}: {worst[key]:.2e} ({worst['family']} {worst['config']})")
    for name in args.configs:
        errors = sorted(r["model_error"] for r in measured if r["config"] == name)
        if errors:
            print(
                f"{name}: model error median {errors[len(errors) // 2]:.1e}, max {errors[-1]:.1e} ({len(errors)} models)"
            )


if __name__ == "__main__":
    main()
