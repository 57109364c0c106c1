"""INT8 through torchao PT2E: the real quantizer on small real models and real digits.

The fast tests use untrained exports of ``test_resnet`` (bad input, the op-model path); the slow
ones train ``test_resnet_op_d2`` briefly on the digits so that accuracy means something.
"""

import argparse
import copy
import hashlib
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from overparam import OverparamChain, OverparamConv2d, collapse
from overparam_zoo.checkpoints.folder import INT8_NAME, ExportFolder
from overparam_zoo.cli import main
from overparam_zoo.errors import ExportFolderError, QuantizeError
from overparam_zoo.experiments.datasets import ArrayImageDataset, load_bundled
from overparam_zoo.registry.variants import create_model
from overparam_zoo.sharing.export import export_collapsed
from overparam_zoo.sharing.metadata import ExportMetadata
from overparam_zoo.sharing.quantize import (
    image_batches,
    quantize_export,
    quantize_model,
    record_int8,
)

from .helpers import int8_layers, tiny_op_net

pytest.importorskip("torchao")

SIZE = 16  # the digits are 8x8; 16x16 keeps test_resnet's feature maps non-trivial and cheap
MAX_DROP, MIN_AGREEMENT = 0.03, 0.95
"""INT8 is close to float32: a short real training on the digits gives a drop of ~0.003 and
~99.7% agreement; calibrating on zeros gives chance (top-1 ~0.10), far outside."""


BILINEAR_CENTER = dict(interpolation="bilinear", crop_mode="center")


def close_to_float32(acc) -> bool:
    return abs(acc.drop) <= MAX_DROP and acc.agreement >= MIN_AGREEMENT


def digits_export(out, model, data):
    metadata = ExportMetadata(
        data_config=dict(
            input_size=(data.in_chans, SIZE, SIZE),
            mean=data.mean,
            std=data.std,
            crop_pct=1.0,
            interpolation="bilinear",
            crop_mode="center",
        )
    )
    return export_collapsed(model, out, metadata=metadata).out_dir


def snapshot(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def digits():
    return load_bundled("digits")


@pytest.fixture(scope="module")
def untrained_export(tmp_path_factory, digits):
    """An untrained (but real) export that takes the digits: 1 channel, 10 classes."""
    torch.manual_seed(0)
    model = create_model("test_resnet_op_d2", num_classes=10, in_chans=1)
    return digits_export(tmp_path_factory.mktemp("untrained") / "export", model.eval(), digits)


@pytest.fixture(scope="module")
def trained_export(tmp_path_factory, digits):
    """``test_resnet_op_d2`` after 3 epochs on the digits (~97% top-1), exported."""
    from overparam_zoo.experiments.training import TrainSettings, evaluate, make_loaders, train_model

    settings = TrainSettings(epochs=3, input_size=SIZE, warmup_epochs=0)
    train, test = make_loaders(digits, settings)
    torch.manual_seed(0)
    trained = train_model(create_model("test_resnet_op_d2", num_classes=10, in_chans=1), train, settings).model
    assert evaluate(trained, test, "cpu").top1 > 0.9  # well above chance (0.1)
    return digits_export(tmp_path_factory.mktemp("trained") / "export", trained.eval(), digits)


def copy_of(export, tmp_path):
    return shutil.copytree(export, tmp_path / "export")


# --- the op-model path a comparison calls per run (nothing written) -----------------------------


def test_every_conv_and_linear_of_the_int8_program_runs_on_int8():
    """The program quantize_model returns is INT8 where it counts: each conv and linear of the
    collapsed op model (BN folded into its conv) takes a quantized activation and an int8 weight
    constant; none is left in float."""
    torch.manual_seed(0)
    model = create_model("test_resnet_op_d2", num_classes=10, in_chans=1).eval()
    gen = torch.Generator().manual_seed(0)
    batch = (torch.randn(8, 1, SIZE, SIZE, generator=gen), torch.zeros(8, dtype=torch.long))
    quantized = quantize_model(model, [batch], [batch])
    stock = collapse(copy.deepcopy(model))
    int8, other = int8_layers(quantized.program)
    assert other == [] and len(int8) == sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in stock.modules()) == 16
    assert any(isinstance(m, OverparamChain) for m in model.modules())  # the op model itself is untouched


def test_quantize_model_measures_its_program_against_float32_on_labels_of_their_own():
    """float32 and INT8 top-1 and their agreement are those of the float model and of the program
    returned, on labels that are not the float model's predictions. The data make the three
    differ: per-image offsets vary an untrained net's predictions, and calibrating without them
    makes INT8 clip, so it disagrees with float32 on some images."""
    model = tiny_op_net(batch_norm=True).eval()
    gen = torch.Generator().manual_seed(0)
    calibration = [(torch.randn(8, 3, SIZE, SIZE, generator=gen), torch.zeros(8, dtype=torch.long)) for _ in range(2)]
    x = torch.randn(48, 3, SIZE, SIZE, generator=gen) + 3 * torch.randn(48, 3, 1, 1, generator=gen)
    targets = torch.randint(0, 10, (48,), generator=gen)
    quantized = quantize_model(model, calibration, [(x[:5], targets[:5]), (x[5:], targets[5:])])
    assert [len(found) for found in int8_layers(quantized.program)] == [3, 0]
    int8 = quantized.program.module()
    with torch.no_grad():
        float_predicted, int8_predicted = model(x).argmax(1), int8(x).argmax(1)
        one_by_one = torch.cat([int8(x[i : i + 1]) for i in range(len(x))]).argmax(1)  # batch 1 too
    assert torch.equal(int8_predicted, one_by_one)
    acc = quantized.accuracy
    assert (acc.calibration_images, acc.evaluation_images) == (16, 48)
    assert acc.float32_top1 == float((float_predicted == targets).double().mean())
    assert acc.int8_top1 == float((int8_predicted == targets).double().mean())
    assert acc.agreement == float((int8_predicted == float_predicted).double().mean())
    assert 0 < acc.agreement < 1 and acc.float32_top1 != acc.int8_top1  # the data can tell the measures apart


def test_quantize_model_refuses_empty_calibration_and_labels_out_of_range():
    model = create_model("test_resnet", num_classes=10, in_chans=1).eval()
    batch = (torch.randn(4, 1, SIZE, SIZE), torch.zeros(4, dtype=torch.long))
    with pytest.raises(QuantizeError, match="^calibration: no images"):
        quantize_model(model, [], [batch])
    with pytest.raises(QuantizeError, match="^calibration: class index 12 does not fit the model's 10 classes"):
        quantize_model(model, [(batch[0], torch.full((4,), 12))], [batch], num_classes=10)
    with pytest.raises(QuantizeError, match=r"^evaluation: no images"):
        quantize_model(model, [batch], [])


def test_quantize_model_refuses_batches_the_model_does_not_take():
    model = create_model("test_resnet", num_classes=10, in_chans=1).eval()
    batch = (torch.randn(4, 1, SIZE, SIZE), torch.zeros(4, dtype=torch.long))
    with pytest.raises(QuantizeError, match=r"^calibration: the model does not take images of shape \[2, 3, 16, 16\]"):
        quantize_model(model, [(torch.randn(4, 3, SIZE, SIZE), batch[1])], [batch])
    with pytest.raises(QuantizeError, match="^calibration: expected batches of float image tensors"):
        quantize_model(model, [(torch.randn(4, SIZE), batch[1])], [batch])
    with pytest.raises(QuantizeError, match=r"^evaluation: the model does not take images of shape \[4, 1, 20, 20\]"):
        quantize_model(model, [batch], [(torch.randn(4, 1, 20, 20), batch[1])])  # the program's size is fixed


class DataDependent(torch.nn.Module):
    """A branch on the input's values: torch.export cannot capture it."""

    def forward(self, x):
        return x.mean((2, 3)) if x.sum() > 0 else -x.mean((2, 3))


def test_quantize_model_refuses_models_it_cannot_quantize():
    batch = (torch.randn(4, 1, SIZE, SIZE), torch.zeros(4, dtype=torch.long))
    unfoldable = torch.nn.Sequential(OverparamConv2d(1, 4, 3, depth=2, batch_norm=True, bias=False), torch.nn.ReLU())
    with pytest.raises(QuantizeError, match="^model: cannot collapse it before quantizing: layer '0' gains a bias"):
        quantize_model(unfoldable, [batch], [batch])
    with pytest.raises(QuantizeError, match="^torch.export cannot capture DataDependent with a dynamic batch: "):
        quantize_model(DataDependent(), [batch], [batch])


def test_image_batches_refuses_what_it_cannot_batch(digits):
    with pytest.raises(QuantizeError, match="^limit: 0 images; expected at least 1"):
        image_batches(digits.train, lambda image: image, limit=0)
    with pytest.raises(QuantizeError, match="^dataset: a list has no transform attribute; expected a map-style"):
        image_batches([(0, 0)], lambda image: image)


# --- bad input: one line, nothing written ----------------------------------------------------------


@pytest.mark.parametrize("missing", ["config.json", "model.safetensors"])
def test_an_incomplete_export_folder_is_one_line_and_nothing_is_written(untrained_export, tmp_path, capsys, missing):
    folder = copy_of(untrained_export, tmp_path)
    (folder / missing).unlink()
    before = snapshot(folder)
    assert main(["quantize", str(folder), "--calibration-images", "8"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"overparam-zoo quantize: error: {folder} lacks {missing}; expected")
    assert snapshot(folder) == before


@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        (lambda f: (f / "config.json").write_text("{"), "config.json: not readable JSON"),
        (lambda f: (f / "config.json").write_text("[]"), "config.json: expected a JSON object"),
        (lambda f: edit_config(f, architecture=None), "config.json: 'architecture' is missing or not a str"),
        (lambda f: edit_config(f, architecture=3), "config.json: 'architecture' is missing or not a str"),
        (lambda f: edit_config(f, architecture="no_such_net"), "config.json names 'no_such_net', which is not a timm"),
        (lambda f: edit_config(f, num_classes=7), "model.safetensors does not load into test_resnet(num_classes=7): "),
        (lambda f: edit_config(f, model_args={"no_such_arg": 1}), "config.json does not build test_resnet: "),
        (
            lambda f: edit_config(f, zoo="torchvision", pretrained_cfg=None),
            "config.json: a torchvision export records no",
        ),
    ],
)
def test_a_broken_export_folder_is_one_line_and_nothing_is_written(untrained_export, tmp_path, capsys, spoil, message):
    folder = copy_of(untrained_export, tmp_path)
    spoil(folder)
    before = snapshot(folder)
    assert main(["quantize", str(folder), "--calibration-images", "8"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"overparam-zoo quantize: error: {folder / message.split(':')[0]}")
    assert message in err[0], err[0]
    assert snapshot(folder) == before
    with pytest.raises(ExportFolderError, match="is not a folder; expected the output folder of overparam-zoo export"):
        ExportFolder.open(folder / "README.md")


def edit_config(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    config = {k: v for k, v in config.items() if v is not None}
    (folder / "config.json").write_text(json.dumps(config))


def test_no_calibration_images_is_one_line_naming_the_flag(untrained_export, tmp_path, capsys, digits):
    folder = copy_of(untrained_export, tmp_path)
    before = snapshot(folder)
    assert main(["quantize", str(folder), "--calibration-images", "0"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["overparam-zoo quantize: error: --calibration-images 0: expected at least 1"]
    empty = ArrayImageDataset(np.zeros((0, 8, 8), np.uint8), np.zeros(0, np.int64))
    with pytest.raises(QuantizeError, match="^digits: the training split holds no images"):
        quantize_export(folder, empty, digits.test, data_name="digits")
    with pytest.raises(QuantizeError, match="^calibration_images: 0; expected at least 1"):
        quantize_export(folder, digits.train, digits.test, calibration_images=0)
    assert snapshot(folder) == before


def test_an_empty_train_folder_is_one_line(untrained_export, tmp_path, capsys):
    from PIL import Image

    data = tmp_path / "data"
    (data / "train" / "a").mkdir(parents=True)
    (data / "validation" / "a").mkdir(parents=True)
    Image.new("L", (8, 8)).save(data / "validation" / "a" / "0.png")
    folder = copy_of(untrained_export, tmp_path)
    before = snapshot(folder)
    assert main(["quantize", str(folder), "--data-dir", str(data)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"overparam-zoo quantize: error: --data-dir {data}: cannot read ")
    assert "no images" in err[0].lower() or "found 0" in err[0].lower(), err[0]
    assert snapshot(folder) == before


class NotImages(torch.utils.data.Dataset):
    transform = None

    def __len__(self):
        return 2

    def __getitem__(self, index):
        return "not an image", 0


def test_items_the_exports_preprocessing_cannot_take_are_one_line(untrained_export, tmp_path):
    folder = copy_of(untrained_export, tmp_path)
    before = snapshot(folder)
    with pytest.raises(QuantizeError, match="^strings images do not go through .*'s preprocessing: TypeError"):
        quantize_export(folder, NotImages(), NotImages(), data_name="strings")
    assert snapshot(folder) == before


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(num_classes=10, in_chans=3), "digits images have 1 channel(s); "),
        (dict(num_classes=5, in_chans=1), "digits has 10 classes; "),
    ],
)
def test_images_that_do_not_fit_the_export_are_one_line(tmp_path, capsys, digits, kwargs, message):
    model = create_model("test_resnet_op_d2", **kwargs).eval()
    folder = digits_export(tmp_path / "export", model, digits) if kwargs["in_chans"] == 1 else None
    if folder is None:  # a 3-channel export: the run's preprocessing keeps 3 channels
        metadata = ExportMetadata(
            data_config=dict(
                input_size=(3, SIZE, SIZE), crop_pct=1.0, mean=(0.5,) * 3, std=(0.25,) * 3, **BILINEAR_CENTER
            )
        )
        folder = export_collapsed(model, tmp_path / "export", metadata=metadata).out_dir
    before = snapshot(folder)
    assert main(["quantize", str(folder), "--calibration-images", "8"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"overparam-zoo quantize: error: {message}"), err
    assert snapshot(folder) == before


def test_without_torchao_the_command_names_the_extra(untrained_export):
    guard = (
        "import sys\nclass _Block:\n    def find_spec(self, name, *a):\n"
        "        if name.split('.')[0] == 'torchao':\n            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, _Block())\n"
        f"from overparam_zoo.cli import main\nsys.exit(main(['quantize', {str(untrained_export)!r}]))\n"
    )
    result = subprocess.run([sys.executable, "-c", guard], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "overparam-zoo quantize: error: overparam-zoo quantize needs torchao, which is not installed: "
        "pip install 'overparam-zoo[quantize]'"
    )


def train_py_folder(root):
    """timm train.py's layout: 6 train and 2 validation random 20x20 RGB PNGs for each of 3 classes."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", 6), ("validation", 2)):
        for c in range(3):
            (root / split / f"class{c}").mkdir(parents=True)
            for i in range(count):
                image = rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)
                Image.fromarray(image).save(root / split / f"class{c}" / f"{i}.png")
    return root


def test_an_image_folder_in_train_py_layout_calibrates_and_evaluates(tmp_path, capsys):
    train_py_folder(tmp_path / "data")
    metadata = ExportMetadata(
        data_config=dict(input_size=(3, SIZE, SIZE), crop_pct=1.0, mean=(0.5,) * 3, std=(0.25,) * 3, **BILINEAR_CENTER)
    )
    model = create_model("test_resnet_op_d2", num_classes=3).eval()
    folder = export_collapsed(model, tmp_path / "export", metadata=metadata).out_dir
    assert main(["quantize", str(folder), "--data-dir", str(tmp_path / "data")]) == 0  # 512 asked, 18 there
    assert "calibrated on 18 training images" in capsys.readouterr().out
    record = json.loads((folder / "config.json").read_text())["overparam_zoo"]["int8"]
    assert (record["calibration_images"], record["evaluation_images"]) == (18, 6)
    assert record["dataset"] == f"folder:{tmp_path / 'data'}" and (folder / INT8_NAME).is_file()


def test_the_export_the_train_py_hook_writes_quantizes(tmp_path, capsys, checkpoint_saver_hook):
    """What ``--device-modules overparam_zoo.export_on_save`` writes during a train.py run: its
    preprocessing comes from train.py's args, and quantize calibrates and evaluates through it."""
    from timm.utils import CheckpointSaver

    data = train_py_folder(tmp_path / "data")
    args = argparse.Namespace(
        data_dir=str(data), model="test_resnet_op_d2", num_classes=3, img_size=SIZE, mean=[0.5] * 3,
        std=[0.25] * 3, interpolation="bilinear", crop_pct=1.0, eval_metric="top1",
    )  # fmt: skip
    torch.manual_seed(0)
    model = create_model("test_resnet_op_d2", num_classes=3)
    run = tmp_path / "run"
    run.mkdir()
    saver = CheckpointSaver(model, torch.optim.SGD(model.parameters(), lr=0.1), args=args, checkpoint_dir=str(run))
    saver.save_checkpoint(0, metric=1.0)
    folder = run / "collapsed-best"
    assert main(["quantize", str(folder), "--data-dir", str(data)]) == 0
    assert "calibrated on 18 training images" in capsys.readouterr().out
    config = json.loads((folder / "config.json").read_text())
    assert config["pretrained_cfg"]["input_size"] == [3, SIZE, SIZE]  # train.py's --img-size, not the base's
    assert config["overparam_zoo"]["int8"]["evaluation_images"] == 6
    program = torch.export.load(folder / INT8_NAME).module()
    assert program(torch.randn(5, 3, SIZE, SIZE)).shape == (5, 3)


# --- the record in config.json and the card ---------------------------------------------------------


def test_recording_twice_keeps_one_card_section_and_the_rest_of_the_card(untrained_export, tmp_path):
    folder = copy_of(untrained_export, tmp_path)
    card = (folder / "README.md").read_text()
    record = dict(
        file=INT8_NAME,
        dataset="digits",
        quantizer="q",
        versions={"torch": "t", "torchao": "a"},
        float32_top1=0.5,
        int8_top1=0.25,
        agreement=0.75,
        calibration_images=3,
        evaluation_images=4,
    )
    record_int8(folder, record)
    config = record_int8(folder, {**record, "int8_top1": 0.375})
    assert json.loads((folder / "config.json").read_text()) == config
    assert config["overparam_zoo"]["int8"]["int8_top1"] == 0.375 and config["overparam_zoo"]["variant"]
    new = (folder / "README.md").read_text()
    assert new.count("## INT8 (torchao PT2E)") == 1 and "| INT8 | 0.3750 |" in new and "0.2500" not in new
    start, end = new.index("<!-- overparam-zoo:int8 -->"), new.index("<!-- /overparam-zoo:int8 -->")
    assert new[:start] + new[end + len("<!-- /overparam-zoo:int8 -->") :].lstrip("\n") == card  # before the citation
    assert new.index("## INT8") < new.index("## Citation")


def test_images_are_preprocessed_by_the_exports_config_exactly_as_in_training(untrained_export, digits):
    from overparam_zoo.experiments.training import TrainSettings, make_loaders

    export = ExportFolder.open(untrained_export)
    assert export.pretrained_cfg["input_size"] == [1, SIZE, SIZE]
    ours = next(iter(image_batches(digits.test, export.transform(), batch_size=256)))
    training = next(iter(make_loaders(copy.copy(digits), TrainSettings(input_size=SIZE))[1]))  # sets the transforms
    assert ours[0].shape == training[0].shape == (256, 1, SIZE, SIZE)
    assert torch.equal(ours[0], training[0]) and torch.equal(ours[1], training[1])
    again = next(iter(image_batches(digits.test, export.transform(), batch_size=256)))
    assert torch.equal(again[0], ours[0])  # a dataset whose transform timm's loader set is not transformed twice
    subset = next(iter(image_batches(digits.train, export.transform(), limit=5)))
    assert subset[0].shape == (5, 1, SIZE, SIZE)


# --- real accuracy and the file in a fresh process (slow: a short training, torch.export twice) ---------


BLOCK_ALL_BUT_TORCH = """
import sys
class _Block:
    def find_spec(self, name, *args):
        if name.split('.')[0] in ('overparam', 'overparam_zoo', 'timm', 'torchvision'):
            raise ImportError('blocked ' + name)
sys.meta_path.insert(0, _Block())
import torch
import torchao  # registers the quantized ops the program calls
torch.set_num_threads(1)
path, images, out = sys.argv[1:4]
model = torch.export.load(path).module()
x = torch.load(images)
with torch.no_grad():
    torch.save({"all": model(x), "one": model(x[:1]), "seven": model(x[:7])}, out)
"""


@pytest.mark.slow
def test_int8_of_a_trained_export_is_close_to_float32_and_reloads_in_a_fresh_process(
    trained_export, tmp_path, capsys, digits
):
    folder = copy_of(trained_export, tmp_path)
    weights = (folder / "model.safetensors").read_bytes()
    assert main(["quantize", str(folder), "--calibration-images", "256"]) == 0
    assert f"wrote {folder / INT8_NAME}: top-1 float32 " in capsys.readouterr().out
    record = json.loads((folder / "config.json").read_text())["overparam_zoo"]["int8"]
    assert record["file"] == INT8_NAME and record["dataset"] == "digits" and record["calibration_images"] == 256
    assert record["evaluation_images"] == len(digits.test) and record["float32_top1"] > 0.9
    assert abs(record["float32_top1"] - record["int8_top1"]) <= MAX_DROP and record["agreement"] >= MIN_AGREEMENT
    assert "| INT8 | " in (folder / "README.md").read_text()
    assert (folder / "model.safetensors").read_bytes() == weights
    assert (folder / INT8_NAME).stat().st_size < len(weights) / 2  # INT8 weights only, not the float ones too

    # the file, in a process that cannot import overparam*, timm or torchvision, on any batch size
    images, targets = map(torch.cat, zip(*image_batches(digits.test, ExportFolder.open(folder).transform())))
    torch.save(images, tmp_path / "images.pt")
    script = tmp_path / "load.py"
    script.write_text(BLOCK_ALL_BUT_TORCH)
    run = [sys.executable, str(script), str(folder / INT8_NAME), str(tmp_path / "images.pt"), str(tmp_path / "out.pt")]
    result = subprocess.run(run, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    fresh = torch.load(tmp_path / "out.pt")
    saved = torch.export.load(folder / INT8_NAME)
    assert [len(found) for found in int8_layers(saved)] == [16, 0]  # the file holds the INT8 program
    in_process = saved.module()
    with torch.no_grad():
        expected = in_process(images)
    torch.testing.assert_close(fresh["all"], expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(fresh["all"].argmax(1), expected.argmax(1))
    torch.testing.assert_close(fresh["one"], expected[:1], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fresh["seven"], expected[:7], rtol=1e-4, atol=1e-4)
    assert float((fresh["all"].argmax(1) == targets).double().mean()) == record["int8_top1"]


@pytest.mark.slow
def test_a_broken_calibration_fails_the_bound(trained_export, digits):
    export = ExportFolder.open(trained_export)
    model, transform = export.load_model(), export.transform()
    evaluation = image_batches(digits.test, transform)
    good = quantize_model(model, image_batches(digits.train, transform, limit=256), evaluation).accuracy
    zeros = [(torch.zeros(64, 1, SIZE, SIZE), torch.zeros(64, dtype=torch.long))]
    broken = quantize_model(model, zeros, evaluation).accuracy
    assert close_to_float32(good) and not close_to_float32(broken)
    assert good.float32_top1 == broken.float32_top1 > 0.9 and broken.int8_top1 < 0.5


@pytest.mark.slow
def test_out_puts_the_program_elsewhere_and_the_record_says_where(trained_export, tmp_path, digits):
    folder = copy_of(trained_export, tmp_path)
    out = tmp_path / "elsewhere" / "int8.pt2"
    result = quantize_export(folder, digits.train, digits.test, calibration_images=64, out=out, data_name="digits")
    assert result.path == out and out.is_file() and not (folder / INT8_NAME).exists()
    assert result.config["overparam_zoo"]["int8"]["file"] == str(out.resolve())
    images = torch.randn(3, 1, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(torch.export.load(out).module()(images), result.program.module()(images))
