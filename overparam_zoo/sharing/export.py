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
tensors (or the first layer) affected, before anything is written. Nor is a wrong collapse: the
float64 difference between the op model and the stock model it becomes must stay within
:data:`~overparam_zoo.sharing.verify.COLLAPSE_ERROR_BOUND` (rounding, for an exact collapse), or
the export stops naming the first chain that disagrees with its stock layer (a plugin converter
whose ``fuse()`` is not its forward, a forward hook the stock model cannot carry, a bug).
``allow_collapse_error`` accepts more, for a converter that knowingly approximates; the folder's
``config.json`` then records it. Every export goes through :func:`check_collapse`: the CLI,
:func:`export_collapsed`, the save hooks and ``compare`` (which also runs it on each op model
before training it).

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
from overparam_zoo.registry.recipe import Variant
from overparam_zoo.registry.variants import build_base, get_variant
from overparam_zoo.sharing.data_config import describe_weights
from overparam_zoo.sharing.metadata import ExportMetadata
from overparam_zoo.sharing.model_card import render_model_card
from overparam_zoo.sharing.verify import (
    COLLAPSE_ERROR_BOUND,
    LayerCheck,
    chain_errors,
    collapsed_stock,
    first_names,
    non_finite,
    non_finite_output,
    probe_input,
    probe_shape,
    relative_difference,
    variant_of,
)

__all__ = ["ExportResult", "CheckedCollapse", "export_collapsed", "check_collapse", "check_out_dir", "PROGRESS_STEPS"]

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


def _allowance(allow_collapse_error: float | None) -> float:
    """The bound a collapse must meet: :data:`COLLAPSE_ERROR_BOUND`, or the caller's explicit one."""
    if allow_collapse_error is None:
        return COLLAPSE_ERROR_BOUND
    if (
        isinstance(allow_collapse_error, bool)
        or not isinstance(allow_collapse_error, (int, float))
        or not 0 < allow_collapse_error < math.inf
    ):
        raise ExportError(
            f"allow_collapse_error={allow_collapse_error}: expected a positive number, the largest float64 collapse "
            f"error (relative) to accept instead of {COLLAPSE_ERROR_BOUND:g}"
        )
    return float(allow_collapse_error)


def _inexact(name: str, base: str, error: float, bound: float, allowed: bool, wrong: LayerCheck | None) -> ExportError:
    """The one-line refusal of an inexact collapse, naming the first chain its stock layer disagrees with."""
    if wrong is not None:
        where = (
            f"first at {wrong.path} ({wrong.kind}), which differs from its stock layer by {wrong.error:.1e} on the "
            "input it sees"
        )
    else:  # every chain agrees: what differs is outside them
        where = (
            "yet every chain agrees with its stock layer, so the difference comes from outside the chains "
            "(a forward hook, or a module the stock model computes differently)"
        )
    limit = f"the {bound:g} allowed" if allowed else f"the bound {bound:g} an exact collapse meets"
    return ExportError(
        f"the collapse of {name} is not exact: its collapsed {base} differs from it by {error:.1e} (float64, relative, "
        f"on the probe input), above {limit}; {where}; nothing was written "
        "(a converter that knowingly approximates is exported with allow_collapse_error=E, the error you accept)"
    )


@dataclass
class CheckedCollapse:
    """A collapse that passed every check of :func:`check_collapse`, ready to write."""

    variant: Variant
    state: dict[str, torch.Tensor]
    stock: nn.Module
    error: float
    probe_shape: tuple[int, ...]
    allowed: float | None


def check_collapse(
    model: nn.Module,
    *,
    variant: str | None = None,
    model_args: dict[str, Any] | None = None,
    allow_collapse_error: float | None = None,
    progress: Callable[[str], None] | None = None,
) -> CheckedCollapse:
    """Collapse ``model`` and check that the result is its exact stock counterpart, writing nothing.

    The checks every export makes (and ``compare`` makes on each op model before training it):
    finite weights, a collapse that fits the base architecture (a bias gained inside a chain
    folded into a BatchNorm), a finite collapsed model, and a float64 collapse error on the probe
    input at most :data:`~overparam_zoo.sharing.verify.COLLAPSE_ERROR_BOUND` (or
    ``allow_collapse_error``); above it, each chain is checked against its stock layer in float64
    and the first that disagrees is named.

    Args:
        model: an op model (from the registry, or any model with the variant's structure).
        variant, model_args: as for :func:`export_collapsed`.
        allow_collapse_error: accept a float64 collapse error up to this (relative) instead of
            the exact bound, for a converter that knowingly approximates; exports record it.
        progress: called with a short description before each step.

    Raises:
        ExportError: naming what failed (see :func:`export_collapsed`).
    """
    step = progress or (lambda _msg: None)
    bound = _allowance(allow_collapse_error)
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
    op64 = copy.deepcopy(model).to("cpu", torch.float64).eval()  # the probe and the stock models are on the CPU
    stock64 = collapsed_stock(op64, found, args, torch.float64)
    x64 = probe_input(shape, torch.float64)
    with torch.no_grad():
        error = relative_difference(stock64(x64), op64(x64))
    if not error <= bound:  # NaN too
        wrong = next((c for c in chain_errors(op64, stock64, x64) if not c.error <= bound), None)
        raise _inexact(found.name, found.base, error, bound, allow_collapse_error is not None, wrong)
    return CheckedCollapse(found, state, stock, error, shape, None if allow_collapse_error is None else bound)


def export_collapsed(
    model: nn.Module,
    out_dir: str | Path,
    *,
    variant: str | None = None,
    model_args: dict[str, Any] | None = None,
    force: bool = False,
    progress: Callable[[str], None] | None = None,
    metadata: ExportMetadata | None = None,
    allow_collapse_error: float | None = None,
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
        allow_collapse_error: accept a float64 collapse error (relative) up to this instead of
            :data:`~overparam_zoo.sharing.verify.COLLAPSE_ERROR_BOUND`, for a converter that
            knowingly approximates; ``config.json`` records it (``allowed_collapse_error``).

    Returns:
        An :class:`ExportResult`.

    Raises:
        ExportError: for a model that does not fit its base architecture, a bias gained inside
            a chain with no BatchNorm to fold into, NaN or Inf in the weights, the collapsed weights
            or the probe output (a diverged run), a collapse that is not exact (a float64 error
            above the bound, naming the first chain that disagrees with its stock layer),
            preprocessing or labels that do not fit the model, or an occupied ``out_dir``;
            nothing is written then.
    """
    out_dir = Path(out_dir)
    check_out_dir(out_dir, force)
    step = progress or (lambda _msg: None)
    checked = check_collapse(
        model, variant=variant, model_args=model_args, allow_collapse_error=allow_collapse_error, progress=step
    )
    found, state, stock, error = checked.variant, checked.state, checked.stock, checked.error
    described = describe_weights(stock, metadata)  # the config fields of these weights, checked before writing
    step(f"writing {out_dir}")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        config = export_format(found.zoo).config(
            stock,
            found.base,
            {**described, PROVENANCE_KEY: provenance(found, error, checked.probe_shape, allowed=checked.allowed)},
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
