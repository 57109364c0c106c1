"""Recipe validation: every error names the file, the key path and what was expected."""

import textwrap

import pytest
import timm
import torch

from overparam_zoo import RecipeError, load_recipe, register_recipe
from overparam_zoo.registry.variants import apply_variant, check_variant

GOOD = """
zoo: timm
bases: [resnet18]
variants:
  - {depth: [2, 3]}
  - {depth: 2, tag: bn, batch_norm: true}
layers:
  - {match: "fc", depth: 3}
  - {match: "layer1.*", skip: true}
  - {match: "*", types: [Conv2d]}
"""


def write(tmp_path, text, name="r.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_good_recipe_and_rule_semantics(tmp_path):
    recipe = load_recipe(write(tmp_path, GOOD))
    names = [v.name for v in recipe.variants()]
    assert names == ["resnet18_op_d2", "resnet18_op_d3", "resnet18_op_d2_bn"]
    variant = recipe.variants()[1]
    assert variant.layer_options("fc", "Linear")["depth"] == 3
    assert variant.layer_options("conv1", "Conv2d")["depth"] == 3
    assert variant.layer_options("layer1.0.conv1", "Conv2d") is None
    assert variant.layer_options("global_pool", "SelectAdaptivePool2d") is None
    assert len(recipe.sha256) == 64


@pytest.mark.parametrize(
    "text,key,expected",
    [
        (
            GOOD.replace("batch_norm: true", "batch_nrom: true"),
            r"variants\[1\]\.batch_nrom",
            "did you mean 'batch_norm'",
        ),
        (GOOD.replace("zoo: timm", "zoo: keras"), "zoo", "expected one of timm, torchvision"),
        (GOOD.replace("depth: [2, 3]", "depth: two"), r"variants\[0\]\.depth", "expected an int >= 1"),
        (GOOD.replace("depth: 3}", "depth: 0}"), r"layers\[0\]\.depth", "expected an int >= 1"),
        (GOOD.replace("tag: bn", "tag: B-N"), r"variants\[1\]\.tag", "lowercase"),
        (GOOD.replace("batch_norm: true", "batch_norm: 1"), r"variants\[1\]\.batch_norm", "true or false"),
        (GOOD.replace('{match: "fc", depth: 3}', '{match: "fc", wdth: 3}'), r"layers\[0\]\.wdth", "width"),
        (GOOD.replace("types: [Conv2d]", "types: []"), r"layers\[2\]\.types", "non-empty"),
        (GOOD.replace("bases: [resnet18]", "bases: resnet18\nextra: 1"), "extra", "unknown key"),
        (GOOD.replace("layers:", "rules:"), "rules", "unknown key"),
        ("zoo: timm\nbases: [resnet18]\nvariants: []\nlayers: [{}]", "variants", "non-empty list"),
        (GOOD.replace("skip: true", "skip: 'yes'"), r"layers\[1\]\.skip", "got 'yes'; expected true or false"),
        (GOOD.split("layers:")[0], "layers", "missing; it is required"),
        (GOOD.replace("zoo: timm\n", ""), "zoo", "missing; it is required"),
        (GOOD.replace("  - {depth: [2, 3]}", "  - 2"), r"variants\[0\]", "got 2; expected a mapping"),
        (GOOD.replace('  - {match: "fc", depth: 3}', "  - fc"), r"layers\[0\]", "got 'fc'; expected a mapping"),
        (GOOD.replace("  - {depth: [2, 3]}", "  - {tag: deep}"), r"variants\[0\]\.depth", "missing; expected an int"),
        (GOOD.split("layers:")[0] + "layers: []\n", "layers", "expected a non-empty list of rules"),
        (GOOD.replace("bases: [resnet18]", "bases: []"), "bases", "expected a non-empty string or list"),
        ("- 1\n- 2", "<top>", "expected a mapping"),
        ("zoo: [unclosed", "<file>", "not valid YAML"),
        (GOOD.replace("tag: bn, batch_norm: true", "tag: s, init_scale: -1"), r"variants\[1\]\.init_scale", ">= 0"),
        (
            GOOD.replace('{match: "fc", depth: 3}', '{match: "fc", init_scale: small}'),
            r"layers\[0\]\.init_scale",
            "got 'small'; expected a finite number >= 0",
        ),
        (
            GOOD.replace('{match: "fc", depth: 3}', '{match: "fc", residual_intervals: [0]}'),
            r"layers\[0\]\.residual_intervals",
            "-1",
        ),
    ],
)
def test_recipe_errors_name_file_key_and_expectation(tmp_path, text, key, expected):
    path = write(tmp_path, text)
    with pytest.raises(RecipeError, match=rf"{path}: {key}: .*{expected}"):
        load_recipe(path)


def test_missing_file(tmp_path):
    with pytest.raises(RecipeError, match="cannot read"):
        load_recipe(tmp_path / "nope.yaml")


def test_unknown_base_is_refused_at_registration(tmp_path):
    recipe = load_recipe(write(tmp_path, GOOD.replace("[resnet18]", "[resnet18, resnet_nope]")))
    with pytest.raises(RecipeError, match=r"bases\[1\]: 'resnet_nope' is not a timm model"):
        register_recipe(recipe)


def test_rule_that_changes_the_architecture_is_an_error(tmp_path):
    text = GOOD.replace('{match: "fc", depth: 3}', '{match: "conv1", kernel_sizes: [3, 3]}')
    variant = load_recipe(write(tmp_path, text)).variants()[0]
    with pytest.raises(RecipeError, match=r"layers\[0\]: cannot apply to resnet18 layer conv1: .*kernel \(7, 7\)"):
        apply_variant(timm.create_model("resnet18"), variant)
    ok = GOOD.replace('{match: "fc", depth: 3}', '{match: "conv1", kernel_sizes: [5, 3]}')
    model = timm.create_model("resnet18")
    apply_variant(model, load_recipe(write(tmp_path, ok)).variants()[0])
    assert model.conv1.kernel_sizes == ((5, 5), (3, 3)) and model.conv1.kernel_size == (7, 7)
    assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 1000)


def test_rule_that_matches_nothing(tmp_path):
    text = GOOD.replace('{match: "fc", depth: 3}', '{match: "head.fc", depth: 3}')
    variant = load_recipe(write(tmp_path, text)).variants()[0]
    with pytest.raises(RecipeError, match=r"layers\[0\]: matches no layer of resnet18"):
        check_variant(variant)


def test_init_scale_in_a_recipe_starts_the_variant_small(tmp_path):
    text = GOOD.replace("tag: bn, batch_norm: true", "tag: small, init_scale: 0.1")
    variant = next(v for v in load_recipe(write(tmp_path, text)).variants() if v.tag == "small")
    torch.manual_seed(0)
    stock = timm.create_model("resnet18")
    model = timm.create_model("resnet18")
    apply_variant(model, variant)
    for name in ("conv1", "layer2.0.conv1", "layer4.1.conv2", "fc"):
        chain, layer = model.get_submodule(name), stock.get_submodule(name)
        assert chain.init_scale == 0.1
        ratio = float(chain.weight.detach().std() / layer.weight.std())
        assert 0.08 < ratio < 0.125, (name, ratio)
    assert model.fc.depth == 3  # the rule's options on top of the variant's
