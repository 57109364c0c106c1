"""What an export says about its weights beyond the tensors: the training run they came from.

An :class:`ExportMetadata` carries the training arguments (timm ``train.py`` saves its
``argparse.Namespace`` as ``args`` in every checkpoint), explicit preprocessing that overrides
them, label names, a license, the hub id of the weights the run started from, and the
evaluation results ``train.py`` logged to ``summary.csv``. The export turns it into the
``pretrained_cfg`` of ``config.json`` (:mod:`overparam_zoo.sharing.data_config`) and the ``README.md``
model card (:mod:`overparam_zoo.sharing.model_card`).
"""

from __future__ import annotations

import argparse
import csv
import math
import pickle
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from overparam_zoo.errors import ExportError

__all__ = [
    "DATA_KEYS",
    "EvalResult",
    "ExportMetadata",
    "MetadataWarning",
    "TrainResults",
    "read_label_names",
    "read_summary",
]

DATA_KEYS: tuple[str, ...] = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
"""The preprocessing fields a user may set explicitly (``--input-size``, ``--mean``, ...)."""


class MetadataWarning(UserWarning):
    """Something the export could not learn about its weights and filled in from the base model."""


@dataclass(frozen=True)
class EvalResult:
    """One epoch's row of ``summary.csv``: top-1/top-5 in percent, as ``train.py`` logs them."""

    epoch: int
    top1: float | None
    top5: float | None


@dataclass(frozen=True)
class TrainResults:
    """The evaluation results of a ``train.py`` run, read from its ``summary.csv``.

    ``best`` is the best epoch by the run's ``eval_metric`` (as ``train.py``'s checkpoint saver
    ranks them); ``checkpoint`` is the epoch of the exported weights, when the checkpoint says.
    """

    path: Path
    epochs: int
    metric: str
    best: EvalResult
    checkpoint: EvalResult | None


@dataclass(frozen=True)
class ExportMetadata:
    """The training run behind an export, and what the user states explicitly.

    Args:
        training_args: ``vars(args)`` of the ``train.py`` run (or any dict with its keys).
        data_config: explicit preprocessing (keys of :data:`DATA_KEYS`); wins over the run's.
        label_names: one name per class, in class-index order.
        license: a Hugging Face license id (``apache-2.0``, ``mit``, ``cc-by-4.0``, ...).
        base_model: hub id of the weights the run started from (found from ``--pretrained``
            when not given).
        results: the run's ``summary.csv``.
        checkpoint: name of the checkpoint file the weights came from.
        used_ema: whether the export read the checkpoint's EMA weights where it has them
            (``train.py --model-ema`` evaluates, and so logs results for, the EMA weights).
    """

    training_args: Mapping[str, Any] | None = None
    data_config: Mapping[str, Any] = field(default_factory=dict)
    label_names: tuple[str, ...] | None = None
    license: str | None = None
    base_model: str | None = None
    results: TrainResults | None = None
    checkpoint: str | None = None
    used_ema: bool = True

    def __post_init__(self) -> None:
        unknown = sorted(set(self.data_config) - set(DATA_KEYS))
        if unknown:
            raise ExportError(f"unknown data_config keys {unknown}; expected some of {list(DATA_KEYS)}")

    @classmethod
    def from_run(
        cls,
        args: argparse.Namespace | Mapping[str, Any] | None,
        *,
        output_dir: str | Path | None = None,
        epoch: int | None = None,
        checkpoint: str | None = None,
        used_ema: bool = True,
    ) -> ExportMetadata:
        """The metadata of a ``train.py`` run: its ``args``, the label names of its
        ``--class-map`` and ``output_dir/summary.csv``, each where present."""
        training_args = _as_dict(args)
        labels = None
        if training_args and training_args.get("class_map"):
            labels = _class_map_labels(training_args)
        results = None
        if output_dir is not None and (Path(output_dir) / "summary.csv").is_file():
            metric = str((training_args or {}).get("eval_metric") or "top1")
            results = read_summary(Path(output_dir) / "summary.csv", metric=metric, epoch=epoch)
        return cls(
            training_args=training_args,
            label_names=labels,
            results=results,
            checkpoint=checkpoint,
            used_ema=used_ema,
        )

    @classmethod
    def from_checkpoint(cls, path: str | Path, meta: Mapping[str, Any], *, used_ema: bool = True) -> ExportMetadata:
        """The metadata of a checkpoint file: ``meta`` holds its top-level entries other than
        the state dicts (``args``, ``epoch``, ...), as :func:`overparam_zoo.checkpoints.reading.read_checkpoint`
        returns them; ``summary.csv`` is looked for beside the file."""
        path = Path(path)
        epoch = meta.get("epoch")
        return cls.from_run(
            meta.get("args"),
            output_dir=path.parent,
            epoch=epoch if isinstance(epoch, int) else None,
            checkpoint=path.name,
            used_ema=used_ema,
        )


def _as_dict(args: argparse.Namespace | Mapping[str, Any] | None) -> dict[str, Any] | None:
    if args is None:
        return None
    if isinstance(args, argparse.Namespace):
        return dict(vars(args))
    if isinstance(args, Mapping):
        return dict(args)
    raise ExportError(f"training args must be an argparse.Namespace or a mapping, not {type(args).__name__}")


def read_label_names(path: str | Path, search: Iterable[str | Path] = ()) -> tuple[str, ...]:
    """Class names in index order from a timm class map (``.txt``: one name per line; ``.pkl``:
    a ``{name: index}`` dict), read with timm's own ``load_class_map``. A relative ``path`` that
    does not exist is looked for in the ``search`` folders, as timm looks in the dataset root.

    Raises:
        ExportError: for a missing file, another format, or indices that are not ``0..n-1``.
    """
    from timm.data.readers.class_map import load_class_map

    path = Path(path)
    found = [p for p in [path, *(Path(f) / path for f in search)] if p.is_file()]
    if not found:
        raise ExportError(f"no label names file at {path}")
    path = found[0]
    if path.suffix.lower() not in (".txt", ".pkl"):
        raise ExportError(
            f"{path}: expected a .txt file with one class name per line (timm's class map), or a .pkl class map"
        )
    try:
        class_to_idx = load_class_map(str(path))
    except (OSError, ValueError, UnicodeDecodeError, pickle.UnpicklingError, EOFError) as err:  # a corrupt .pkl too
        raise ExportError(f"cannot read label names from {path}: {err}") from err
    names = sorted(class_to_idx, key=class_to_idx.__getitem__)
    if [class_to_idx[n] for n in names] != list(range(len(names))):
        raise ExportError(f"{path}: class indices must be 0..{len(names) - 1} without gaps")
    return tuple(str(n) for n in names)


def _class_map_labels(args: Mapping[str, Any]) -> tuple[str, ...] | None:
    data_dir = Path(str(args.get("data_dir") or "."))
    try:  # timm reads the class map relative to the dataset's split folder (data_dir/train)
        return read_label_names(
            str(args["class_map"]), search=(data_dir / str(args.get("train_split") or ""), data_dir)
        )
    except ExportError as err:
        warnings.warn(
            f"the run's --class-map gives no label names ({err}); pass them with --label-names FILE",
            MetadataWarning,
            stacklevel=3,
        )
        return None


def _number(value: str | None) -> float | None:
    try:
        number = float(value) if value not in (None, "") else None
    except ValueError:
        return None
    return number if number is not None and math.isfinite(number) else None


def read_summary(path: str | Path, *, metric: str = "top1", epoch: int | None = None) -> TrainResults | None:
    """The best epoch (by ``eval_<metric>``, lower is better for ``loss`` as in ``train.py``) and
    the row of ``epoch`` from a ``summary.csv`` that timm's ``train.py`` writes; ``None`` when
    it has no evaluation rows."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = [r for r in csv.DictReader(f) if _number(r.get("epoch")) is not None]
    except (OSError, csv.Error, UnicodeDecodeError) as err:
        warnings.warn(f"cannot read {path} ({err}); the model card lists no results", MetadataWarning, stacklevel=2)
        return None
    scored = [r for r in rows if _number(r.get(f"eval_{metric}")) is not None]
    if not scored:
        return None

    def result(row: Mapping[str, str]) -> EvalResult:
        return EvalResult(int(float(row["epoch"])), _number(row.get("eval_top1")), _number(row.get("eval_top5")))

    sign = 1.0 if metric == "loss" else -1.0
    best = min(scored, key=lambda r: sign * float(r[f"eval_{metric}"]))
    at_epoch = [r for r in rows if epoch is not None and int(float(r["epoch"])) == epoch]
    return TrainResults(path, len(rows), metric, result(best), result(at_epoch[-1]) if at_epoch else None)
