"""Export: an op model's collapsed weights as a standard checkpoint of its base architecture.

The folder holds ``model.safetensors`` and a timm ``config.json`` whose ``architecture`` is the
base (written by timm's own ``save_config_for_hf``), so plain timm loads it with no plugin:
``timm.create_model("local-dir:DIR", pretrained=True)``. Provenance (variant, recipe hash,
versions, the float64 collapse error on a probe input) sits at the top level of the JSON,
where timm ignores it. Torchvision variants get the same two files; their state dict loads
with ``strict=True`` into ``torchvision.models.<base>(num_classes=N)``.

Its ``pretrained_cfg`` describes the weights in the folder, not the base's pretrained weights:
preprocessing from the training run (:mod:`overparam_zoo.data_config`), the class count and
label names, no inherited tag, paper, license or hub ids. A ``README.md`` model card
(:mod:`overparam_zoo.model_card`) travels with it.

Writes are atomic: everything goes to a temporary folder beside ``out_dir`` that is renamed
into place at the end, so a failed export leaves nothing half-written.
"""

from __future__ import annotations

import copy
import importlib.metadata
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from .collapse import collapsed_state_dict
from .data_config import exported_label_names, exported_pretrained_cfg
from .errors import ExportError
from .metadata import ExportMetadata
from .model_card import CARD_NAME, render_model_card
from .plugins import get_plugin_manager
from .recipe import Variant
from .registry import build_base, get_variant

__all__ = [
    "ExportError",
    "ExportResult",
    "export_collapsed",
    "variant_of",
    "check_out_dir",
    "collapse_error",
    "probe_input",
    "probe_shape",
    "relative_difference",
    "PROVENANCE_KEY",
]

PROVENANCE_KEY = "overparam_zoo"
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


@dataclass
class ExportResult:
    """Where the export went and what was measured."""

    out_dir: Path
    weights: Path
    config: dict[str, Any]
    max_collapse_error: float
    extra_files: list[Path] = field(default_factory=list)


def variant_of(model: nn.Module) -> tuple[Variant, dict[str, Any]]:
    """The variant an op model was built from, and the kwargs its base was built with."""
    info = getattr(model, "overparam_zoo", None)
    if not isinstance(info, dict) or "variant" not in info:
        raise ExportError(
            "the model is not an op variant built by overparam_zoo, so there is nothing to collapse "
            "(for an op model built by hand, pass variant=NAME)"
        )
    return get_variant(info["variant"], info["zoo"]), dict(info.get("model_args", {}))


def probe_shape(stock: nn.Module, variant: Variant) -> tuple[int, ...]:
    """The input size (without batch) the collapse is checked on: the model's own input size."""
    if variant.zoo == "timm":
        try:
            from timm.models._hub import get_model_input_config

            return tuple(get_model_input_config(stock)["input_size"])
        except (ImportError, KeyError, AttributeError):
            return tuple(stock.pretrained_cfg["input_size"])
    first = next(m for m in stock.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    return (first.in_channels, 224, 224) if isinstance(first, nn.Conv2d) else (first.in_features,)


def probe_input(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A seeded batch of two, so every check of the same model sees the same input."""
    return torch.randn(2, *shape, generator=torch.Generator().manual_seed(0), dtype=dtype)


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max absolute difference, relative to the largest magnitude of ``b``."""
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def collapse_error(model: nn.Module, variant: Variant, args: dict[str, Any], x: torch.Tensor) -> float:
    """Output difference between ``model`` (eval, in ``x``'s dtype) and its collapsed stock model."""
    stock = build_base(variant, **args).to(x.dtype).eval()
    stock.load_state_dict(collapsed_state_dict(model), strict=True)
    with torch.no_grad():
        return relative_difference(stock(x), model(x))


def _versions() -> dict[str, str]:
    out = {}
    for name in ("overparam-zoo", "torch", "timm", "torchvision", "safetensors"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def _provenance(variant: Variant, error: float, shape: tuple[int, ...]) -> dict[str, Any]:
    return {
        "variant": variant.name,
        "zoo": variant.zoo,
        "base": variant.base,
        "recipe": variant.recipe.path.name,
        "recipe_sha256": variant.recipe.sha256,
        "versions": _versions(),
        "max_collapse_error": error,
        "probe_input_size": list(shape),
    }


def check_out_dir(out_dir: Path, force: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"{out_dir} exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise ExportError(f"{out_dir} exists and is not empty; use force=True (--force) to replace it")


def _write_config(
    stock: nn.Module, variant: Variant, path: Path, provenance: dict[str, Any], metadata: ExportMetadata | None
) -> dict[str, Any]:
    if variant.zoo == "timm":
        from timm.models._hub import save_config_for_hf

        stock.pretrained_cfg = exported_pretrained_cfg(stock, metadata)  # save_config_for_hf writes it
        labels = exported_label_names(stock.num_classes, metadata)
        model_config = {PROVENANCE_KEY: provenance, **({"label_names": list(labels)} if labels else {})}
        save_config_for_hf(stock, str(path), model_config=model_config)
        return json.loads(path.read_text())
    classifier = [m for m in stock.modules() if isinstance(m, nn.Linear)][-1]
    labels = exported_label_names(classifier.out_features, metadata)
    config = {
        "architecture": variant.base,
        "zoo": "torchvision",
        "num_classes": classifier.out_features,
        **({"label_names": list(labels)} if labels else {}),
        **({"license": metadata.license} if metadata is not None and metadata.license else {}),
        PROVENANCE_KEY: provenance,
    }
    path.write_text(json.dumps(config, indent=2))
    return config


def _usual_permissions(folder: Path) -> None:
    """``mkdtemp`` makes a private (0700) folder; an export is meant to be shared."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.iterdir():
        if path.is_file():
            path.chmod(0o666 & ~umask)


def _move_into_place(tmp: Path, out_dir: Path) -> None:
    old = None
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
        os.replace(out_dir, old / "previous")
    os.replace(tmp, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def export_collapsed(
    model: nn.Module,
    out_dir: str | Path,
    *,
    variant: str | None = None,
    model_args: dict[str, Any] | None = None,
    force: bool = False,
    progress: Callable[[str], None] | None = None,
    metadata: ExportMetadata | None = None,
) -> ExportResult:
    """Write ``model``'s collapsed weights as a standard checkpoint of its base architecture.

    Args:
        model: an op model (from the registry, or any model with the variant's structure).
        out_dir: the export folder (created; must be empty or absent unless ``force``).
        variant: the variant name, when ``model`` was not built by ``overparam_zoo``.
        model_args: kwargs its base was built with (``num_classes``, ...), with ``variant``.
        force: replace an existing non-empty ``out_dir``.
        progress: called with a short description before each step.
        metadata: the training run (``ExportMetadata.from_checkpoint``) and explicit preprocessing,
            labels and license; without training arguments the base's preprocessing is kept, with a
            :class:`~overparam_zoo.metadata.MetadataWarning`.

    Returns:
        An :class:`ExportResult`.

    Raises:
        ExportError: for a model that does not fit its base architecture, preprocessing or labels
            that do not fit the model, or an occupied ``out_dir``; nothing is written then.
        ValueError: when a bias gained inside a chain has no BatchNorm to fold into.
    """
    step = progress or (lambda _msg: None)
    out_dir = Path(out_dir)
    check_out_dir(out_dir, force)
    if variant is not None:
        found, args = get_variant(variant), dict(model_args or {})
    else:
        found, args = variant_of(model)
    step("collapsing")
    state = {k: v.detach().contiguous().clone() for k, v in collapsed_state_dict(model).items()}
    step(f"loading into {found.base}")
    stock = build_base(found, **args).eval()
    try:
        stock.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        raise ExportError(f"collapsed weights do not fit {found.zoo} {found.base}: {' '.join(first[1:3])}") from err
    step("measuring the collapse error (float64)")
    shape = probe_shape(stock, found)
    error = collapse_error(copy.deepcopy(model).double().eval(), found, args, probe_input(shape, torch.float64))
    step(f"writing {out_dir}")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        config = _write_config(stock, found, tmp / CONFIG_NAME, _provenance(found, error, shape), metadata)
        params = (sum(p.numel() for p in model.parameters()), sum(p.numel() for p in stock.parameters()))
        card = render_model_card(config, found, metadata, params=params)
        (tmp / CARD_NAME).write_text(card, encoding="utf-8")
        extra: list[Path] = []
        for written in get_plugin_manager().hook.overparam_zoo_export(model=stock, out_dir=tmp, config=config):
            extra += [out_dir / Path(p).relative_to(tmp) for p in written or []]
        _usual_permissions(tmp)
        _move_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExportResult(out_dir, out_dir / WEIGHTS_NAME, config, error, extra)
