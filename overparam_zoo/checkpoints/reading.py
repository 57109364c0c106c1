"""Reading checkpoints: timm ``train.py`` files, plain state dicts and safetensors, and the
model names they carry. Reading only: :mod:`overparam_zoo.checkpoints.loading` turns them into models.

A file is never executed: torch files are loaded with ``weights_only=True`` (tensors, containers,
numbers and train.py's ``argparse.Namespace``), and one holding other pickled objects is refused
with how to convert a trusted file yourself, never with advice to load it unsafely here."""

from __future__ import annotations

import argparse
import json
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from overparam.versions import safe_globals
from overparam_zoo.errors import CheckpointError, first_line

__all__ = ["read_checkpoint", "read_metadata", "named_architectures", "looks_like_file"]


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The checkpoint's top-level entries besides its state dicts (train.py's ``args``,
    ``epoch``, ``arch``, ...), read memory-mapped, so no tensor is loaded."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint file at {path}")
    if path.suffix == ".safetensors":
        return {}
    try:
        with safe_globals([argparse.Namespace]):
            data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as err:
        if "weights only" in str(err).lower():  # our message, not torch's advice to load it unsafely
            raise _untrusted(path, err) from None
        raise CheckpointError(f"cannot read {path}: {first_line(err)}") from err
    except Exception as err:
        raise CheckpointError(f"cannot read {path}: {first_line(err)}") from err
    return {k: v for k, v in data.items() if not k.startswith("state_dict")} if isinstance(data, dict) else {}


def _untrusted(path: Path, err: pickle.UnpicklingError) -> CheckpointError:
    """A file that holds pickled Python objects, which ``weights_only`` loading refuses to run."""
    found = _GLOBAL.search(str(err))
    what = f"a pickled Python object ({found.group(1)})" if found else "pickled data that is not plain tensors"
    return CheckpointError(
        f"{path} holds {what}, so it was not loaded and nothing in it was executed (unpickling can run any code); "
        "if you trust the file, convert it to plain tensors yourself, e.g. in Python: "
        f"`import torch, safetensors.torch; ckpt = torch.load({str(path)!r}, weights_only=False); "
        'safetensors.torch.save_file(ckpt["state_dict"], "model.safetensors")` '
        "(ckpt itself for a plain state dict), then export model.safetensors"
    )


def read_checkpoint(path: str | Path, *, use_ema: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The state dict (EMA preferred, like timm's loaders; ``module.``/``_orig_mod.`` removed)
    and the checkpoint's other top-level entries. Loads with ``weights_only=True``.

    Raises:
        CheckpointError: a missing or unreadable file, one holding pickled Python objects (refused
            unexecuted, with how to convert a trusted file), or no state dict of tensors.
    """
    from timm.models import load_state_dict

    path = Path(path)
    meta = read_metadata(path)
    try:
        with safe_globals([argparse.Namespace]):  # timm < 1.0.31 loads weights_only without allowing train.py's args
            state = load_state_dict(str(path), use_ema=use_ema)
    except Exception as err:
        raise CheckpointError(f"cannot read {path}: {first_line(err)}") from err
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} holds no state dict of tensors")
    return state, meta


def named_architectures(path: str | Path, meta: dict[str, Any]) -> list[str]:
    """Model names the checkpoint or its folder give, most specific first: train.py's
    ``args.model``, an ``arch`` entry, then a ``config.json`` beside it (variant, architecture)."""
    args = meta.get("args")
    names = [getattr(args, "model", None), args.get("model") if isinstance(args, dict) else None, meta.get("arch")]
    config = Path(path).parent / "config.json"
    if config.is_file():
        try:
            data = json.loads(config.read_text())
        except (OSError, ValueError) as err:
            raise CheckpointError(f"cannot read {config}: {err}") from err
        names += [data.get("overparam_zoo", {}).get("variant"), data.get("architecture")]
    return [n for n in names if isinstance(n, str) and n]


_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+)")
_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt", ".tar")


def looks_like_file(source: str) -> bool:
    """Whether a command-line source means a file (it exists, has a checkpoint suffix, or a
    path separator) rather than a model name."""
    return Path(source).exists() or source.endswith(_SUFFIXES) or "/" in source
