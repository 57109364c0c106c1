"""Export: standard checkpoints that plain timm/torchvision load, from live models and train.py files."""

import argparse
import copy
import json
import os
import subprocess
import sys

import pytest
import timm
import torch
import torchvision

from overparam import OverparamChain
from overparam_zoo import hookimpl
from overparam_zoo.cli import main
from overparam_zoo.sharing.export import ExportError, export_collapsed
from overparam_zoo.sharing.save_hooks import ExportOnSave

from .helpers import randomize_, relative_error

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def trained(name, **kwargs):
    model = timm.create_model(name, **kwargs)
    for m in model.modules():
        if isinstance(m, OverparamChain):
            randomize_(m)
    model.train()
    model(X)  # moves BN running statistics
    return model.eval()


def plain_python(code):
    """Run code in a fresh interpreter that never imports overparam or overparam_zoo."""
    guard = "import sys\nclass _Block:\n    def find_spec(self, name, *a):\n        if name.startswith('overparam'):\n            raise ImportError('blocked ' + name)\nsys.meta_path.insert(0, _Block())\n"
    result = subprocess.run([sys.executable, "-c", guard + code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("name", ["resnet18_op_d2", "resnet18_op_d2_bn", "resnet18_op_d4_res"])
def test_timm_export_loads_with_plain_timm(tmp_path, name):
    model = trained(name, num_classes=7)
    result = export_collapsed(model, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["README.md", "config.json", "model.safetensors"]
    umask = os.umask(0)
    os.umask(umask)
    assert ((tmp_path / "out").stat().st_mode & 0o777) == 0o777 & ~umask  # shareable, not mkdtemp's 0700
    assert ((tmp_path / "out" / "model.safetensors").stat().st_mode & 0o777) == 0o666 & ~umask
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["architecture"] == "resnet18" and config["num_classes"] == 7
    assert config["overparam_zoo"]["variant"] == name
    assert config["overparam_zoo"]["max_collapse_error"] < 1e-10
    assert len(config["overparam_zoo"]["recipe_sha256"]) == 64
    assert result.max_collapse_error < 1e-10
    torch.save(X, tmp_path / "x.pt")
    with torch.no_grad():
        torch.save(model(X), tmp_path / "y.pt")
    out = plain_python(f"""
import timm, torch
x, y = torch.load({str(tmp_path / "x.pt")!r}), torch.load({str(tmp_path / "y.pt")!r})
a = timm.create_model("local-dir:{tmp_path / "out"}", pretrained=True).eval()
b = timm.create_model("resnet18", pretrained=True, num_classes=7,
                      pretrained_cfg_overlay=dict(file="{tmp_path / "out" / "model.safetensors"}", num_classes=7)).eval()
c = timm.create_model("resnet18", num_classes=7).eval()
timm.models.load_checkpoint(c, "{tmp_path / "out" / "model.safetensors"}")  # what validate.py --checkpoint does
with torch.no_grad():
    print(max(float((m(x) - y).abs().max() / y.abs().max()) for m in (a, b, c)))
""")
    assert float(out) < 1e-5


def test_torchvision_export_strict_loads(tmp_path):
    model = torchvision.models.get_model("resnet18_op_d2_bn", num_classes=4)
    model.train()(X)
    model.eval()
    export_collapsed(model, tmp_path / "tv")
    config = json.loads((tmp_path / "tv" / "config.json").read_text())
    assert config["architecture"] == "resnet18" and config["num_classes"] == 4
    torch.save(X, tmp_path / "x.pt")
    with torch.no_grad():
        torch.save(model(X), tmp_path / "y.pt")
    out = plain_python(f"""
import torch, torchvision
from safetensors.torch import load_file
m = torchvision.models.resnet18(num_classes=4).eval()
m.load_state_dict(load_file("{tmp_path / "tv" / "model.safetensors"}"), strict=True)
x, y = torch.load({str(tmp_path / "x.pt")!r}), torch.load({str(tmp_path / "y.pt")!r})
with torch.no_grad():
    print(float((m(x) - y).abs().max() / y.abs().max()))
""")
    assert float(out) < 1e-5


def train_py_checkpoint(path, model, ema):
    """A checkpoint shaped like timm train.py's CheckpointSaver output, DDP-wrapped keys."""
    torch.save(
        {
            "epoch": 3,
            "arch": "resnet",
            "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()},
            "state_dict_ema": ema.state_dict(),
            "optimizer": {},
            "version": 2,
            "args": argparse.Namespace(model="resnet18_op_d2_bn", num_classes=5),
            "metric": 0.5,
        },
        path,
    )


def test_cli_export_of_train_py_checkpoint_holds_the_ema_weights(tmp_path, capsys):
    model = trained("resnet18_op_d2_bn", num_classes=5)
    ema = trained("resnet18_op_d2_bn", num_classes=5)
    train_py_checkpoint(tmp_path / "last.pth.tar", model, ema)
    assert main(["export", str(tmp_path / "last.pth.tar"), "--out", str(tmp_path / "exp")]) == 0
    assert "exported resnet18_op_d2_bn as resnet18" in capsys.readouterr().out
    stock = timm.create_model("local-dir:" + str(tmp_path / "exp"), pretrained=True).eval()
    with torch.no_grad():
        assert relative_error(stock(X), ema(X)) < 1e-5
        assert relative_error(stock(X), model(X)) > 1e-3
    assert main(["export", str(tmp_path / "last.pth.tar"), "--out", str(tmp_path / "exp2"), "--no-ema"]) == 0
    stock = timm.create_model("local-dir:" + str(tmp_path / "exp2"), pretrained=True).eval()
    with torch.no_grad():
        assert relative_error(stock(X), model(X)) < 1e-5


def test_cli_export_errors_are_one_line_and_write_nothing(tmp_path, capsys):
    other = timm.create_model("resnet34_op_d2", num_classes=5)
    torch.save(other.state_dict(), tmp_path / "other.pth")
    (tmp_path / "corrupt.pth").write_bytes(b"not a checkpoint")
    torch.save(timm.create_model("resnet18").state_dict(), tmp_path / "stock.pth")
    cases = [
        (["other.pth", "--model", "resnet18_op_d2"], "does not fit resnet18_op_d2: .*unexpected keys"),
        (["corrupt.pth", "--model", "resnet18_op_d2"], "cannot read"),
        (["other.pth"], "cannot tell which model"),
        (["missing.pth", "--model", "resnet18_op_d2"], "no checkpoint file"),
        (["stock.pth", "--model", "resnet18"], "not an op variant"),
        (["other.pth", "--model", "resnet99_op_d2"], "unknown model .resnet99_op_d2."),
    ]
    for argv, message in cases:
        out = tmp_path / "out"
        argv = [str(tmp_path / argv[0])] + argv[1:]
        assert main(["export", *argv, "--out", str(out)]) == 1
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith("overparam-zoo export: error:") and "Traceback" not in err
        import re

        assert re.search(message, err), err
        assert not out.exists()
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


def test_safetensors_and_plain_state_dict_inputs_and_force(tmp_path):
    from safetensors.torch import save_file

    model = trained("resnet18_op_d2", num_classes=3)
    save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    torch.save(model.state_dict(), tmp_path / "w.pth")
    out = tmp_path / "out"
    assert main(["export", str(tmp_path / "w.safetensors"), "--model", "resnet18_op_d2", "--out", str(out)]) == 0
    assert main(["export", str(tmp_path / "w.pth"), "--model", "resnet18_op_d2", "--out", str(out)]) == 1
    assert main(["export", str(tmp_path / "w.pth"), "--model", "resnet18_op_d2", "--out", str(out), "--force"]) == 0
    with pytest.raises(ExportError, match="not empty"):
        export_collapsed(model, out)


def test_interrupted_export_leaves_nothing(tmp_path, register_plugin):
    model = trained("resnet18_op_d2", num_classes=3)

    class Boom:
        @hookimpl
        def overparam_zoo_export(self, model, out_dir, config):
            assert (out_dir / "model.safetensors").is_file()
            raise KeyboardInterrupt

    register_plugin(Boom())
    with pytest.raises(KeyboardInterrupt):
        export_collapsed(model, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_export_hook_adds_outputs_and_callback(tmp_path, register_plugin):
    model = trained("mobilenetv3_small_100_op_d2", num_classes=3)

    class Extra:
        @hookimpl
        def overparam_zoo_export(self, model, out_dir, config):
            path = out_dir / "labels.txt"
            path.write_text(str(config["num_classes"]))
            return [path]

    register_plugin(Extra())
    result = ExportOnSave(tmp_path)(model, "best")
    assert result.extra_files == [tmp_path / "collapsed-best" / "labels.txt"]
    assert (tmp_path / "collapsed-best" / "labels.txt").read_text() == "3"
    stock = timm.create_model("local-dir:" + str(tmp_path / "collapsed-best"), pretrained=True).eval()
    with torch.no_grad():
        assert relative_error(stock(X), model(X)) < 1e-5


def test_checkpoint_saver_hook_exports_on_save(tmp_path, checkpoint_saver_hook):
    from safetensors.torch import load_file
    from timm.utils import CheckpointSaver, ModelEmaV3

    from overparam import collapse

    model = trained("resnet18_op_d2", num_classes=3)
    ema = ModelEmaV3(model)
    with torch.no_grad():  # the live model moves on, so the EMA's weights differ from it
        for p in model.parameters():
            p.add_(torch.randn_like(p), alpha=0.1)
    saver = CheckpointSaver(
        model, torch.optim.SGD(model.parameters(), lr=0.1), model_ema=ema, checkpoint_dir=str(tmp_path), max_history=1
    )
    saver.save_checkpoint(0, metric=1.0)
    expected = collapse(copy.deepcopy(ema.module).eval()).state_dict()
    live = collapse(copy.deepcopy(model).eval()).state_dict()
    for tag in ("last", "best"):
        saved = load_file(tmp_path / f"collapsed-{tag}" / "model.safetensors")
        assert saved.keys() == expected.keys()
        for key, value in expected.items():  # the same collapse of the same tensors: bit for bit
            assert torch.equal(saved[key], value), (tag, key)
        assert not torch.equal(saved["conv1.weight"], live["conv1.weight"])  # not the live model's
        config = json.loads((tmp_path / f"collapsed-{tag}" / "config.json").read_text())
        assert config["architecture"] == "resnet18" and config["num_classes"] == 3


def test_verify_cli(tmp_path, capsys):
    model = trained("resnet18_op_d2_res", num_classes=3)
    torch.save(model.state_dict(), tmp_path / "w.pth")
    assert main(["verify", str(tmp_path / "w.pth"), "--model", "resnet18_op_d2_res"]) == 0
    out = capsys.readouterr().out
    assert "layer1.0.conv1" in out and "OK" in out
    assert main(["verify", "nope_op_d2"]) == 1


def test_export_with_no_bn_after_bias_free_conv_fails_naming_the_layer(tmp_path, isolated_registries, capsys):
    from overparam_zoo import load_recipe, register_recipe

    # resnetv2 is pre-activation: the bias-free stem conv feeds a max-pool, not a BatchNorm
    recipe = tmp_path / "bn.yaml"
    recipe.write_text(
        "zoo: timm\nbases: [resnetv2_18]\nvariants: [{depth: 2, tag: bnx, batch_norm: true}]\n"
        "layers: [{match: '*', types: [Conv2d, Linear]}]\n"
    )
    assert register_recipe(load_recipe(recipe)) == ["resnetv2_18_op_d2_bnx"]
    torch.save(timm.create_model("resnetv2_18_op_d2_bnx", num_classes=3).state_dict(), tmp_path / "w.pth")
    argv = ["export", str(tmp_path / "w.pth"), "--out", str(tmp_path / "out"), "--model", "resnetv2_18_op_d2_bnx"]
    assert main(argv) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]  # after progress lines
    assert len(errors) == 1 and errors[0].startswith(
        "overparam-zoo export: error: cannot collapse resnetv2_18_op_d2_bnx: layer 'stem.conv' gains a bias from "
        "the batch norm inside its chain, but the stock layer has none and its output goes to stem.pool"
    )
    assert errors[0].endswith("use batch_norm=False for this layer")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bn.yaml", "w.pth"]  # nothing written, no temp folder
