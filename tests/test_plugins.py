"""The pluggy host: plugins registered by hand, a real entry point, broken plugins, opt-out."""

import subprocess
import sys
import textwrap

import pytest
import timm
import torch
from torch import nn

from overparam_zoo import get_plugin_manager, hookimpl
from overparam_zoo.names.plugins import DISABLE_ENV, reset_plugin_manager
from overparam_zoo.names.registry import converters, register_all

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


def test_plugin_registered_by_hand_contributes_recipes_and_converters(tmp_path, register_plugin):
    (tmp_path / "extra.yaml").write_text(RECIPE)

    class Plugin:
        @hookimpl
        def overparam_zoo_recipe_paths(self):
            return [tmp_path]

        @hookimpl
        def overparam_zoo_converters(self):
            return {Doubled: lambda module, **options: (_ for _ in ()).throw(NotImplementedError("doubled stays"))}

    register_plugin(Plugin(), name="test-plugin")
    assert "resnet18_op_d3_plugintest" in register_all()
    assert timm.create_model("resnet18_op_d3_plugintest").conv1.depth == 3
    assert Doubled in converters()


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


def test_reset_plugin_manager_rebuilds():
    first = get_plugin_manager()
    reset_plugin_manager()
    try:
        assert get_plugin_manager() is not first
        assert get_plugin_manager().get_plugin("overparam_zoo.default") is not None
    finally:
        reset_plugin_manager()


def test_nothing_runs_at_interpreter_startup():
    code = "import sys; print(any(m.startswith('overparam') for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


@pytest.mark.parametrize("dtype", [torch.float64])
def test_conv2d_same_converter_is_exact(dtype):
    from timm.layers import Conv2dSame

    from overparam_zoo.names.converters import OverparamConv2dSame
    from overparam_zoo.names.registry import converters as all_converters

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
