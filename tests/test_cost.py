"""Counted multiply-adds, the composition order, and the kernel products they choose (float64)."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from overparam import OverparamConv1d, OverparamConv2d, OverparamLinear
from overparam.compose import collapse_chain, compose_kernels
from overparam.cost import (
    _order,
    compose_macs,
    composed_training_macs,
    composition_order,
    expanded_macs,
    expanded_training_macs,
    prefer_composed,
)

from .helpers import randomize_, relative_error

# outer (out, hidden/g, *k), inner (hidden, in/g, *k), groups: every branch of compose_kernels
PRODUCTS = {
    "outer 1x1": ((6, 4, 1, 1), (4, 3, 3, 3), 1),
    "inner 1x1": ((6, 4, 3, 2), (4, 3, 1, 1), 1),
    "both spatial": ((6, 4, 3, 3), (4, 3, 2, 3), 1),
    "inner 1x1 grouped": ((6, 2, 3, 3), (4, 3, 1, 1), 2),
    "outer 1x1 grouped": ((6, 2, 1, 1), (4, 3, 3, 1), 2),
    "both spatial grouped": ((6, 2, 3, 1), (4, 3, 3, 3), 2),
    "depthwise inner 1x1": ((4, 1, 5, 5), (4, 1, 1, 1), 4),
    "conv1d inner 1x1": ((5, 4, 3), (4, 2, 1), 1),
}


@pytest.mark.parametrize("name", PRODUCTS)
def test_compose_kernels_is_the_composed_operator(name):
    outer_shape, inner_shape, groups = PRODUCTS[name]
    outer = torch.randn(outer_shape, dtype=torch.float64)
    inner = torch.randn(inner_shape, dtype=torch.float64)
    conv = {3: F.conv1d, 4: F.conv2d}[outer.dim()]
    x = torch.randn(2, inner_shape[1] * groups, *([9] * (outer.dim() - 2)), dtype=torch.float64)
    expected = conv(conv(x, inner, groups=groups), outer, groups=groups)
    composed = compose_kernels(outer, inner, groups)
    assert composed.shape[:2] == (outer_shape[0], inner_shape[1])
    assert relative_error(conv(x, composed, groups=groups), expected) < 1e-12


def test_compose_kernels_linear():
    outer, inner = torch.randn(5, 7, dtype=torch.float64), torch.randn(7, 3, dtype=torch.float64)
    assert torch.equal(compose_kernels(outer, inner), outer @ inner)


def _all_orders(i, j):
    """Every association of kernels ``i..j``, as nested ``(inner, outer)`` pairs."""
    if i == j:
        yield i
        return
    for split in range(i, j):
        for inner in _all_orders(i, split):
            for outer in _all_orders(split + 1, j):
                yield (inner, outer)


def _composed_in(order, kernels, groups):
    if isinstance(order, int):
        return kernels[order]
    inner, outer = order
    return compose_kernels(_composed_in(outer, kernels, groups), _composed_in(inner, kernels, groups), groups)


def _counted(order, kernels, groups):
    """The kernel composed in ``order`` and the multiply-adds torch's own FLOP counter sees doing it."""
    with FlopCounterMode(display=False) as counter:
        kernel = _composed_in(order, kernels, groups)
    return counter.get_total_flops() // 2, kernel


@pytest.mark.parametrize(
    "channels,kernels,groups",
    [
        ((16, 32, 32, 32, 32), ((3, 3), (1, 1), (1, 1), (1, 1)), 1),
        ((64, 8, 8, 8, 256), ((1, 1), (1, 1), (1, 1), (1, 1)), 1),
        ((8, 8, 8, 8), ((3, 3), (3, 3), (1, 1)), 2),
        ((4, 12, 12, 6), ((1, 1), (3, 1), (1, 3)), 1),
    ],
)
def test_composition_order_is_the_cheapest(channels, kernels, groups):
    n = len(kernels)
    weights = [
        torch.randn(channels[j + 1], channels[j] // groups, *k, dtype=torch.float64) for j, k in enumerate(kernels)
    ]
    orders = list(_all_orders(0, n - 1))
    assert len(set(orders)) == math.comb(2 * (n - 1), n - 1) // n  # Catalan(n - 1): the oracle tries every order
    counted = {o: _counted(o, weights, groups) for o in orders}
    order, macs, size = _order(channels, kernels, groups)
    assert counted[order][0] == macs  # the DP's count is what composing in its order really costs
    assert macs == min(c for c, _ in counted.values())
    reference = counted[orders[0]][1]
    assert size == tuple(reference.shape[2:])
    for _, kernel in counted.values():  # every order is the same operator (float64, sums of <= 9 * 64 terms)
        assert relative_error(kernel, reference) < 1e-12


def test_k1111_composes_from_the_output_side():
    layer = OverparamConv2d(64, 64, kernel_sizes=3, padding=1, depth=4)
    order, macs = composition_order(layer.plan, 0, 4)
    sequential = 3 * 64 * 64 * 64 * 9
    assert macs < sequential
    assert order == (0, (1, (2, 3))) or order == (0, ((1, 2), 3))


def test_composition_order_reaches_every_factor_with_skips():
    layer = OverparamConv2d(8, 8, kernel_sizes=[3, 1, 3, 1], padding=2, residual=True, residual_intervals=[2, -1])
    # node 2 is a skip end, so the collapse composes 0..2 then (node 2, 3, 4)
    assert composition_order(layer.plan, 0, 2)[0] in ((0, 1),)
    order, _ = composition_order(layer.plan, 2, 4)
    assert sorted(_leaves(order)) == [0, 1, 2]


def _leaves(order):
    return [order] if isinstance(order, int) else _leaves(order[0]) + _leaves(order[1])


def _sequential_collapse(layer):
    """Reference: compose factor by factor from the input side, as the first version did."""
    plan = layer.plan
    weights = [f.weight for f in layer.factors]
    kernel = weights[0]
    for w in weights[1:]:
        kernel = compose_kernels(w, kernel, plan.groups)
    return kernel


@pytest.mark.parametrize(
    "factory",
    [
        lambda: OverparamConv2d(6, 6, kernel_sizes=3, padding=1, depth=4, groups=3, bias=True),
        lambda: OverparamConv2d(4, 8, kernel_sizes=[1, 3, 1, 1], padding=1, width=1.5),
        lambda: OverparamConv1d(4, 2, kernel_sizes=[1, 1, 5], padding=2, width=4),
        lambda: OverparamLinear(10, 3, depth=4, width=5),
    ],
)
def test_ordered_collapse_equals_sequential_products(factory):
    layer = randomize_(factory().double())
    plan = layer.plan
    with torch.no_grad():
        weight, _ = collapse_chain(
            plan, [f.weight for f in layer.factors], [f.bias for f in layer.factors], [None] * plan.depth
        )
        assert relative_error(weight, _sequential_collapse(layer)) < 1e-12


# ---------------------------------------------------------------------------- path choice
def _counted_step(layer, shape, path, input_requires_grad):
    """Multiply-adds torch's FLOP counter sees in one forward and backward of ``layer`` on ``path``."""
    layer.train().train_path = path
    x = torch.randn(*shape, requires_grad=input_requires_grad)
    with FlopCounterMode(display=False) as counter:
        layer(x).sum().backward()
    return counter.get_total_flops() // 2


def test_training_macs_count_forward_and_backward():
    # counted by hand from the layer's shapes: the 3x3 factor, then the 1x1 factor (hidden width 16)
    layer = OverparamConv2d(16, 16, kernel_sizes=3, padding=1, bias=False)
    plan, shape = layer.plan, (8, 16, 32, 32)
    positions = 8 * 32 * 32
    first, second = positions * 16 * 16 * 9, positions * 16 * 16
    single = positions * 16 * 16 * 9  # the collapsed 3x3 conv
    compose = 16 * 16 * 16 * 9  # the 1x1 kernel times the 3x3 one: a matmul over its 9 taps
    assert expanded_macs(plan, shape) == first + second
    assert compose_macs(plan) == compose
    assert expanded_training_macs(plan, shape) == 3 * (first + second)
    assert expanded_training_macs(plan, shape, input_requires_grad=False) == 3 * (first + second) - first
    assert composed_training_macs(plan, shape) == 3 * compose + 3 * single
    assert composed_training_macs(plan, shape, input_requires_grad=False) == 3 * compose + 2 * single


@pytest.mark.parametrize(
    "factory,shape",
    [
        (lambda: OverparamConv2d(16, 16, kernel_sizes=3, padding=1, bias=False), (8, 16, 32, 32)),
        (
            lambda: OverparamConv2d(4, 8, kernel_sizes=[1, 3, 1, 1], padding=1, width=1.5, stride=2, bias=False),
            (2, 4, 9, 9),
        ),
        (lambda: OverparamConv1d(3, 5, kernel_sizes=[3, 3, 1], padding=2, bias=False), (2, 3, 10)),
        (lambda: OverparamLinear(10, 3, depth=4, width=5, bias=False), (5, 2, 10)),
    ],
)
def test_training_macs_are_what_torch_counts(factory, shape):
    # torch's FLOP counter (2 per multiply-add) is independent of the cost model; it is exact for
    # ungrouped convs and matmuls (it counts a grouped conv's backward as dense), and bias=False
    # because the model leaves out the bias's out x hidden product
    layer = factory()
    for requires_grad in (True, False):
        counted = _counted_step(layer, shape, "expanded", requires_grad)
        assert expanded_training_macs(layer.plan, shape, requires_grad) == counted
        counted = _counted_step(layer, shape, "composed", requires_grad)
        assert composed_training_macs(layer.plan, shape, requires_grad) == counted
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        layer.train_path = "expanded"
        layer(torch.randn(*shape))
    assert expanded_macs(layer.plan, shape) == counter.get_total_flops() // 2


def test_both_branches_of_the_path_choice():
    plan = OverparamConv2d(16, 16, kernel_sizes=3, padding=1).plan
    assert prefer_composed(plan, (8, 16, 64, 64))  # large map: compose once
    assert not prefer_composed(OverparamConv2d(512, 512, kernel_sizes=3, padding=1).plan, (2, 512, 2, 2))
    assert not prefer_composed(OverparamLinear(512, 1000).plan, (32, 512))
    assert not prefer_composed(OverparamConv2d(16, 16, padding=1, batch_norm=True).plan, (8, 16, 64, 64))


def test_input_gradient_can_flip_the_choice():
    # hidden twice as wide as the output: skipping the input gradient saves more when expanded
    plan = OverparamConv2d(16, 16, kernel_sizes=3, padding=1, width=2).plan
    flips = [
        n
        for n in range(1, 200)
        if prefer_composed(plan, (n, 16, 2, 2), True) != prefer_composed(plan, (n, 16, 2, 2), False)
    ]
    assert flips


def test_chain_memoises_the_choice_per_shape_and_input_grad():
    layer = OverparamConv2d(16, 16, kernel_sizes=3, padding=1, width=2).train()
    plan = layer.plan
    n = next(
        n
        for n in range(1, 200)
        if prefer_composed(plan, (n, 16, 2, 2), True) != prefer_composed(plan, (n, 16, 2, 2), False)
    )
    x = torch.randn(n, 16, 2, 2)
    with_grad = layer._prefers_composed(x.requires_grad_())
    without = layer._prefers_composed(x.detach())
    assert with_grad != without
    assert len(layer._path_by_shape) == 2


# ---------------------------------------------------------------------------- paths agree
LAYERS = [
    # [k, 1, 1, 1]: composed from the output side; implicit zero padding in the expanded path
    (lambda: OverparamConv2d(4, 6, kernel_sizes=3, padding=1, depth=4, stride=2), (2, 4, 9, 9)),
    # [1, 3]: the inner-1x1 product
    (lambda: OverparamConv2d(4, 6, kernel_sizes=[1, 3], padding=(1, 2), width=2), (2, 4, 7, 6)),
    # grouped, depth 3 with a bias and a long skip from node 0 (explicit padding kept)
    (
        lambda: OverparamConv2d(
            4, 4, kernel_sizes=[3, 1, 1], padding=1, groups=2, residual=True, residual_intervals=-1
        ),
        (2, 4, 6, 6),
    ),
    # depthwise [5, 1]
    (lambda: OverparamConv2d(4, 4, kernel_sizes=5, padding=2, groups=4), (3, 4, 8, 8)),
    # circular padding keeps the explicit pad
    (lambda: OverparamConv1d(3, 5, kernel_sizes=[3, 3, 1], padding=2, padding_mode="circular"), (2, 3, 10)),
    (lambda: OverparamLinear(6, 5, depth=4, width=3), (3, 2, 6)),
]


@pytest.mark.parametrize("factory,shape", LAYERS)
def test_composed_equals_expanded(factory, shape):
    layer = randomize_(factory().double()).train()
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    outputs, grads = [], []
    for path in ("expanded", "composed"):
        layer.train_path = path
        layer.zero_grad()
        x.grad = None
        out = layer(x)
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)).sum().backward()
        outputs.append(out.detach())
        grads.append([x.grad.clone()] + [p.grad.clone() for p in layer.parameters()])
    assert relative_error(outputs[1], outputs[0]) < 1e-10
    for g_composed, g_expanded in zip(grads[1], grads[0]):
        assert relative_error(g_composed, g_expanded) < 1e-9


def test_eval_cache_follows_in_place_updates_and_replaced_parameters():
    layer = randomize_(OverparamConv2d(4, 4, kernel_sizes=3, padding=1, batch_norm=True).double()).eval()
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    with torch.no_grad():
        first = layer(x)
        layer.norms[0].running_var.mul_(2)
        second = layer(x)
        assert not torch.allclose(first, second)
        assert relative_error(second, layer.expanded_forward(x)) < 1e-10
        layer.factors[1].weight = torch.nn.Parameter(layer.factors[1].weight * 3)
        third = layer(x)
        assert relative_error(third, layer.expanded_forward(x)) < 1e-10


def test_expanded_forward_does_not_save_a_padded_copy():
    layer = OverparamConv2d(4, 4, kernel_sizes=3, padding=1).train()
    layer.train_path = "expanded"
    x = torch.randn(2, 4, 6, 6, requires_grad=True)
    shapes = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: shapes.append(tuple(t.shape)) or t, lambda t: t):
        layer(x)
    assert (2, 4, 8, 8) not in shapes
