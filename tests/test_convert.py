"""overparameterize / collapse / collapsed_state_dict on real torchvision and timm models."""

import copy
import warnings

import pytest
import timm
import torch
import torchvision
from torch import nn

from overparam import OverparamChain, collapse, collapsed_state_dict, convert_model, from_stock, overparameterize

from .helpers import randomize_, relative_error

SLOW = {"alexnet"}  # a 9216x4096 classifier: ~20 s to randomize and collapse in float64
MODELS = [
    pytest.param(zoo, name, size, id=f"{zoo}-{name}", marks=[pytest.mark.slow] if name in SLOW else [])
    for zoo, name, size in [
        ("torchvision", "alexnet", 96),
        ("torchvision", "resnet18", 64),
        ("torchvision", "mobilenet_v2", 64),
        ("timm", "resnet18", 64),
        ("timm", "mobilenetv3_small_100", 64),
        ("timm", "vit_tiny_patch16_224", 32),
    ]
]


def build(zoo, name, size):
    if zoo == "timm":
        kwargs = {"img_size": size} if name.startswith("vit") else {}
        return timm.create_model(name, num_classes=7, **kwargs)
    return getattr(torchvision.models, name)(num_classes=7)


def count(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("zoo,name,size", MODELS)
def test_roundtrip_to_stock_architecture(zoo, name, size):
    model = build(zoo, name, size).double()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = convert_model(model, depth=2, batch_norm=zoo == "timm" and name == "resnet18")
    assert report.converted
    for path in report.converted:
        randomize_(model.get_submodule(path))
    model.eval()
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    with torch.no_grad():
        y = model(x)
        stock = build(zoo, name, size).double().eval()
        stock.load_state_dict(collapsed_state_dict(model), strict=True)
        assert relative_error(stock(x), y) < 1e-10
        collapsed = collapse(model)
        assert not any(isinstance(m, OverparamChain) for m in collapsed.modules())
        assert [type(m) for m in collapsed.modules()] == [type(m) for m in stock.modules()]
        assert relative_error(collapsed(x), y) < 1e-10


def test_depthwise_stays_depthwise_on_mobilenetv3():
    model = timm.create_model("mobilenetv3_small_100")
    before = count(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        overparameterize(model, depth=2)
    assert count(model) < 2.5 * before  # dense factors would be ~12x
    dw = model.blocks[1][0].conv_dw
    assert isinstance(dw, OverparamChain) and dw.weight.shape[1] == 1


def test_vit_linear_layers_and_report():
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, num_classes=5)
    report = convert_model(model, depth=2, include=["blocks.*", "head"])
    assert "head" in report.converted and "blocks.0.attn.qkv" in report.converted
    assert report.skipped["patch_embed.proj"] == "not matched by include"
    assert "converted" in report.summary()


def test_subclass_is_reported_not_converted():
    class Scaled(nn.Conv2d):
        def forward(self, x):
            return 2 * super().forward(x)

    model = nn.Sequential(nn.Conv2d(3, 4, 3), Scaled(4, 4, 3), nn.MultiheadAttention(4, 2))
    with pytest.warns(UserWarning, match=r"left 2 layers stock: 1 \(.*Scaled"):
        overparameterize(model)
    assert isinstance(model[0], OverparamChain) and type(model[1]) is Scaled
    assert type(model[2].out_proj) is nn.modules.linear.NonDynamicallyQuantizableLinear


def test_residual_where_shapes_allow_and_notes():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1))
    report = convert_model(model, depth=2, residual=True)
    assert report.converted == ["0", "1"]
    assert "0" in report.notes and "1" not in report.notes
    assert model[1].plan.skips and not model[0].plan.skips


def test_exclude_and_custom_kernel_split_and_errors():
    model = nn.Sequential(nn.Conv2d(3, 8, 5, padding=2), nn.Conv2d(8, 8, 3, padding=1), nn.Flatten(), nn.LazyLinear(3))
    report = convert_model(
        model,
        exclude=["1"],
        options_for=lambda path, m: {"kernel_sizes": [3, 3]} if path == "0" else {},
    )
    assert model[0].kernel_sizes == ((3, 3), (3, 3))
    assert report.skipped["1"] == "matched by exclude"
    assert "3" in report.skipped
    with pytest.raises(ValueError, match=r"composes to kernel \(5, 5\).*stock layer has kernel \(3, 3\)"):
        from_stock(nn.Conv2d(3, 3, 3), kernel_sizes=[3, 3])
    with pytest.raises(TypeError, match="from_stock expects"):
        from_stock(nn.ReLU())


def test_converting_a_converted_model_changes_nothing():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Linear(4, 4))
    overparameterize(model)
    keys = list(model.state_dict())
    report = convert_model(model)
    assert report.converted == [] and list(model.state_dict()) == keys


def test_match_init_keeps_architecture_scale_and_bias():
    stock = timm.create_model("resnet18")
    model = copy.deepcopy(stock)
    overparameterize(model, depth=4)
    for name in ("conv1", "layer2.0.conv1", "layer4.1.conv2", "fc"):
        ours, theirs = model.get_submodule(name), stock.get_submodule(name)
        ratio = float(ours.weight.detach().std() / theirs.weight.std())
        assert 0.8 < ratio < 1.25, (name, ratio)
    assert torch.equal(model.fc.bias.detach(), stock.fc.bias)


def test_init_scale_through_overparameterize_and_convert_model():
    stock = timm.create_model("resnet18", num_classes=100)
    model = overparameterize(copy.deepcopy(stock), depth=3, init_scale=0.1)
    for name in ("conv1", "layer2.0.conv1", "layer4.1.conv2", "fc"):
        ratio = float(model.get_submodule(name).weight.detach().std() / stock.get_submodule(name).weight.std())
        assert 0.08 < ratio < 0.125, (name, ratio)
    assert torch.equal(model.fc.bias.detach(), stock.fc.bias)
    # expanding pretrained weights ignores it: the chain computes the stock layer exactly
    expanded = copy.deepcopy(stock).double()
    convert_model(expanded, depth=2, init="expand", init_scale=0.1)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        assert relative_error(expanded.eval()(x), stock.double().eval()(x)) < 1e-10


def test_single_layer_and_zero_init():
    layer = nn.Linear(4, 3)
    nn.init.zeros_(layer.weight)
    chain = overparameterize(layer, depth=3)
    assert isinstance(chain, OverparamChain)
    assert torch.count_nonzero(chain.weight) == 0
    chain(torch.randn(2, 4)).sum().backward()
    assert chain.factors[-1].weight.grad.abs().sum() > 0
    assert isinstance(collapse(chain), nn.Linear)


def test_timm_reparameterize_model_collapses_through_fuse():
    from timm.utils.model import reparameterize_model

    model = timm.create_model("resnet18", num_classes=3).eval()
    overparameterize(model, depth=3)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        stock = reparameterize_model(model)
        assert not any(isinstance(m, OverparamChain) for m in stock.modules())
        assert relative_error(stock(x), expected) < 1e-5


def test_collapsed_state_dict_keeps_module_versions():
    # torchvision's MNASNet reads its version from the state dict's metadata and refuses to load without it
    model = torchvision.models.mnasnet0_5(num_classes=3)
    convert_model(model, depth=2)
    stock = torchvision.models.mnasnet0_5(num_classes=3)
    stock.load_state_dict(collapsed_state_dict(model), strict=True)
