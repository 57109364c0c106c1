"""``overparam-zoo demo``: the main job on scikit-learn's bundled handwritten digits."""

from __future__ import annotations

import argparse

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="train an op variant and its stock base on handwritten digits, export, reload with plain timm",
    )
    parser.add_argument("--model", default="resnet18_op_d2", help="timm op variant (default: resnet18_op_d2)")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--out", default="overparam-demo", help="export folder parent (default: ./overparam-demo)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=32, help="input size the 8x8 digits are resized to")
    parser.add_argument(
        "--force", action="store_true", help="replace an existing folder that is not a previous demo export"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from overparam_zoo.extras import require

    require("sklearn", "demo", "the demo")
    from overparam_zoo.experiments.demo import format_table, run_demo

    result = run_demo(args.model, epochs=args.epochs, out=args.out, seed=args.seed, size=args.size, force=args.force)
    print(format_table(result.rows))
    print(
        f"export: {result.export_dir} (loads with plain timm: "
        f"timm.create_model('local-dir:{result.export_dir}', pretrained=True))"
    )
    print(
        f"plain timm reproduces the op model's predictions: {'yes' if result.predictions_match else 'NO'} "
        f"(max logit difference {result.max_logit_difference:.1e})"
    )
    print(f"wall time: {result.seconds:.0f} s")
    return 0 if result.predictions_match else 1
