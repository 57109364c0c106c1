"""Shared layers (one module under several paths): one shared chain, collapsed once, every alias kept."""

import pytest
import timm
import torch
from torch import nn

import overparam_zoo
from overparam import OverparamChain, collapse, collapsed_state_dict, convert_model
from overparam.convert import LayerConversionError
from overparam_zoo.registry.variants import converters

from .helpers import relative_error


class Block(nn.Module):
    def __init__(self, pos: nn.Module) -> None:
        super().__init__()
        self.pos = pos  # shared by every block, like CoaT's convolutional position encoding
        self.proj = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        return x + self.proj(self.pos(x))


class SharedNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.a = self.b = nn.Conv2d(4, 4, 3, padding=1, bias=False)  # one layer, two paths, two calls
        self.bn_a = nn.BatchNorm2d(4)
        self.bn_b = nn.BatchNorm2d(4)
        self.pos = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, groups=4))
        self.blocks = nn.ModuleList([Block(self.pos) for _ in range(2)])
        self.head = nn.Linear(4, 5)

    def forward(self, x):
        x = self.bn_a(self.a(self.stem(x))).relu()
        x = self.bn_b(self.b(x)).relu()
        for block in self.blocks:
            x = block(x)
        return self.head(x.mean((2, 3)))


def train_step(model: nn.Module, x: torch.Tensor) -> None:
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model(x).square().mean().backward()
    optimizer.step()
    model.eval()


@pytest.mark.parametrize("batch_norm", [False, True])
def test_shared_layer_is_one_chain_and_every_alias_collapses(batch_norm):
    model = SharedNet().double()
    report = convert_model(model, depth=2, batch_norm=batch_norm)
    assert report.converted == ["stem", "a", "pos.0", "blocks.0.proj", "blocks.1.proj", "head"]
    assert set(report.notes) == {"b", "blocks.0.pos.0", "blocks.1.pos.0"}
    assert isinstance(model.a, OverparamChain) and model.a is model.b
    assert model.pos[0] is model.blocks[0].pos[0] is model.blocks[1].pos[0]
    # one set of factors, which an optimizer steps once
    assert sum(p is model.b.factors[0].weight for p in model.parameters()) == 1

    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    train_step(model, x)
    with torch.no_grad():
        y = model(x)
        state = collapsed_state_dict(model)
        fresh = SharedNet().double().eval()
        assert list(state) == list(fresh.state_dict())  # every alias, in the stock order
        fresh.load_state_dict(state, strict=True)
        assert relative_error(fresh(x), y) < 1e-12
        collapsed = collapse(model)
        assert type(collapsed.a) is nn.Conv2d and collapsed.a is collapsed.b and collapsed.a.bias is None
        assert collapsed.pos[0] is collapsed.blocks[1].pos[0]
        assert relative_error(collapsed(x), y) < 1e-12


def test_aliases_whose_rules_disagree_stay_stock_or_raise():
    model = SharedNet()
    report = convert_model(model, depth=2, include=["a", "head"])
    assert "a" in report.skipped and "a, b" in report.skipped["a"]
    assert type(model.a) is nn.Conv2d and model.a is model.b

    def options_for(path, module):
        return {"depth": 3} if path == "b" else {}

    with pytest.raises(LayerConversionError, match="a: one module shared by a, b"):
        convert_model(SharedNet(), options_for=options_for, strict=True)


def test_tied_weights_stay_stock_and_named():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.Linear(4, 3))
    model[2].weight = model[0].weight
    report = convert_model(model, depth=2)
    assert report.converted == ["3"]
    assert "0.weight is also 2.weight (tied weights)" in report.skipped["0"]
    assert model[0].weight is model[2].weight


class SharedBatchNorm(nn.Module):
    """One BatchNorm reading a bias-free conv and something else: it cannot absorb the conv's bias."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x):
        return self.bn(self.conv(x)) + self.bn(x)


def test_fold_refused_when_the_batch_norm_also_reads_another_input():
    model = SharedBatchNorm()
    convert_model(model, depth=2, batch_norm=True)
    with pytest.raises(ValueError, match="'conv' gains a bias .* reads only this layer"):
        collapsed_state_dict(model.eval())


def test_coat_shared_position_encodings_collapse_exactly():
    kwargs = dict(num_classes=4, img_size=32)
    model = timm.create_model("coat_lite_tiny", **kwargs).double()
    report = convert_model(model, depth=2, converters=converters())
    # cpe1.proj is also serial_blocks1.0.cpe.proj and serial_blocks1.1.cpe.proj
    assert (
        report.notes["serial_blocks1.1.cpe.proj"] == "the same module as cpe1.proj: converted once, into the same chain"
    )
    assert model.cpe1.proj is model.serial_blocks1[1].cpe.proj
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    train_step(model, x)
    with torch.no_grad():
        y = model(x)
        fresh = timm.create_model("coat_lite_tiny", **kwargs).double().eval()
        fresh.load_state_dict(overparam_zoo.collapsed_state_dict(model), strict=True)
        assert relative_error(fresh(x), y) < 1e-10
