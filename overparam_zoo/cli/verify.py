"""``overparam-zoo verify NAME|CHECKPOINT``: per-layer and model-level collapse errors."""

from __future__ import annotations

import argparse

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("verify", help="check that a variant or checkpoint collapses exactly")
    parser.add_argument("target", help="a variant name (fresh weights) or a checkpoint file")
    parser.add_argument("--model", default=None, help="the op variant of a checkpoint that does not name it")
    parser.add_argument("--no-ema", action="store_true")
    parser.add_argument("--tolerance", type=float, default=1e-9, help="largest float64 error accepted (exit 1 above)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from overparam_zoo.checkpoints.loading import load_model
    from overparam_zoo.progress import Progress
    from overparam_zoo.sharing.verify import variant_of, verify_collapse

    with Progress("verify", 2) as progress:
        progress.update(1, note=f"loading {args.target}")
        model, _ = load_model(args.target, model=args.model, use_ema=not args.no_ema)
        variant, model_args = variant_of(model)
        progress.update(1, note=f"measuring the collapse of {variant.name} (float64, float32)")
        report = verify_collapse(model, variant, model_args)
    width = max([len("layer")] + [len(c.path) for c in report.layers])
    print(f"{'layer':{width}s}  {'kind':18s}  collapse error (float64)")
    for c in report.layers:
        print(f"{c.path:{width}s}  {c.kind:18s}  {c.error:.2e}")
    print(
        f"model output vs collapsed {variant.base}: {report.model_error_float64:.2e} (float64), "
        f"{report.model_error_float32:.2e} (float32)"
    )
    ok = report.max_layer_error <= args.tolerance and report.model_error_float64 <= args.tolerance
    print("OK" if ok else f"FAILED: above tolerance {args.tolerance:g}")
    return 0 if ok else 1
