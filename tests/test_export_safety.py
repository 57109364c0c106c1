"""Exports that can be trusted: a diverged run (NaN or Inf in the weights, the collapse or the
probe output) is never exported nor pushed, the train.py save hook skips it without ending the
run, and a checkpoint holding pickled Python objects is refused unexecuted with our own message."""

import argparse
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

from overparam import OverparamChain
from overparam_zoo.checkpoints.reading import read_checkpoint
from overparam_zoo.cli import main
from overparam_zoo.errors import CheckpointError, ExportError, PublishError
from overparam_zoo.sharing.export import export_collapsed
from overparam_zoo.sharing.metadata import ExportMetadata
from overparam_zoo.sharing.publish import validate_export

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
