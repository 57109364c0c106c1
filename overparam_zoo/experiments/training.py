"""One training recipe, built from timm's own pieces, applied identically to every model.

A comparison is only fair when the base and its op variants see the same loaders, optimizer,
schedule, loss and batch order. This module is that recipe: timm's ``create_loader`` (and so
``create_transform``), ``create_optimizer_v2``, ``create_scheduler_v2`` stepped per update,
``ModelEmaV3`` when asked, and ``torch.autocast`` in bfloat16 for AMP (no loss scaling needed).
Evaluation runs in float32 and also returns the penultimate features (timm's
``forward_head(..., pre_logits=True)``) for the effective-rank measurement.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from overparam_zoo.experiments.datasets import ImageData

__all__ = ["TrainSettings", "Trained", "Evaluation", "make_loaders", "train_model", "evaluate"]


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
    over the last epoch (with label smoothing), which tells under- from over-fitting."""

    model: nn.Module
    seconds: float
    last_epoch_loss: float


@dataclass
class Evaluation:
    """Test-set outputs of one model, in the loader's (fixed) order."""

    top1: float
    loss: float
    logits: torch.Tensor
    features: torch.Tensor
    targets: torch.Tensor


def make_loaders(
    data: ImageData, settings: TrainSettings
) -> tuple[torch.utils.data.DataLoader, torch.utils.data.DataLoader]:
    """timm loaders for the train (shuffled, drop_last) and test splits, in the main process.

    ``num_workers=0``: the images are small and worker processes would compete with the
    training threads that ``settings.threads`` pins.
    """
    from timm.data import create_loader

    common = dict(
        input_size=(data.in_chans, settings.input_size, settings.input_size),
        interpolation="bilinear",
        mean=data.mean,
        std=data.std,
        crop_pct=data.crop_pct,
        num_workers=0,
        use_prefetcher=False,
        device=torch.device(settings.device),
    )
    train = create_loader(
        data.train,
        batch_size=settings.batch_size,
        is_training=True,
        no_aug=not settings.augment,
        scale=settings.scale,
        hflip=settings.hflip,
        **common,
    )
    test = create_loader(data.test, batch_size=max(settings.batch_size, 256), is_training=False, **common)
    return train, test


def _autocast(settings: TrainSettings):
    return torch.autocast(torch.device(settings.device).type, dtype=torch.bfloat16, enabled=settings.amp)


def train_model(
    model: nn.Module, loader: torch.utils.data.DataLoader, settings: TrainSettings, *, label: str = ""
) -> Trained:
    """Train ``model`` in place by ``settings``, the same way for every model of a comparison."""
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2
    from timm.utils import ModelEmaV3
    from tqdm import tqdm

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
    bar = tqdm(total=settings.epochs * steps, desc=f"train {label}", leave=False, file=sys.stderr, mininterval=1.0)
    start = time.perf_counter()
    updates = 0
    for epoch in range(settings.epochs):
        epoch_loss = torch.zeros(())
        for x, y in loader:
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
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}", refresh=False)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    bar.close()
    return Trained(ema.module if ema is not None else model, seconds, float(epoch_loss) / steps)


@torch.no_grad()
def evaluate(model: nn.Module, loader: torch.utils.data.DataLoader, device: str) -> Evaluation:
    """Top-1, mean cross-entropy, logits and penultimate features of a timm model, in float32."""
    model.to(device).eval()
    logits, features, targets = [], [], []
    for x, y in loader:
        pooled = model.forward_features(x.to(device))
        features.append(model.forward_head(pooled, pre_logits=True).float().cpu())
        logits.append(model.forward_head(pooled).float().cpu())
        targets.append(y.cpu())
    out, feats, target = torch.cat(logits), torch.cat(features), torch.cat(targets)
    return Evaluation(
        top1=float((out.argmax(1) == target).double().mean()),
        loss=float(F.cross_entropy(out, target)),
        logits=out,
        features=feats,
        targets=target,
    )
