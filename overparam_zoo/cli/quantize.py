"""``overparam-zoo quantize EXPORT_DIR``: a static INT8 program beside an export, with its
measured accuracy against float32.

Quantizes with torchao's PT2E flow and x86 inductor quantizer, calibrated on training images
preprocessed by the export's own config.json (timm's resolve_data_config + create_transform).
Writes EXPORT_DIR/model_int8.pt2 (or --out), and records float32 and INT8 top-1 on the held-out
images, and how often they agree, in config.json (under overparam_zoo.int8) and the model card.

Load it with torch and torchao alone (any batch size):
  import torch, torchao; model = torch.export.load("model_int8.pt2").module()
and for INT8 kernels, import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer, set
torch._inductor.config.freezing = True and torch.compile(model).
"""

from __future__ import annotations

import argparse

from overparam_zoo.experiments.datasets import BUNDLED_DATASETS

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``quantize`` subcommand."""
    parser = subparsers.add_parser(
        "quantize",
        help="INT8 (torchao PT2E) program of an export, with float32 vs INT8 top-1 recorded in its card",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("export_dir", metavar="EXPORT_DIR", help="the output folder of overparam-zoo export")
    data = parser.add_mutually_exclusive_group()
    data.add_argument(
        "--dataset", choices=BUNDLED_DATASETS, default="digits", help="bundled real data (default: digits)"
    )
    data.add_argument(
        "--data-dir", metavar="DIR", help="image folder: DIR/train/<class>/..., DIR/validation/<class>/..."
    )
    parser.add_argument(
        "--calibration-images",
        type=int,
        default=512,
        metavar="N",
        help="training images that calibrate the activations, a fixed random subset (default: 512)",
    )
    parser.add_argument("--out", metavar="FILE", help="where the program goes (default: EXPORT_DIR/model_int8.pt2)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from overparam_zoo.cli.flags import flag_errors
    from overparam_zoo.errors import QuantizeError
    from overparam_zoo.experiments.datasets import load_bundled, load_image_folder
    from overparam_zoo.extras import require

    if args.calibration_images < 1:
        raise QuantizeError(f"--calibration-images {args.calibration_images}: expected at least 1")
    require("torchao.quantization.pt2e.quantize_pt2e", "quantize", "overparam-zoo quantize")
    from overparam_zoo.sharing.quantize import quantize_export

    with flag_errors({"data_dir": "--data-dir", "dataset": "--dataset"}):
        data = load_image_folder(args.data_dir) if args.data_dir else load_bundled(args.dataset)
    result = quantize_export(
        args.export_dir,
        data.train,
        data.test,
        calibration_images=args.calibration_images,
        out=args.out,
        num_classes=data.num_classes,
        data_name=data.name,
    )
    acc = result.accuracy
    print(
        f"wrote {result.path}: top-1 float32 {acc.float32_top1:.4f}, INT8 {acc.int8_top1:.4f} "
        f"(drop {acc.drop:+.4f}), same class on {acc.agreement:.2%} of {acc.evaluation_images} held-out images "
        f"of {data.name}; calibrated on {acc.calibration_images} training images"
    )
    return 0
