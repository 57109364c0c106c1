"""Export: an op model's collapsed weights as a standard checkpoint of its base architecture.

The folder (:class:`~overparam_zoo.checkpoints.folder.ExportFolder`) holds ``model.safetensors``
and a timm ``config.json`` whose ``architecture`` is the base (rendered by timm's own
``save_config_for_hf``, :mod:`~overparam_zoo.checkpoints.formats`), so plain timm loads it with no plugin:
``timm.create_model("local-dir:DIR", pretrained=True)``. Provenance (variant, recipe hash,
versions, the float64 collapse error on a probe input) sits at the top level of the JSON,
where timm ignores it. Torchvision variants get the same two files; their state dict loads
with ``strict=True`` into ``torchvision.models.<base>(num_classes=N)``.

Its ``pretrained_cfg`` describes the weights in the folder, not the base's pretrained weights:
preprocessing from the training run (:mod:`overparam_zoo.sharing.data_config`), the class count and
label names, no inherited tag, paper, license or hub ids. A ``README.md`` model card
(:mod:`overparam_zoo.sharing.model_card`) travels with it.

A diverged run is never exported: a NaN or Inf in the op model's weights, in the collapsed
weights (finite factors can overflow when multiplied) or in the collapsed model's output on the
probe input stops the export with an :class:`~overparam_zoo.errors.ExportError` naming the first
tensors (or the first layer) affected, before anything is written.

Writes are atomic: everything goes to a temporary folder beside ``out_dir`` that is renamed
into place at the end, so a failed export leaves nothing half-written.
"""

from __future__ import annotations

import copy
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from overparam import collapsed_state_dict
from overparam.state import describe_mismatch
from overparam_zoo.checkpoints.folder import PROVENANCE_KEY, WEIGHTS_NAME, ExportFolder, provenance
from overparam_zoo.checkpoints.formats import export_format
from overparam_zoo.errors import ExportError
from overparam_zoo.files import usual_permissions
from overparam_zoo.registry.plugins import get_plugin_manager
from overparam_zoo.registry.variants import build_base, get_variant
from overparam_zoo.sharing.data_config import describe_weights
from overparam_zoo.sharing.metadata import ExportMetadata
from overparam_zoo.sharing.model_card import render_model_card
from overparam_zoo.sharing.verify import (
    collapse_error,
    first_names,
    non_finite,
    non_finite_output,
    probe_input,
    probe_shape,
    variant_of,
)

__all__ = ["ExportResult", "export_collapsed", "check_out_dir", "PROGRESS_STEPS"]

PROGRESS_STEPS = 4
"""How many times :func:`export_collapsed` calls its ``progress`` callback, for a caller's counter."""


@dataclass
class ExportResult:
    """Where the export went and what was measured."""

    out_dir: Path
    weights: Path
    config: dict[str, Any]
    max_collapse_error: float
    extra_files: list[Path] = field(default_factory=list)


def check_out_dir(out_dir: Path, force: bool) -> None:
    """Refuse an ``out_dir`` that is a file, or a non-empty folder without ``force``."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"{out_dir} exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise ExportError(f"{out_dir} exists and is not empty; use force=True (--force) to replace it")


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
            :class:`~overparam_zoo.sharing.metadata.MetadataWarning`.

    Returns:
        An :class:`ExportResult`.

    Raises:
        ExportError: for a model that does not fit its base architecture, a bias gained inside
            a chain with no BatchNorm to fold into, NaN or Inf in the weights, the collapsed weights
            or the probe output (a diverged run), preprocessing or labels that do not fit the
            model, or an occupied ``out_dir``; nothing is written then.
    """
    step = progress or (lambda _msg: None)
    out_dir = Path(out_dir)
    check_out_dir(out_dir, force)
    if variant is not None:
        found, args = get_variant(variant), dict(model_args or {})
    else:
        found, args = variant_of(model)
    step("collapsing")
    trained = model.state_dict()
    diverged = non_finite(trained)
    if diverged:
        raise ExportError(
            f"{found.name}'s weights hold NaN or Inf in {first_names(diverged, len(trained))}: the run diverged, "
            "so nothing was written"
        )
    try:
        collapsed = collapsed_state_dict(model)
    except ValueError as err:  # a bias gained inside a chain with no BatchNorm to fold into
        raise ExportError(f"cannot collapse {found.name}: {err}") from err
    state = {k: v.detach().contiguous().clone() for k, v in collapsed.items()}
    overflowed = non_finite(state)
    if overflowed:
        raise ExportError(
            f"collapsing {found.name} overflows to NaN or Inf in {first_names(overflowed, len(state))}: its factors "
            "are finite, their product is not; nothing was written"
        )
    step(f"loading into {found.base}")
    stock = build_base(found, **args).eval()
    mismatch = describe_mismatch(stock.state_dict(), state)
    if mismatch:
        raise ExportError(f"collapsed weights do not fit {found.zoo} {found.base}: {mismatch}")
    stock.load_state_dict(state, strict=True)
    step("measuring the collapse error (float64)")
    shape = probe_shape(stock, found)
    dtype = next(stock.parameters()).dtype
    where = non_finite_output(stock, probe_input(shape, dtype))
    if where is not None:
        raise ExportError(
            f"the collapsed {found.base} outputs NaN or Inf on the probe input ({str(dtype).removeprefix('torch.')}, "
            f"{'x'.join(map(str, shape))}), first in {where or 'its final output'}; nothing was written"
        )
    error = collapse_error(copy.deepcopy(model).to("cpu", torch.float64).eval(), found, args, probe_input(shape, torch.float64))  # the probe is on the CPU
    if not math.isfinite(error):
        raise ExportError(
            f"the float64 collapse check of {found.name} gives {error} on the probe input; nothing was written"
        )
    described = describe_weights(stock, metadata)  # the config fields of these weights, checked before writing
    step(f"writing {out_dir}")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        config = export_format(found.zoo).config(
            stock, found.base, {**described, PROVENANCE_KEY: provenance(found, error, shape)}
        )
        params = (sum(p.numel() for p in model.parameters()), sum(p.numel() for p in stock.parameters()))
        ExportFolder.write(tmp, state, config, render_model_card(config, found, metadata, params=params))
        extra: list[Path] = []
        for written in get_plugin_manager().hook.overparam_zoo_export(model=stock, out_dir=tmp, config=config):
            extra += [out_dir / Path(p).relative_to(tmp) for p in written or []]
        for path in [tmp, *tmp.iterdir()]:
            usual_permissions(path)
        _move_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExportResult(out_dir, out_dir / WEIGHTS_NAME, config, error, extra)
