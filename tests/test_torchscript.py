"""``torch.jit.script`` of chains and op models: each chain scripts as its collapsed stock layer."""

import copy

import pytest
import timm
import torch
from timm.layers import Conv2dSame, ScaledStdConv2dSame
from timm.layers import get_graph_node_names as timm_graph_node_names
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor

import overparam_zoo  # noqa: F401  (registers the variants)
from overparam import OverparamChain, OverparamConv2d, OverparamLinear, convert_model
from overparam_zoo.registry.variants import converters

from .helpers import randomize_, relative_error

F64 = torch.float64
SCRIPT_WARNING = "collapses the eager model too"


def _timm_chain(stock: nn.Module) -> OverparamChain:
    model = nn.Sequential(stock)
    convert_model(model, depth=3, converters=converters(), strict=True)
    return model[0]


CHAINS = {
    "linear_bn_residual": lambda: OverparamLinear(6, 6, depth=3, batch_norm=True, residual=True, dtype=F64),
    "conv_bn_residual": lambda: OverparamConv2d(
        4, 4, kernel_sizes=[3, 3, 1], stride=2, padding=2, batch_norm=True, residual=True, dtype=F64
    ),
    "conv2d_same": lambda: _timm_chain(Conv2dSame(4, 6, 4, stride=2).to(F64)),
    "scaled_std_conv_same": lambda: _timm_chain(ScaledStdConv2dSame(4, 6, 3, stride=2).to(F64)),
}


@pytest.mark.parametrize("name", CHAINS)
def test_scripted_chain_computes_the_chain_as_its_stock_layer(name):
    chain = randomize_(CHAINS[name]()).eval()
    x = torch.randn(3, 5, 6, dtype=F64) if name.startswith("linear") else torch.randn(2, 4, 9, 8, dtype=F64)
    with pytest.warns(UserWarning, match=SCRIPT_WARNING):
        scripted = torch.jit.script(chain)
    assert scripted.original_name == type(chain.fuse()).__name__
    with torch.no_grad():
        assert relative_error(scripted(x), chain(x)) < 1e-10


def test_scripting_a_chain_in_training_mode_says_to_call_eval_or_collapse():
    model = nn.Sequential(OverparamConv2d(3, 4, padding=1), nn.ReLU())
    with pytest.raises(RuntimeError, match=r"\.eval\(\) first.*overparam\.collapse"):
        torch.jit.script(model)
    assert isinstance(model[0], OverparamChain)


def test_scripted_op_variant_is_the_stock_model():
    """What timm's ``test_model_forward_torchscript`` does, with the outputs compared: the scripted
    op model computes the eager op model and holds exactly the stock model's tensors."""
    with timm.layers.set_scriptable(True):
        model = timm.create_model("mobilenetv3_small_100_op_d2", num_classes=7).eval()
    eager = copy.deepcopy(model)
    x = torch.randn(2, 3, 64, 64)
    with pytest.warns(UserWarning, match=SCRIPT_WARNING):
        scripted = torch.jit.script(model)
    with torch.no_grad():
        assert relative_error(scripted(x), eager(x)) < 1e-5
    stock = timm.create_model("mobilenetv3_small_100", num_classes=7)
    assert {k: v.shape for k, v in scripted.state_dict().items()} == {k: v.shape for k, v in stock.state_dict().items()}
    # PyTorch stores what __prepare_scriptable__ returns in the parent: the eager model is collapsed
    assert not any(isinstance(m, OverparamChain) for m in model.modules())


def test_fx_traced_op_variant_scripts():
    """timm's ``test_model_forward_fx_torchscript``: chains are fx leaves, then script as stock layers."""
    model = timm.create_model("resnet18_op_d2_bn", num_classes=7).eval()
    eager = copy.deepcopy(model)
    tracer_kwargs = {"leaf_modules": timm.layers.get_notrace_modules()}
    train_nodes, eval_nodes = timm_graph_node_names(model)
    fx_model = create_feature_extractor(
        model,
        train_return_nodes=[train_nodes[-1]],
        eval_return_nodes=[eval_nodes[-1]],
        tracer_kwargs=tracer_kwargs,
    )
    assert any(isinstance(m, OverparamChain) for m in fx_model.modules())
    with pytest.warns(UserWarning, match=SCRIPT_WARNING):
        scripted = torch.jit.script(fx_model)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        (out,) = scripted(x).values()
        assert relative_error(out, eager(x)) < 1e-5
