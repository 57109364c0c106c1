"""Shared test helpers (imported as ``from .helpers import ...``; fixtures live in conftest.py)."""

import argparse
import copy

import torch
import torch.nn.functional as F
from torch import nn

from overparam import OverparamChain, collapse, overparameterize


def randomize_(layer: OverparamChain, seed: int = 0) -> OverparamChain:
    """Give biases and BN statistics non-trivial values so the collapse is really tested."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for f in layer.factors:
            if f.bias is not None:
                f.bias.copy_(torch.randn(f.bias.shape, generator=g, dtype=f.bias.dtype))
        if layer.norms is not None:
            for bn in layer.norms:
                bn.weight.copy_(torch.rand(bn.weight.shape, generator=g, dtype=bn.weight.dtype) + 0.5)
                bn.bias.copy_(torch.randn(bn.bias.shape, generator=g, dtype=bn.bias.dtype))
                bn.running_mean.copy_(torch.randn(bn.running_mean.shape, generator=g, dtype=bn.running_mean.dtype))
                bn.running_var.copy_(torch.rand(bn.running_var.shape, generator=g, dtype=bn.running_var.dtype) + 0.5)
    return layer


def unfolded_forward(layer: OverparamChain, x: torch.Tensor) -> torch.Tensor:
    """The chain factor by factor, each factor and batch norm its own stock module run on its map
    (padding once, at the first factor, as the chain pads; no skips)."""
    plan = layer.plan
    assert not plan.skip_sources, "a chain with skips has no factor-by-factor stock form here"
    lead = None
    if plan.ndim == 0:
        lead, x = x.shape[:-1], x.reshape(-1, x.shape[-1])
    norms = layer.norms if layer.norms is not None else [None] * len(layer.factors)
    for i, (factor, bn) in enumerate(zip(layer.factors, norms)):
        if i == 0 and plan.ndim:
            conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[plan.ndim]
            x = conv(x, factor.weight, factor.bias, factor.stride, plan.conv_padding, factor.dilation, factor.groups)
        else:
            x = factor(x)
        if bn is not None:
            x = bn(x)
    return x if lead is None else x.reshape(*lead, x.shape[-1])


class AsModules(nn.Module):
    """A chain run as :func:`unfolded_forward`: its factors and batch norms as stock modules."""

    def __init__(self, chain: OverparamChain) -> None:
        super().__init__()
        self.chain = chain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return unfolded_forward(self.chain, x)


def stock_counterpart(model: nn.Module) -> nn.Module:
    """A copy of op ``model`` built from stock layers that trains the same function: a chain without
    batch norm as its collapsed stock layer (one linear map in training too), a chain with batch
    norm as its factors and norms run one by one (batch statistics need the maps between them)."""
    model = copy.deepcopy(model)
    for name, module in list(model.named_modules()):
        if isinstance(module, OverparamChain):
            parent, _, attr = name.rpartition(".")
            stock = collapse(module) if module.norms is None else AsModules(module)
            setattr(model.get_submodule(parent), attr, stock.train(module.training))
    return model


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def tiny_op_net(batch_norm: bool) -> nn.Module:
    """Three stock layers (fan-in 27, 72 and 16) with a stock BN, every layer a d2 chain; seeded."""
    torch.manual_seed(0)
    base = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )
    return overparameterize(base, depth=2, batch_norm=batch_norm)


def train_py_args(**overrides):
    """An ``args`` namespace as timm's train.py saves it in its checkpoints (its defaults, then ``overrides``)."""
    args = dict(
        data_dir="",
        dataset="",
        train_split="train",
        val_split="validation",
        class_map="",
        model="resnet50",
        pretrained=False,
        initial_checkpoint="",
        num_classes=None,
        gp=None,
        img_size=None,
        in_chans=None,
        input_size=None,
        crop_pct=None,
        mean=None,
        std=None,
        interpolation="",
        batch_size=128,
        opt="sgd",
        momentum=0.9,
        weight_decay=2e-5,
        sched="cosine",
        lr=None,
        warmup_epochs=5,
        epochs=300,
        smoothing=0.1,
        mixup=0.0,
        cutmix=0.0,
        aa=None,
        reprob=0.0,
        drop=0.0,
        drop_path=None,
        model_ema=False,
        model_ema_decay=0.9998,
        amp=False,
        seed=42,
        eval_metric="top1",
        world_size=1,
        model_kwargs={},
    )
    args.update(overrides)
    return argparse.Namespace(**args)


def int8_layers(program: torch.export.ExportedProgram) -> tuple[list[str], list[str]]:
    """The convs and linears of a PT2E INT8 program: those that run on INT8 data (input a uint8
    activation quantized then dequantized, weight an int8 constant dequantized per channel: the
    pattern inductor fuses into INT8 kernels) and those that do not, by node name."""
    module = program.module()
    aten, qd = torch.ops.aten, torch.ops.quantized_decomposed
    int8, other = [], []
    for node in module.graph.nodes:
        if node.op != "call_function" or node.target not in (aten.conv2d.default, aten.linear.default):
            continue
        x, w = node.args[0], node.args[1]
        ok = (
            x.target == qd.dequantize_per_tensor.default
            and x.args[-1] == torch.uint8
            and x.args[0].target == qd.quantize_per_tensor.default
            and w.target == qd.dequantize_per_channel.default
            and w.args[-1] == torch.int8
            and w.args[0].op == "get_attr"
        )
        if ok:
            constant = module
            for part in w.args[0].target.split("."):
                constant = getattr(constant, part)
            ok = constant.dtype == torch.int8
        (int8 if ok else other).append(node.name)
    return int8, other
