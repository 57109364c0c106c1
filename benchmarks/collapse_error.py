"""Max relative collapse error over the paper's test grid, in float64 and float32.

Collapsed eval forward vs ``expanded_forward`` (the chain run factor by factor, BN on running
statistics), with random biases and BN statistics. Prints one table.

    python benchmarks/collapse_error.py
"""

from __future__ import annotations

import argparse
import itertools

import torch

from overparam import OverparamConv2d, OverparamLinear

INTERVALS = [1, 2, 4, -1, [1, 2], [2, -1], [1, 2, 3]]
RESIDUAL = [(False, 2)] + [(True, n) for n in INTERVALS]
KERNELS = [(k, d) for k in (1, 5) for d in (1, 2, 4, 8, 16)] + [
    ([3], None),
    ([1, 3], None),
    ([3, 1], None),
    ([5, 3, 1], None),
    ([1, 3, 5], None),
    ([3] * 8, None),
    ([3] + [1] * 7, None),
]


def randomize_(layer, generator):
    with torch.no_grad():
        for f in layer.factors:
            if f.bias is not None:
                f.bias.copy_(torch.randn(f.bias.shape, generator=generator))
        for bn in layer.norms or []:
            bn.weight.copy_(torch.rand(bn.weight.shape, generator=generator) + 0.5)
            bn.bias.copy_(torch.randn(bn.bias.shape, generator=generator))
            bn.running_mean.copy_(torch.randn(bn.running_mean.shape, generator=generator))
            bn.running_var.copy_(torch.rand(bn.running_var.shape, generator=generator) + 0.5)
    return layer


def worst_error(factory, inputs, dtype, generator):
    try:
        layer = factory()
    except ValueError:  # configurations the constructor refuses (e.g. skips between unequal widths)
        return None
    layer = randomize_(layer, generator).to(dtype).eval()
    with torch.no_grad():
        return max(
            float((layer(x) - (e := layer.expanded_forward(x))).abs().max() / e.abs().max())
            for x in (i.to(dtype) for i in inputs)
        )


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    g = torch.Generator().manual_seed(0)
    results = {}
    for dtype in (torch.float64, torch.float32):
        worst, count = 0.0, 0
        x = torch.randn(3, 5, 6, generator=g)
        for depth, bn, (res, iv), bias, width in itertools.product(
            [1, 2, 4, 8, 16], [False, True], RESIDUAL, [False, True], [0.5, 1, 4]
        ):
            err = worst_error(
                lambda: OverparamLinear(
                    6, 6, width=width, depth=depth, bias=bias, batch_norm=bn, residual=res, residual_intervals=iv
                ),
                [x],
                dtype,
                g,
            )
            if err is not None:
                worst, count = max(worst, err), count + 1
        inputs = [torch.randn(2, 4, n, n, generator=g) for n in (8, 9)]
        for (ks, depth), bn, (res, iv), bias, width, stride in itertools.product(
            KERNELS, [False, True], RESIDUAL, [False, True], [0.5, 1, 4], [1, 2]
        ):
            kernels = [ks] + [1] * (depth - 1) if isinstance(ks, int) else ks
            padding = (sum(kernels) - len(kernels) + 1) // 2
            err = worst_error(
                lambda: OverparamConv2d(
                    4,
                    4,
                    kernel_sizes=ks,
                    depth=depth,
                    stride=stride,
                    padding=padding,
                    width=width,
                    bias=bias,
                    batch_norm=bn,
                    residual=res,
                    residual_intervals=iv,
                ),
                inputs,
                dtype,
                g,
            )
            if err is not None:
                worst, count = max(worst, err), count + 1
        results[dtype] = (worst, count)
    print("| dtype | configurations | max relative error |")
    print("|---|---|---|")
    for dtype, (worst, count) in results.items():
        print(f"| {str(dtype).removeprefix('torch.')} | {count} | {worst:.2e} |")


if __name__ == "__main__":
    main()
