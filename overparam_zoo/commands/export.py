"""``overparam-zoo export CHECKPOINT --out DIR``: collapsed weights as a standard checkpoint."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a training checkpoint as a standard (collapsed) timm/torchvision checkpoint",
        description="Reads a timm train.py checkpoint (state_dict_ema preferred), a plain state dict or a "
        "safetensors file of an op variant, collapses it and writes DIR/model.safetensors + DIR/config.json "
        "that load into the base architecture with no plugin.",
    )
    parser.add_argument("checkpoint")
    parser.add_argument("--out", required=True, help="output folder (must be empty or absent)")
    parser.add_argument("--model", default=None, help="the op variant, when the checkpoint does not name it")
    parser.add_argument("--no-ema", action="store_true", help="export state_dict even when state_dict_ema exists")
    parser.add_argument("--force", action="store_true", help="replace a non-empty --out")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from overparam_zoo.export import check_out_dir, export_collapsed
    from overparam_zoo.loading import load_model

    check_out_dir(Path(args.out), args.force)
    with tqdm(total=5, desc="export", file=sys.stderr, leave=False, bar_format="{desc}: {n}/{total} {postfix}") as bar:

        def step(message: str) -> None:
            bar.set_postfix_str(message)
            bar.update(1)

        step("reading checkpoint")
        model, name = load_model(args.checkpoint, model=args.model, use_ema=not args.no_ema)
        result = export_collapsed(model, args.out, force=args.force, progress=step)
    print(
        f"exported {name} as {result.config['architecture']} to {result.out_dir} "
        f"(max collapse error {result.max_collapse_error:.1e} in float64)"
    )
    for path in result.extra_files:
        print(f"  plus {path}")
    return 0
