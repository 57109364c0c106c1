"""The export folder's one owner, the public API, and what each zoo's own discovery finds.

- Every command reads an export folder through ``ExportFolder``: the package holds its file
  names in one module, a bad folder is the same one-line error whichever command meets it, and
  ``overparam-zoo export`` reads its checkpoint once and writes ``config.json`` once.
- ``overparam_zoo``'s ``__all__`` is importable and is the API README and docs use.
- torchvision's ``get_model_weights``/``get_model(..., weights=...)`` work on variants, with
  weights from a local torch hub cache: nothing is downloaded.
- Private timm/torchvision API is looked up, and the path without it is tested too.
"""

import argparse
import ast
import importlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from PIL import Image

import overparam
import overparam_zoo
from overparam_zoo import ExportFolder, ExportFolderError, create_model, export_collapsed
from overparam_zoo.checkpoints import folder as folder_module
from overparam_zoo.cli import main
from overparam_zoo.errors import ExportError
from overparam_zoo.registry.zoos import TimmZoo, get_zoo
from overparam_zoo.sharing.metadata import ExportMetadata

from .helpers import relative_error

ROOT = Path(__file__).resolve().parents[1]
PREPROCESSING = ExportMetadata(
    data_config=dict(
        input_size=(3, 32, 32),
        crop_pct=1.0,
        interpolation="bilinear",
        mean=(0.5,) * 3,
        std=(0.5,) * 3,
        crop_mode="center",
    )
)


@pytest.fixture(scope="module")
def timm_export(tmp_path_factory):
    model = create_model("test_resnet_op_d2", num_classes=3).eval()
    return export_collapsed(model, tmp_path_factory.mktemp("timm") / "out", metadata=PREPROCESSING).out_dir


def copy_of(folder, tmp_path, name="copy"):
    target = tmp_path / name
    shutil.copytree(folder, target)
    return target


# --------------------------------------------------------------------------- one owner
def test_only_the_folder_module_names_the_export_files():
    """The file names are string constants in one module; any other module takes them from it."""
    names = {folder_module.WEIGHTS_NAME, folder_module.CONFIG_NAME, folder_module.CARD_NAME, folder_module.INT8_NAME}
    holders = set()
    for path in sorted((ROOT / "overparam_zoo").rglob("*.py")):
        tree = ast.parse(path.read_text())
        if any(isinstance(n, ast.Constant) and n.value in names for n in ast.walk(tree)):
            holders.add(path.relative_to(ROOT).as_posix())
    assert holders == {"overparam_zoo/checkpoints/folder.py"}


def test_the_folder_answers_which_zoo_and_what_it_holds(timm_export, tmp_path):
    export = ExportFolder.open(timm_export)
    assert (export.zoo, export.architecture, export.num_classes) == ("timm", "test_resnet", 3)
    assert export.provenance["variant"] == "test_resnet_op_d2"
    assert export.pretrained_cfg["input_size"] == [3, 32, 32]
    assert ExportFolder.names_beside(timm_export / "model.safetensors") == ["test_resnet_op_d2", "test_resnet"]
    assert ExportFolder.names_beside(tmp_path / "weights.pth") == []
    stock = export.load_model()
    reference = timm.create_model("test_resnet", num_classes=3).eval()
    reference.load_state_dict(export.read_weights(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(stock(x), reference(x))
    assert export.transform()(Image.new("RGB", (40, 40))).shape == (3, 32, 32)

    tv_model = create_model("alexnet_op_d2", zoo="torchvision", num_classes=2).eval()
    tv = ExportFolder.open(export_collapsed(tv_model, tmp_path / "tv", metadata=ExportMetadata()).out_dir)
    assert (tv.zoo, tv.architecture) == ("torchvision", "alexnet")
    assert tv.config["zoo"] == tv.provenance["zoo"] == "torchvision"
    with pytest.raises(ExportFolderError, match="a torchvision export records no preprocessing"):
        tv.transform()
    assert isinstance(tv.load_model(), torchvision.models.AlexNet)


def test_record_adds_to_the_provenance_and_keeps_the_rest(timm_export, tmp_path):
    folder = copy_of(timm_export, tmp_path)
    before = json.loads((folder / "config.json").read_text())
    config = ExportFolder.open(folder).record("note", {"a": 1})
    assert json.loads((folder / "config.json").read_text()) == config
    assert config["overparam_zoo"] == {**before["overparam_zoo"], "note": {"a": 1}}
    assert {k: v for k, v in config.items() if k != "overparam_zoo"} == {
        k: v for k, v in before.items() if k != "overparam_zoo"
    }


@pytest.mark.parametrize(
    ("spoil", "expected"),
    [
        (lambda f: (f / "config.json").write_text("{"), "config.json: not readable JSON (JSONDecodeError: "),
        (lambda f: (f / "model.safetensors").unlink(), " lacks model.safetensors; expected "),
        (lambda f: (f / "model.safetensors").write_bytes(b"\x08" + b"\x00" * 7 + b"garbage!"), "not a readable"),
    ],
    ids=["config-not-json", "no-weights", "weights-unreadable"],
)
def test_a_bad_folder_is_the_same_error_whichever_command_meets_it(
    timm_export, tmp_path, capsys, monkeypatch, spoil, expected
):
    monkeypatch.setenv("OVERPARAM_ZOO_PROGRESS", "off")
    pytest.importorskip("huggingface_hub")
    pytest.importorskip("torchao")
    folder = copy_of(timm_export, tmp_path)
    spoil(folder)
    errors = {}
    for command in (["push", str(folder), "--repo-id", "someone/x", "--dry-run"], ["quantize", str(folder)]):
        capsys.readouterr()
        assert main(command) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, err
        errors[command[0]] = err[0].split(": error: ", 1)[1]
    with pytest.raises(ExportFolderError) as caught:
        ExportFolder.open(folder).load_model()
    assert errors["push"] == errors["quantize"] == str(caught.value)
    assert expected in str(caught.value)


def test_export_with_a_timm_without_its_config_writer(tmp_path, monkeypatch):
    """The private config writer is looked up: without it, a one-line error and nothing written."""
    import timm.models._hub

    monkeypatch.delattr(timm.models._hub, "save_config_for_hf")
    model = create_model("test_resnet_op_d2", num_classes=3).eval()
    with pytest.raises(ExportError, match=r"^this timm has no config writer \(timm.models._hub.save_config_for_hf\)"):
        export_collapsed(model, tmp_path / "out", metadata=PREPROCESSING)
    assert list(tmp_path.iterdir()) == []


_COUNT = """
import os, sys
checkpoint, out = os.path.realpath(sys.argv[1]), os.path.realpath(sys.argv[2])
counts = {"checkpoint opens": 0, "config.json writes": 0}
def audit(event, args):
    if event == "open" and isinstance(args[0], str):
        path = os.path.realpath(args[0])
        mode = args[1] if isinstance(args[1], str) else "r"
        if path == checkpoint:
            counts["checkpoint opens"] += 1
        elif os.path.basename(path) == "config.json" and path.startswith(os.path.dirname(out)) and "w" in mode:
            counts["config.json writes"] += 1
sys.addaudithook(audit)
from overparam_zoo.cli import main
assert main(["export", checkpoint, "--out", out]) == 0
print(counts)
"""


def test_the_export_command_reads_its_checkpoint_once_and_writes_config_once(tmp_path):
    model = timm.create_model("test_resnet_op_d2", num_classes=3)
    args = argparse.Namespace(model="test_resnet_op_d2", input_size=[3, 32, 32], crop_pct=1.0, num_classes=3)
    torch.save({"epoch": 1, "state_dict": model.state_dict(), "args": args}, tmp_path / "checkpoint-1.pth.tar")
    result = subprocess.run(
        [sys.executable, "-c", _COUNT, str(tmp_path / "checkpoint-1.pth.tar"), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OVERPARAM_ZOO_PROGRESS": "off"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "{'checkpoint opens': 1, 'config.json writes': 1}"
    assert ExportFolder.open(tmp_path / "out").pretrained_cfg["input_size"] == [3, 32, 32]  # the args were read


# --------------------------------------------------------------------------- public API, types, version
def test_the_public_api_is_importable_and_is_what_the_modules_define():
    assert len(overparam_zoo.__all__) == len(set(overparam_zoo.__all__))
    for name in overparam_zoo.__all__:
        assert getattr(overparam_zoo, name) is not None, name
    assert overparam_zoo.export_collapsed is importlib.import_module("overparam_zoo.sharing.export").export_collapsed
    for name in overparam.__all__:
        assert getattr(overparam, name) is not None, name


def test_one_version_everywhere():
    assert overparam.__version__ == overparam_zoo.__version__ == importlib.metadata.version("overparam-zoo")
    assert (ROOT / "overparam" / "py.typed").is_file() and (ROOT / "overparam_zoo" / "py.typed").is_file()


def test_readme_and_examples_import_only_the_public_api():
    """README, docs and examples import from ``overparam`` and ``overparam_zoo`` (and the module
    timm's train.py names), never from the files behind them."""
    allowed = {"overparam", "overparam_zoo", "overparam_zoo.export_on_save", "overparam_zoo.cli"}
    texts = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), *sorted((ROOT / "examples").glob("*.py"))]
    found = set()
    for path in texts:
        for module in re.findall(r"(?:from|import)\s+(overparam(?:_zoo)?(?:\.\w+)*)", path.read_text()):
            found.add((path.name, module))
    assert {m for _, m in found} <= allowed, sorted(found)


# --------------------------------------------------------------------------- torchvision discovery
def test_get_model_weights_of_a_variant_is_the_bases_enum():
    for variant, base in (
        ("alexnet_op_d2", "alexnet"),
        ("resnet18_op_d2", "resnet18"),
        ("squeezenet1_1_op_d4", "squeezenet1_1"),
    ):
        assert torchvision.models.get_model_weights(variant) is torchvision.models.get_model_weights(base)
    builder = torchvision.models.get_model_builder("alexnet_op_d2")
    assert importlib.import_module(builder.__module__) is importlib.import_module("overparam_zoo.registry.op_models")
    assert "alexnet_op_d2" not in torchvision.models.list_models(module=torchvision.models)  # not a stock model


def test_get_model_with_weights_expands_them_exactly_from_a_local_cache(tmp_path, monkeypatch):
    """``weights=`` on a variant loads the base's weights the way torchvision does (its hub cache:
    a file placed there is used, nothing is downloaded), then expands them exactly into the chains."""
    weights = torchvision.models.SqueezeNet1_1_Weights.IMAGENET1K_V1
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.manual_seed(0)
    stock = torchvision.models.squeezenet1_1(num_classes=1000).eval()
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    cached.parent.mkdir(parents=True)
    torch.save(stock.state_dict(), cached)
    before = cached.read_bytes()
    for given in (weights, "DEFAULT", "IMAGENET1K_V1"):
        op = torchvision.models.get_model("squeezenet1_1_op_d2", weights=given).eval()
        assert op.features[0].depth == 2
        x = torch.randn(2, 3, 64, 64)
        with torch.no_grad():
            assert relative_error(op(x), stock(x)) < 1e-4, given
    assert cached.read_bytes() == before and sorted(p.name for p in cached.parent.iterdir()) == [cached.name]


# --------------------------------------------------------------------------- private API, both sides
def test_timm_input_size_with_and_without_get_model_input_config(monkeypatch):
    import timm.models

    model = timm.create_model("resnet18", in_chans=1, num_classes=2)
    public = getattr(timm.models, "get_model_input_config", None)
    if public is not None:  # this timm has it: the size the model is built for now
        assert get_zoo("timm").input_size(model) == tuple(public(model)["input_size"]) == (1, 224, 224)
        monkeypatch.delattr(timm.models, "get_model_input_config")
    # an older timm's answer: the pretrained cfg's size, with the channels of the first conv it names
    assert model.pretrained_cfg["input_size"] == (3, 224, 224)
    assert TimmZoo().input_size(model) == (1, 224, 224)
