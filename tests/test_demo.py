"""The main job, shortened: train on digits, export, reload with plain timm in a fresh process."""

from overparam_zoo.cli import main
from overparam_zoo.experiments.demo import load_digits_split, run_demo


def test_digits_split_is_real_and_disjoint():
    x_train, y_train, x_test, y_test = load_digits_split(seed=0, size=16)
    assert x_train.shape == (1437, 1, 16, 16) and x_test.shape == (360, 1, 16, 16)
    assert set(y_train.tolist()) == set(range(10))


def test_demo_end_to_end(tmp_path):
    result = run_demo("resnet18_op_d2", epochs=1, out=tmp_path, size=16)
    assert result.predictions_match and result.max_logit_difference < 1e-4
    assert (tmp_path / "resnet18_op_d2" / "model.safetensors").is_file()
    assert [r["model"] for r in result.rows] == ["resnet18", "resnet18_op_d2", "resnet18 from export"]
    assert result.rows[1]["test accuracy"] == result.rows[2]["test accuracy"]
    again = run_demo("resnet18_op_d2", epochs=1, out=tmp_path, size=16)  # replaces its own export
    assert again.predictions_match


def test_demo_cli_refuses_an_existing_export(tmp_path, capsys):
    (tmp_path / "resnet18_op_d2").mkdir()
    (tmp_path / "resnet18_op_d2" / "x").write_text("keep")
    assert main(["demo", "--epochs", "1", "--size", "16", "--out", str(tmp_path)]) == 1
    assert "not empty" in capsys.readouterr().err
    assert (tmp_path / "resnet18_op_d2" / "x").read_text() == "keep"
