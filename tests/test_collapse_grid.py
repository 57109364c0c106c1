"""The seed's test grid in float64: collapsed eval equals the expanded chain to 1e-10."""

import itertools

import pytest
import torch

from overparam import ChainOptions, OverparamConv2d, OverparamLinear
from overparam.plan import make_plan

from .helpers import randomize_, relative_error

INTERVALS = [1, 2, 4, -1, [1, 2], [2, -1], [1, 2, 3]]
RESIDUAL = [(False, 2)] + [(True, n) for n in INTERVALS]
WIDTHS = [0.5, 1, 4]
TOL = 1e-10


def skips_possible(channels: int, width: float, kernels: list[int], intervals) -> bool:
    """Independent oracle: every skip joins equal channel counts across an even growth."""
    depth = len(kernels)
    hidden = int(channels * width)
    node_channels = [channels] + [hidden] * (depth - 1) + [channels]
    node_kernel = [1]
    for k in kernels:
        node_kernel.append(node_kernel[-1] + k - 1)
    for n in [intervals] if isinstance(intervals, int) else intervals:
        n = depth if n == -1 else n
        for b in range(n, depth + 1, n):
            a = b - n
            if node_channels[a] != node_channels[b] or (node_kernel[b] - node_kernel[a]) % 2:
                return False
    return True


def check(layer_factory, residual, intervals, kernels, width, channels, inputs):
    """Worst float64 error, after checking float32 agrees to a relative 1e-4 too."""
    if residual and not skips_possible(channels, width, kernels, intervals):
        with pytest.raises(ValueError, match="residual_intervals"):
            layer_factory()
        return None
    layer = randomize_(layer_factory()).eval()
    worst = 0.0
    with torch.no_grad():
        for x in inputs:
            assert relative_error(layer(x.float()), layer.expanded_forward(x.float())) < 1e-4
        layer.double()
        for x in inputs:
            worst = max(worst, relative_error(layer(x), layer.expanded_forward(x)))
    return worst


def worst_over_grid(build, kernels, channels, inputs, strides=(1,)):
    """Worst float64 error over batch_norm x residual intervals x bias x width (x stride)."""
    worst = 0.0
    for bn, (residual, intervals), bias, width, stride in itertools.product(
        [False, True], RESIDUAL, [False, True], WIDTHS, strides
    ):
        options = dict(width=width, bias=bias, batch_norm=bn, residual=residual, residual_intervals=intervals)
        err = check(lambda: build(stride, **options), residual, intervals, kernels, width, channels, inputs)
        if err is not None:
            worst = max(worst, err)
    return worst


@pytest.mark.parametrize("depth", [1, 2, 4, 8, 16])
def test_linear_grid(depth):
    x = torch.randn(3, 5, 6, dtype=torch.float64)

    def build(_stride, **options):
        return OverparamLinear(6, 6, depth=depth, **options)

    assert worst_over_grid(build, [1] * depth, 6, [x]) < TOL


KERNELS = [(k, d) for k in (1, 5) for d in (1, 2, 4, 8, 16)] + [
    ([3], None),
    ([1, 3], None),
    ([3, 1], None),
    ([5, 3, 1], None),
    ([1, 3, 5], None),
    ([3] * 8, None),
    ([3] + [1] * 7, None),
]


@pytest.mark.parametrize("kernel_sizes,depth", KERNELS, ids=[f"{k}-d{d}" for k, d in KERNELS])
def test_conv2d_grid(kernel_sizes, depth):
    kernels = [kernel_sizes] + [1] * (depth - 1) if isinstance(kernel_sizes, int) else list(kernel_sizes)
    effective = sum(kernels) - len(kernels) + 1
    padding = effective // 2
    inputs = [torch.randn(2, 4, n, n, dtype=torch.float64) for n in (8, 9)]

    def build(stride, **options):
        return OverparamConv2d(4, 4, kernel_sizes=kernel_sizes, depth=depth, stride=stride, padding=padding, **options)

    assert worst_over_grid(build, kernels, 4, inputs, strides=(1, 2)) < TOL


def test_grid_oracle_agrees_with_plan():
    """The oracle above and the plan's validation accept exactly the same configurations."""
    for kernels, width, intervals in itertools.product([[3, 1], [1, 3, 5], [2, 2], [3] * 4], WIDTHS, INTERVALS):
        ok = skips_possible(4, width, kernels, intervals)
        try:
            options = ChainOptions(kernel_sizes=kernels, width=width, residual=True, residual_intervals=intervals)
            make_plan(4, 4, ndim=2, options=options)
            assert ok
        except ValueError:
            assert not ok
