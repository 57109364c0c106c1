"""Every built-in variant: registered, builds, trains a step, and collapses to its base exactly."""

import copy
import os
import subprocess
import sys
import warnings

import pytest
import timm
import torch
import torchvision

import overparam_zoo
from overparam import OverparamChain
from overparam_zoo import collapsed_state_dict, create_model, get_variant, list_variants
from overparam_zoo.registry.variants import check_variant

from .helpers import randomize_, relative_error


def _named(zoo):
    """The variants of recipes that name their bases (the generic ones are covered family by
    family in test_zoo_wide.py)."""
    return [n for n in list_variants(zoo=zoo) if not get_variant(n, zoo).recipe.is_generic]


TIMM = _named("timm")
TORCHVISION = _named("torchvision")


def test_at_least_twelve_timm_variants_and_the_expected_bases():
    assert len(TIMM) >= 12
    bases = {get_variant(n, "timm").base for n in TIMM}
    assert bases >= {
        "resnet18",
        "resnet34",
        "resnet50",
        "mobilenetv3_small_100",
        "mobilenetv3_large_100",
        "efficientnet_b0",
        "convnext_tiny",
        "vit_tiny_patch16_224",
    }
    assert {get_variant(n, "torchvision").base for n in TORCHVISION} >= {
        "alexnet",
        "resnet18",
        "resnet50",
        "mobilenet_v2",
    }
    assert set(timm.list_models("*_op_*")) == set(list_variants(zoo="timm"))
    assert set(torchvision.models.list_models(include="*_op_*")) == set(list_variants(zoo="torchvision"))
    assert {"resnet18_op_d2_bn", "resnet50_op_d4_res"} <= set(TIMM)


def _inputs(base):
    size = 64 if base == "alexnet" else 32
    kwargs = {"img_size": size} if base.startswith("vit") else {}
    return size, kwargs


def _check_roundtrip(name, zoo):
    variant = get_variant(name, zoo)
    size, kwargs = _inputs(variant.base)
    if zoo == "timm":
        model = timm.create_model(name, num_classes=5, **kwargs)
        stock = timm.create_model(variant.base, num_classes=5, **kwargs)
    else:
        model = torchvision.models.get_model(name, num_classes=5)
        stock = torchvision.models.get_model(variant.base, num_classes=5)
    assert any(isinstance(m, OverparamChain) for m in model.modules())
    x = torch.randn(2, 3, size, size)
    model.train()
    model(x).logsumexp(dim=1).mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    model = model.double()
    for m in model.modules():
        if isinstance(m, OverparamChain):
            randomize_(m)
    model.eval()
    stock = stock.double().eval()
    stock.load_state_dict(collapsed_state_dict(model), strict=True)
    x = x.double()
    with torch.no_grad():
        assert relative_error(stock(x), model(x)) < 1e-9


FAST = [n for n in TIMM if n.startswith(("resnet18", "mobilenetv3_small", "vit_tiny"))]


@pytest.mark.parametrize("name", FAST)
def test_timm_variant_roundtrip(name):
    _check_roundtrip(name, "timm")


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in TIMM if n not in FAST])
def test_timm_variant_roundtrip_large(name):
    _check_roundtrip(name, "timm")


@pytest.mark.parametrize("name", [n for n in TORCHVISION if n.startswith(("resnet18", "mobilenet"))])
def test_torchvision_variant_roundtrip(name):
    _check_roundtrip(name, "torchvision")


@pytest.mark.slow  # alexnet's 9216x4096 classifier chains take ~10 s each to collapse in float64
@pytest.mark.parametrize("name", [n for n in TORCHVISION if n.startswith(("resnet50", "alexnet"))])
def test_torchvision_variant_roundtrip_large(name):
    _check_roundtrip(name, "torchvision")


@pytest.mark.parametrize(
    "name",
    sorted({get_variant(n, "timm").recipe.path.name: n for n in list_variants(zoo="timm")}.values())
    + sorted({get_variant(n, "torchvision").recipe.path.name: n for n in list_variants(zoo="torchvision")}.values()),
)
def test_every_rule_of_every_builtin_recipe_matches_a_layer(name):
    zoo = "timm" if name in list_variants(zoo="timm") else "torchvision"
    check_variant(get_variant(name, zoo))


def test_pretrained_cfg_is_true_to_the_op_model():
    for name in ("resnet18_op_d4", "mobilenetv3_small_100_op_d2", "vit_tiny_patch16_224_op_d2"):
        model = timm.create_model(name)
        cfg = model.pretrained_cfg
        registered = timm.models.get_pretrained_cfg(name).to_dict()
        assert cfg["architecture"] == name
        assert cfg["first_conv"] == registered["first_conv"] and cfg["classifier"] == registered["classifier"]
        state = model.state_dict()
        assert f"{cfg['first_conv']}.weight" in state and f"{cfg['classifier']}.weight" in state
        assert state[f"{cfg['first_conv']}.weight"].shape[1] == 3
        assert state[f"{cfg['classifier']}.weight"].shape[0] == 1000
        base = timm.create_model(get_variant(name).base)
        assert model.num_features == base.num_features
        for key in ("input_size", "pool_size", "mean", "std", "crop_pct", "num_classes"):
            assert cfg.get(key) == base.pretrained_cfg.get(key)


def test_kwargs_reach_the_base_builder():
    model = timm.create_model("resnet18_op_d2", num_classes=3, in_chans=1, drop_rate=0.2, drop_path_rate=0.1)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 3)
    assert model.drop_rate == 0.2
    features = timm.create_model("resnet18_op_d2", features_only=True, out_indices=(1, 3))
    outs = features(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [64, 256]
    assert any(isinstance(m, OverparamChain) for m in features.modules())


def test_pretrained_expands_a_local_checkpoint_exactly(tmp_path):
    stock = timm.create_model("resnet18")  # 1000 classes, as the cfg says: timm keeps the classifier
    for m in stock.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2)
    path = tmp_path / "resnet18.pth"
    torch.save(stock.state_dict(), path)
    x = torch.randn(2, 3, 32, 32)
    for name in ("resnet18_op_d2", "resnet18_op_d2_bn", "resnet18_op_d4_res"):
        model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(path)})
        with torch.no_grad():
            assert relative_error(model.eval()(x), stock.eval()(x)) < 1e-4, name


def test_torchvision_get_model_and_zoo_create_model():
    model = torchvision.models.get_model("alexnet_op_d2", num_classes=3)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 3)
    assert isinstance(
        create_model("mobilenet_v2_op_d2", zoo="torchvision", num_classes=2).classifier[1], OverparamChain
    )
    with pytest.raises(KeyError, match="unknown op variant 'resnet19_op_d2'"):
        create_model("resnet19_op_d2")


def test_reimport_registers_nothing_twice(isolated_registries):
    import importlib

    from timm.layers import _fx

    before = copy.copy(timm.list_models("*_op_*"))
    leaves = set(_fx._leaf_modules)  # the reload registers every OverparamChain subclass alive now,
    try:  # including ones other tests defined: timm's no-trace list is put back afterwards
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            importlib.reload(overparam_zoo)
        assert timm.list_models("*_op_*") == before
    finally:
        _fx._leaf_modules.intersection_update(leaves)


def test_collision_with_a_native_model_is_refused_with_a_warning(tmp_path, isolated_registries):
    from timm.models import register_model

    from overparam_zoo import load_recipe, register_recipe

    def resnet18_op_d7(pretrained=False, **kwargs):  # a "native" timm model with a variant's name
        return timm.create_model("resnet18", **kwargs)

    register_model(resnet18_op_d7)
    path = tmp_path / "clash.yaml"
    path.write_text("zoo: timm\nbases: [resnet18]\nvariants: [{depth: 7}]\nlayers: [{match: '*'}]\n")
    with pytest.warns(UserWarning, match="resnet18_op_d7 is already a timm model"):
        assert register_recipe(load_recipe(path)) == []
    assert not any(isinstance(m, OverparamChain) for m in timm.create_model("resnet18_op_d7").modules())


def test_changed_torchvision_registry_api_gives_a_clear_warning(tmp_path, monkeypatch, isolated_registries):
    from torchvision.models import _api

    from overparam_zoo import load_recipe, register_recipe

    monkeypatch.delattr(_api, "BUILTIN_MODELS")
    path = tmp_path / "tv.yaml"
    path.write_text("zoo: torchvision\nbases: [alexnet]\nvariants: [{depth: 5}]\nlayers: [{match: '*'}]\n")
    recipe = load_recipe(path)
    with pytest.warns(UserWarning, match="torchvision's model registry API is not as expected"):
        assert register_recipe(recipe) == []
    model = create_model("alexnet_op_d5", zoo="torchvision", num_classes=2)
    assert model.features[0].depth == 5


def test_every_base_of_both_zoos_has_generic_variants_and_named_recipes_win():
    for base in ("efficientnet_b3", "regnety_016", "convnext_small", "resnet101", "swin_tiny_patch4_window7_224"):
        for depth in (2, 4):
            assert get_variant(f"{base}_op_d{depth}", "timm").recipe.is_generic
    assert get_variant("resnet18_op_d2", "timm").recipe.path.name == "timm_resnet.yaml"
    assert get_variant("resnet18_op_d2", "torchvision").recipe.path.name == "torchvision_resnet.yaml"
    bases = timm.list_models(exclude_filters=["*_op_*"])
    assert set(list_variants("*_op_d2", zoo="timm")) >= {f"{b}_op_d2" for b in bases}
    classification = torchvision.models.list_models(module=torchvision.models, exclude="*_op_*")
    assert set(list_variants("*_op_d4", zoo="torchvision")) >= {f"{b}_op_d4" for b in classification}


def test_generic_variants_build_through_both_zoos_and_collapse():
    model = timm.create_model("regnetx_002_op_d2", num_classes=4)
    assert isinstance(model.stem.conv, OverparamChain) and isinstance(model.head.fc, OverparamChain)
    assert model.pretrained_cfg["architecture"] == "regnetx_002_op_d2"
    assert model.pretrained_cfg["first_conv"] == "stem.conv.factors.0"
    tv = torchvision.models.get_model("squeezenet1_1_op_d4", num_classes=3)
    assert tv.features[0].depth == 4
    for op, stock in (
        (model, timm.create_model("regnetx_002", num_classes=4)),
        (tv, torchvision.models.squeezenet1_1(num_classes=3)),
    ):
        stock.load_state_dict(collapsed_state_dict(op.eval()), strict=True)
        x = torch.randn(2, 3, 64, 64)
        with torch.no_grad():
            assert relative_error(stock.eval()(x), op(x)) < 1e-4


def test_generic_variants_can_be_restricted_by_environment():
    code = (
        "import timm, torchvision, overparam_zoo; "
        "print(timm.is_model('resnet101_op_d2'), timm.is_model('efficientnet_b3_op_d2'), "
        "timm.is_model('resnet18_op_d2_bn'), 'vgg11_op_d2' in torchvision.models.list_models())"
    )
    for value, expected in (("resnet*", "True False True False"), ("", "False False True False")):
        env = {**os.environ, "OVERPARAM_ZOO_BASES": value}
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
        assert result.stdout.strip() == expected, result.stderr


def test_one_door_behaves_like_timm_create_model(tmp_path):
    model = timm.create_model("resnet18_op_d2", num_classes=3)
    torch.save(model.state_dict(), tmp_path / "op.pth")
    reloaded = create_model("resnet18_op_d2", num_classes=3, checkpoint_path=str(tmp_path / "op.pth"))
    for key, value in model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], value), key
