"""The ``pretrained_cfg`` an export writes: what the weights in the folder are, not what the base's were.

A timm model built from a base carries the base's pretrained config: its tag, paper, license,
hub id and origin, and the preprocessing of *those* weights (for ``resnet18``: ImageNet at 224,
``crop_pct`` 0.95). None of that describes weights trained by the user. The export keeps the
architecture fields (``first_conv``, ``classifier``, ``fixed_input_size``, ...), resolves the
preprocessing from the training run's arguments the way timm resolves a data config, sets the
class count, and drops the rest.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any, cast

from torch import nn

from overparam_zoo.errors import ExportError
from overparam_zoo.registry.zoos import BuiltModel
from overparam_zoo.sharing.metadata import DATA_KEYS, ExportMetadata, MetadataWarning

__all__ = ["ARCHITECTURE_KEYS", "describe_weights", "exported_pretrained_cfg", "resolve_training_data_config"]

ARCHITECTURE_KEYS: tuple[str, ...] = (
    "architecture",
    "custom_load",
    "min_input_size",
    "fixed_input_size",
    "pool_size",
    "first_conv",
    "classifier",
)
"""Base ``pretrained_cfg`` fields that describe the architecture, and so hold for any weights."""

_TEST_KEYS = ("test_input_size", "test_crop_pct", "test_pool_size")


def _resolver():
    try:  # timm >= 1.0.31: checks channels and fixed input sizes against the model, as its exports do
        from timm.data import resolve_input_data_config as resolve
    except ImportError:  # older timm: the resolver train.py uses
        from timm.data import resolve_model_data_config as resolve
    return resolve


def resolve_training_data_config(model: nn.Module, args: Mapping[str, Any]) -> dict[str, Any]:
    """The data config timm resolves for ``model`` from training ``args`` (``vars(args)`` of
    ``train.py``, with explicit overrides merged in): ``input_size``, ``interpolation``,
    ``mean``, ``std``, ``crop_pct``, ``crop_mode``; unset fields come from the model's
    ``pretrained_cfg``.

    Raises:
        ExportError: for values the model cannot take (another channel count, a size a
            fixed-size model does not accept, mean/std of the wrong length).
    """
    try:
        config = _resolver()(model, args=dict(args))
    except (ValueError, AssertionError) as err:
        name = (getattr(model, "pretrained_cfg", None) or {}).get("architecture") or type(model).__name__
        detail = str(err) or f"{type(err).__name__} in timm's resolver (timm >= 1.0.31 names the value)"
        raise ExportError(f"preprocessing does not fit {name}: {detail}") from err
    return {k: tuple(v) if isinstance(v, list) else v for k, v in config.items() if k in DATA_KEYS}


def exported_pretrained_cfg(model: nn.Module, metadata: ExportMetadata | None) -> dict[str, Any]:
    """The ``pretrained_cfg`` describing ``model``'s exported weights.

    ``model`` is the stock model the collapsed weights were loaded into; its ``pretrained_cfg``
    is the base's. Preprocessing comes from ``metadata.training_args`` overridden by
    ``metadata.data_config``; with neither, the base's preprocessing is kept and a
    :class:`~overparam_zoo.sharing.metadata.MetadataWarning` names what was kept.
    """
    metadata = metadata or ExportMetadata()
    base = dict(getattr(model, "pretrained_cfg", None) or {})
    overrides = {k: v for k, v in metadata.data_config.items() if v is not None}
    args = {**(metadata.training_args or {}), **overrides}
    data = resolve_training_data_config(model, args)
    cfg = {k: base[k] for k in ARCHITECTURE_KEYS if k in base}
    if metadata.training_args is None:
        kept = {k: data[k] for k in DATA_KEYS if k not in overrides}
        if kept:
            warnings.warn(
                "no training arguments (a timm train.py checkpoint has them): the export keeps the base's "
                f"preprocessing {_describe(kept)}; set it with --input-size, --mean, --std, --interpolation, "
                "--crop-pct, --crop-mode (ExportMetadata(data_config=...) in Python)",
                MetadataWarning,
                stacklevel=4,  # the caller of export_collapsed
            )
        if not overrides:  # exactly the base's preprocessing, with its test-time recommendations
            cfg.update({k: base[k] for k in _TEST_KEYS if base.get(k) is not None})
    cfg.update(data)
    if tuple(data["input_size"][1:]) != tuple(base.get("input_size", data["input_size"])[1:]):
        cfg["pool_size"] = None  # the base's pool size is that of its own input size
    cfg["num_classes"] = getattr(model, "num_classes", base.get("num_classes"))
    if metadata.license:
        cfg["license"] = metadata.license
    return cfg


def describe_weights(model: nn.Module, metadata: ExportMetadata | None) -> dict[str, Any]:
    """Make ``model`` describe the weights it is exported with; return the ``config.json`` fields
    its zoo's config writer does not know.

    A timm model's ``pretrained_cfg`` (what timm's ``save_config_for_hf`` writes) becomes
    :func:`exported_pretrained_cfg`. Label names go at the top level, where timm puts them, and
    so does the license of a model without a ``pretrained_cfg`` (torchvision).

    Raises:
        ExportError: for preprocessing the model cannot take, or not one label name per class.
    """
    fields: dict[str, Any] = {}
    if hasattr(model, "pretrained_cfg"):  # a timm model
        timm_model = cast(BuiltModel, model)
        timm_model.pretrained_cfg = exported_pretrained_cfg(model, metadata)
        num_classes = timm_model.num_classes
    else:
        num_classes = [m for m in model.modules() if isinstance(m, nn.Linear)][-1].out_features
        if metadata is not None and metadata.license:
            fields["license"] = metadata.license
    names = metadata.label_names if metadata is not None else None
    if names is not None:
        if len(names) != num_classes:
            raise ExportError(
                f"{len(names)} label names for a model with {num_classes} classes; expected one per class"
            )
        fields["label_names"] = list(names)
    return fields


def _describe(values: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={tuple(v) if isinstance(v, list) else v}" for k, v in values.items())
