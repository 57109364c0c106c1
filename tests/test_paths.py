"""Composed and expanded training paths: same outputs and same factor gradients (float64)."""

import pytest
import torch

from overparam import OverparamConv1d, OverparamConv2d, OverparamConv3d, OverparamLinear
from overparam.cost import composed_macs, expanded_macs, prefer_composed

from .helpers import randomize_, relative_error

LAYERS = [
    (lambda: OverparamLinear(6, 5, depth=3, width=2), (4, 3, 6)),
    (
        lambda: OverparamConv1d(4, 4, kernel_sizes=[3, 3], padding=2, stride=2, residual=True, residual_intervals=-1),
        (2, 4, 11),
    ),
    (lambda: OverparamConv2d(4, 6, kernel_sizes=[3, 1, 1], padding=1, stride=2, groups=2, width=2), (2, 4, 9, 8)),
    (
        lambda: OverparamConv2d(
            4, 4, kernel_sizes=[(3, 1), (1, 3)], padding=1, padding_mode="reflect", residual=True, residual_intervals=-1
        ),
        (2, 4, 7, 7),
    ),
    (lambda: OverparamConv3d(2, 4, kernel_sizes=[3, 1], padding=1, dilation=2), (1, 2, 6, 5, 6)),
]


@pytest.mark.parametrize("factory,shape", LAYERS)
def test_composed_equals_expanded_outputs_and_gradients(factory, shape):
    layer = randomize_(factory().double()).train()
    x = torch.randn(*shape, dtype=torch.float64)
    grads = []
    outputs = []
    for path in ("expanded", "composed"):
        layer.train_path = path
        layer.zero_grad()
        out = layer(x)
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)).sum().backward()
        outputs.append(out.detach())
        grads.append([p.grad.clone() for p in layer.parameters()])
    assert relative_error(outputs[1], outputs[0]) < 1e-10
    for g_composed, g_expanded in zip(grads[1], grads[0]):
        assert relative_error(g_composed, g_expanded) < 1e-9


def test_auto_path_picks_by_counted_macs():
    big_map = OverparamConv2d(16, 16, kernel_sizes=3, padding=1)
    shape = (8, 16, 64, 64)
    assert composed_macs(big_map.plan, shape) < expanded_macs(big_map.plan, shape)
    assert prefer_composed(big_map.plan, shape)
    small_map = OverparamConv2d(512, 512, kernel_sizes=3, padding=1)
    shape = (2, 512, 2, 2)
    assert not prefer_composed(small_map.plan, shape)
    assert not prefer_composed(OverparamConv2d(16, 16, padding=1, batch_norm=True).plan, (8, 16, 64, 64))


def test_auto_path_is_used_in_training(monkeypatch):
    layer = OverparamConv2d(8, 8, kernel_sizes=3, padding=1).train()
    calls = []
    monkeypatch.setattr(layer, "_composed_forward", lambda x: calls.append("composed") or x)
    monkeypatch.setattr(layer, "_expanded_forward", lambda x: calls.append("expanded") or x)
    layer(torch.randn(8, 8, 32, 32))
    layer.train_path = "expanded"
    layer(torch.randn(8, 8, 32, 32))
    assert calls == ["composed", "expanded"]
