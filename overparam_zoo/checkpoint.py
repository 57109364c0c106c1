"""Reading training checkpoints: timm ``train.py`` files, plain state dicts and safetensors.

``load_op_model`` rebuilds the op model a checkpoint was trained as: the variant comes from
the caller, the checkpoint's ``args.model`` or ``arch``, or a ``config.json`` beside it; the
class count and input channels from the shapes of the classifier and first conv.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .recipe import Variant
from .registry import create_model, get_variant

__all__ = ["CheckpointError", "read_checkpoint", "load_op_model"]


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message is one line that says why."""


def _metadata(path: Path) -> dict[str, Any]:
    if path.suffix == ".safetensors":
        return {}
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:
        raise CheckpointError(f"cannot read {path}: {type(err).__name__}: {str(err).splitlines()[0]}") from err
    return data if isinstance(data, dict) else {}


def read_checkpoint(path: str | Path, *, use_ema: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The state dict (EMA preferred, like timm's loaders; ``module.``/``_orig_mod.`` removed)
    and the checkpoint's other top-level entries. Loads with ``weights_only=True``."""
    from timm.models import load_state_dict

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint file at {path}")
    meta = _metadata(path)
    try:
        state = load_state_dict(str(path), use_ema=use_ema)
    except Exception as err:
        raise CheckpointError(f"cannot read {path}: {type(err).__name__}: {str(err).splitlines()[0]}") from err
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} holds no state dict of tensors")
    return state, {k: v for k, v in meta.items() if not k.startswith("state_dict")}


def _variant_name(path: Path, meta: dict[str, Any], model: str | None) -> str:
    if model:
        return model
    args = meta.get("args")
    candidates = [getattr(args, "model", None), args.get("model") if isinstance(args, dict) else None, meta.get("arch")]
    config = path.parent / "config.json"
    if config.is_file():
        data = json.loads(config.read_text())
        candidates.append(data.get("overparam_zoo", {}).get("variant") or data.get("architecture"))
    for name in candidates:
        if isinstance(name, str):
            try:
                get_variant(name)
                return name
            except KeyError:
                continue
    raise CheckpointError(f"cannot tell which op variant {path} holds (no --model, args.model or arch names one)")


def _shape_args(variant: Variant, state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """``num_classes``/``in_chans`` read off the classifier and first conv of the checkpoint."""
    if variant.zoo != "timm":
        linears = [k for k in state if k.endswith(".weight") and state[k].dim() == 2]
        return {"num_classes": state[linears[-1]].shape[0]} if linears else {}
    import timm

    cfg = timm.models.get_pretrained_cfg(variant.name).to_dict()
    args: dict[str, Any] = {}
    classifier = cfg.get("classifier")
    if isinstance(classifier, str) and f"{classifier}.weight" in state:
        args["num_classes"] = state[f"{classifier}.weight"].shape[0]
    first = cfg.get("first_conv")
    if isinstance(first, str) and f"{first}.weight" in state:
        args["in_chans"] = state[f"{first}.weight"].shape[1]
    return args


def _describe_mismatch(model: nn.Module, state: dict[str, torch.Tensor]) -> str:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and own[k].shape != state[k].shape]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
    if shapes:
        k = shapes[0]
        parts.append(f"{len(shapes)} shape mismatches (e.g. {k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)})")
    return ", ".join(parts)


def load_op_model(path: str | Path, *, model: str | None = None, use_ema: bool = True) -> tuple[nn.Module, str]:
    """Rebuild the op model held by a checkpoint, in eval mode; returns it and its variant name.

    Raises:
        CheckpointError: unreadable file, unknown variant, or a state dict that does not fit.
    """
    path = Path(path)
    state, meta = read_checkpoint(path, use_ema=use_ema)
    name = _variant_name(path, meta, model)
    try:
        variant = get_variant(name)
    except KeyError as err:
        raise CheckpointError(err.args[0]) from err
    op = create_model(name, zoo=variant.zoo, **_shape_args(variant, state))
    mismatch = _describe_mismatch(op, state)
    if mismatch:
        raise CheckpointError(f"{path} does not fit {name}: {mismatch}")
    op.load_state_dict(state, strict=True)
    return op.eval(), name
