"""One training recipe, built from timm's own pieces, applied identically to every model.

A comparison is only fair when the base and its op variants see the same loaders, optimizer,
schedule, loss and batch order. This module is that recipe: timm's ``create_loader`` (and so
``create_transform``), ``create_optimizer_v2``, ``create_scheduler_v2`` stepped per update,
``ModelEmaV3`` when asked, and ``torch.autocast`` in bfloat16 for AMP (no loss scaling needed).
The loaders' preprocessing is one explicit data config (:func:`data_config`), which is also what
an export of the run records, so a consumer who rebuilds timm's transform from the export feeds
it exactly the pixels it was tested on. Evaluation runs in float32 and also returns the
penultimate features (the input of the classifier, for timm and torchvision models alike) for
the effective-rank measurement.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from overparam import OverparamChain, OverparamLinear
from overparam_zoo.errors import AnalysisError
from overparam_zoo.experiments.datasets import ImageData
from overparam_zoo.progress import Progress
from overparam_zoo.sharing.quantize import LabelledImages

__all__ = [
    "TrainSettings",
    "Trained",
    "Evaluation",
    "data_config",
    "make_loaders",
    "eval_loader",
    "train_model",
    "check_classifier",
    "evaluate",
]

#: seconds between two progress lines of a training loop in a log (a bar on a terminal is live)
PROGRESS_INTERVAL = 5.0


@dataclass(frozen=True)
class TrainSettings:
    """Everything that decides a run's outcome, shared by every model and seed of a comparison.

    ``threads`` and ``device`` are part of it because the reported wall times depend on them.
    """

    epochs: int = 5
    batch_size: int = 64
    input_size: int = 32
    opt: str = "adamw"
    lr: float = 2e-3
    weight_decay: float = 0.05
    sched: str = "cosine"
    warmup_epochs: int = 1
    smoothing: float = 0.1
    augment: bool = False
    scale: tuple[float, float] = (0.08, 1.0)
    hflip: float = 0.5
    model_ema: bool = False
    model_ema_decay: float = 0.998
    amp: bool = False
    device: str = "cpu"
    threads: int = 1


@dataclass
class Trained:
    """A finished training: the model to evaluate (the EMA copy with ``model_ema``), the wall
    time of the training loop in seconds (data loading included) and the mean training loss
    of every epoch (with label smoothing, in train mode): whether it flattened tells a
    converged run from one stopped early."""

    model: nn.Module
    seconds: float
    epoch_losses: list[float]

    @property
    def last_epoch_loss(self) -> float:
        return self.epoch_losses[-1]


@dataclass
class Evaluation:
    """Test-set outputs of one model, in the loader's (fixed) order."""

    top1: float
    loss: float
    logits: torch.Tensor
    features: torch.Tensor
    targets: torch.Tensor


def data_config(data: ImageData, settings: TrainSettings) -> dict[str, Any]:
    """The preprocessing of every loader of a run, in timm's data-config keys (``input_size``,
    ``interpolation``, ``mean``, ``std``, ``crop_pct``, ``crop_mode``): what the test images go
    through, and what an export of the run states."""
    return {
        "input_size": (data.in_chans, settings.input_size, settings.input_size),
        "interpolation": "bilinear",
        "mean": tuple(data.mean),
        "std": tuple(data.std),
        "crop_pct": data.crop_pct,
        "crop_mode": "center",
    }


def _loader_args(data: ImageData, settings: TrainSettings) -> dict[str, Any]:
    return dict(
        **data_config(data, settings),
        num_workers=0,
        persistent_workers=False,  # timm < 1.0.31 defaults to True, which torch refuses without workers
        use_prefetcher=False,
        device=torch.device(settings.device),
    )


def make_loaders(
    data: ImageData, settings: TrainSettings
) -> tuple[torch.utils.data.DataLoader, torch.utils.data.DataLoader]:
    """timm loaders for the train (shuffled, drop_last) and test splits, in the main process,
    preprocessing by :func:`data_config`.

    timm's ``create_loader`` sets the dataset's ``transform``; it is given shallow copies, so
    loaders made for other settings (or channels) from the same ``data`` do not change these.
    ``num_workers=0``: the images are small and worker processes would compete with the
    training threads that ``settings.threads`` pins.
    """
    from timm.data import create_loader

    # timm annotates its own dataset classes; any with a `transform` attribute is what it needs
    train = create_loader(
        cast(Any, copy.copy(data.train)),
        batch_size=settings.batch_size,
        is_training=True,
        no_aug=not settings.augment,
        scale=settings.scale,
        hflip=settings.hflip,
        **_loader_args(data, settings),
    )
    return train, eval_loader(data.test, data, settings)


def eval_loader(dataset: LabelledImages, data: ImageData, settings: TrainSettings) -> torch.utils.data.DataLoader:
    """A timm loader over ``dataset`` (a split of ``data``: its test images, or its training
    images to measure how well they are fitted) with the test preprocessing, in order."""
    from timm.data import create_loader

    return create_loader(
        cast(Any, copy.copy(dataset)),
        batch_size=max(settings.batch_size, 256),
        is_training=False,
        **_loader_args(data, settings),
    )


def _autocast(settings: TrainSettings):
    return torch.autocast(torch.device(settings.device).type, dtype=torch.bfloat16, enabled=settings.amp)


def train_model(
    model: nn.Module, loader: torch.utils.data.DataLoader, settings: TrainSettings, *, label: str = ""
) -> Trained:
    """Train ``model`` in place by ``settings``, the same way for every model of a comparison."""
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2
    from timm.utils import ModelEmaV3

    device = torch.device(settings.device)
    model.to(device).train()
    steps = len(loader)
    optimizer = create_optimizer_v2(model, opt=settings.opt, lr=settings.lr, weight_decay=settings.weight_decay)
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched=settings.sched,
        num_epochs=settings.epochs,
        warmup_epochs=settings.warmup_epochs,
        step_on_epochs=False,
        updates_per_epoch=steps,
    )
    ema = ModelEmaV3(model, decay=settings.model_ema_decay) if settings.model_ema else None
    loss_fn = nn.CrossEntropyLoss(label_smoothing=settings.smoothing)
    progress = Progress(f"train {label}".strip(), settings.epochs * steps, min_interval=PROGRESS_INTERVAL)
    start = time.perf_counter()
    updates = 0
    epoch_losses = []
    for epoch in range(settings.epochs):
        epoch_loss = torch.zeros(())
        for batch, (x, y) in enumerate(loader, 1):
            x, y = x.to(device), y.to(device)
            with _autocast(settings):
                loss = loss_fn(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            updates += 1
            epoch_loss += loss.detach().float().cpu()
            scheduler.step_update(num_updates=updates)
            if ema is not None:
                ema.update(model, step=updates)
            done = f"epoch {epoch + 1}/{settings.epochs} loss {float(epoch_loss) / steps:.3f}" if batch == steps else ""
            progress.update(1, done)  # a line at the end of every epoch, else every few seconds at most
        epoch_losses.append(float(epoch_loss) / steps)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    progress.close()
    return Trained(ema.module if ema is not None else model, seconds, epoch_losses)


def _linear_layers(model: nn.Module) -> list[nn.Module]:
    """``nn.Linear`` layers and linear chains (one each: not their factors)."""
    chains = [path for path, m in model.named_modules() if isinstance(m, OverparamChain)]
    return [
        m
        for path, m in model.named_modules()
        if isinstance(m, (nn.Linear, OverparamLinear)) and not any(path.startswith(f"{c}.") for c in chains)
    ]


def check_classifier(model: nn.Module) -> None:
    """Refuse a model whose penultimate features :func:`evaluate` cannot find (before training it).

    Raises:
        AnalysisError: for a model without a Linear layer (e.g. a 1x1-conv classifier).
    """
    if not _linear_layers(model):
        raise AnalysisError(
            f"model: a {type(model).__name__} has no Linear layer; expected a linear classifier, whose input "
            "is the penultimate features the comparison measures"
        )


@contextmanager
def _classifier_inputs(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """The input of the last linear layer each forward pass calls (the classifier): the
    penultimate features, the same for a stock model and its op variant."""
    seen: list[torch.Tensor] = []

    def keep(_module: nn.Module, args: tuple[Any, ...]) -> None:
        seen.append(args[0])

    hooks = [m.register_forward_pre_hook(keep) for m in _linear_layers(model)]
    try:
        yield seen
    finally:
        for hook in hooks:
            hook.remove()


@torch.no_grad()
def evaluate(model: nn.Module, loader: torch.utils.data.DataLoader, device: str) -> Evaluation:
    """Top-1, mean cross-entropy, logits and penultimate features (the classifier's input) of a
    timm or torchvision model, in float32.

    Raises:
        AnalysisError: for a model without a Linear layer (:func:`check_classifier`).
    """
    check_classifier(model)
    model.to(device).eval()
    logits, features, targets = [], [], []
    for x, y in loader:
        with _classifier_inputs(model) as inputs:
            out = model(x.to(device))
        features.append(inputs[-1].flatten(1).float().cpu())
        logits.append(out.float().cpu())
        targets.append(y.cpu())
    out, feats, target = torch.cat(logits), torch.cat(features), torch.cat(targets)
    return Evaluation(
        top1=float((out.argmax(1) == target).double().mean()),
        loss=float(F.cross_entropy(out, target)),
        logits=out,
        features=feats,
        targets=target,
    )
