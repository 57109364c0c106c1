"""Effective rank, spectra and the ``spectrum`` CLI (``overparam.analysis``)."""

import copy
import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from overparam import OverparamConv2d, OverparamLinear, collapse, overparameterize
from overparam.analysis import (
    as_matrix,
    effective_rank,
    effective_rank_from_singular_values,
    embedding_effective_rank,
    singular_values,
    spectrum,
)


def _with_singular_values(values, rows, cols, seed=0):
    """A float64 ``rows x cols`` matrix whose singular values are ``values`` (then zeros)."""
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(rows, rows, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(cols, cols, generator=g, dtype=torch.float64))
    k = len(values)
    return u[:, :k] @ torch.diag(torch.tensor(values, dtype=torch.float64)) @ v[:, :k].T


# exp(-(3/4 ln 3/4 + 1/4 ln 1/4)), worked out by hand: 3/4 ln(3/4) = -0.215762, 1/4 ln(1/4) = -0.346574
ERANK_3_1 = 1.7547653506
# singular values [9, 1] (the Gram matrix of [3, 1]): 0.9 ln 0.9 = -0.094824, 0.1 ln 0.1 = -0.230259
ERANK_9_1 = 1.3841454885


def test_hand_computed_constants():
    # exp(H) of p = [3/4, 1/4] is (4/3)^(3/4) * 4^(1/4) = 4 / 3^(3/4); of [9/10, 1/10], 10 / 9^(9/10):
    # closed forms with no logarithm, so the check does not repeat the code's formula
    assert ERANK_3_1 == pytest.approx(4 / 3**0.75, abs=1e-10)  # the constants carry 10 decimals
    assert ERANK_9_1 == pytest.approx(10 / 9**0.9, abs=1e-10)
    # float64 entropy of two or three terms: a few ulps (~1e-15) off the closed form
    for values, expected in (([3.0, 1.0], 4 / 3**0.75), ([0.0, 1.0, 3.0], 4 / 3**0.75), ([9.0, 1.0], 10 / 9**0.9)):
        assert effective_rank_from_singular_values(torch.tensor(values)) == pytest.approx(expected, abs=1e-13)
        assert effective_rank(torch.diag(torch.tensor(values, dtype=torch.float64))) == pytest.approx(
            expected, abs=1e-13
        )


@pytest.mark.parametrize("n", [1, 2, 7, 64])
def test_identity_has_full_effective_rank(n):
    assert effective_rank(torch.eye(n)) == pytest.approx(n, rel=1e-12)
    assert effective_rank(3.5 * torch.eye(n, dtype=torch.float64)) == pytest.approx(n, rel=1e-12)


def test_rank_one_has_effective_rank_one():
    g = torch.Generator().manual_seed(1)
    u, v = torch.randn(9, generator=g, dtype=torch.float64), torch.randn(13, generator=g, dtype=torch.float64)
    assert effective_rank(torch.outer(u, v)) == pytest.approx(1.0, abs=1e-12)


def test_known_spectrum_3_1():
    assert effective_rank(torch.diag(torch.tensor([3.0, 1.0]))) == pytest.approx(ERANK_3_1, abs=1e-9)
    matrix = _with_singular_values([3.0, 1.0], 5, 8)
    assert singular_values(matrix)[:2].tolist() == pytest.approx([3.0, 1.0], abs=1e-12)
    assert effective_rank(matrix) == pytest.approx(ERANK_3_1, abs=1e-9)


def test_zero_singular_values_contribute_nothing():
    assert effective_rank(torch.diag(torch.tensor([2.0, 2.0, 0.0, 0.0]))) == pytest.approx(2.0, rel=1e-12)
    assert effective_rank(torch.zeros(3, 4)) == 0.0


def test_computed_in_float64_and_scale_free():
    matrix = _with_singular_values([5.0, 2.0, 1.0, 0.5], 6, 6)
    assert singular_values(matrix.float()).dtype == torch.float64
    assert effective_rank(matrix * 1e-20) == pytest.approx(effective_rank(matrix), rel=1e-12)
    # wide, tall and square inputs give the same values as a plain SVD
    for m in (matrix, torch.randn(7, 40, dtype=torch.float64), torch.randn(40, 7, dtype=torch.float64)):
        assert torch.allclose(singular_values(m), torch.linalg.svdvals(m), rtol=1e-12, atol=1e-12)


def test_conv_weight_is_read_as_out_by_in_per_group_times_kernel():
    conv = nn.Conv2d(8, 6, kernel_size=(3, 2), groups=2)
    assert as_matrix(conv).shape == (6, 4 * 3 * 2)
    expected = torch.linalg.svdvals(conv.weight.detach().double().reshape(6, 24))
    assert torch.allclose(singular_values(conv), expected, rtol=1e-12)
    assert effective_rank(conv) == effective_rank(conv.weight) == effective_rank(conv.weight.reshape(6, 24))
    conv3d = nn.Conv3d(4, 5, kernel_size=(1, 2, 3))
    assert as_matrix(conv3d.weight).shape == (5, 4 * 6)


def test_depthwise_conv_with_known_spectrum():
    # depthwise 3x3: row i of the [4, 1*9] matrix is s_i times the one-hot tap i -> singular values s
    conv = nn.Conv2d(4, 4, 3, groups=4, bias=False)
    scales = [4.0, 3.0, 2.0, 1.0]
    with torch.no_grad():
        conv.weight.zero_()
        for i, s in enumerate(scales):
            conv.weight.view(4, 9)[i, i] = s
    assert as_matrix(conv).shape == (4, 9)
    assert singular_values(conv).tolist() == pytest.approx(scales, abs=1e-12)
    p = torch.tensor(scales, dtype=torch.float64) / sum(scales)
    assert effective_rank(conv) == pytest.approx(float(torch.exp(-(p * p.log()).sum())), rel=1e-12)


def test_chain_layers_use_their_effective_weight():
    layer = OverparamConv2d(6, 4, kernel_sizes=[3, 3, 1], padding=2, groups=2).eval()
    assert as_matrix(layer).shape == (4, 3 * 5 * 5)
    with torch.no_grad():
        weight = layer.weight
    assert effective_rank(layer) == effective_rank(weight) == effective_rank(layer.fuse())
    linear = OverparamLinear(5, 3, depth=4)  # in train mode too; no graph is kept
    assert effective_rank(linear) == effective_rank(linear.fuse())


def test_bad_inputs():
    with pytest.raises(ValueError, match="2 dims"):
        effective_rank(torch.ones(3))
    with pytest.raises(TypeError, match="ReLU"):
        effective_rank(nn.ReLU())
    with pytest.raises(ValueError, match="NaN"):
        effective_rank(torch.tensor([[1.0, float("nan")]]))


def test_spectrum_of_op_model_equals_spectrum_of_its_collapse():
    torchvision = pytest.importorskip("torchvision")
    model = overparameterize(torchvision.models.resnet18(num_classes=10), depth=2).eval()
    op = spectrum(model)
    stock = spectrum(collapse(copy.deepcopy(model)))
    assert len(op) == len(stock) == 21  # 20 convs + fc; no chain factors listed
    assert not any(".factors" in s.path for s in op)
    for a, b in zip(op, stock):
        assert (a.path, a.shape) == (b.path, b.shape)
        assert a.kind.startswith("Overparam") and b.kind in ("Conv2d", "Linear")
        assert torch.equal(a.singular_values, b.singular_values)
        assert a.effective_rank == b.effective_rank
    assert op[0].path == "conv1" and op[0].shape == (64, 3, 7, 7) and op[0].max_rank == 64


def test_spectrum_lists_stock_layers_and_single_layers():
    model = nn.Sequential(nn.Conv1d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(6, 2))
    layers = spectrum(model)
    assert [(s.path, s.kind, s.shape) for s in layers] == [("0", "Conv1d", (3, 2, 3)), ("3", "Linear", (2, 6))]
    assert layers[1].effective_rank == effective_rank(model[3])
    (single,) = spectrum(OverparamLinear(4, 4, depth=3))
    assert single.path == "" and single.kind == "OverparamLinear"


def test_embedding_effective_rank_is_that_of_the_gram_matrix():
    # embeddings of 6 samples with singular values [3, 1]: K = Phi Phi^T has [9, 1, 0, ...]
    phi = _with_singular_values([3.0, 1.0], 6, 4, seed=3)
    assert effective_rank(phi) == pytest.approx(ERANK_3_1, abs=1e-9)
    assert embedding_effective_rank(phi) == pytest.approx(ERANK_9_1, abs=1e-9)
    # features are flattened per sample
    assert embedding_effective_rank(phi.reshape(6, 2, 2)) == pytest.approx(ERANK_9_1, abs=1e-9)
    # orthogonal embeddings of equal norm: K = c I
    assert embedding_effective_rank(2.0 * torch.eye(5)) == pytest.approx(5.0, rel=1e-12)


def test_embedding_effective_rank_centering():
    offset = torch.tensor([1.0, -2.0, 0.5])
    same = offset.repeat(4, 1)
    assert embedding_effective_rank(same) == pytest.approx(1.0, abs=1e-12)
    assert embedding_effective_rank(same, center=True) == 0.0
    spread = torch.tensor([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, -1.0, 0.0]])
    assert embedding_effective_rank(spread + offset, center=True) == pytest.approx(2.0, rel=1e-12)


def test_analysis_depends_on_torch_only():
    code = "import sys, overparam, overparam.analysis, overparam.utils; print(sorted({'timm', 'torchvision', 'overparam_zoo'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ---------------------------------------------------------------------- CLI
@pytest.fixture
def tiny_timm_model():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    return timm.create_model("test_resnet", num_classes=10).eval()


def test_cli_on_a_saved_checkpoint(tmp_path, tiny_timm_model, capsys):
    from overparam_zoo.cli import main

    ckpt = tmp_path / "checkpoint.pth"
    torch.save({"epoch": 3, "state_dict": tiny_timm_model.state_dict()}, ckpt)
    out_json, out_png = tmp_path / "out" / "spectrum.json", tmp_path / "spectrum.png"
    argv = ["spectrum", str(ckpt), "--model", "test_resnet", "--json", str(out_json), "--plot", str(out_png)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "layer4.0.conv1" in printed and "eff. rank" in printed
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads(out_json.read_text())
    assert data["architecture"] == "test_resnet"
    expected = spectrum(tiny_timm_model)
    assert [layer["path"] for layer in data["layers"]] == [s.path for s in expected]
    for got, want in zip(data["layers"], expected):
        assert got["effective_rank"] == pytest.approx(want.effective_rank, rel=1e-12)
        assert got["shape"] == list(want.shape)
        assert got["singular_values"] == pytest.approx(want.singular_values.tolist(), rel=1e-12)
    assert data["layers"][-1]["path"] == "fc" and data["layers"][-1]["shape"][0] == 10
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["checkpoint.pth", "out", "spectrum.json", "spectrum.png"]


def test_cli_reads_safetensors_with_config_json(tmp_path, tiny_timm_model, capsys):
    safetensors = pytest.importorskip("safetensors.torch")
    from overparam_zoo.cli import main

    safetensors.save_file(tiny_timm_model.state_dict(), str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"architecture": "test_resnet", "num_classes": 10}))
    out_json = tmp_path / "s.json"
    assert main(["spectrum", str(tmp_path / "model.safetensors"), "--json", str(out_json)]) == 0
    data = json.loads(out_json.read_text())
    assert data["layers"][0]["effective_rank"] == pytest.approx(effective_rank(tiny_timm_model.conv1[0]), rel=1e-12)


def test_cli_errors_are_one_line(tmp_path, tiny_timm_model, capsys):
    from overparam_zoo.cli import main

    missing = tmp_path / "nope.pth"

    def error_lines():  # progress lines ("spectrum: 1/2 loading ...") may come before the error
        err = capsys.readouterr().err
        assert "Traceback" not in err
        return [line for line in err.splitlines() if line.startswith("overparam-zoo spectrum: error: ")]

    assert main(["spectrum", str(missing), "--model", "test_resnet"]) == 1
    (err,) = error_lines()
    assert "no checkpoint file" in err and str(missing) in err

    assert main(["spectrum", "no_such_model_xyz"]) == 1
    (err,) = error_lines()
    assert "unknown model 'no_such_model_xyz'" in err

    ckpt = tmp_path / "ckpt.pth"
    torch.save(tiny_timm_model.state_dict(), ckpt)
    assert main(["spectrum", str(ckpt)]) == 1
    (err,) = error_lines()
    assert "--model" in err
    assert main(["spectrum", str(ckpt), "--model", "test_vit", "--json", str(tmp_path / "x.json")]) == 1
    (err,) = error_lines()
    assert "does not fit test_vit" in err and "missing keys" in err
    assert not (tmp_path / "x.json").exists()
