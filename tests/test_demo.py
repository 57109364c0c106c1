"""The main job, shortened: a one-seed compare on the digits, its export reloaded with plain timm.

The slow test checks what a user of the export relies on: loaded the usual way
(``timm.create_model("local-dir:...", pretrained=True)``) and fed the real digits as PIL images
through timm's own transform built from the export's data config, it scores what the demo
reported. The fast ones check the refusals, which come before any training.
"""

import json
import warnings

import pytest
import timm
import torch

from overparam_zoo.cli import main
from overparam_zoo.experiments.compare import SCHEMA
from overparam_zoo.experiments.datasets import load_bundled
from overparam_zoo.experiments.demo import run_demo
from overparam_zoo.sharing.metadata import MetadataWarning

MODEL, BASE = "test_resnet_op_d2", "test_resnet"  # timm's tiny resnet: the demo's path at a fraction of its cost
TINY = ["--model", MODEL, "--epochs", "1", "--input-size", "16", "--threads", "1"]


@pytest.mark.slow
def test_demo_export_scores_what_the_demo_reported_when_loaded_the_usual_way(tmp_path, capsys):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run_demo(MODEL, epochs=1, out=tmp_path, input_size=16, threads=1)
    assert not [w for w in caught if issubclass(w.category, MetadataWarning)]
    assert [s["model"] for s in result.compare.summaries] == [BASE, MODEL]
    assert result.export_dir == tmp_path / "exports" / MODEL / "seed0"
    assert result.predictions_match and result.max_logit_difference < 1e-4
    assert result.fresh_top1 == result.reported_top1 == result.compare.runs[1]["top1"]

    digits = load_bundled("digits")
    config = json.loads((result.export_dir / "config.json").read_text())
    assert config["architecture"] == BASE and config["label_names"] == [str(k) for k in range(10)]
    cfg = config["pretrained_cfg"]
    assert (cfg["input_size"], cfg["interpolation"], cfg["crop_pct"], cfg["crop_mode"]) == (
        [1, 16, 16],
        "bilinear",
        1.0,
        "center",
    )
    assert cfg["mean"] == pytest.approx(digits.mean) and cfg["std"] == pytest.approx(digits.std)
    assert not any(k.startswith("test_") for k in cfg)  # nothing of the base's ImageNet weights

    model = timm.create_model(f"local-dir:{result.export_dir}", pretrained=True).eval()
    transform = timm.data.create_transform(**timm.data.resolve_data_config(model=model), is_training=False)
    images = [digits.test[i][0] for i in range(len(digits.test))]  # PIL images, mode "L"
    assert images[0].mode == "L" and images[0].size == (8, 8)
    with torch.no_grad():
        predicted = model(torch.stack([transform(image) for image in images])).argmax(1)
    top1 = float((predicted == torch.as_tensor(digits.test.targets)).double().mean())
    assert top1 == result.reported_top1

    # a rerun through the CLI replaces the previous demo's outputs and trains again
    assert main(["demo", *TINY, "--out", str(tmp_path)]) == 0
    stdout = capsys.readouterr().out
    assert f"| {BASE} " in stdout and "same predictions as the op model: yes" in stdout
    assert json.loads((tmp_path / "results.json").read_text())["complete"]


def _cli_error(argv, capsys):
    assert main(["demo", *argv]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("overparam-zoo demo: error: ")
    return err[0]


def test_demo_refuses_compare_outputs_that_are_not_a_previous_demos(tmp_path, capsys):
    (tmp_path / "results.json").write_text(json.dumps({"schema": SCHEMA, "data": {"name": "mnist5k"}}))
    (tmp_path / "x").write_text("keep")
    message = _cli_error([*TINY, "--out", str(tmp_path)], capsys)
    assert (
        f"--out {tmp_path}: holds results.json, not from a previous demo" in message
        and "or --force to replace" in message
    )
    assert (tmp_path / "x").read_text() == "keep" and (tmp_path / "results.json").is_file()


def test_demo_errors_name_flags_and_parameters(tmp_path, capsys):
    assert "--epochs 0: expected at least 1" in _cli_error([*TINY, "--epochs", "0", "--out", str(tmp_path)], capsys)
    assert "--model test_resnet: a stock timm model" in _cli_error(["--model", BASE, "--out", str(tmp_path)], capsys)
    from overparam_zoo.errors import CompareError, UnknownModelError

    with pytest.raises(CompareError, match=r"^input_size=0: expected at least 1$"):
        run_demo(MODEL, input_size=0, out=tmp_path)
    with pytest.raises(UnknownModelError, match="not a timm model"):
        run_demo("mobilenet_v3_small_op_d2", out=tmp_path)  # a torchvision variant: the demo reloads with timm
    assert not any(tmp_path.iterdir())


def test_a_fresh_process_that_cannot_load_the_export_is_one_line(tmp_path):
    """The demo's last check, on an export plain timm cannot load (its weights file cut short)."""
    import numpy as np

    from overparam_zoo.errors import CompareError
    from overparam_zoo.experiments.demo import _fresh_process_logits
    from overparam_zoo.sharing.export import export_collapsed

    model = timm.create_model(MODEL, num_classes=10, in_chans=1).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetadataWarning)  # the base's preprocessing: not what this test is about
        export = export_collapsed(model, tmp_path / "export").out_dir
    weights = export / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CompareError) as caught:
        _fresh_process_logits(export, np.zeros((2, 8, 8), dtype=np.uint8))
    message = str(caught.value)
    assert message.startswith(f"plain timm could not load and run {export} in a fresh process: ")
    assert "\n" not in message and "safetensors" in message.lower(), message
