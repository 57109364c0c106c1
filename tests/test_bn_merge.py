"""Batch norm between two factors, merged into the next factor in training (overparam.bn_merge).

The reference runs the same modules one by one, every batch norm as itself. Float64, so the
only difference is rounding: 1e-10 relative, as everywhere for exactness.
"""

import copy

import pytest
import torch
import torch.nn.functional as F

import overparam.bn_merge
from overparam import OverparamConv1d, OverparamConv2d, OverparamLinear

from .helpers import randomize_, relative_error, unfolded_forward

TOL = 1e-10


@pytest.fixture
def fold_every_map(monkeypatch):
    """The fold for maps of any size (by default only maps worth it are folded)."""
    monkeypatch.setattr(overparam.bn_merge, "MERGE_MIN_ELEMENTS", 0)


CASES = {
    "conv-3-1": (lambda: OverparamConv2d(4, 6, 3, padding=1, stride=2, batch_norm=True), (3, 4, 9, 9)),
    "conv-d4-bias": (lambda: OverparamConv2d(4, 4, 3, depth=4, padding=1, bias=True, batch_norm=True), (2, 4, 7, 7)),
    "conv-3-3-groups": (
        lambda: OverparamConv2d(4, 8, kernel_sizes=[3, 3], padding=2, groups=2, width=2, batch_norm=True),
        (2, 4, 8, 8),
    ),
    "conv1d-dilated": (lambda: OverparamConv1d(3, 5, 3, depth=3, dilation=2, padding=2, batch_norm=True), (4, 3, 11)),
    "linear-d3-lead": (lambda: OverparamLinear(6, 5, depth=3, width=2, batch_norm=True), (3, 4, 6)),
}


@pytest.mark.parametrize("momentum", [0.1, None], ids=["momentum", "cumulative"])
@pytest.mark.parametrize("case", CASES)
def test_folded_batch_norm_matches_the_modules(case, momentum, fold_every_map):
    build, shape = CASES[case]
    layer = randomize_(build()).double().train()
    for bn in layer.norms:
        bn.momentum = momentum
    reference = copy.deepcopy(layer)
    for step in range(2):  # the second step starts from updated running statistics
        x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
        out, expected = layer(x), unfolded_forward(reference, x)
        assert relative_error(out, expected) < TOL
        upstream = torch.randn_like(out)
        grads = torch.autograd.grad(out, [x, *layer.parameters()], upstream)
        expected_grads = torch.autograd.grad(expected, [x, *reference.parameters()], upstream)
        assert relative_error(grads[0], expected_grads[0]) < TOL
        # relative to the largest parameter gradient: a shift followed by another batch norm
        # has a zero gradient, which both compute as rounding noise
        flat = torch.cat([g.flatten() for g in grads[1:]])
        assert relative_error(flat, torch.cat([e.flatten() for e in expected_grads[1:]])) < TOL, step
        for key, value in reference.state_dict().items():
            got = layer.state_dict()[key]
            assert torch.equal(got, value) if key.endswith("num_batches_tracked") else relative_error(got, value) < TOL


def saved_storages(fn):
    """Sizes in bytes of the distinct storages autograd saves for backward while ``fn`` runs."""
    seen = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return list(seen.values())


@pytest.mark.parametrize("size", [16, 32], ids=["small-folded-by-hand", "large-by-default"])
def test_folded_batch_norm_saves_no_normalised_map(size, monkeypatch):
    if size * size * 64 < overparam.bn_merge.MERGE_MIN_ELEMENTS:
        monkeypatch.setattr(overparam.bn_merge, "MERGE_MIN_ELEMENTS", 0)
    layer = OverparamConv2d(16, 16, 3, depth=4, padding=1, batch_norm=True).train()
    x = torch.randn(8, 16, size, size, requires_grad=True)
    map_bytes = x.numel() * x.element_size()
    folded = saved_storages(lambda: layer(x))
    unfolded = saved_storages(lambda: unfolded_forward(copy.deepcopy(layer), x))
    # three batch norms between factors: three normalised maps fewer, the rest are vectors
    # and scaled weights of a few kilobytes
    assert unfolded.count(map_bytes) - folded.count(map_bytes) == 3
    assert sum(folded) < sum(unfolded) - 2.5 * map_bytes


def test_small_maps_run_the_module():
    layer = OverparamConv2d(4, 4, 3, padding=1, batch_norm=True).train()
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    map_bytes = x.numel() * x.element_size()
    # the normalised map between the factors is saved: the module ran
    assert saved_storages(lambda: layer(x)).count(map_bytes) == saved_storages(
        lambda: unfolded_forward(copy.deepcopy(layer), x)
    ).count(map_bytes)


def test_no_fold_at_skip_nodes_under_autocast_or_in_eval(fold_every_map):
    layer = randomize_(OverparamConv2d(4, 4, 3, depth=4, padding=4, residual=True, batch_norm=True)).double()
    x = torch.randn(2, 4, 9, 9, dtype=torch.float64)
    reference = copy.deepcopy(layer)
    layer.train()
    reference.train()
    # a residual chain folds only where no skip leaves or enters; the rest runs as modules
    assert relative_error(layer(x), layer_expanded_reference(reference, x)) < TOL
    # under autocast the batch norms run as modules: autograd saves the maps the modules save
    # one by one, where the fold (without autocast) saves fewer. A bfloat16 chain, so that the
    # maps have the batch norms' dtype under autocast too and only the autocast check stops the fold
    bf16 = OverparamConv2d(8, 8, 3, depth=3, padding=1, batch_norm=True).to(torch.bfloat16).train()
    images = torch.randn(2, 8, 8, 8, dtype=torch.bfloat16, requires_grad=True)
    for autocast in (False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            chain = sorted(saved_storages(lambda: bf16(images)))
            modules = sorted(saved_storages(lambda: unfolded_forward(copy.deepcopy(bf16), images)))
        assert (chain == modules) == autocast, f"autocast={autocast}: {chain} vs {modules}"
    layer.eval()
    with torch.no_grad():
        assert relative_error(layer.expanded_forward(x), layer(x)) < TOL


def layer_expanded_reference(layer, x):
    """Factor by factor with skips, every batch norm as its module (the residual reference)."""
    plan = layer.plan
    x = F.pad(x, [p for pair in reversed(plan.padding) for p in pair])
    saved = {0: x}
    for i, (factor, bn) in enumerate(zip(layer.factors, layer.norms), start=1):
        x = bn(factor(x))
        for skip in plan.skips_into(i):
            src = saved[skip.source]
            index = (slice(None), slice(None)) + tuple(
                slice(o, o + s * (n - 1) + 1, s) for o, s, n in zip(skip.offset, skip.step, x.shape[2:])
            )
            x = x + src[index]
        saved[i] = x
    return x
