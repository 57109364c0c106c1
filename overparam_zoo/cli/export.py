"""``overparam-zoo export CHECKPOINT --out DIR``: collapsed weights as a standard checkpoint."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from overparam_zoo.cli.flags import flag_errors
from overparam_zoo.cli.push import add_hub_arguments

if TYPE_CHECKING:
    from overparam_zoo.sharing.metadata import ExportMetadata

__all__ = ["register", "run"]

INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a training checkpoint as a standard (collapsed) timm/torchvision checkpoint",
        description="Reads a timm train.py checkpoint (state_dict_ema preferred), a plain state dict or a "
        "safetensors file of an op variant, collapses it and writes DIR/model.safetensors + DIR/config.json "
        "that load into the base architecture with no plugin, and a DIR/README.md model card.",
    )
    parser.add_argument("checkpoint")
    parser.add_argument("--out", required=True, help="output folder (must be empty or absent)")
    parser.add_argument("--model", default=None, help="the op variant, when the checkpoint does not name it")
    parser.add_argument("--no-ema", action="store_true", help="export state_dict even when state_dict_ema exists")
    parser.add_argument("--force", action="store_true", help="replace a non-empty --out")
    parser.add_argument(
        "--allow-collapse-error",
        type=float,
        metavar="E",
        help="accept a collapse error (float64, relative: op model vs the export on a probe input) up to E instead "
        "of refusing anything above the 1e-06 an exact collapse meets; for a converter you know approximates. "
        "config.json records E",
    )
    data = parser.add_argument_group(
        "what the weights are",
        "config.json's pretrained_cfg takes the preprocessing of the training run (a timm train.py checkpoint's "
        "args, resolved as timm resolves a data config); these flags override it, or set it for checkpoints "
        "without args, which otherwise keep the base model's preprocessing.",
    )
    data.add_argument("--input-size", type=int, nargs=3, metavar=("C", "H", "W"), help="input size, e.g. 3 224 224")
    data.add_argument("--mean", type=float, nargs="+", metavar="M", help="normalisation mean (one or C values)")
    data.add_argument("--std", type=float, nargs="+", metavar="S", help="normalisation std (one or C values)")
    data.add_argument("--interpolation", choices=INTERPOLATIONS, help="resize interpolation")
    data.add_argument("--crop-pct", type=float, metavar="F", help="centre-crop fraction at evaluation")
    data.add_argument("--crop-mode", choices=("center", "squash", "border"), help="crop mode at evaluation")
    data.add_argument("--label-names", metavar="FILE", help="class names, one per line in class-index order (.txt)")
    data.add_argument(
        "--license", metavar="ID", help="license of the weights, a Hugging Face id (mit, apache-2.0, ...)"
    )
    data.add_argument("--base-model", metavar="HUB_ID", help="hub id of the weights the run started from")
    hub = parser.add_argument_group("publishing")
    hub.add_argument("--push-to-hub", metavar="OWNER/NAME", help="then upload the folder (see `overparam-zoo push`)")
    add_hub_arguments(hub)
    parser.set_defaults(func=run)


def _metadata(args: argparse.Namespace, meta: dict[str, Any]) -> ExportMetadata:
    """The training run of the checkpoint (``meta``: its entries besides the weights, as read
    with them), with the flags applied on top."""
    from overparam_zoo.checkpoints.reading import looks_like_file
    from overparam_zoo.sharing.metadata import DATA_KEYS, ExportMetadata, read_label_names

    metadata = ExportMetadata()
    if looks_like_file(args.checkpoint):
        metadata = ExportMetadata.from_checkpoint(args.checkpoint, meta, used_ema=not args.no_ema)
    return dataclasses.replace(
        metadata,
        data_config={k: getattr(args, k) for k in DATA_KEYS if getattr(args, k) is not None},
        label_names=read_label_names(args.label_names) if args.label_names else metadata.label_names,
        license=args.license or metadata.license,
        base_model=args.base_model or metadata.base_model,
    )


def run(args: argparse.Namespace) -> int:
    from overparam_zoo.checkpoints.loading import load
    from overparam_zoo.progress import Progress
    from overparam_zoo.sharing.export import PROGRESS_STEPS, check_out_dir, export_collapsed
    from overparam_zoo.sharing.metadata import MetadataWarning
    from overparam_zoo.sharing.publish import PUSH_STEPS, hub_token, push_export, validate_repo_id

    check_out_dir(Path(args.out), args.force)
    if args.push_to_hub:  # fail before the export on what can be checked offline
        validate_repo_id(args.push_to_hub)
        hub_token()
    with Progress("export", 1 + PROGRESS_STEPS) as progress:

        def step(message: str) -> None:
            progress.update(1, note=message)

        step("reading checkpoint")
        loaded = load(args.checkpoint, model=args.model, use_ema=not args.no_ema)  # the file's one read
        model, name = loaded.model, loaded.name
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", MetadataWarning)
            metadata = _metadata(args, loaded.meta)
            with flag_errors({"allow_collapse_error": "--allow-collapse-error"}):
                result = export_collapsed(
                    model,
                    args.out,
                    force=args.force,
                    progress=step,
                    metadata=metadata,
                    allow_collapse_error=args.allow_collapse_error,
                )
    for warning in caught:
        print(f"overparam-zoo export: warning: {warning.message}", file=sys.stderr)
    allowed = f", allowed up to {args.allow_collapse_error:g}" if args.allow_collapse_error is not None else ""
    print(
        f"exported {name} as {result.config['architecture']} to {result.out_dir} "
        f"(max collapse error {result.max_collapse_error:.1e} in float64{allowed})"
    )
    for path in result.extra_files:
        print(f"  plus {path}")
    if args.push_to_hub:
        with Progress("push", PUSH_STEPS) as progress:
            push_export(
                result.out_dir,
                args.push_to_hub,
                private=args.private,
                revision=args.revision,
                progress=lambda note: progress.update(1, note=note),
                hub_progress_bars=progress.mode == "bar",
            )
    return 0
