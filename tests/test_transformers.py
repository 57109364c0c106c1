"""Exports in Hugging Face transformers: ``AutoModelForImageClassification``, ``AutoImageProcessor``
and ``pipeline("image-classification")`` load every export, from a folder and from a hub cache
laid out on disk with the hub offline, and predict what plain timm predicts on real images
(scikit-learn's digits), each consumer with its own preprocessing. Everything is the real
library: transformers builds ``timm.create_model(architecture, num_classes=num_labels,
**model_args)`` from ``config.json``, so a ``model_args`` that repeats ``num_classes`` fails here.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import timm
import torch
from huggingface_hub import constants
from PIL import Image
from sklearn.datasets import load_digits
from transformers import (
    AutoImageProcessor,
    AutoModelForImageClassification,
    TimmWrapperForImageClassification,
    pipeline,
)

from overparam import OverparamChain
from overparam_zoo.cli import main
from overparam_zoo.sharing.export import export_collapsed
from overparam_zoo.sharing.metadata import ExportMetadata

from .helpers import randomize_, relative_error

LABELS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
COMMIT = "89abcdef0123456789abcdef0123456789abcdef"
SIZE = 32


def digits(count=6):
    """Real images: the first scikit-learn digits (8x8, 16 grey levels), upsampled to 32x32 grayscale."""
    data = load_digits()
    return [
        Image.fromarray((data.images[i] * 255 / 16).astype(np.uint8), mode="L").resize((SIZE, SIZE), Image.BILINEAR)
        for i in range(count)
    ]


def trained(chans=3):
    """An op model with non-trivial chains and moved BN statistics, so every image gets its own logits."""
    model = timm.create_model("resnet18_op_d2", num_classes=len(LABELS), in_chans=chans)
    for m in model.modules():
        if isinstance(m, OverparamChain):
            randomize_(m)
    model.train()(torch.randn(4, chans, SIZE, SIZE, generator=torch.Generator().manual_seed(0)))
    return model.eval()


def preprocessing(chans):
    return dict(
        input_size=(chans, SIZE, SIZE),
        mean=(0.5,) * chans,
        std=(0.25,) * chans,
        interpolation="bilinear",
        crop_pct=1.0,
        crop_mode="center",
    )


def export(tmp_path, chans=3, name="export"):
    model = trained(chans)
    metadata = ExportMetadata(data_config=preprocessing(chans), label_names=LABELS)
    export_collapsed(model, tmp_path / name, metadata=metadata)
    return tmp_path / name, model


def timm_logits(source, images):
    """What plain timm predicts: the folder loaded by timm, its own data config and transform."""
    model = timm.create_model(source, pretrained=True).eval()
    transform = timm.data.create_transform(**timm.data.resolve_data_config(model=model), is_training=False)
    x = torch.stack([transform(image) for image in images])
    with torch.no_grad():
        return model(x), x


def transformers_logits(source, images):
    model = AutoModelForImageClassification.from_pretrained(source).eval()
    processor = AutoImageProcessor.from_pretrained(source)
    x = processor(images)["pixel_values"]
    with torch.no_grad():
        return model(pixel_values=x).logits, x, model


def assert_pipeline_agrees(source, inputs, logits):
    """The pipeline's labels and scores are timm's softmax over the run's label names."""
    classifier = pipeline("image-classification", model=source)
    for given, expected in zip(inputs, logits.softmax(-1)):
        scores = {row["label"]: row["score"] for row in classifier(given, top_k=len(LABELS))}
        assert set(scores) == set(LABELS)
        assert max(abs(scores[label] - float(p)) for label, p in zip(LABELS, expected)) < 1e-6


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty Hugging Face home and cache, the hub offline (huggingface_hub and transformers read
    `constants` at call time), a token that is no real one (push rewrites the card, then fails offline)."""
    home = tmp_path / "hf"
    (home / "hub").mkdir(parents=True)
    for name, value in (("HF_HOME", home), ("HF_HUB_CACHE", home / "hub"), ("HF_HUB_OFFLINE", "1")):
        monkeypatch.setenv(name, str(value))
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return home / "hub"


def put_in_hub_cache(folder, cache, repo_id):
    """Lay out ``folder`` as huggingface_hub caches a downloaded model repository."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(folder, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)


def test_export_loads_in_transformers_and_predicts_what_timm_predicts(tmp_path):
    folder, op = export(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    assert "num_classes" not in config.get("model_args", {})  # transformers passes it itself
    images = [image.convert("RGB") for image in digits()]
    expected, timm_x = timm_logits(f"local-dir:{folder}", images)
    with torch.no_grad():
        assert relative_error(expected, op(timm_x)) < 1e-5  # the trained weights, collapsed

    logits, x, model = transformers_logits(str(folder), images)
    assert isinstance(model, TimmWrapperForImageClassification)
    assert model.config.id2label == dict(enumerate(LABELS))
    assert model.config.label2id == {name: i for i, name in enumerate(LABELS)}
    assert torch.equal(x, timm_x)  # AutoImageProcessor resolves the export's data config as timm does
    assert torch.equal(logits, expected)
    assert_pipeline_agrees(str(folder), images, expected)


def test_export_loads_in_transformers_from_an_offline_hub_cache(tmp_path, offline_hub):
    folder, op = export(tmp_path)
    put_in_hub_cache(folder, offline_hub, "someone/digits-resnet18")
    images = [image.convert("RGB") for image in digits(4)]
    expected, _ = timm_logits("hf-hub:someone/digits-resnet18", images)
    logits, x, model = transformers_logits("someone/digits-resnet18", images)
    with torch.no_grad():
        assert relative_error(logits, op(x)) < 1e-5  # what the op model predicts on transformers' input
    assert torch.equal(logits, expected) and model.config.id2label[3] == "three"
    assert_pipeline_agrees("someone/digits-resnet18", images, expected)


def test_one_channel_export_in_transformers(tmp_path):
    """The image processor keeps a grayscale PIL image as it is; the pipeline makes PIL images RGB,
    so it is given H x W x 1 arrays, as the card says."""
    folder, op = export(tmp_path, chans=1)
    assert json.loads((folder / "config.json").read_text())["model_args"]["in_chans"] == 1
    images = digits()
    expected, timm_x = timm_logits(f"local-dir:{folder}", images)
    logits, x, _ = transformers_logits(str(folder), images)
    assert x.shape[1] == 1 and torch.equal(x, timm_x) and torch.equal(logits, expected)
    with torch.no_grad():
        assert relative_error(logits, op(x)) < 1e-5  # what the op model predicts on transformers' input
    assert_pipeline_agrees(str(folder), [np.asarray(image)[:, :, None] for image in images], expected)
    card = (folder / "README.md").read_text()
    assert "numpy.asarray(image)[:, :, None]" in card and 'convert("L")' in card


def train_py_args(tmp_path, **overrides):
    """train.py's ``args`` for a digits run with a class map, as its checkpoints carry them."""
    (tmp_path / "data" / "train").mkdir(parents=True, exist_ok=True)
    (tmp_path / "data" / "train" / "classes.txt").write_text("\n".join(LABELS) + "\n")
    args = dict(
        data_dir=str(tmp_path / "data"),
        train_split="train",
        class_map="classes.txt",
        model="resnet18_op_d2",
        num_classes=len(LABELS),
        img_size=SIZE,
        mean=[0.5] * 3,
        std=[0.25] * 3,
        interpolation="bilinear",
        crop_pct=1.0,
        eval_metric="top1",
    )
    return argparse.Namespace(**{**args, **overrides})


def test_cli_and_train_py_hook_exports_load_in_transformers(tmp_path, checkpoint_saver_hook):
    from timm.utils import CheckpointSaver

    model = trained()
    args = train_py_args(tmp_path)
    torch.save({"epoch": 0, "state_dict": model.state_dict(), "args": args}, tmp_path / "last.pth.tar")
    assert main(["export", str(tmp_path / "last.pth.tar"), "--out", str(tmp_path / "cli")]) == 0

    run = tmp_path / "run"
    run.mkdir()
    saver = CheckpointSaver(model, torch.optim.SGD(model.parameters(), lr=0.1), args=args, checkpoint_dir=str(run))
    saver.save_checkpoint(0, metric=1.0)

    images = [image.convert("RGB") for image in digits(3)]
    for folder in (tmp_path / "cli", run / "collapsed-last", run / "collapsed-best"):
        expected, _ = timm_logits(f"local-dir:{folder}", images)
        logits, x, hf = transformers_logits(str(folder), images)
        with torch.no_grad():
            assert relative_error(logits, model(x)) < 1e-5, folder  # the op model's prediction on that input
        assert torch.equal(logits, expected), folder
        assert hf.config.id2label == dict(enumerate(LABELS)), folder


def card_snippet(folder):
    card = (folder / "README.md").read_text()
    section = card.split("### With Hugging Face transformers", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_the_card_snippet_runs_in_a_fresh_interpreter_without_overparam(tmp_path, offline_hub):
    """The card's transformers code, as a user copies it, from the hub cache with the hub offline."""
    folder, _ = export(tmp_path)
    image = digits(1)[0].convert("RGB")
    image.save(tmp_path / "image.png")
    expected, _ = timm_logits(f"local-dir:{folder}", [image])
    guard = (
        "import sys\nclass _Block:\n    def find_spec(self, name, *a):\n        if name.startswith('overparam'):\n"
        "            raise ImportError('blocked ' + name)\nsys.meta_path.insert(0, _Block())\n"
    )
    assert main(["push", str(folder), "--repo-id", "someone/digits-resnet18"]) == 1  # offline: card rewritten only
    code = card_snippet(folder)
    assert "OWNER/NAME" not in code and code.count('"someone/digits-resnet18"') == 3
    put_in_hub_cache(folder, offline_hub, "someone/digits-resnet18")
    env = {**os.environ, "HF_HUB_CACHE": str(offline_hub), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", guard + code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    top = LABELS[int(expected.argmax(-1))]
    assert lines[-1] == top
    assert lines[-2].startswith(f"[{{'label': '{top}', 'score': ")  # the pipeline's top 3, best first
