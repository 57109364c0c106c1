"""``overparam-zoo demo``: the main job on scikit-learn's bundled handwritten digits: a one-seed
``compare`` of an op variant and its stock base, then plain timm in a fresh process reloads the
export with the preprocessing its config states and must predict what the op model predicted."""

from __future__ import annotations

import argparse

from overparam_zoo.cli.compare import default_threads

__all__ = ["register", "run", "FLAGS"]

#: the flag of each ``run_demo`` parameter, for its errors
FLAGS: dict[str, str] = {
    "model": "--model",
    "out": "--out",
    "epochs": "--epochs",
    "seed": "--seed",
    "input_size": "--input-size",
    "threads": "--threads",
    "force": "--force",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="compare an op variant and its stock base on handwritten digits (one seed), reload the export "
        "with plain timm",
    )
    parser.add_argument("--model", default="resnet18_op_d2", help="timm op variant (default: resnet18_op_d2)")
    parser.add_argument("--epochs", type=int, default=8, help="training epochs of each model (default: 8)")
    parser.add_argument(
        "--out", default="overparam-demo", help="compare's output folder, with the export (default: ./overparam-demo)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of both runs (default: 0)")
    parser.add_argument(
        "--input-size", "--size", type=int, default=32, help="the square the 8x8 digits are resized to (default: 32)"
    )
    parser.add_argument(
        "--threads", type=int, default=default_threads(), help="torch intra-op threads (default: the CPUs available)"
    )
    parser.add_argument(
        "--force", action="store_true", help="replace compare outputs in --out that are not a previous demo's"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from overparam_zoo.cli.flags import flag_errors
    from overparam_zoo.experiments.demo import run_demo

    with flag_errors(FLAGS):
        result = run_demo(
            args.model,
            epochs=args.epochs,
            out=args.out,
            seed=args.seed,
            input_size=args.input_size,
            threads=args.threads,
            force=args.force,
        )
    print(result.compare.table)
    print(
        f"\nexport: {result.export_dir} (loads with plain timm: "
        f"timm.create_model('local-dir:{result.export_dir}', pretrained=True))"
    )
    print(
        f"plain timm in a fresh process, preprocessing from the export's config: top-1 {result.fresh_top1:.2%} "
        f"(compare reported {result.reported_top1:.2%}); same predictions as the op model: "
        f"{'yes' if result.predictions_match else 'NO'} (max logit difference {result.max_logit_difference:.1e})"
    )
    print(f"wall time: {result.seconds:.0f} s")
    return 0 if result.predictions_match and result.fresh_top1 == result.reported_top1 else 1
