"""``overparam-zoo show NAME``: the resolved per-layer plan of a variant."""

from __future__ import annotations

import argparse
import math
from typing import cast

from torch import nn

from overparam import ConversionReport, OverparamChain
from overparam_zoo.registry.zoos import ZOOS

__all__ = ["register", "run", "layer_plan"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("show", help="print the per-layer plan of a variant")
    parser.add_argument("name", help="variant name, e.g. resnet18_op_d2")
    parser.add_argument("--zoo", choices=ZOOS, default=None)
    parser.set_defaults(func=run)


def _stock_params(chain: OverparamChain) -> int:
    plan = chain.plan
    return math.prod(plan.weight_shape) + (plan.out_channels if plan.bias else 0)


def layer_plan(model: nn.Module, report: ConversionReport) -> list[dict[str, str]]:
    """One row per converted or skipped layer: path, what it became, parameters."""
    rows = []
    for path in report.converted:
        chain = cast(OverparamChain, model.get_submodule(path))
        plan = chain.plan
        kernels = " ".join("x".join(map(str, k)) if k else "-" for k in plan.kernels)
        channels = "->".join(map(str, plan.channels))
        extras = [
            s
            for s, on in (
                ("bn", plan.batch_norm),
                ("skips " + ",".join(f"{s.source}>{s.target}" for s in plan.skips), bool(plan.skips)),
            )
            if on
        ]
        rows.append(
            {
                "layer": path,
                "becomes": f"{type(chain).__name__} d{plan.depth} [{kernels}] {channels}"
                + (f" g{plan.groups}" if plan.groups > 1 else "")
                + (" " + " ".join(extras) if extras else ""),
                "train params": str(sum(p.numel() for p in chain.parameters())),
                "stock params": str(_stock_params(chain)),
            }
        )
    for path, why in report.skipped.items():
        rows.append({"layer": path, "becomes": f"stock ({why})", "train params": "", "stock params": ""})
    return rows


def run(args: argparse.Namespace) -> int:
    from overparam_zoo.registry.variants import apply_variant, build_base, get_variant

    variant = get_variant(args.name, args.zoo)
    model = build_base(variant)
    report = apply_variant(model, variant)
    rows = layer_plan(model, report)
    widths = {k: max(len(k), *(len(r[k]) for r in rows)) for k in rows[0]}
    print(f"{variant.name} ({variant.zoo}): {variant.base} by {variant.recipe.path}")
    print("  ".join(k.ljust(w) for k, w in widths.items()))
    for row in rows:
        print("  ".join(row[k].ljust(w) for k, w in widths.items()))
    train = sum(p.numel() for p in model.parameters())
    chains = [cast(OverparamChain, model.get_submodule(path)) for path in report.converted]
    after = train - sum(p.numel() for c in chains for p in c.parameters()) + sum(_stock_params(c) for c in chains)
    print(f"parameters while training: {train:,}")
    print(f"parameters after collapse: {after:,}")
    return 0
