"""The zoo's converters for timm's own layer types, in every mode and training path.

Each chain starts from the stock layer's exact function (``init="expand"``), so every path must
reproduce the stock layer itself; chains with batch norm are compared with the plain chain run
on the input the stock layer pads, and with their own ``fuse()``.
"""

import copy

import pytest
import timm
import torch
from timm.layers import Conv2dSame, Linear, ScaledStdConv2d, ScaledStdConv2dSame, StdConv2d, StdConv2dSame
from timm.layers.padding import pad_same
from torch import nn

from overparam import OverparamConv2d, collapse, collapsed_state_dict, convert_model, expand_pretrained
from overparam.convert import LayerConversionError
from overparam_zoo.layers.chains import (
    OverparamConv2dSame,
    OverparamScaledStdConv2d,
    OverparamStdConv2d,
    convert_standardised_conv,
)
from overparam_zoo.registry.variants import converters

from .helpers import randomize_, relative_error

F64 = torch.float64
STANDARDISED = (StdConv2d, StdConv2dSame, ScaledStdConv2d, ScaledStdConv2dSame)


def _stock(cls: type[nn.Module], stride: int, kernel: int = 3) -> nn.Module:
    if cls is Linear:
        layer = Linear(6, 5)
    elif cls in (ScaledStdConv2d, ScaledStdConv2dSame):
        layer = cls(4, 6, kernel, stride=stride, gamma=1.7, eps=1e-5)
    else:
        layer = cls(4, 6, kernel, stride=stride, bias=True)
    layer = layer.to(F64)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=F64))
        if hasattr(layer, "gain"):
            layer.gain.uniform_(0.5, 1.5, generator=g)
    return layer


def _convert(stock: nn.Module, **options) -> nn.Module:
    model = nn.Sequential(copy.deepcopy(stock))
    report = convert_model(model, converters=converters(), init="expand", strict=True, **options)
    assert report.converted == ["0"] and max(report.expansion_errors.values()) < 1e-12
    return model[0]


def _input(cls: type[nn.Module], size: int) -> torch.Tensor:
    return torch.randn(3, 2, 6, dtype=F64) if cls is Linear else torch.randn(2, 4, size, size + 1, dtype=F64)


CONV_CASES = [(cls, stride, kernel) for cls in (Conv2dSame, *STANDARDISED) for stride in (1, 2) for kernel in (3, 4)]


@pytest.mark.parametrize(("cls", "stride", "kernel"), [(Linear, 1, 1), *CONV_CASES])
@pytest.mark.parametrize("depth", [2, 3])
@torch.no_grad()
def test_chain_is_the_stock_layer_in_train_and_eval_on_every_path(cls, stride, kernel, depth):
    stock = _stock(cls, stride, kernel)
    chain = _convert(stock, depth=depth)
    assert type(chain.fuse()) is cls
    paths = ["composed"] if cls in STANDARDISED else ["composed", "expanded"]
    for size in (8, 9):
        x = _input(cls, size)
        expected = stock(x)
        for path in paths:
            chain.train_path = path
            assert relative_error(chain.train()(x), expected) < 1e-10, path
        assert relative_error(chain.composed_forward(x), expected) < 1e-10
        if cls not in STANDARDISED:
            assert relative_error(chain.expanded_forward(x), expected) < 1e-10
        assert relative_error(chain.eval()(x), expected) < 1e-10
        assert relative_error(chain.fuse()(x), expected) < 1e-10


@pytest.mark.parametrize("cls", [Linear, Conv2dSame, *STANDARDISED])
def test_gradients_of_every_path_are_the_stock_layers(cls):
    stock = _stock(cls, stride=2)
    chain = _convert(stock, depth=2)
    x = _input(cls, 9).requires_grad_()
    seed = torch.randn_like(stock(x))
    (stock(x) * seed).sum().backward()
    expected = x.grad.clone()
    paths = ["composed"] if cls in STANDARDISED else ["composed", "expanded"]
    for path in paths:
        chain.zero_grad()
        x.grad = None
        chain.train_path = path
        (chain.train()(x) * seed).sum().backward()
        assert relative_error(x.grad, expected) < 1e-10, path
        # the last factor's bias adds to the output directly, so its gradient is the stock bias's
        assert relative_error(chain.factors[-1].bias.grad, stock.bias.grad) < 1e-10, path
        if hasattr(stock, "gain"):
            assert relative_error(chain.gain.grad, stock.gain.grad) < 1e-10, path


def test_conv2d_same_with_batch_norm_pads_once_in_training():
    """The issue's case: ``Conv2dSame(4, 4, 3)`` on 8x8 gave 10x10 in train() (padded twice)."""
    for stride in (1, 2):
        for size in (8, 9):
            chain = randomize_(_convert(Conv2dSame(4, 4, 3, stride=stride).to(F64), batch_norm=True))
            assert isinstance(chain, OverparamConv2dSame)
            plain = OverparamConv2d(4, 4, kernel_sizes=chain.kernel_sizes, stride=stride, batch_norm=True, dtype=F64)
            plain.load_state_dict(chain.state_dict())
            x = torch.randn(8, 4, size, size, dtype=F64)
            out = chain.train()(x)
            assert out.shape == Conv2dSame(4, 4, 3, stride=stride)(x.float()).shape
            assert relative_error(out, plain.train()(pad_same(x, (3, 3), (stride, stride)))) < 1e-12
            assert relative_error(chain.expanded_forward(x), out) < 1e-12
            assert relative_error(chain.eval()(x), chain.expanded_forward(x)) < 1e-10
            assert relative_error(chain.fuse()(x), chain.expanded_forward(x)) < 1e-10


@pytest.mark.parametrize("cls", [Linear, Conv2dSame])
def test_batch_norm_chains_collapse_to_the_timm_class(cls):
    chain = randomize_(_convert(_stock(cls, stride=2), batch_norm=True))
    x = _input(cls, 9)
    chain.train()(x)  # moves the running statistics
    fused = chain.eval().fuse()
    assert type(fused) is cls
    assert relative_error(fused(x), chain.expanded_forward(x)) < 1e-10
    assert relative_error(chain(x), chain.expanded_forward(x)) < 1e-10


@pytest.mark.parametrize("cls", STANDARDISED)
def test_standardised_convs_refuse_what_needs_the_expanded_path(cls):
    stock = _stock(cls, stride=1)
    with pytest.raises(ValueError, match="batch_norm=True is impossible.*not linear in the factors"):
        convert_standardised_conv(stock, batch_norm=True)
    with pytest.raises(LayerConversionError, match="composed only"):
        convert_model(nn.Sequential(stock), batch_norm=True, converters=converters(), strict=True)
    report = convert_model(nn.Sequential(stock), batch_norm=True, converters=converters())
    assert "expanded path" in report.skipped["0"]
    chain = _convert(stock)
    with pytest.raises(ValueError, match="train_path='expanded' is impossible"):
        chain.train_path = "expanded"
    with pytest.raises(NotImplementedError, match="no factor-by-factor forward"):
        chain.expanded_forward(_input(cls, 8))
    chain.train_path = "auto"
    assert chain.train_path == "composed"


@pytest.mark.parametrize("cls", [StdConv2d, ScaledStdConv2dSame])
def test_standardised_convs_take_residual_chains_composed(cls):
    stock = cls(6, 6, 3, stride=2).to(F64)
    chain = randomize_(convert_standardised_conv(stock, depth=3, residual=True, residual_intervals=1))
    assert len(chain.plan.skips) == 3
    x = torch.randn(2, 6, 9, 8, dtype=F64)
    assert relative_error(chain.train()(x), chain.fuse()(x)) < 1e-10
    assert relative_error(chain.eval()(x), chain.fuse()(x)) < 1e-10


def test_fused_standardised_convs_keep_the_stock_settings():
    stock = _stock(ScaledStdConv2dSame, stride=2, kernel=4)
    fused = _convert(stock).fuse()
    assert (fused.scale, fused.eps, fused.same_pad) == (stock.scale, stock.eps, stock.same_pad)
    assert torch.equal(fused.gain, stock.gain) and fused.padding == stock.padding
    static = _stock(StdConv2dSame, stride=1)
    fused = _convert(static).fuse()
    assert (fused.eps, fused.same_pad, fused.padding) == (static.eps, False, static.padding) == (1e-6, False, (1, 1))


def test_standardised_convs_strict_load_after_training():
    """A collapsed model of all four (after a training step, float64) loads strictly into the
    stock model and computes what the op model computes."""

    def build() -> nn.Module:
        return nn.Sequential(
            StdConv2d(3, 8, 3, stride=2),
            StdConv2dSame(8, 8, 4),
            ScaledStdConv2d(8, 8, 1, gamma=1.5),
            ScaledStdConv2dSame(8, 8, 3, stride=2),
            nn.Flatten(),
            nn.LazyLinear(4),
        ).to(F64)

    op = build()
    op(torch.randn(1, 3, 16, 16, dtype=F64))
    report = convert_model(op, depth=3, converters=converters())
    assert len(report.converted) == 5 and not report.skipped
    optimizer = torch.optim.SGD(op.parameters(), lr=0.1)
    x = torch.randn(4, 3, 16, 16, dtype=F64)
    op(x).square().mean().backward()
    optimizer.step()
    assert op[2].gain.grad.abs().sum() > 0
    op.eval()
    stock = build()
    stock(x)
    stock.load_state_dict(collapsed_state_dict(op), strict=True)
    assert relative_error(stock.eval()(x), op(x)) < 1e-10
    collapsed = collapse(copy.deepcopy(op))
    assert [type(m) for m in collapsed[:4]] == [StdConv2d, StdConv2dSame, ScaledStdConv2d, ScaledStdConv2dSame]
    assert relative_error(collapsed(x), op(x)) < 1e-10


def test_nfnet_op_model_collapses_exactly_in_float32():
    model = timm.create_model("test_nfnet", num_classes=5)
    report = convert_model(model, depth=2, converters=converters())
    assert sum(isinstance(m, OverparamScaledStdConv2d) for m in model.modules()) == 25
    assert not report.skipped
    x = torch.randn(2, 3, 64, 64)
    model.train()(x).square().mean().backward()
    torch.optim.SGD(model.parameters(), lr=0.01).step()
    stock = timm.create_model("test_nfnet", num_classes=5)
    stock.load_state_dict(collapsed_state_dict(model.eval()), strict=True)
    with torch.no_grad():
        assert relative_error(stock.eval()(x), model(x)) < 1e-5


def test_std_conv_model_trains_composed():
    """Every StdConv2d chain in a BiT-style model runs composed in training, whatever the map size."""
    model = nn.Sequential(StdConv2d(3, 8, 7, stride=2), nn.ReLU(), StdConv2d(8, 8, 3))
    convert_model(model, depth=4, converters=converters())
    assert all(isinstance(m, OverparamStdConv2d) and m.train_path == "composed" for m in model[::2])
    model.train()(torch.randn(1, 3, 9, 9)).sum().backward()
    assert all(f.weight.grad is not None for f in model[0].factors)


def test_pretrained_standardised_convs_expand_exactly_with_their_gain():
    stock = nn.Sequential(_stock(ScaledStdConv2d, stride=2), nn.ReLU(), StdConv2dSame(6, 6, 4, bias=True).to(F64))
    op = copy.deepcopy(stock)
    convert_model(op, depth=3, converters=converters())
    errors = expand_pretrained(op, stock.state_dict())
    assert max(errors.values()) < 1e-12
    assert torch.equal(op[0].gain, stock[0].gain)
    x = torch.randn(2, 4, 9, 8, dtype=F64)
    with torch.no_grad():
        assert relative_error(op.train()(x), stock(x)) < 1e-10
        assert relative_error(op.eval()(x), stock(x)) < 1e-10
