"""Sharing an export: true pretrained_cfg, model card, loading from a Hugging Face cache, push.

Everything runs for real: timm loads the export through ``hf-hub:`` from a cache laid out on
disk with the hub offline, huggingface_hub parses the model card, and ``push`` goes all the
way to the hub client's first request (which fails here: no network, by design).
"""

import json
import shutil
import socket

import huggingface_hub
import pytest
import timm
import torch
import torchvision
from huggingface_hub import ModelCard, constants, metadata_load

from overparam import OverparamChain
from overparam_zoo.cli import main
from overparam_zoo.errors import ExportError, PublishError
from overparam_zoo.sharing.export import export_collapsed
from overparam_zoo.sharing.metadata import ExportMetadata, MetadataWarning, read_summary
from overparam_zoo.sharing.publish import push_export, validate_export

from .helpers import randomize_, relative_error, train_py_args

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
CLASSES = ["cat", "dog", "fox", "owl"]
COMMIT = "0123456789abcdef0123456789abcdef01234567"
BASE_ONLY = ("tag", "paper_ids", "paper_name", "license", "hf_hub_id", "origin_url", "url", "description", "notes")


def trained(name, **kwargs):
    model = timm.create_model(name, **kwargs)
    for m in model.modules():
        if isinstance(m, OverparamChain):
            randomize_(m)
    model.train()(X)  # moves BN running statistics
    return model.eval()


SUMMARY = """epoch,train_loss,eval_loss,eval_top1,eval_top5,lr
0,1.38,1.31,41.25,100.0,0.05
1,1.02,0.97,67.5,100.0,0.04
2,0.91,0.99,65.0,100.0,0.01
"""


@pytest.fixture
def train_run(tmp_path):
    """A train.py output folder: a checkpoint (EMA, DDP-prefixed keys, args), summary.csv, a class map."""
    run = tmp_path / "output" / "train" / "20260101-resnet18_op_d2"
    run.mkdir(parents=True)
    (tmp_path / "data" / "train").mkdir(parents=True)  # timm reads --class-map relative to the split folder
    (tmp_path / "data" / "train" / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    model = trained("resnet18_op_d2", num_classes=4)
    ema = trained("resnet18_op_d2", num_classes=4)
    args = train_py_args(
        data_dir=str(tmp_path / "data"),
        class_map="classes.txt",
        model="resnet18_op_d2",
        num_classes=4,
        img_size=32,
        mean=[0.5, 0.5, 0.5],
        std=[0.25, 0.25, 0.25],
        interpolation="bilinear",
        crop_pct=1.0,
        batch_size=16,
        lr=0.05,
        epochs=3,
        model_ema=True,
    )
    torch.save(
        {
            "epoch": 1,
            "arch": "resnet18_op_d2",
            "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()},
            "state_dict_ema": ema.state_dict(),
            "optimizer": {},
            "version": 2,
            "args": args,
            "metric": 67.5,
        },
        run / "model_best.pth.tar",
    )
    (run / "summary.csv").write_text(SUMMARY)
    return run, ema


HUB = "https://huggingface.co"


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty Hugging Face home and cache, the hub offline at its default endpoint (whatever
    the shell exports), no token anywhere."""
    home = tmp_path / "hf"
    (home / "hub").mkdir(parents=True)
    settings = (("HF_HOME", home), ("HF_HUB_CACHE", home / "hub"), ("HF_HUB_OFFLINE", "1"), ("HF_ENDPOINT", HUB))
    for name, value in settings:
        monkeypatch.setenv(name, str(value))
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    # huggingface_hub reads these at import; its functions look them up in `constants` at call time
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "ENDPOINT", HUB)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
    assert huggingface_hub.get_token() is None
    return home / "hub"


def resolved(model):
    """The data config timm resolves for ``model`` (lists from JSON as tuples, to compare)."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in timm.data.resolve_data_config(model=model).items()}


def put_in_hub_cache(export_dir, cache, repo_id):
    """Lay out ``export_dir`` as huggingface_hub caches a downloaded model repository."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(export_dir, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)


def export_run(train_run, tmp_path, *extra):
    run, _ = train_run
    out = tmp_path / "export"
    assert main(["export", str(run / "model_best.pth.tar"), "--out", str(out), *extra]) == 0
    return out


def test_train_py_export_describes_its_weights_and_loads_from_the_hub_cache(train_run, tmp_path, offline_hub, capsys):
    run, ema = train_run
    out = export_run(train_run, tmp_path, "--license", "mit")
    assert "warning" not in capsys.readouterr().err
    config = json.loads((out / "config.json").read_text())
    cfg = config["pretrained_cfg"]
    assert config["architecture"] == "resnet18" and config["num_classes"] == 4
    assert config["label_names"] == CLASSES
    assert cfg["input_size"] == [3, 32, 32] and cfg["interpolation"] == "bilinear" and cfg["crop_pct"] == 1.0
    assert cfg["mean"] == [0.5] * 3 and cfg["std"] == [0.25] * 3 and cfg["num_classes"] == 4
    assert cfg["license"] == "mit"
    assert not {"tag", "paper_ids", "origin_url", "hf_hub_id", "test_input_size", "test_crop_pct"} & set(cfg)
    assert cfg["pool_size"] is None  # resnet18's (7, 7) is that of 224 inputs

    put_in_hub_cache(out, offline_hub, "someone/resnet18-pets")
    model = timm.create_model("hf-hub:someone/resnet18-pets", pretrained=True).eval()
    with torch.no_grad():
        assert relative_error(model(X), ema(X)) < 1e-5  # the EMA weights, as timm's loaders prefer
    assert model.pretrained_cfg["label_names"] == CLASSES
    assert resolved(model) == {
        "input_size": (3, 32, 32),
        "interpolation": "bilinear",
        "mean": (0.5, 0.5, 0.5),
        "std": (0.25, 0.25, 0.25),
        "crop_pct": 1.0,
        "crop_mode": "center",
    }

    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "timm" and card.data.license == "mit"
    assert card.data.pipeline_tag == "image-classification"
    assert {"timm", "overparam-zoo", "image-classification"} <= set(card.data.tags)
    assert card.data.base_model is None  # trained from scratch
    assert metadata_load(out / "README.md") == card.data.to_dict()
    assert "| best epoch (these weights) | 1 | 67.50 | 100.00 |" in card.text
    assert "EMA weights" in card.text and "`model_best.pth.tar`" in card.text
    assert "`resnet18_op_d2`" in card.text and "| chain depth | 2 |" in card.text
    assert "`cat`, `dog`, `fox`, `owl`" in card.text
    assert 'timm.create_model("hf-hub:OWNER/NAME", pretrained=True)' in card.text


def test_base_model_from_pretrained_run_and_results_of_another_epoch(tmp_path):
    args = train_py_args(model="resnet18_op_d2.tv_in1k", pretrained=True, num_classes=4)
    (tmp_path / "summary.csv").write_text(SUMMARY)
    metadata = ExportMetadata.from_run(args, output_dir=tmp_path, epoch=2, checkpoint="last.pth.tar")
    export_collapsed(trained("resnet18_op_d2", num_classes=4), tmp_path / "out", metadata=metadata)
    card = ModelCard.load(tmp_path / "out" / "README.md")
    assert card.data.base_model == "timm/resnet18.tv_in1k"
    assert "| best epoch | 1 | 67.50 | 100.00 |" in card.text
    assert "| these weights | 2 | 65.00 | 100.00 |" in card.text
    assert card.data.license is None and "not specified" in card.text
    loss = read_summary(tmp_path / "summary.csv", metric="loss")
    assert loss.best.epoch == 1 and loss.checkpoint is None and loss.epochs == 3


def test_no_training_args_keeps_the_base_preprocessing_but_not_its_provenance(tmp_path):
    with pytest.warns(MetadataWarning, match=r"keeps the base's preprocessing input_size=\(3, 224, 224\)"):
        export_collapsed(trained("resnet18_op_d2", num_classes=4), tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    cfg = config["pretrained_cfg"]
    base = timm.models.get_pretrained_cfg("resnet18").to_dict()
    for key in ("input_size", "test_input_size", "crop_pct", "interpolation", "mean", "std"):
        assert tuple(cfg[key]) == tuple(base[key]) if isinstance(base[key], tuple) else cfg[key] == base[key]
    assert not set(BASE_ONLY) & set(cfg) and "label_names" not in config
    assert "No training arguments were recorded" in (tmp_path / "out" / "README.md").read_text()


def test_flags_set_the_data_config_of_a_plain_state_dict(tmp_path, capsys):
    torch.save(trained("resnet18_op_d2", num_classes=4).state_dict(), tmp_path / "w.pth")
    (tmp_path / "labels.txt").write_text("\n".join(CLASSES) + "\n")
    argv = ["export", str(tmp_path / "w.pth"), "--model", "resnet18_op_d2", "--out", str(tmp_path / "out")]
    assert main([*argv, "--input-size", "3", "48", "48", "--label-names", str(tmp_path / "labels.txt")]) == 0
    err = capsys.readouterr().err
    assert "overparam-zoo export: warning: no training arguments" in err
    assert "interpolation=bicubic" in err and "input_size" not in err.split("preprocessing")[1]  # only what was kept
    model = timm.create_model("local-dir:" + str(tmp_path / "out"), pretrained=True)
    assert resolved(model)["input_size"] == (3, 48, 48)
    assert model.pretrained_cfg["label_names"] == CLASSES
    flags = [
        "--mean",
        "0.5",
        "--std",
        "0.25",
        "--interpolation",
        "bilinear",
        "--crop-pct",
        "1.0",
        "--crop-mode",
        "center",
    ]
    assert main([*argv, "--input-size", "3", "48", "48", *flags, "--force"]) == 0
    assert "warning" not in capsys.readouterr().err
    model = timm.create_model("local-dir:" + str(tmp_path / "out"), pretrained=True)
    assert resolved(model) == {
        "input_size": (3, 48, 48),
        "interpolation": "bilinear",
        "mean": (0.5, 0.5, 0.5),
        "std": (0.25, 0.25, 0.25),
        "crop_pct": 1.0,
        "crop_mode": "center",
    }


def test_metadata_that_does_not_fit_the_model_is_refused_before_writing(tmp_path, capsys):
    torch.save(trained("resnet18_op_d2", num_classes=4).state_dict(), tmp_path / "w.pth")
    (tmp_path / "three.txt").write_text("a\nb\nc\n")
    (tmp_path / "labels.csv").write_text("a,b,c,d\n")
    cases = [
        (["--label-names", str(tmp_path / "three.txt")], "3 label names for a model with 4 classes"),
        (["--label-names", str(tmp_path / "labels.csv")], r"expected a \.txt file with one class name per line"),
        (["--label-names", str(tmp_path / "nope.txt")], "no label names file at"),
    ]
    if hasattr(timm.data, "resolve_input_data_config"):  # timm >= 1.0.31 checks the channels against the model
        cases.append(
            (["--input-size", "1", "32", "32"], "preprocessing does not fit resnet18: Requested 1 input channels")
        )
        cases.append((["--mean", "0.1", "0.2"], "mean must have one value or 3 values"))
    else:  # older timm asserts, without a message
        cases.append(
            (["--mean", "0.1", "0.2"], r"does not fit resnet18: AssertionError in timm's resolver \(timm >= 1")
        )
    for flags, message in cases:
        argv = ["export", str(tmp_path / "w.pth"), "--model", "resnet18_op_d2", "--out", str(tmp_path / "out")]
        assert main([*argv, *flags]) == 1
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith("overparam-zoo export: error:"), err
        assert __import__("re").search(message, err), err
        assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))
    with pytest.raises(ExportError, match="unknown data_config keys"):
        ExportMetadata(data_config={"resize": 32})


def test_push_dry_run_lists_what_it_would_upload_and_changes_nothing(train_run, tmp_path, offline_hub, capsys):
    out = export_run(train_run, tmp_path)
    (out / ".DS_Store").write_text("x")
    card = (out / "README.md").read_text()
    capsys.readouterr()
    assert main(["push", str(out), "--repo-id", "someone/resnet18-pets", "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"would upload 3 files from {out} to https://huggingface.co/someone/resnet18-pets:"
    assert [line.split()[0] for line in lines[1:]] == ["README.md", "config.json", "model.safetensors"]
    assert (out / "README.md").read_text() == card
    assert validate_export(out) == [p.relative_to(out) for p in sorted(out.glob("[!.]*"))]


def test_push_validation_names_the_problem(train_run, tmp_path, offline_hub, capsys, monkeypatch):
    monkeypatch.setenv("OVERPARAM_ZOO_PROGRESS", "off")  # stderr: the error line alone
    good = export_run(train_run, tmp_path)
    capsys.readouterr()

    def broken(name, change):
        folder = tmp_path / name
        shutil.copytree(good, folder)
        change(folder)
        return folder

    def edit_config(**changes):
        def change(folder):
            config = json.loads((folder / "config.json").read_text())
            config.update(changes)
            config = {k: v for k, v in config.items() if v is not None}
            (folder / "config.json").write_text(json.dumps(config))

        return change

    def other_weights(folder):
        from safetensors.torch import save_file

        save_file(timm.create_model("resnet18", num_classes=5).state_dict(), str(folder / "model.safetensors"))

    cases = [
        (tmp_path / "nowhere", "someone/x", "is not a folder"),
        (broken("no-card", lambda f: (f / "README.md").unlink()), "someone/x", "lacks README.md"),
        (broken("no-arch", edit_config(architecture=None)), "someone/x", "'architecture' is missing"),
        (broken("bad-arch", edit_config(architecture="resnet1800")), "someone/x", "not a timm model"),
        (broken("not-json", lambda f: (f / "config.json").write_text("{")), "someone/x", "not readable JSON"),
        (broken("no-matter", lambda f: (f / "README.md").write_text("# hi\n")), "someone/x", "no YAML front matter"),
        (
            broken("bad-matter", lambda f: (f / "README.md").write_text("---\n[a: \n---\n")),
            "someone/x",
            "front matter is not readable YAML",
        ),
        (
            broken("other", other_weights),
            "someone/x",
            r"does not load into resnet18\(num_classes=4\): 2 shape mismatches \(e.g. fc.weight: \(5, 512\) given",
        ),
        (good, "no-owner", "expected OWNER/NAME"),
        (good, "some one/x", "repo id 'some one/x'"),
    ]
    for folder, repo_id, message in cases:
        assert main(["push", str(folder), "--repo-id", repo_id, "--dry-run"]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("overparam-zoo push: error:"), err
        assert __import__("re").search(message, err[0]), err


def test_push_fails_in_one_line_without_token_or_hub(train_run, tmp_path, offline_hub, monkeypatch, capsys):
    monkeypatch.setenv("OVERPARAM_ZOO_PROGRESS", "off")  # stderr: the error line alone
    out = export_run(train_run, tmp_path)
    capsys.readouterr()
    assert main(["push", str(out), "--repo-id", "someone/resnet18-pets"]) == 1
    assert capsys.readouterr().err.strip() == (
        "overparam-zoo push: error: no Hugging Face token: log in with `hf auth login` or set HF_TOKEN "
        "to a token with write access"
    )
    assert "hf-hub:OWNER/NAME" in (out / "README.md").read_text()  # nothing changed

    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    assert main(["push", str(out), "--repo-id", "someone/resnet18-pets", "--private"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "overparam-zoo push: error: cannot reach the Hugging Face Hub: offline mode is on (unset HF_HUB_OFFLINE); "
        "Cannot reach https://huggingface.co/api/repos/create: offline mode is enabled. To disable it, please "
        "unset the `HF_HUB_OFFLINE` environment variable."
    ]
    # the card now names the repository it is pushed to, as the hub copy will
    assert 'timm.create_model("hf-hub:someone/resnet18-pets", pretrained=True)' in (out / "README.md").read_text()

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with socket.socket() as s:  # a local port held but not listening: connections are refused
        s.bind(("127.0.0.1", 0))  # held until the push is done, so nothing else can take the port
        endpoint = f"http://127.0.0.1:{s.getsockname()[1]}"
        monkeypatch.setattr(constants, "ENDPOINT", endpoint)
        with pytest.raises(PublishError, match=rf"^cannot upload to {endpoint}/someone/resnet18-pets: \w+: .*refused"):
            push_export(out, "someone/resnet18-pets", revision="v1", log=lambda _line: None)


def test_export_push_to_hub_checks_the_token_first(train_run, tmp_path, offline_hub, monkeypatch, capsys):
    run, _ = train_run
    argv = ["export", str(run / "model_best.pth.tar"), "--out", str(tmp_path / "exp"), "--push-to-hub", "someone/x"]
    assert main(argv) == 1
    assert "error: no Hugging Face token" in capsys.readouterr().err
    assert not (tmp_path / "exp").exists()
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert "exported resnet18_op_d2 as resnet18" in captured.out and "uploading 3 files" in captured.out
    assert (
        captured.err.strip().splitlines()[-1].startswith("overparam-zoo export: error: cannot reach the Hugging Face")
    )
    assert 'create_model("hf-hub:someone/x"' in (tmp_path / "exp" / "README.md").read_text()


def test_torchvision_export_card_and_validation(tmp_path, offline_hub):
    model = torchvision.models.get_model("resnet18_op_d2", num_classes=3)
    model.train()(X)
    model.eval()
    metadata = ExportMetadata(label_names=("a", "b", "c"), license="cc-by-4.0")
    export_collapsed(model, tmp_path / "tv", metadata=metadata)
    config = json.loads((tmp_path / "tv" / "config.json").read_text())
    assert config["label_names"] == ["a", "b", "c"] and config["license"] == "cc-by-4.0"
    card = ModelCard.load(tmp_path / "tv" / "README.md")
    assert card.data.library_name is None and "torchvision" in card.data.tags and card.data.license == "cc-by-4.0"
    assert "torchvision.models.resnet18(num_classes=3)" in card.text
    assert [p.name for p in validate_export(tmp_path / "tv")] == ["README.md", "config.json", "model.safetensors"]


def test_checkpoint_saver_exports_carry_the_run(tmp_path, checkpoint_saver_hook):
    from timm.utils import CheckpointSaver

    model = trained("resnet18_op_d2", num_classes=3)
    args = train_py_args(model="resnet18_op_d2", num_classes=3, img_size=40, interpolation="bilinear", epochs=3)
    (tmp_path / "summary.csv").write_text(SUMMARY)
    saver = CheckpointSaver(model, torch.optim.SGD(model.parameters(), lr=0.1), args=args, checkpoint_dir=str(tmp_path))
    saver.save_checkpoint(2, metric=65.0)
    cfg = json.loads((tmp_path / "collapsed-best" / "config.json").read_text())["pretrained_cfg"]
    assert cfg["input_size"] == [3, 40, 40] and cfg["interpolation"] == "bilinear"
    card = (tmp_path / "collapsed-last" / "README.md").read_text()
    assert "| best epoch | 1 | 67.50 | 100.00 |" in card and "| these weights | 2 | 65.00 | 100.00 |" in card
