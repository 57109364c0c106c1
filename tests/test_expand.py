"""Expanding stock weights into factors: exact where a split exists, reported where not."""

import pytest
import torch
import torchvision
from torch import nn

from overparam import (
    OverparamConv2d,
    OverparamLinear,
    collapsed_state_dict,
    expand_into_,
    expand_pretrained,
    overparameterize,
)

from .helpers import relative_error


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(),
        dict(depth=4),
        dict(batch_norm=True),
        dict(residual=True, residual_intervals=-1),
        dict(groups=2),
        dict(width=2, depth=3, batch_norm=True, bias=False),
    ],
)
def test_exact_split_float64(kwargs):
    chain = OverparamConv2d(4, 4, kernel_sizes=3, padding=1, **kwargs).double().eval()
    weight = torch.randn(4, 4 // chain.groups, 3, 3, dtype=torch.float64)
    bias = torch.randn(4, dtype=torch.float64) if chain.plan.has_bias else None
    assert expand_into_(chain, weight, bias) < 1e-12
    x = torch.randn(2, 4, 7, 7, dtype=torch.float64)
    stock = nn.functional.conv2d(x, weight, bias, padding=1, groups=chain.groups)
    with torch.no_grad():
        assert relative_error(chain(x), stock) < 1e-10
        assert relative_error(chain.expanded_forward(x), stock) < 1e-10
    singular = [torch.linalg.svdvals(f.weight.reshape(f.weight.shape[0], -1)).max() for f in chain.factors]
    assert max(singular) / min(singular) < 1.5  # balanced factors


def test_no_exact_split_reports_the_error():
    narrow = OverparamLinear(8, 8, width=0.5).double()
    assert expand_into_(narrow, torch.randn(8, 8, dtype=torch.float64), torch.zeros(8, dtype=torch.float64)) > 0.1
    split = OverparamConv2d(2, 2, kernel_sizes=[3, 3], padding=2).double()
    assert expand_into_(split, torch.randn(2, 2, 5, 5, dtype=torch.float64), None, fit_steps=20) > 0
    with pytest.raises(ValueError, match="does not fit this chain"):
        expand_into_(narrow, torch.randn(8, 9), None)


def test_expand_pretrained_whole_model():
    stock = torchvision.models.resnet18(num_classes=5).double().eval()
    for m in stock.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2)
    model = overparameterize(torchvision.models.resnet18(num_classes=5), depth=3, batch_norm=True).double().eval()
    errors = expand_pretrained(model, stock.state_dict())
    assert len(errors) == 21 and max(errors.values()) < 1e-12
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        assert relative_error(model(x), stock(x)) < 1e-10
    back = torchvision.models.resnet18(num_classes=5).double().eval()
    back.load_state_dict(collapsed_state_dict(model), strict=True)
    with pytest.raises(ValueError, match="does not fit the stock architecture"):
        expand_pretrained(model, torchvision.models.resnet34(num_classes=5).state_dict())
