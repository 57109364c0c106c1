"""Exports that can be trusted: a diverged run (NaN or Inf in the weights, the collapse or the
probe output) is never exported nor pushed, nor is a collapse that is not exact (a forward hook
the stock model cannot carry, a plugin converter whose ``fuse()`` is not its forward) unless the
caller allows its error explicitly; the train.py save hook skips such an epoch without ending the
run, and a checkpoint holding pickled Python objects is refused unexecuted with our own message."""

import argparse
import copy
import json
import logging
import re
import subprocess
import sys
from fractions import Fraction

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

from overparam import OverparamChain, OverparamLinear, collapse, overparameterize
from overparam.convert import from_stock
from overparam_zoo import hookimpl
from overparam_zoo.checkpoints.reading import read_checkpoint
from overparam_zoo.cli import main
from overparam_zoo.errors import CheckpointError, CompareError, ExportError, PublishError
from overparam_zoo.registry.variants import register_all
from overparam_zoo.sharing.export import export_collapsed
from overparam_zoo.sharing.metadata import ExportMetadata
from overparam_zoo.sharing.publish import validate_export
from overparam_zoo.sharing.save_hooks import ExportOnSave
from overparam_zoo.sharing.verify import COLLAPSE_ERROR_BOUND, chain_errors

from .helpers import randomize_

SIZE = 32
METADATA = ExportMetadata(
    data_config=dict(
        input_size=(3, SIZE, SIZE),
        mean=(0.5,) * 3,
        std=(0.25,) * 3,
        interpolation="bilinear",
        crop_pct=1.0,
        crop_mode="center",
    )
)


def trained(name="resnet18_op_d2"):
    model = timm.create_model(name, num_classes=3)
    for m in model.modules():
        if isinstance(m, OverparamChain):
            randomize_(m)
    model.train()(torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0)))
    return model.eval()


def diverged():
    """A run whose weights went NaN in one factor and Inf in another."""
    model = trained()
    with torch.no_grad():
        model.layer2[0].conv1.factors[1].weight[0, 0, 0, 0] = float("nan")
        model.fc.factors[0].weight[1, 1] = float("inf")
    return model


def assert_nothing_written(tmp_path, name="out"):
    assert not (tmp_path / name).exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(f".{name}.")]


def test_nan_weights_stop_the_export_naming_the_tensors(tmp_path):
    with pytest.raises(ExportError) as caught:
        export_collapsed(diverged(), tmp_path / "out", metadata=METADATA)
    message = str(caught.value)
    assert "\n" not in message
    assert re.search(
        r"resnet18_op_d2's weights hold NaN or Inf in layer2\.0\.conv1\.factors\.1\.weight, "
        r"fc\.factors\.0\.weight \(2 of \d+ tensors\)",
        message,
    ), message
    assert "nothing was written" in message
    assert_nothing_written(tmp_path)


def test_cli_export_of_a_nan_checkpoint_fails_in_one_line_and_writes_nothing(tmp_path, capsys):
    torch.save(
        {"epoch": 4, "state_dict": diverged().state_dict(), "args": argparse.Namespace(model="resnet18_op_d2")},
        tmp_path / "last.pth.tar",
    )
    assert main(["export", str(tmp_path / "last.pth.tar"), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(
        "overparam-zoo export: error: resnet18_op_d2's weights hold NaN or Inf in layer2.0.conv1.factors.1.weight"
    ), err
    assert_nothing_written(tmp_path)


def test_a_collapse_that_overflows_is_refused(tmp_path):
    model = trained()
    with torch.no_grad():  # each factor finite, their product beyond float32
        model.conv1.factors[0].weight.mul_(1e20)
        model.conv1.factors[1].weight.mul_(1e20)
    with pytest.raises(ExportError, match=r"collapsing resnet18_op_d2 overflows to NaN or Inf in conv1\.weight \(1 of"):
        export_collapsed(model, tmp_path / "out", metadata=METADATA)
    assert_nothing_written(tmp_path)


def test_a_probe_output_that_overflows_is_refused_and_an_earlier_export_stays(tmp_path):
    good = export_collapsed(trained(), tmp_path / "out", metadata=METADATA)
    before = (tmp_path / "out" / "model.safetensors").read_bytes()
    model = trained()
    with torch.no_grad():  # finite weights, but activations beyond float32 from the second scaling on
        model.bn1.weight.fill_(1e30)
        model.layer2[0].downsample[1].weight.fill_(1e30)
    with pytest.raises(
        ExportError,
        match=r"outputs NaN or Inf on the probe input \(float32, 3x\d+x\d+\), first in "
        r"layer2\.0\.downsample\.1; nothing was written",
    ):
        export_collapsed(model, tmp_path / "out", force=True, metadata=METADATA)
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == before  # the earlier export, untouched
    assert json.loads((tmp_path / "out" / "config.json").read_text()) == good.config
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_push_refuses_a_folder_with_nan_weights(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OVERPARAM_ZOO_PROGRESS", "off")
    export_collapsed(trained(), tmp_path / "out", metadata=METADATA)
    validate_export(tmp_path / "out")
    state = load_file(str(tmp_path / "out" / "model.safetensors"))
    state["layer3.1.bn2.running_var"][0] = float("nan")
    save_file(state, str(tmp_path / "out" / "model.safetensors"))
    with pytest.raises(
        PublishError,
        match=r"holds NaN or Inf in layer3\.1\.bn2\.running_var \(1 of \d+ tensors\): "
        r"diverged weights are not published",
    ):
        validate_export(tmp_path / "out")
    assert main(["push", str(tmp_path / "out"), "--repo-id", "someone/x", "--dry-run"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "diverged weights are not published" in err[0], err


def test_the_train_py_hook_skips_a_diverged_epoch_and_training_goes_on(tmp_path, checkpoint_saver_hook, caplog):
    from timm.utils import CheckpointSaver

    model = trained()
    saver = CheckpointSaver(
        model, torch.optim.SGD(model.parameters(), lr=0.1), checkpoint_dir=str(tmp_path), max_history=2
    )
    saver.save_checkpoint(0, metric=1.0)
    good = (tmp_path / "collapsed-last" / "model.safetensors").read_bytes()
    with torch.no_grad():
        model.layer1[0].conv2.factors[0].weight.fill_(float("nan"))
    with caplog.at_level(logging.WARNING, logger="overparam_zoo"):
        saver.save_checkpoint(1, metric=2.0)  # returns: the run goes on
    assert (tmp_path / "checkpoint-1.pth.tar").is_file()  # the checkpoint itself is saved
    warning = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warning) == 1
    text = warning[0].getMessage()
    assert "skipped the export of epoch 1 (collapsed-last, collapsed-best)" in text
    assert "layer1.0.conv2.factors.0.weight" in text and "training goes on" in text
    assert "earlier exports stay in collapsed-last, collapsed-best" in text
    assert (tmp_path / "collapsed-last" / "model.safetensors").read_bytes() == good
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".collapsed")]


# --- a collapse that is not exact ------------------------------------------------------------------

NOT_EXACT = (
    r"the collapse of {name} is not exact: its collapsed resnet18 differs from it by (\S+) \(float64, relative, on "
    r"the probe input\), above the bound 1e-06 an exact collapse meets; first at {path} \({kind}\), which differs "
    r"from its stock layer by (\S+) on the input it sees; nothing was written \(a converter that knowingly "
    r"approximates is exported with {flag}E, the error you accept\)$"
)


def not_exact(message, name, path, kind, flag="allow_collapse_error="):
    """The model-level and layer-level errors an inexact-collapse refusal names, after checking its words."""
    pattern = NOT_EXACT.format(name=re.escape(name), path=re.escape(path), kind=re.escape(kind), flag=re.escape(flag))
    found = re.match(pattern, message)
    assert found, message
    return float(found[1]), float(found[2])


def test_a_forward_hook_the_stock_model_cannot_carry_is_refused_naming_its_chain(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "earlier.txt").write_text("an earlier export")
    model = trained()
    # the shortcut conv of layer2: the chains after it see its output, in the op and the stock model alike
    model.layer2[0].downsample[0].register_forward_hook(lambda module, inputs, output: output + 0.1)
    with pytest.raises(ExportError) as caught:
        export_collapsed(model, tmp_path / "out", force=True, metadata=METADATA)
    model_error, layer_error = not_exact(
        str(caught.value), "resnet18_op_d2", "layer2.0.downsample.0", "OverparamConv2d -> Conv2d"
    )
    assert model_error > 1e-3 and layer_error > 1e-3
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["earlier.txt"]  # what --force would replace, untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary folder either
    with pytest.raises(ExportError, match="first at layer2.0.downsample.0"):
        ExportOnSave(tmp_path / "hook")(model, "last")  # the Python save hook goes through the same check
    assert not (tmp_path / "hook" / "collapsed-last").exists()


def test_each_chain_matches_its_stock_layer_to_rounding_when_the_collapse_is_exact():
    """The per-layer check that names the culprit: a bias-free conv whose chain has batch norm
    inside gains a bias the collapse folds into the next BatchNorm; the check adds it back."""
    base = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1, bias=False),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(8 * 6 * 6, 4),
    )
    op = overparameterize(base, depth=2, batch_norm=True).double()
    for chain in (op[0], op[4]):
        randomize_(chain)
    op.train()(torch.randn(4, 3, 6, 6, dtype=torch.float64))  # moves the batch norms' statistics
    op.eval()
    stock = collapse(copy.deepcopy(op))
    assert stock[0].bias is None and op[0].bias is not None  # folded
    checks = chain_errors(op, stock, torch.randn(2, 3, 6, 6, dtype=torch.float64))
    assert [(c.path, c.kind) for c in checks] == [
        ("0", "OverparamConv2d -> Conv2d"),
        ("4", "OverparamLinear -> Linear"),
    ]
    assert max(c.error for c in checks) < 1e-12  # float64 rounding; without the folded bias, ~1


class TooLoud(OverparamLinear):
    """A plugin's chain for ``nn.Linear`` whose forward is 1.5x the layer its ``fuse()`` gives back:
    an approximate converter."""

    def forward(self, x):
        return 1.5 * super().forward(x)


LOUD_RECIPE = (
    "zoo: timm\nbases: [resnet18]\nvariants: [{depth: 2, tag: loud}]\nlayers: [{match: fc, types: [Linear]}]\n"
)


@pytest.fixture
def loud(tmp_path, register_plugin):
    """``resnet18_op_d2_loud``: resnet18 whose classifier is a :class:`TooLoud` chain, from a plugin."""
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "loud.yaml").write_text(LOUD_RECIPE)

    class Plugin:
        @hookimpl
        def overparam_zoo_recipe_paths(self):
            return [tmp_path / "recipes"]

        @hookimpl
        def overparam_zoo_converters(self):
            return {torch.nn.Linear: lambda module, **options: from_stock(module, chain_class=TooLoud, **options)}

    register_plugin(Plugin(), name="loud-plugin")
    assert "resnet18_op_d2_loud" in register_all()
    model = trained("resnet18_op_d2_loud")
    assert type(model.fc) is TooLoud and type(model.layer1[0].conv1) is torch.nn.Conv2d
    return model


def test_a_converter_whose_fuse_is_not_its_forward_is_refused_unless_allowed(tmp_path, loud, capsys, monkeypatch):
    monkeypatch.setenv("OVERPARAM_ZOO_PROGRESS", "off")
    with pytest.raises(ExportError) as caught:
        export_collapsed(loud, tmp_path / "out", metadata=METADATA)
    model_error, layer_error = not_exact(str(caught.value), "resnet18_op_d2_loud", "fc", "TooLoud -> Linear")
    assert (model_error, layer_error) == (3.3e-01, 5.0e-01)  # 0.5y relative to 1.5y, and to y, as printed
    assert_nothing_written(tmp_path)

    # the CLI: one line naming the flag, nothing written; with the flag, exported and recorded
    torch.save(
        {"state_dict": loud.state_dict(), "args": argparse.Namespace(model="resnet18_op_d2_loud")}, tmp_path / "w.pth"
    )
    argv = ["export", str(tmp_path / "w.pth"), "--out", str(tmp_path / "out"), "--input-size", "3", "32", "32"]
    assert main(argv) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("overparam-zoo export: error: "), err
    not_exact(
        err[0].removeprefix("overparam-zoo export: error: "),
        "resnet18_op_d2_loud",
        "fc",
        "TooLoud -> Linear",
        flag="--allow-collapse-error ",
    )
    assert_nothing_written(tmp_path)
    assert main([*argv, "--allow-collapse-error", "0.1"]) == 1  # an allowance below the error does not do
    assert "above the 0.1 allowed; first at fc" in capsys.readouterr().err
    assert_nothing_written(tmp_path)
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    assert f"above the {COLLAPSE_ERROR_BOUND:g} an exact collapse meets" in " ".join(capsys.readouterr().out.split())
    assert main([*argv, "--allow-collapse-error", "0.5"]) == 0
    assert "(max collapse error 3.3e-01 in float64, allowed up to 0.5)" in capsys.readouterr().out
    provenance = json.loads((tmp_path / "out" / "config.json").read_text())["overparam_zoo"]
    assert provenance["allowed_collapse_error"] == 0.5
    assert provenance["max_collapse_error"] == pytest.approx(1 / 3, rel=1e-6)
    card = (tmp_path / "out" / "README.md").read_text()
    assert "collapsed approximately (see the collapse error under Provenance)" in card
    assert "**not an exact collapse**: exported with an allowed collapse error of 0.5" in card


def test_push_refuses_a_recorded_collapse_error_above_its_bound(tmp_path, loud, capsys, monkeypatch):
    monkeypatch.setenv("OVERPARAM_ZOO_PROGRESS", "off")
    result = export_collapsed(loud, tmp_path / "out", metadata=METADATA, allow_collapse_error=0.5)
    assert result.config["overparam_zoo"]["allowed_collapse_error"] == 0.5  # Python records it as the CLI does
    validate_export(tmp_path / "out")  # the allowance the export recorded covers it
    config_path = tmp_path / "out" / "config.json"
    config = json.loads(config_path.read_text())

    def push_with(provenance):
        config_path.write_text(json.dumps({**config, "overparam_zoo": provenance}))
        with pytest.raises(PublishError) as caught:
            validate_export(tmp_path / "out")
        return str(caught.value)

    recorded = config["overparam_zoo"]
    without = {k: v for k, v in recorded.items() if k != "allowed_collapse_error"}  # an inexact folder from before
    assert push_with(without) == (
        f"{config_path} records a collapse error of 3.3e-01, above the bound 1e-06 of an exact collapse: these weights "
        "do not compute what the op model computed, so they are not published; export the checkpoint again (the "
        "export names the first layer that disagrees)"
    )
    assert "above the 0.1 its export allowed" in push_with({**recorded, "allowed_collapse_error": 0.1})
    assert main(["push", str(tmp_path / "out"), "--repo-id", "someone/x", "--dry-run"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "so they are not published" in err[0], err


def test_the_train_py_hook_skips_an_inexact_epoch_and_training_goes_on(tmp_path, loud, checkpoint_saver_hook, caplog):
    from timm.utils import CheckpointSaver

    saver = CheckpointSaver(
        loud, torch.optim.SGD(loud.parameters(), lr=0.1), checkpoint_dir=str(tmp_path), max_history=2
    )
    with caplog.at_level(logging.WARNING, logger="overparam_zoo"):
        saver.save_checkpoint(0, metric=1.0)  # returns: the run goes on
    assert (tmp_path / "checkpoint-0.pth.tar").is_file()
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "skipped the export of epoch 0 (collapsed-last, collapsed-best)" in warning
    assert (
        "the collapse of resnet18_op_d2_loud is not exact" in warning and "first at fc (TooLoud -> Linear)" in warning
    )
    assert not [p.name for p in tmp_path.iterdir() if "collapsed" in p.name]


def test_compare_refuses_an_inexact_op_model_before_training_it(tmp_path, loud):
    from overparam_zoo.experiments.compare import run_compare
    from overparam_zoo.experiments.training import TrainSettings

    settings = TrainSettings(epochs=1, batch_size=12, input_size=16, warmup_epochs=0, threads=1)
    with pytest.raises(CompareError) as caught:
        run_compare(["resnet18_op_d2_loud"], seeds=1, settings=settings, out=tmp_path / "out", figure=False)
    prefix = "resnet18_op_d2_loud could not be exported after training, so it is not trained: "
    assert str(caught.value).startswith(prefix)
    not_exact(str(caught.value).removeprefix(prefix), "resnet18_op_d2_loud", "fc", "TooLoud -> Linear")
    assert not (tmp_path / "out").exists()  # nothing trained, resnet18 included


class Payload:
    """What an attacker puts in a checkpoint: unpickling it would create a file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickled_object_is_refused_unexecuted_with_our_message(tmp_path, capsys):
    marker = tmp_path / "executed"
    state = trained().state_dict()
    torch.save({"state_dict": state, "extra": Payload(str(marker))}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError) as caught:
        read_checkpoint(tmp_path / "evil.pth")
    message = str(caught.value)
    assert not marker.exists()  # nothing in the file ran
    assert "\n" not in message and caught.value.__cause__ is None and caught.value.__suppress_context__
    assert "holds a pickled Python object (io.open)" in message or "holds a pickled Python object (open)" in message
    assert "was not loaded and nothing in it was executed" in message
    assert "add_safe_globals" not in message and "Re-running" not in message  # not torch's advice

    assert main(["export", str(tmp_path / "evil.pth"), "--model", "resnet18_op_d2", "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("overparam-zoo export: error: ") and "nothing in it was executed" in err
    assert not marker.exists() and not (tmp_path / "o").exists()


def test_the_conversion_the_message_gives_works_on_a_trusted_file(tmp_path):
    model = trained()
    # a harmless Python object (not a tensor, so it takes unpickling to read) in a file the user trusts
    torch.save({"state_dict": model.state_dict(), "ratio": Fraction(1, 3)}, tmp_path / "trusted.pth")
    with pytest.raises(CheckpointError, match=r"holds a pickled Python object \(fractions\.Fraction\)") as caught:
        read_checkpoint(tmp_path / "trusted.pth")
    snippet = re.search(r"`(import torch, safetensors\.torch;.*?)`", str(caught.value)).group(1)
    # the user, trusting the file, runs the snippet as the message gives it
    result = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    converted = str(tmp_path / "model.safetensors")
    assert main(["export", converted, "--model", "resnet18_op_d2", "--out", str(tmp_path / "out")]) == 0
    stock = timm.create_model(f"local-dir:{tmp_path / 'out'}", pretrained=True).eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        assert torch.allclose(stock(x), model(x), rtol=1e-4, atol=1e-5)
