"""Shared test helpers (imported as ``from .helpers import ...``; fixtures live in conftest.py)."""

import argparse

import torch
from torch import nn

from overparam import OverparamChain, overparameterize


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
