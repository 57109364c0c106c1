"""Layer behaviour: geometry, padding modes, groups, caching, gradients, state dicts, fuse."""

import copy
import io

import pytest
import torch
from torch import nn

from overparam import OverparamConv1d, OverparamConv2d, OverparamConv3d, OverparamLinear

from .helpers import randomize_, relative_error


def exact(layer, x, tol=1e-10):
    layer = randomize_(layer.double()).eval()
    x = x.double()
    with torch.no_grad():
        assert relative_error(layer(x), layer.expanded_forward(x)) < tol
        stock = layer.fuse()
        assert relative_error(stock(x), layer.expanded_forward(x)) < tol
    return layer


@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate", "circular"])
@pytest.mark.parametrize("bn,residual", [(False, False), (True, True)])
def test_every_padding_mode_is_exact(mode, bn, residual):
    layer = OverparamConv2d(
        3,
        3,
        kernel_sizes=[3, 3],
        padding=2,
        padding_mode=mode,
        batch_norm=bn,
        residual=residual,
        residual_intervals=-1,
        stride=2,
    )
    exact(layer, torch.randn(2, 3, 9, 8))


@pytest.mark.parametrize("mode", ["zeros", "reflect"])
def test_same_and_valid_padding(mode):
    for kernels in ([3, 1], [2, 1], [4, 3]):
        layer = exact(
            OverparamConv2d(2, 3, kernel_sizes=kernels, padding="same", padding_mode=mode), torch.randn(1, 2, 7, 6)
        )
        assert layer(torch.randn(1, 2, 7, 6, dtype=torch.float64)).shape[2:] == (7, 6)
        assert isinstance(layer.fuse(), nn.Conv2d)
    exact(OverparamConv2d(2, 3, kernel_sizes=3, padding="valid"), torch.randn(1, 2, 7, 6))


def test_groups_stay_grouped_and_depthwise_stays_depthwise():
    layer = exact(
        OverparamConv2d(
            8, 8, kernel_sizes=3, padding=1, groups=8, depth=3, residual=True, residual_intervals=1, batch_norm=True
        ),
        torch.randn(2, 8, 6, 6),
    )
    assert layer.weight.shape == (8, 1, 3, 3)
    assert all(f.groups == 8 for f in layer.factors)
    assert sum(p.numel() for p in layer.parameters()) < 3 * (8 * 9 + 8 + 8) + 6 * 8
    grouped = exact(OverparamConv2d(6, 9, kernel_sizes=[3, 3], padding=2, groups=3, width=2), torch.randn(2, 6, 7, 7))
    assert grouped.weight.shape == (9, 2, 5, 5)


def test_dilation_non_square_and_strides():
    exact(
        OverparamConv2d(3, 4, kernel_sizes=[(3, 1), (1, 5)], dilation=(2, 1), stride=(2, 3), padding=(2, 2)),
        torch.randn(2, 3, 11, 13),
    )
    exact(
        OverparamConv2d(
            4, 4, kernel_sizes=[3, 3], dilation=2, stride=2, padding=4, residual=True, residual_intervals=-1
        ),
        torch.randn(2, 4, 11, 10),
    )


def test_conv1d_and_conv3d():
    exact(
        OverparamConv1d(
            3, 3, kernel_sizes=[3, 5], padding=3, stride=2, residual=True, residual_intervals=-1, batch_norm=True
        ),
        torch.randn(2, 3, 17),
    )
    layer = exact(
        OverparamConv3d(2, 4, kernel_sizes=[(3, 1, 3), 3], padding=1, groups=2, batch_norm=True),
        torch.randn(2, 2, 5, 6, 7),
    )
    assert layer.kernel_size == (5, 3, 5)
    assert isinstance(layer.fuse(), nn.Conv3d)


def test_linear_any_leading_dims():
    layer = exact(OverparamLinear(5, 7, depth=3, batch_norm=True), torch.randn(2, 3, 4, 5))
    assert layer(torch.randn(2, 3, 4, 5, dtype=torch.float64)).shape == (2, 3, 4, 7)
    layer.train()
    assert layer(torch.randn(2, 3, 5, dtype=torch.float64)).shape == (2, 3, 7)


def test_float32_relative_agreement():
    layer = randomize_(OverparamConv2d(16, 16, kernel_sizes=[3, 3, 1], padding=2, batch_norm=True)).eval()
    x = torch.randn(2, 16, 12, 12)
    with torch.no_grad():
        assert relative_error(layer(x), layer.expanded_forward(x)) < 1e-5


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(in_channels=4, out_channels=6, kernel_sizes=3, padding=1, residual=True), "residual_intervals"),
        (dict(in_channels=4, out_channels=4, kernel_sizes=[2, 1], residual=True, residual_intervals=-1), "even"),
        (dict(in_channels=4, out_channels=4, kernel_sizes=3, width=0.75, groups=2), "divisible by groups"),
        (dict(in_channels=4, out_channels=6, kernel_sizes=3, groups=4), "divisible by groups"),
        (dict(in_channels=4, out_channels=4, kernel_sizes=3, depth=0), "depth must be an int >= 1"),
        (dict(in_channels=4, out_channels=4, kernel_sizes=3, width=0.1), "leaves no hidden channel"),
        (dict(in_channels=4, out_channels=4, kernel_sizes=3, width=-1), "width must be a positive"),
        (dict(in_channels=4, out_channels=4, kernel_sizes=3, padding_mode="mirror"), "padding_mode"),
        (dict(in_channels=4, out_channels=4, kernel_sizes=3, padding="full"), "padding must be"),
        (dict(in_channels=4, out_channels=4, kernel_sizes=3, padding="same", stride=2), "stride 1"),
        (dict(in_channels=4, out_channels=4, kernel_sizes=[3, 1], depth=3), "disagrees"),
        (dict(in_channels=4, out_channels=4, kernel_sizes=[]), "must not be empty"),
        (dict(in_channels=4, out_channels=4, kernel_sizes=[0, 1]), "kernel_sizes"),
        (dict(in_channels=4, out_channels=4, kernel_sizes=[(3, 3, 3)]), r"kernel_sizes\[0\]"),
        (dict(in_channels=4, out_channels=4, stride=0), "stride must be >= 1"),
        (dict(in_channels=4, out_channels=4, residual=True, residual_intervals=0), "residual_intervals entries"),
        (dict(in_channels=4, out_channels=4, residual=True, residual_intervals=2.0), "residual_intervals entries"),
        (dict(in_channels=4, out_channels=4, residual=True, residual_intervals="2"), "residual_intervals entries"),
        (dict(in_channels=0, out_channels=4), "in_channels must be an int >= 1"),
    ],
)
def test_invalid_configurations_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        OverparamConv2d(**kwargs)


def test_invalid_linear():
    with pytest.raises(ValueError, match="residual_intervals"):
        OverparamLinear(4, 5, residual=True)
    with pytest.raises(ValueError, match="depth"):
        OverparamLinear(4, 5, depth=0)


def test_train_and_eval_return_the_module():
    layer = OverparamConv2d(3, 4)
    assert layer.eval() is layer
    assert layer.train() is layer


def test_state_dict_keys_identical_in_train_and_eval_and_strict_loads():
    for bias in (True, False):
        layer = OverparamConv2d(4, 4, kernel_sizes=3, padding=1, bias=bias, batch_norm=True)
        train_keys = list(layer.train().state_dict())
        layer.eval()(torch.randn(1, 4, 5, 5))
        eval_keys = list(layer.state_dict())
        assert train_keys == eval_keys
        assert not any(k in ("weight", "bias") for k in eval_keys)
        other = OverparamConv2d(4, 4, kernel_sizes=3, padding=1, bias=bias, batch_norm=True).eval()
        other.load_state_dict(layer.state_dict(), strict=True)
        other.train().load_state_dict(layer.state_dict(), strict=True)


def test_cache_follows_in_place_optimizer_steps_in_eval():
    layer = OverparamConv2d(4, 4, kernel_sizes=3, padding=1).eval()
    x = torch.randn(2, 4, 6, 6)
    opt = torch.optim.SGD(layer.parameters(), lr=0.5)
    for _ in range(3):
        with torch.no_grad():
            before = layer(x)
        layer(x).square().mean().backward()
        opt.step()
        opt.zero_grad()
        with torch.no_grad():
            after = layer(x)
            assert relative_error(after, layer.expanded_forward(x)) < 1e-5
            assert not torch.allclose(before, after)


def test_cache_follows_load_state_dict_and_bn_buffers():
    a = OverparamConv2d(4, 4, kernel_sizes=3, padding=1, batch_norm=True).eval()
    b = randomize_(OverparamConv2d(4, 4, kernel_sizes=3, padding=1, batch_norm=True)).eval()
    x = torch.randn(2, 4, 6, 6)
    with torch.no_grad():
        a(x)
        a.load_state_dict(b.state_dict())
        assert relative_error(a(x), b(x)) < 1e-6
        a.norms[0].running_var.mul_(3)
        assert relative_error(a(x), a.expanded_forward(x)) < 1e-5
        a.load_state_dict(b.state_dict(), assign=True)
        assert relative_error(a(x), b(x)) < 1e-6


def test_cache_follows_dtype_and_device_moves():
    layer = randomize_(OverparamConv2d(3, 4, padding=1, batch_norm=True)).eval()
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    with torch.no_grad():
        w32 = layer.weight
        assert layer.weight is w32 and w32.dtype == torch.float32  # cached: built once
        assert (
            relative_error(layer(x.float()), layer.expanded_forward(x.float())) < 1e-6
        )  # float32: u = 6e-8, 27-term sums

        layer.double()
        assert layer._cache is None  # .to() dropped the float32 cache
        w64 = layer.weight
        assert w64.dtype == torch.float64 and layer.weight is w64
        # a float32 cache cast up would be ~1e-7 off; float64 (u = 1e-16) over 27-term sums is ~1e-15
        assert relative_error(layer(x), layer.expanded_forward(x)) < 1e-12
        assert relative_error(w64, w32.double()) < 1e-6  # the same weights, moved: only float32 rounding apart

        layer.float()
        assert layer._cache is None
        assert layer.weight.dtype == torch.float32
        assert relative_error(layer(x.float()), layer.expanded_forward(x.float())) < 1e-6
        assert relative_error(layer.weight.double(), w64) < 1e-6

        layer.to("meta")  # a device move: the cache must not keep the CPU tensor
        assert layer._cache is None
        assert layer.weight.device.type == "meta" and layer(x.float().to("meta")).shape == (2, 4, 5, 5)


def test_gradients_reach_factors_in_eval_mode():
    layer = OverparamConv2d(4, 4, kernel_sizes=3, padding=1, batch_norm=True, residual=True).eval()
    layer(torch.randn(2, 4, 5, 5)).sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_inference_mode_cache_does_not_leak_into_autograd():
    layer = OverparamConv2d(4, 4, kernel_sizes=3, padding=1).eval()
    x = torch.randn(2, 4, 5, 5)
    with torch.inference_mode():
        y_inf = layer(x)
    with torch.no_grad():
        y = layer(x)
    assert not y.is_inference()
    assert torch.allclose(y, y_inf)
    layer.train()
    layer(x).sum().backward()
    assert layer.factors[0].weight.grad is not None
    layer.eval()
    out = layer(x)
    out.sum().backward()


def test_weight_and_bias_properties():
    layer = OverparamConv2d(2, 4, kernel_sizes=[5, 3, 1], padding=3)
    assert layer.weight.shape == (4, 2, 7, 7) and layer.weight.is_contiguous()
    assert layer.bias.shape == (4,)
    assert OverparamConv2d(2, 4, bias=False).bias is None
    assert OverparamConv2d(2, 4, bias=False, batch_norm=True).bias is not None
    assert OverparamLinear(3, 5, bias=False).eval().bias is None
    layer.weight.sum().backward()
    assert layer.factors[0].weight.grad is not None


def test_fuse_gives_stock_modules():
    lin = OverparamLinear(4, 6, depth=3)
    fused = lin.eval().fuse()
    assert type(fused) is nn.Linear and fused.weight.shape == (6, 4)
    conv = OverparamConv2d(4, 6, kernel_sizes=[3, 3], padding=2, stride=2, groups=2, padding_mode="reflect").eval()
    fused = conv.fuse()
    assert type(fused) is nn.Conv2d
    assert (fused.kernel_size, fused.stride, fused.padding, fused.groups, fused.padding_mode) == (
        (5, 5),
        (2, 2),
        (2, 2),
        2,
        "reflect",
    )
    x = torch.randn(2, 4, 9, 9)
    with torch.no_grad():
        assert relative_error(fused(x), conv(x)) < 1e-5


def test_deepcopy_and_pickle_roundtrip():
    layer = randomize_(OverparamConv2d(3, 3, padding=1, batch_norm=True)).eval()
    x = torch.randn(1, 3, 5, 5)
    with torch.no_grad():
        y = layer(x)
        clone = copy.deepcopy(layer)
        with torch.no_grad():
            for p in clone.parameters():
                p.add_(1)
        assert not torch.allclose(clone(x), y)
        assert torch.allclose(layer(x), y)
        buf = io.BytesIO()
        torch.save(layer, buf)
        buf.seek(0)
        loaded = torch.load(buf, weights_only=False)
        assert torch.allclose(loaded(x), y)


def test_initial_scale_matches_stock_default():
    for chain, stock in [
        (OverparamConv2d(64, 64, kernel_sizes=3, padding=1, depth=4), nn.Conv2d(64, 64, 3)),
        (OverparamConv2d(32, 64, kernel_sizes=[3, 3], width=2), nn.Conv2d(32, 64, 5)),
        (OverparamLinear(256, 128, depth=3, width=0.5), nn.Linear(256, 128)),
    ]:
        ratio = float(chain.weight.std() / stock.weight.std())
        assert 0.9 < ratio < 1.1, (chain, ratio)


def test_train_path_override_validation():
    layer = OverparamConv2d(3, 3, batch_norm=True)
    with pytest.raises(ValueError, match="batch_norm"):
        layer.train_path = "composed"
    with pytest.raises(ValueError, match="train_path"):
        layer.train_path = "fast"


_SCALED_LAYERS = [
    (lambda s: OverparamLinear(256, 128, depth=3, init_scale=s), lambda: nn.Linear(256, 128)),
    (lambda s: OverparamConv1d(32, 64, kernel_sizes=3, depth=2, init_scale=s), lambda: nn.Conv1d(32, 64, 3)),
    (lambda s: OverparamConv2d(64, 64, kernel_sizes=3, padding=1, depth=4, init_scale=s), lambda: nn.Conv2d(64, 64, 3)),
    (lambda s: OverparamConv3d(16, 32, kernel_sizes=[2, 2], init_scale=s), lambda: nn.Conv3d(16, 32, 3)),
]


@pytest.mark.parametrize("make,stock", _SCALED_LAYERS)
@pytest.mark.parametrize("scale", [0.1, 0.01])
def test_init_scale_multiplies_the_stock_scale_on_every_layer_type(make, stock, scale):
    torch.manual_seed(0)
    chain = make(scale)
    ratio = float(chain.weight.detach().std() / stock().weight.std())
    assert 0.85 * scale < ratio < 1.15 * scale, (chain, ratio)
    assert f"init_scale={scale}" in repr(chain)
    bound = 1 / chain.plan.fan_in**0.5  # the bias keeps the stock default
    assert bound / 2 < chain.bias.abs().max() <= bound


@pytest.mark.parametrize("make,_stock", _SCALED_LAYERS)
def test_init_scale_zero_starts_at_zero_and_every_factor_gets_gradients(make, _stock):
    chain = make(0.0).train()
    assert torch.count_nonzero(chain.weight) == 0
    x = torch.randn(4, chain.plan.in_channels, *([6] * chain.plan.ndim))
    chain.train_path = "expanded"
    (chain(x) ** 2).sum().backward()
    assert all(f.weight.grad is not None for f in chain.factors)
    assert chain.factors[-1].weight.grad.abs().sum() > 0


def test_small_init_scale_keeps_the_collapse_exact():
    exact(
        OverparamConv2d(4, 6, kernel_sizes=[3, 3], padding=2, batch_norm=True, init_scale=1e-3), torch.randn(2, 4, 9, 8)
    )
    exact(OverparamLinear(5, 7, depth=4, init_scale=1e-2), torch.randn(3, 5))


@pytest.mark.parametrize("bad", [-0.5, float("nan"), float("inf"), True, "small"])
def test_invalid_init_scale_is_refused(bad):
    with pytest.raises(ValueError, match=r"init_scale must be a finite number >= 0 \(1: the stock layer's scale\)"):
        OverparamLinear(3, 4, init_scale=bad)
