"""The seed README's examples, as written there (with `padding=padding`)."""

import numpy as np
import torch
import torchvision.models as models

from overparam import OverparamConv2d, OverparamLinear


def test_linear_example():
    layer = OverparamLinear(16, 32, width=1, depth=2)
    x = torch.randn(1, 16)
    assert layer(x).shape == (1, 32)


def test_conv_examples():
    kernel_sizes = [5, 3, 1]
    padding = max((np.sum(kernel_sizes) - len(kernel_sizes) + 1) // 2, 0)
    layer = OverparamConv2d(2, 4, kernel_sizes=kernel_sizes, padding=padding, depth=len(kernel_sizes))
    assert layer.kernel_size == (7, 7)
    x = torch.randn(1, 2, 16, 16)
    layer.train()
    y_train = layer(x)
    layer.eval()
    y = layer(x)
    assert torch.allclose(y, y_train, atol=1e-5)
    assert layer.weight.shape == (4, 2, 7, 7) and layer.bias.shape == (4,)


def test_batch_norm_and_residual_examples():
    x = torch.randn(2, 32, 8, 8)
    for kwargs in (
        dict(batch_norm=True),
        dict(residual=True, residual_intervals=2),
        dict(residual=True, residual_intervals=[1, 2, 3]),
        dict(batch_norm=True, residual=True, residual_intervals=2),
    ):
        layer = OverparamConv2d(32, 32, kernel_sizes=3, padding=1, depth=2, **kwargs)
        layer.train()(x)
        layer.eval()
        with torch.no_grad():
            assert torch.allclose(layer(x), layer.expanded_forward(x), atol=1e-4)


def test_overparameterize_alexnet_from_utils():
    from overparam.utils import overparameterize

    model = models.alexnet()
    model = overparameterize(model, depth=2)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1000)
