"""INT8 vs float32 CPU inference of the same export, both through ``torch.compile`` (inductor).

The INT8 program is the ``model_int8.pt2`` that ``overparam-zoo quantize`` wrote; the float32
model is the export's ``model.safetensors`` in its architecture. Both are compiled the same way
(inductor, ``freezing=True``: the pass that turns torchao's quantize/dequantize pattern into
INT8 convolution and linear kernels runs only on frozen graphs), warmed up, then timed
alternately (which goes first alternates too); the table gives the median of each and their
ratio, float32 time over INT8 time (above 1: INT8 is faster). See ``benchmarks/README.md``.

    python benchmarks/int8_speed.py EXPORT_DIR                 # after overparam-zoo quantize EXPORT_DIR
    python benchmarks/int8_speed.py EXPORT_DIR --batch-sizes 1 32 --repeats 50 --threads 2
    python benchmarks/int8_speed.py --model resnet18 --input-size 3 224 224   # random weights, no data
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn


def load_pair(args: argparse.Namespace) -> tuple[nn.Module, nn.Module, tuple[int, ...], str]:
    """(float32 model, INT8 module, input size C,H,W, what was loaded)."""
    from overparam_zoo import ExportFolder, quantize_model

    if args.export_dir is not None:
        export = ExportFolder.open(args.export_dir)
        path = Path(args.int8 or export.path / "model_int8.pt2")
        if not path.is_file():
            sys.exit(f"int8_speed: {path} is missing; run `overparam-zoo quantize {args.export_dir}` first")
        int8 = torch.export.load(path).module()
        size = tuple(export.pretrained_cfg["input_size"])
        return export.load_model(), int8, size, f"{args.export_dir} ({path.name})"
    import timm

    torch.manual_seed(0)
    size = tuple(args.input_size)
    model = timm.create_model(args.model, in_chans=size[0]).eval()
    batches = [(torch.randn(8, *size), torch.zeros(8, dtype=torch.long)) for _ in range(4)]
    quantized = quantize_model(model, batches, batches[:1])  # speed does not depend on what the weights learned
    return model, quantized.program.module(), size, f"{args.model} (random weights, calibrated on noise)"


def compiled(module: nn.Module) -> nn.Module:
    return torch.compile(module, backend="inductor", dynamic=False)


@torch.no_grad()
def time_pair(f32: nn.Module, int8: nn.Module, x: torch.Tensor, warmup: int, repeats: int) -> tuple[float, float]:
    """Medians (s) of float32 and INT8 on ``x``."""
    for _ in range(warmup):  # the first calls compile
        f32(x), int8(x)
    times: dict[str, list[float]] = {"f32": [], "int8": []}
    for i in range(repeats):
        order = [("f32", f32), ("int8", int8)]
        for name, model in order if i % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            model(x)
            times[name].append(time.perf_counter() - start)
    return statistics.median(times["f32"]), statistics.median(times["int8"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("export_dir", nargs="?", help="an export folder holding model_int8.pt2")
    parser.add_argument("--int8", metavar="FILE", help="the INT8 program, if not EXPORT_DIR/model_int8.pt2")
    parser.add_argument("--model", default="resnet18", help="without EXPORT_DIR: a timm model (default: resnet18)")
    parser.add_argument("--input-size", type=int, nargs=3, default=[3, 224, 224], metavar=("C", "H", "W"))
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    import torch._inductor.config as inductor_config
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer  # noqa: F401  registers inductor's INT8 passes

    inductor_config.freezing = True
    f32, int8, size, what = load_pair(args)
    f32_c, int8_c = compiled(f32.eval()), compiled(int8)
    print(
        f"{what}: input {'x'.join(map(str, size))}, {args.threads} threads, torch {torch.__version__}, "
        f"median of {args.repeats} after {args.warmup} warm-up calls, both torch.compile(inductor, freezing)"
    )
    print()
    print("| batch | float32 (ms) | INT8 (ms) | float32 / INT8 | INT8 compiled vs uncompiled, max abs logit diff |")
    print("|---|---|---|---|---|")
    gen = torch.Generator().manual_seed(0)
    for batch in args.batch_sizes:
        x = torch.randn(batch, *size, generator=gen)
        t32, t8 = time_pair(f32_c, int8_c, x, args.warmup, args.repeats)
        with torch.no_grad():  # the lowering must compute what the program says (rounding aside)
            diff = float((int8_c(x) - int8(x)).abs().max())
        print(f"| {batch} | {t32 * 1e3:.2f} | {t8 * 1e3:.2f} | {t32 / t8:.2f}x | {diff:.1e} |")


if __name__ == "__main__":
    main()
