"""Models by name or from a checkpoint file: the one function every command loads through.

A checkpoint file is read once (:func:`~overparam_zoo.checkpoints.reading.read_checkpoint`): its
weights build the model, its other entries (train.py's ``args``, ``epoch``) come back with it for
the commands that describe the run (export).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from overparam.state import describe_mismatch
from overparam_zoo.checkpoints.folder import ExportFolder
from overparam_zoo.checkpoints.reading import looks_like_file, named_architectures, read_checkpoint
from overparam_zoo.errors import CheckpointError, UnknownModelError, first_line
from overparam_zoo.registry.variants import create_model, resolve

__all__ = ["Loaded", "load_model", "load"]


@dataclass
class Loaded:
    """A model in eval mode, the name it was built by, and the checkpoint's entries besides its
    weights (empty for a model by name)."""

    model: nn.Module
    name: str
    meta: dict[str, Any] = field(default_factory=dict)


def _architecture(path: Path, meta: dict[str, Any], model: str | None) -> str:
    if model:
        return model
    for name in [*named_architectures(meta), *ExportFolder.names_beside(path)]:
        try:
            resolve(name)
            return name
        except UnknownModelError:
            continue
    raise CheckpointError(
        f"cannot tell which model {path} holds (no --model, args.model, arch or config.json names one)"
    )


def load(source: str | Path, *, model: str | None = None, use_ema: bool = True) -> Loaded:
    """A model by name, or the model a checkpoint holds, with what the checkpoint says besides.

    Args:
        source: a model name (op variant, timm or torchvision) or a checkpoint file
            (a name with a path separator or a checkpoint suffix is taken as a file).
        model: the architecture of a checkpoint that does not name it.
        use_ema: prefer ``state_dict_ema`` in timm train.py checkpoints.

    Raises:
        UnknownModelError: for a name no zoo knows.
        CheckpointError: unreadable file, or a state dict that does not fit.
        ExportFolderError: for a ``config.json`` beside the file that cannot be read.
    """
    source = str(source)
    if not looks_like_file(source):
        if model:
            raise CheckpointError(f"--model is for checkpoint files, but {source!r} is a model name, not a file")
        return Loaded(create_model(source).eval(), source)
    path = Path(source)
    state, meta = read_checkpoint(path, use_ema=use_ema)
    name = _architecture(path, meta, model)
    found = resolve(name)
    shape_args = found.zoo.shape_args(name, state, found.variant)
    try:
        built = create_model(name, **shape_args)
    except Exception as err:  # a build that fails for these weights' shapes is bad input, not a bug here
        raise CheckpointError(f"could not build {name!r}: {first_line(err)}") from err
    mismatch = describe_mismatch(built.state_dict(), state)
    if mismatch:
        raise CheckpointError(f"{path} does not fit {name}: {mismatch}")
    built.load_state_dict(state, strict=True)
    return Loaded(built.eval(), name, meta)


def load_model(source: str | Path, *, model: str | None = None, use_ema: bool = True) -> tuple[nn.Module, str]:
    """:func:`load`'s model and name (see there)."""
    loaded = load(source, model=model, use_ema=use_ema)
    return loaded.model, loaded.name
