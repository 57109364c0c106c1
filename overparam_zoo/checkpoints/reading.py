"""Reading checkpoints: timm ``train.py`` files, plain state dicts and safetensors, and the
model names they carry. Reading only: :mod:`overparam_zoo.checkpoints.loading` turns them into models.

A file is never executed: torch files are loaded with ``weights_only=True`` (tensors, containers,
numbers and train.py's ``argparse.Namespace``), and one holding other pickled objects is refused
with how to convert a trusted file yourself, never with advice to load it unsafely here."""

from __future__ import annotations

import argparse
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from overparam.compat import safe_globals
from overparam_zoo.errors import CheckpointError, first_line

__all__ = ["read_checkpoint", "named_architectures", "looks_like_file"]


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


def _load(path: Path) -> Any:
    """The file's content, read once: safetensors, or a torch file loaded ``weights_only``
    (memory-mapped, so tensors are read as they are used)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as err:
            raise CheckpointError(f"cannot read {path}: {first_line(err)}") from err
    try:
        with safe_globals([argparse.Namespace]):  # torch 2.4 has only a process-wide list
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:
        # torch raises every refusal of weights_only loading as "Weights only load failed ..."
        if isinstance(err, pickle.UnpicklingError) and "weights only" in str(err).lower():
            raise _untrusted(path, err) from None  # our message, not torch's advice to load it unsafely
        raise CheckpointError(f"cannot read {path}: {first_line(err)}") from err


def _state_dict_key(data: dict[str, Any], use_ema: bool) -> str | None:
    """The entry timm's ``load_state_dict`` takes the weights from, in its order."""
    if use_ema:
        for key in ("state_dict_ema", "model_ema"):
            if data.get(key) is not None:
                return key
    return next((key for key in ("state_dict", "model") if key in data), None)


def read_checkpoint(path: str | Path, *, use_ema: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The state dict and the checkpoint's other top-level entries (train.py's ``args``,
    ``epoch``, ``arch``, ...), from one read of the file.

    The state dict is the one timm's loaders take (``state_dict_ema``/``model_ema`` when
    ``use_ema``, else ``state_dict``/``model``, else the file itself), with ``module.`` and
    ``_orig_mod.`` prefixes removed by timm's ``clean_state_dict``.

    Raises:
        CheckpointError: a missing or unreadable file, one holding pickled Python objects (refused
            unexecuted, with how to convert a trusted file), or no state dict of tensors.
    """
    from timm.models import clean_state_dict

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint file at {path}")
    data = _load(path)
    meta: dict[str, Any] = {}
    state = data
    if isinstance(data, dict) and path.suffix != ".safetensors":
        meta = {k: v for k, v in data.items() if not k.startswith("state_dict")}
        key = _state_dict_key(data, use_ema)
        state = data[key] if key is not None else data
    state = clean_state_dict(state) if isinstance(state, dict) else {}
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} holds no state dict of tensors")
    return state, meta


def named_architectures(meta: dict[str, Any]) -> list[str]:
    """Model names a checkpoint's entries give, most specific first: train.py's ``args.model``,
    then an ``arch`` entry (the ``config.json`` beside it is the export folder's to read)."""
    args = meta.get("args")
    names = [getattr(args, "model", None), args.get("model") if isinstance(args, dict) else None, meta.get("arch")]
    return [n for n in names if isinstance(n, str) and n]


_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+)")
_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt", ".tar")


def looks_like_file(source: str) -> bool:
    """Whether a command-line source means a file (it exists, has a checkpoint suffix, or a
    path separator) rather than a model name."""
    return Path(source).exists() or source.endswith(_SUFFIXES) or "/" in source
