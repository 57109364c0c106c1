"""The pluggy host: plugins registered by hand, a real entry point, broken plugins, opt-out."""

import copy
import subprocess
import sys
import textwrap

import pytest
import timm
import torch
from torch import nn

from overparam import OverparamConv2d, collapse, convert_model
from overparam.convert import from_stock
from overparam_zoo import apply_variant, get_plugin_manager, get_variant, hookimpl
from overparam_zoo.registry import plugins
from overparam_zoo.registry.plugins import DISABLE_ENV, reset_plugin_manager
from overparam_zoo.registry.variants import converters, register_all

from .helpers import randomize_, relative_error

RECIPE = """
zoo: timm
bases: [resnet18]
variants:
  - {depth: 3, tag: plugintest}
layers:
  - {match: "*", types: [Conv2d, Linear]}
"""


class Doubled(nn.Conv2d):
    """A custom layer type (2x the conv) that only a plugin's converter handles."""

    def forward(self, x):
        return 2 * super().forward(x)


class DoubledChain(OverparamConv2d):
    """The plugin's chain for :class:`Doubled`: twice the chain, fusing back to a ``Doubled``."""

    def forward(self, x):
        return 2 * super().forward(x)

    def fuse(self):
        plain = super().fuse()
        stock = Doubled(
            self.in_channels, self.out_channels, self.kernel_size, padding=self.padding, dtype=plain.weight.dtype
        )
        stock.load_state_dict(plain.state_dict())
        return stock


def test_plugin_registered_by_hand_contributes_recipes_and_converters(tmp_path, register_plugin):
    (tmp_path / "extra.yaml").write_text(RECIPE.replace("[Conv2d, Linear]", "[Conv2d, Linear, Doubled]"))
    calls = []

    def convert_doubled(module, **options):
        calls.append((module, options))
        return from_stock(module, chain_class=DoubledChain, **options)

    class Plugin:
        @hookimpl
        def overparam_zoo_recipe_paths(self):
            return [tmp_path]

        @hookimpl
        def overparam_zoo_converters(self):
            return {Doubled: convert_doubled}

    def custom_model():
        torch.manual_seed(0)
        return nn.Sequential(Doubled(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1)).double()

    without = convert_model(custom_model(), depth=3, converters=converters())
    assert "register a converter for it" in without.skipped["0"]  # no plugin yet: Doubled stays stock

    register_plugin(Plugin(), name="test-plugin")
    assert "resnet18_op_d3_plugintest" in register_all()
    assert timm.create_model("resnet18_op_d3_plugintest").conv1.depth == 3
    variant = get_variant("resnet18_op_d3_plugintest", "timm")
    model = custom_model()
    layer = model[0]
    report = apply_variant(model, variant)
    assert [m for m, _ in calls] == [layer] and calls[0][1]["depth"] == 3  # the plugin's converter, once
    assert type(model[0]) is DoubledChain and model[0].depth == 3 and "0" not in report.skipped
    randomize_(model[0])
    model.eval()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    stock = collapse(copy.deepcopy(model))
    assert type(stock[0]) is Doubled
    with torch.no_grad():
        w, b = stock[0].weight, stock[0].bias
        # oracle: 2 x the chain's factors run one after another, then ReLU and the stock 1x1 conv
        expected = model[2](torch.relu(2 * model[0].expanded_forward(x)))
        assert relative_error(model(x), expected) < 1e-12  # float64 (eps 2e-16), sums of <=108 terms
        assert relative_error(stock(x), expected) < 1e-12
        assert relative_error(stock[0](x), 2 * nn.functional.conv2d(x, w, b, padding=1)) < 1e-12


DIST = """\
Metadata-Version: 2.1
Name: opz-test-plugin
Version: 0.0.1
"""


def _write_dist(site, module_source, name="opz_test_plugin"):
    (site / f"{name}.py").write_text(textwrap.dedent(module_source))
    info = site / f"{name.replace('_', '-')}-0.0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(DIST.replace("opz-test-plugin", name.replace("_", "-")))
    (info / "entry_points.txt").write_text(f"[overparam_zoo]\n{name} = {name}\n")


def _run(code, site, env_extra=None):
    import os

    env = {k: v for k, v in os.environ.items() if k != DISABLE_ENV}  # the session disables plugins
    env = {**env, "PYTHONPATH": str(site), **(env_extra or {})}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)


def test_real_entry_point_plugin_and_opt_out(tmp_path):
    recipe_dir = tmp_path / "recipes"
    recipe_dir.mkdir()
    (recipe_dir / "ep.yaml").write_text(RECIPE.replace("plugintest", "entrypoint"))
    _write_dist(
        tmp_path,
        f"""
        from overparam_zoo import hookimpl

        @hookimpl
        def overparam_zoo_recipe_paths():
            return [{str(recipe_dir)!r}]
    """,
    )
    code = "import timm, overparam_zoo; print('resnet18_op_d3_entrypoint' in timm.list_models('*_op_*'))"
    assert _run(code, tmp_path).stdout.strip() == "True"
    assert _run(code, tmp_path, {DISABLE_ENV: "1"}).stdout.strip() == "False"


def test_broken_plugin_warns_by_name_and_import_still_works(tmp_path):
    _write_dist(tmp_path, "raise RuntimeError('boom')\n", name="opz_broken")
    result = _run("import timm, overparam_zoo; print(len(timm.list_models('*_op_*')) > 12)", tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"
    assert "plugin 'opz_broken'" in result.stderr and "boom" in result.stderr


def test_export_hook_spec_exists():
    pm = get_plugin_manager()
    assert hasattr(pm.hook, "overparam_zoo_export")


def test_reset_plugin_manager_rebuilds(monkeypatch):
    first = get_plugin_manager()
    monkeypatch.setattr(plugins, "_manager", first)  # the session's manager is back afterwards
    reset_plugin_manager()
    rebuilt = get_plugin_manager()
    assert rebuilt is not first and get_plugin_manager() is rebuilt
    assert rebuilt.get_plugin("overparam_zoo.default") is not None


def test_nothing_runs_at_interpreter_startup():
    code = "import sys; print(any(m.startswith('overparam') for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


@pytest.mark.parametrize("dtype", [torch.float64])
def test_conv2d_same_converter_is_exact(dtype):
    from timm.layers import Conv2dSame

    from overparam_zoo.layers.chains import OverparamConv2dSame
    from overparam_zoo.registry.variants import converters as all_converters

    model = nn.Sequential(Conv2dSame(3, 4, 3, stride=2), timm.layers.Linear(5, 5))
    from overparam import convert_model

    convert_model(model, converters=all_converters())
    assert isinstance(model[0], OverparamConv2dSame)
    layer = randomize_(model[0].to(dtype)).eval()
    for size in (7, 8):
        x = torch.randn(1, 3, size, size + 1, dtype=dtype)
        with torch.no_grad():
            fused = layer.fuse()
            assert type(fused) is Conv2dSame
            assert relative_error(layer(x), layer.expanded_forward(x)) < 1e-10
            assert relative_error(fused(x), layer.expanded_forward(x)) < 1e-10
    assert type(model[1].fuse()) is timm.layers.Linear
