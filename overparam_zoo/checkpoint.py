"""Reading training checkpoints: timm ``train.py`` files, plain state dicts and safetensors.

``load_model`` rebuilds the model a checkpoint holds (an op variant, or a stock timm or
torchvision model): the architecture comes from the caller, the checkpoint's ``args.model`` or
``arch``, or a ``config.json`` beside it; the class count and input channels from the shapes
of the classifier and first conv.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import CheckpointError
from .registry import create_model, get_variant, torchvision_builder

__all__ = ["CheckpointError", "read_checkpoint", "load_model", "build_by_name", "looks_like_file"]


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


def build_by_name(name: str, **kwargs: Any) -> nn.Module:
    """An op variant, a timm model or a torchvision model, by name.

    Raises:
        CheckpointError: for a name no zoo knows, or a build that fails.
    """
    import timm

    try:
        variant = get_variant(name)
    except KeyError:
        variant = None
    try:
        if variant is not None:
            return create_model(name, zoo=variant.zoo, **kwargs)
        if timm.is_model(name):
            return timm.create_model(name, **kwargs)
        if torchvision_builder(name) is not None:
            return torchvision_builder(name)(**kwargs)
    except Exception as err:
        raise CheckpointError(f"could not build {name!r}: {type(err).__name__}: {str(err).splitlines()[0]}") from err
    raise CheckpointError(f"unknown model {name!r}: not an op variant, a timm or a torchvision model")


def _is_known(name: str) -> bool:
    import timm

    try:
        get_variant(name)
        return True
    except KeyError:
        return timm.is_model(name) or torchvision_builder(name) is not None


def _architecture(path: Path, meta: dict[str, Any], model: str | None) -> str:
    if model:
        return model
    args = meta.get("args")
    candidates = [getattr(args, "model", None), args.get("model") if isinstance(args, dict) else None, meta.get("arch")]
    config = path.parent / "config.json"
    if config.is_file():
        data = json.loads(config.read_text())
        candidates += [data.get("overparam_zoo", {}).get("variant"), data.get("architecture")]
    for name in candidates:
        if isinstance(name, str) and _is_known(name):
            return name
    raise CheckpointError(
        f"cannot tell which model {path} holds (no --model, args.model, arch or config.json names one)"
    )


def _shape_args(name: str, state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """``num_classes``/``in_chans`` read off the classifier and first conv of the checkpoint."""
    import timm

    try:
        zoo = get_variant(name).zoo
    except KeyError:
        zoo = "timm" if timm.is_model(name) else "torchvision"
    if zoo != "timm":
        linears = [k for k in state if k.endswith(".weight") and state[k].dim() == 2]
        return {"num_classes": state[linears[-1]].shape[0]} if linears else {}
    cfg = timm.models.get_pretrained_cfg(name)
    cfg = cfg.to_dict() if cfg is not None else {}
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


_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt", ".tar")


def looks_like_file(source: str) -> bool:
    return Path(source).exists() or source.endswith(_SUFFIXES) or "/" in source


def load_model(source: str | Path, *, model: str | None = None, use_ema: bool = True) -> tuple[nn.Module, str]:
    """A model by name, or the model a checkpoint holds, in eval mode; returns it and its name.

    Args:
        source: a model name (op variant, timm or torchvision) or a checkpoint file.
        model: the architecture of a checkpoint that does not name it.
        use_ema: prefer ``state_dict_ema`` in timm train.py checkpoints.

    Raises:
        CheckpointError: unknown model, unreadable file, or a state dict that does not fit.
    """
    source = str(source)
    if not looks_like_file(source):
        if model:
            raise CheckpointError(f"--model is for checkpoint files, but {source!r} is a model name, not a file")
        return build_by_name(source).eval(), source
    path = Path(source)
    state, meta = read_checkpoint(path, use_ema=use_ema)
    name = _architecture(path, meta, model)
    built = build_by_name(name, **_shape_args(name, state))
    mismatch = _describe_mismatch(built, state)
    if mismatch:
        raise CheckpointError(f"{path} does not fit {name}: {mismatch}")
    built.load_state_dict(state, strict=True)
    return built.eval(), name
