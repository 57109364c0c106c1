"""``overparam-zoo compare``: does over-parameterization help on *this* data and architecture?

Trains every model (a timm or torchvision base and its op variants, every name through
:func:`overparam_zoo.registry.variants.resolve` and built by its ``create_model``) with one recipe
(:class:`~overparam_zoo.experiments.training.TrainSettings`) over several seeds and measures, per
run: test top-1 and loss, training wall time, parameters while training and deployed, the
effective rank of the penultimate features and of the (collapsed) weights. Every op model is
exported collapsed with :func:`~overparam_zoo.sharing.export.export_collapsed`, with the run's own
preprocessing, label names and recipe as its metadata (:func:`training_args`), reloaded as its
zoo's stock model with ``strict=True`` (:class:`~overparam_zoo.checkpoints.folder.ExportFolder`) and evaluated again, so the table
shows the deployed stock model's accuracy. Before anything trains, each op model is built
untrained and put through the export's checks (:func:`~overparam_zoo.sharing.export.check_collapse`),
so a variant that could not be exported is refused at once, not after a whole run.

Training-set size (``train_size``): every run trains on a stratified part of the training
images (:func:`~overparam_zoo.experiments.datasets.training_subset`: at seed ``k`` every model
sees the same images), and is tested on the same test split whatever the size.
:func:`run_learning_curve` runs one comparison per size, each in its own folder, and draws the
curve. Each model's own learning rate (``lr_sweep``): before the seeds run, every model is
trained once per candidate learning rate on the training images minus a validation split carved
from them (never the test split), and keeps the rate with the best validation top-1; candidates,
their validation scores and the choice are in ``results.json``.

Resuming: each finished (model, seed) run is written atomically to
``OUT/runs/<model>/seed<k>.json`` (and each sweep run to ``OUT/sweep/<model>/lr<lr>.json``) as
soon as it completes; a rerun with the same settings skips the runs found there, so an
interrupted comparison loses at most the run in progress and never counts a run twice.
``OUT/results.json`` is rewritten (atomically) after every run.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from overparam.analysis import embedding_effective_rank, spectrum
from overparam_zoo.checkpoints.folder import ExportFolder
from overparam_zoo.errors import CompareError, ExportError
from overparam_zoo.experiments.datasets import (
    ImageData,
    TrainSize,
    check_train_size,
    load_bundled,
    load_image_folder,
    split_validation,
    train_size_label,
    training_subset,
)
from overparam_zoo.experiments.report import (
    VERDICT_RULE,
    learning_curve_table,
    markdown_table,
    plot_comparison,
    plot_learning_curve,
    summarize_model,
)
from overparam_zoo.experiments.training import (
    Evaluation,
    Trained,
    TrainSettings,
    check_classifier,
    data_config,
    eval_loader,
    evaluate,
    make_loaders,
    train_model,
)
from overparam_zoo.extras import require
from overparam_zoo.files import atomic_write
from overparam_zoo.progress import Progress
from overparam_zoo.registry.variants import Resolved, create_model, resolve
from overparam_zoo.registry.zoos import ZOOS, get_zoo
from overparam_zoo.sharing.export import check_collapse, export_collapsed
from overparam_zoo.sharing.metadata import ExportMetadata

__all__ = [
    "ModelSpec",
    "CompareResult",
    "RunStore",
    "SCHEMA",
    "resolve_models",
    "variant_names",
    "training_args",
    "run_compare",
    "LearningCurveResult",
    "run_learning_curve",
]

SCHEMA = "overparam-zoo/compare/1"
CURVE_SCHEMA = "overparam-zoo/learning-curve/1"


@dataclass(frozen=True)
class ModelSpec:
    """One model of a comparison: a base of ``zoo`` (depth 1) or one of its registered op variants."""

    name: str
    base: str
    depth: int
    tag: str  # "stock" for the base, "plain" for an untagged variant
    zoo: str = "timm"

    @property
    def is_variant(self) -> bool:
        return self.name != self.base


def _spec(found: Resolved) -> ModelSpec:
    variant = found.variant
    if variant is None:
        return ModelSpec(found.name, found.name, 1, "stock", found.zoo.name)
    return ModelSpec(found.name, variant.base, variant.depth, variant.tag or "plain", found.zoo.name)


def variant_names(bases: Sequence[str], depths: Sequence[int], tags: Sequence[str]) -> list[str]:
    """``<base>_op_d<depth>[_<tag>]`` for every combination (``plain`` is the untagged variant)."""
    return [f"{b}_op_d{d}" + ("" if t == "plain" else f"_{t}") for b in bases for t in tags for d in depths]


def resolve_models(names: Sequence[str], zoo: str | None = None) -> list[ModelSpec]:
    """Specs for ``names`` in order, without duplicates, each variant's base added before it
    (a variant is always compared with its base). Names are resolved by
    :func:`overparam_zoo.registry.variants.resolve`, in ``zoo`` when given (for a name both zoos
    know, e.g. ``resnet18``; timm is asked first otherwise).

    Raises:
        UnknownModelError: naming a model no zoo (or not ``zoo``) knows.
    """
    specs: list[ModelSpec] = []
    for name in names:
        found = resolve(name, zoo)
        needed = [_spec(found)]
        if found.variant is not None:
            needed.insert(0, _spec(resolve(found.variant.base, found.zoo.name)))
        specs += [s for s in needed if s not in specs]
    return specs


def _write_json(path: Path, payload: Any) -> None:
    """Written atomically: readers (and a resumed comparison) see the old file or the new one."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(payload, indent=2) + "\n"))


def _setting_name(key: str) -> str:
    """The Python parameter a stored setting comes from: ``settings.<field>`` or a ``run_compare`` argument."""
    return f"settings.{key}" if key in {f.name for f in fields(TrainSettings)} else key


class RunStore:
    """The finished runs of one comparison, one JSON file each, under ``out/runs/``.

    ``out/settings.json`` holds the data and recipe the runs were made with; opening the store
    with different ones raises, so runs made differently are never averaged together.
    """

    def __init__(self, out: Path, settings: dict[str, Any]) -> None:
        self.out = out
        stored_path = out / "settings.json"
        if stored_path.is_file():
            stored = json.loads(stored_path.read_text())
            changed = {k: (stored.get(k), v) for k, v in settings.items() if stored.get(k) != v}
            if changed:
                detail = ", ".join(f"{_setting_name(k)}={old} there, {new} now" for k, (old, new) in changed.items())
                raise CompareError(
                    f"out={out} holds runs made with other settings ({detail}); expected the same settings to "
                    "resume; to start over, delete that folder or choose another"
                )
        else:
            _write_json(stored_path, settings)

    def path(self, model: str, seed: int) -> Path:
        return self.out / "runs" / model / f"seed{seed}.json"

    def load(self, model: str, seed: int) -> dict[str, Any] | None:
        return self._read(self.path(model, seed))

    @staticmethod
    def _read(path: Path) -> dict[str, Any] | None:
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except ValueError as err:
            raise CompareError(
                f"{path}: not a finished run ({err}); expected JSON written by compare: delete it to redo the run"
            ) from err

    def save(self, record: dict[str, Any]) -> None:
        _write_json(self.path(record["model"], record["seed"]), record)

    def sweep_path(self, model: str, lr: float) -> Path:
        return self.out / "sweep" / model / f"lr{lr:g}.json"

    def load_sweep(self, model: str, lr: float) -> dict[str, Any] | None:
        return self._read(self.sweep_path(model, lr))

    def save_sweep(self, record: dict[str, Any]) -> None:
        _write_json(self.sweep_path(record["model"], record["lr"]), record)


@dataclass
class CompareResult:
    """What :func:`run_compare` did and found; ``runs`` holds every run's record, in table order."""

    summaries: list[dict[str, Any]]
    table: str
    results_path: Path
    figure_path: Path | None
    trained: list[tuple[str, int]] = field(default_factory=list)
    resumed: list[tuple[str, int]] = field(default_factory=list)
    seconds: float = 0.0
    runs: list[dict[str, Any]] = field(default_factory=list)


def _build(spec: ModelSpec, data: ImageData) -> tuple[nn.Module, ImageData]:
    """The model through the registry's one door, with the data served in the channels it takes
    (grayscale as RGB for a zoo whose models take RGB only)."""
    zoo = get_zoo(spec.zoo)
    kwargs: dict[str, Any] = {"num_classes": data.num_classes}
    if zoo.channels_arg is not None:
        kwargs[zoo.channels_arg] = data.in_chans
    model = create_model(spec.name, spec.zoo, **kwargs)
    return model, data.with_channels(zoo.input_size(model)[0])


def training_args(spec: ModelSpec, seed: int, data: ImageData, settings: TrainSettings, dataset: str) -> dict[str, Any]:
    """A run's arguments under timm ``train.py``'s names: what its export records, so the
    export's ``pretrained_cfg`` is the run's own preprocessing and its model card lists the recipe."""
    return {
        "model": spec.name,
        "pretrained": False,
        "dataset": dataset,
        "num_classes": data.num_classes,
        "in_chans": data.in_chans,
        **data_config(data, settings),
        "epochs": settings.epochs,
        "batch_size": settings.batch_size,
        "opt": settings.opt,
        "lr": settings.lr,
        "weight_decay": settings.weight_decay,
        "sched": settings.sched,
        "warmup_epochs": settings.warmup_epochs,
        "smoothing": settings.smoothing,
        "no_aug": not settings.augment,
        "scale": list(settings.scale),
        "hflip": settings.hflip,
        "model_ema": settings.model_ema,
        "model_ema_decay": settings.model_ema_decay,
        "amp": settings.amp,
        "amp_dtype": "bfloat16",
        "seed": seed,
    }


def _weight_effective_rank(model: nn.Module) -> float:
    """Mean over Linear/Conv layers of effective rank / max rank (0-1, comparable across depths)."""
    layers = spectrum(model)
    return sum(s.effective_rank / s.max_rank for s in layers) / len(layers)


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@dataclass
class _Run:
    """What one (model, seed) run works with; ``loaders`` are shared by the runs that train on
    the same images (every run, or every run of one seed with a training-set size), one pair
    per channel count."""

    spec: ModelSpec
    seed: int
    data: ImageData
    settings: TrainSettings
    dataset: str
    loaders: dict[int, tuple[Any, Any]]
    export_dir: Path
    int8_calibration: int = 0  # training images to calibrate INT8 with; 0: no INT8 measurement

    def loaders_for(self, data: ImageData) -> tuple[Any, Any]:
        if data.in_chans not in self.loaders:
            self.loaders[data.in_chans] = make_loaders(data, self.settings)
        return self.loaders[data.in_chans]


def _check_exportable(spec: ModelSpec, data: ImageData) -> None:
    """Refuse, before any training, an op model whose export would fail: the export's own checks
    (:func:`~overparam_zoo.sharing.export.check_collapse`: a bias gained inside a chain that no
    BatchNorm can absorb, a collapse that is not exact) on the untrained model, built as its runs
    build it. The global random state is left as it was."""
    with torch.random.fork_rng(devices=[]):
        model, _ = _build(spec, data)
        try:
            check_collapse(model)
        except ExportError as err:
            raise CompareError(
                f"{spec.name} could not be exported after training, so it is not trained: {err}"
            ) from err


def _deploy(run: _Run, model: nn.Module, data: ImageData, result: Evaluation) -> tuple[nn.Module, dict[str, Any]]:
    """Export the trained op model collapsed, with the run's metadata, reload it as the stock
    base and evaluate it again."""
    metadata = ExportMetadata(
        training_args=training_args(run.spec, run.seed, data, run.settings, run.dataset),
        label_names=data.class_names,
    )
    exported = export_collapsed(model.cpu(), run.export_dir, force=True, metadata=metadata)
    deployed_model = ExportFolder.open(exported.out_dir).load_model()
    again = evaluate(deployed_model, run.loaders_for(data)[1], run.settings.device)
    return deployed_model, {
        "top1": again.top1,
        "test_loss": again.loss,
        "predictions_equal": bool((again.logits.argmax(1) == result.logits.argmax(1)).all()),
        "max_logit_difference": float((again.logits - result.logits).abs().max()),
        "max_collapse_error": exported.max_collapse_error,
        "export_dir": str(exported.out_dir),
    }


def _int8(run: _Run, model: nn.Module, data: ImageData) -> dict[str, Any]:
    """Static INT8 (torchao PT2E) of the deployed ``model``, calibrated on a fixed subset of the
    training images with the test preprocessing, measured on the test split against float32."""
    from timm.data import create_transform

    from overparam_zoo.sharing.quantize import image_batches, quantize_model

    transform = create_transform(**data_config(data, run.settings), is_training=False)
    calibration = image_batches(data.train, transform, limit=run.int8_calibration, seed=run.seed)
    quantized = quantize_model(model.cpu(), calibration, run.loaders_for(data)[1], num_classes=data.num_classes)
    accuracy = quantized.accuracy
    return {
        "top1": accuracy.int8_top1,
        "float32_top1": accuracy.float32_top1,
        "drop": accuracy.drop,
        "agreement": accuracy.agreement,
        "calibration_images": accuracy.calibration_images,
    }


@dataclass
class _Fitted:
    """A trained model of one run, with the data in the channels it takes and its test outputs."""

    model: nn.Module
    data: ImageData
    trained: Trained
    result: Evaluation
    params_training: int


def _fit(run: _Run) -> _Fitted:
    """Build, train and test one model: the part of a run that a learning-rate sweep shares."""
    torch.manual_seed(run.seed)
    model, data = _build(run.spec, run.data)
    check_classifier(model)
    params_training = _params(model)
    train_loader, test_loader = run.loaders_for(data)
    torch.manual_seed(run.seed)  # the same batch order (and augmentation) for every model at this seed
    trained = train_model(model, train_loader, run.settings, label=f"{run.spec.name} seed {run.seed}")
    result = evaluate(trained.model, test_loader, run.settings.device)
    return _Fitted(trained.model, data, trained, result, params_training)


def _run_one(run: _Run) -> dict[str, Any]:
    """Train, evaluate on the test and the training images, and for an op model export,
    reload as the stock base and evaluate again."""
    spec, seed, settings = run.spec, run.seed, run.settings
    start = time.perf_counter()
    fitted = _fit(run)
    model, data, trained, result = fitted.model, fitted.data, fitted.trained, fitted.result
    fit = evaluate(model, eval_loader(data.train, data, settings), settings.device)  # un-augmented, no smoothing
    deployed_model, deployed = model, None
    if spec.is_variant:
        deployed_model, deployed = _deploy(run, model, data, result)
    return {
        "model": spec.name,
        "base": spec.base,
        "zoo": spec.zoo,
        "depth": spec.depth,
        "tag": spec.tag,
        "seed": seed,
        "lr": settings.lr,
        "epochs": settings.epochs,
        "train_images": len(data.train),
        "top1": result.top1,
        "test_loss": result.loss,
        "train_top1": fit.top1,
        "train_loss": fit.loss,
        "train_seconds": trained.seconds,
        "train_loss_last_epoch": trained.last_epoch_loss,
        "train_loss_by_epoch": trained.epoch_losses,
        "params_training": fitted.params_training,
        "params_deployed": _params(deployed_model),
        "feature_effective_rank": embedding_effective_rank(result.features),
        "weight_effective_rank": _weight_effective_rank(deployed_model.cpu()),
        "deployed": deployed,
        "int8": _int8(run, deployed_model, data) if run.int8_calibration else None,
        "run_seconds": time.perf_counter() - start,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _sweep_one(run: _Run) -> dict[str, Any]:
    """One candidate learning rate of one model: trained on the training images minus the
    validation split (``run.data``'s ``test`` is that split) and scored on it."""
    start = time.perf_counter()
    fitted = _fit(run)
    return {
        "model": run.spec.name,
        "lr": run.settings.lr,
        "seed": run.seed,
        "validation_top1": fitted.result.top1,
        "validation_loss": fitted.result.loss if math.isfinite(fitted.result.loss) else None,  # None: diverged
        "train_loss_last_epoch": fitted.trained.last_epoch_loss,
        "epochs": run.settings.epochs,
        "train_images": len(fitted.data.train),
        "validation_images": len(fitted.data.test),
        "run_seconds": time.perf_counter() - start,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _choice(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The learning rate of the best validation top-1 (ties: the lower validation loss; a
    diverged candidate's loss is ``None``)."""

    def score(record: dict[str, Any]) -> tuple[float, float]:
        loss = record["validation_loss"]
        return record["validation_top1"], -(math.inf if loss is None else loss)

    best = max(records, key=score)
    return {"lr": best["lr"], "seed": best["seed"], "candidates": sorted(records, key=lambda r: r["lr"])}


def _environment(settings: TrainSettings) -> dict[str, Any]:
    import timm

    cpu = platform.processor() or platform.machine()
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):  # not Linux: keep platform's answer
        pass
    device = settings.device
    if torch.device(device).type == "cuda":
        device = torch.cuda.get_device_name(torch.device(device))
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "device": device,
        "threads": settings.threads,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "platform": platform.platform(),
    }


def _seed_list(seeds: int | Sequence[int]) -> list[int]:
    if isinstance(seeds, int):
        if seeds < 1:
            raise CompareError(f"seeds={seeds}: expected at least 1")
        return list(range(seeds))
    chosen = list(seeds)
    if not chosen or any(not isinstance(k, int) or k < 0 for k in chosen) or len(set(chosen)) != len(chosen):
        raise CompareError(f"seeds={chosen}: expected distinct seeds >= 0, at least one")
    return chosen


def _check_settings(settings: TrainSettings) -> None:
    for key in ("epochs", "batch_size", "input_size", "threads"):
        if getattr(settings, key) < 1:
            raise CompareError(f"settings.{key}={getattr(settings, key)}: expected at least 1")
    if settings.warmup_epochs < 0:
        raise CompareError(f"settings.warmup_epochs={settings.warmup_epochs}: expected 0 or more")


@dataclass
class LearningCurveResult:
    """What :func:`run_learning_curve` did: one comparison per training-set size."""

    sizes: list[dict[str, Any]]  # per size: its label, training images, results folder and model summaries
    comparisons: list[CompareResult]
    table: str
    results_path: Path
    figure_path: Path | None
    seconds: float = 0.0


def run_learning_curve(
    models: Sequence[str],
    train_sizes: Sequence[TrainSize],
    *,
    out: str | Path = "compare-out",
    figure: bool = True,
    **compare_args: Any,
) -> LearningCurveResult:
    """One comparison per training-set size, each resumable in ``out/train-<size>/``, and
    the curve across them: ``out/learning_curve.json``, ``out/learning_curve.png`` and a table.

    Args:
        models: as for :func:`run_compare`.
        train_sizes: the sizes, in the order to run them, each as ``train_size`` of
            :func:`run_compare` (images per class, a fraction, or ``None`` for all).
        out: the output folder.
        figure: draw each comparison's figure and the curve (needs matplotlib).
        **compare_args: the other arguments of :func:`run_compare` (``seeds``, ``dataset``,
            ``data_dir``, ``settings``, ``lr_sweep``, ``updates``, ...), the same for every size.

    Raises:
        CompareError: for no sizes or a size given twice, and whatever :func:`run_compare` raises.
    """
    sizes = list(train_sizes)
    for size in sizes:
        check_train_size(size)
    labels = [train_size_label(size) for size in sizes]
    if not sizes:
        raise CompareError("train_sizes=[]: expected at least one training-set size")
    if len(set(labels)) != len(labels):
        raise CompareError(f"train_sizes={labels}: expected each size once")
    if figure:
        require("matplotlib", "plot", "compare")
    out = Path(out)
    start = time.perf_counter()
    comparisons, curve = [], []
    for size, label in zip(sizes, labels):
        folder = out / f"train-{label}"
        result = run_compare(models, train_size=size, out=folder, figure=figure, **compare_args)
        comparisons.append(result)
        stored = json.loads(result.results_path.read_text())
        curve.append(
            {
                "train_size": label,
                "train_images": stored["data"]["train_images"],
                "results": str(folder.relative_to(out) / "results.json"),
                "complete": stored["complete"],
                "models": result.summaries,
            }
        )
    _write_json(out / "learning_curve.json", {"schema": CURVE_SCHEMA, "sizes": curve})
    first = json.loads(comparisons[0].results_path.read_text())
    title = f"{first['data']['name']}: test split {first['data']['test_images']} images (overparam-zoo compare)"
    return LearningCurveResult(
        curve,
        comparisons,
        learning_curve_table(curve),
        out / "learning_curve.json",
        plot_learning_curve(curve, out / "learning_curve.png", title) if figure else None,
        time.perf_counter() - start,
    )


def _check_options(lr_sweep: Sequence[float] | None, updates: int | None) -> None:
    if lr_sweep is not None:
        lrs = list(lr_sweep)
        if (
            not lrs
            or len(set(lrs)) != len(lrs)
            or any(not isinstance(v, (int, float)) or not 0 < v < math.inf for v in lrs)
        ):
            raise CompareError(f"lr_sweep={lrs}: expected one or more distinct positive learning rates")
    if updates is not None and updates < 1:
        raise CompareError(f"updates={updates}: expected at least 1, or None to train settings.epochs epochs")


def run_compare(
    models: Sequence[str],
    *,
    seeds: int | Sequence[int] = 3,
    dataset: str | None = "digits",
    data_dir: str | Path | None = None,
    settings: TrainSettings | None = None,
    out: str | Path = "compare-out",
    keep_exports: bool = False,
    zoo: str | None = None,
    figure: bool = True,
    int8: bool = False,
    calibration_images: int = 512,
    train_size: TrainSize = None,
    lr_sweep: Sequence[float] | None = None,
    validation_fraction: float = 0.2,
    updates: int | None = None,
) -> CompareResult:
    """Train ``models`` (each variant with its base) over ``seeds``, resuming from ``out``.

    Args:
        models: model and op variant names of timm or torchvision, as ``overparam-zoo list`` names them.
        seeds: how many seeds per model (``0..seeds-1``), or which seeds.
        dataset: a bundled dataset (``digits`` or ``mnist5k``), when ``data_dir`` is not given.
        data_dir: an image folder in timm ``train.py``'s layout (``train/`` and ``validation/``).
        settings: the training recipe; its ``threads`` are pinned with ``torch.set_num_threads``.
        out: output folder: ``runs/``, ``settings.json``, ``results.json``, ``compare.png``.
        keep_exports: keep each op run's collapsed export in ``out/exports/<model>/seed<k>/``
            (otherwise it is deleted once re-evaluated).
        zoo: ``"timm"`` or ``"torchvision"``, for names both zoos know (e.g. ``resnet18``); by
            default timm's model is taken.
        figure: draw ``out/compare.png`` (needs matplotlib).
        int8: also quantize every deployed model (the stock model, or the op model's reloaded
            export) to static INT8 with torchao and measure its top-1 and drop from float32
            (needs ``pip install 'overparam-zoo[quantize]'``).
        calibration_images: with ``int8``, how many training images calibrate each model.
        train_size: train on ``n`` images per class (an int), on that fraction of each class (a
            float in (0, 1]), or on all training images (``None``); drawn per seed, the same
            for every model at a seed. The test split is the same for every size.
        lr_sweep: candidate learning rates: each model trains with the one that scores the best
            validation top-1 at the first seed, on a validation split carved from its training
            images (``settings.lr`` is then unused).
        validation_fraction: with ``lr_sweep``, the part of each class held out for validation.
        updates: train for at least this many optimizer updates, whatever the training-set size
            (``settings.epochs`` is replaced by ``ceil(updates / batches per epoch)``).

    Raises:
        UnknownModelError: for a name no zoo (or not ``zoo``) knows.
        DataError: for a dataset that cannot be read or whose dependency is missing, a bad
            ``train_size`` (or one larger than a class) or ``validation_fraction``.
        CompareError: for bad ``seeds``, ``settings``, ``lr_sweep`` or ``updates``, settings
            differing from the runs in ``out``, a batch larger than the training set, or an op
            model its export would refuse (checked untrained, before any run, naming the layer).
        AnalysisError: for a model without a linear classifier.
        MissingExtraError: for a missing optional dependency.
    """
    settings = settings or TrainSettings()
    seed_list = _seed_list(seeds)
    if not models:
        raise CompareError("models=[]: expected at least one model name")
    if zoo is not None and zoo not in ZOOS:
        raise CompareError(f"zoo={zoo}: expected one of {', '.join(ZOOS)}")
    _check_settings(settings)
    _check_options(lr_sweep, updates)
    check_train_size(train_size)
    if len(seed_list) > 1:  # the verdict's t-test
        require("scipy", "compare", "compare")
    if figure:
        require("matplotlib", "plot", "compare")
    if int8:
        require("torchao", "quantize", "compare with int8=True")
        if calibration_images < 1:
            raise CompareError(f"calibration_images={calibration_images}: expected at least 1")
    specs = resolve_models(models, zoo)
    data = load_image_folder(data_dir) if data_dir is not None else load_bundled(dataset)
    train_images = len(training_subset(data, train_size, seed_list[0]).train)  # the same count at every seed
    if settings.batch_size > train_images:
        raise CompareError(
            f"settings.batch_size={settings.batch_size} is larger than the {train_images} training images; "
            "expected at most that many (the last partial batch is dropped)"
        )
    if lr_sweep:
        swept = len(split_validation(training_subset(data, train_size, seed_list[0]), validation_fraction, 0).train)
        if settings.batch_size > swept:
            raise CompareError(
                f"settings.batch_size={settings.batch_size} is larger than the {swept} images the learning-rate "
                f"sweep trains on (the training images minus the validation split); expected at most that many"
            )
    if updates is not None:
        settings = replace(settings, epochs=math.ceil(updates / (train_images // settings.batch_size)))
    for spec in specs:
        if spec.is_variant:
            _check_exportable(spec, data)
    out = Path(out)
    source = {
        "dataset": data.name if data_dir is None else None,
        "data_dir": str(Path(data_dir).resolve()) if data_dir else None,
        "zoo": zoo,
    }
    quantization = {"calibration_images": calibration_images} if int8 else {}  # resuming without int8 keeps them
    # options stored only when used, so comparisons made before they existed still resume
    sizing = {"train_size": train_size} if train_size is not None else {}
    sizing |= {"updates": updates} if updates is not None else {}
    lrs = list(lr_sweep or [])
    sweep = {"lr_sweep": lrs, "validation_fraction": validation_fraction} if lrs else {}
    store = RunStore(
        out, {**source, **asdict(settings), "scale": list(settings.scale), **quantization, **sizing, **sweep}
    )
    plan = _Plan(specs, seed_list, store, data, settings, train_size, keep_exports, source["dataset"] or "")
    plan.int8_calibration = quantization.get("calibration_images", 0)
    plan.updates = updates
    start = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(settings.threads)  # the same for every run, so wall times compare
    try:
        with Progress("compare", len(specs) * (len(seed_list) + len(lrs)), unit="run") as progress:
            if lrs:
                plan.lrs = _choose_lrs(plan, lrs, validation_fraction, progress)
            runs, trained, resumed = _run_missing(plan, progress)
    finally:
        torch.set_num_threads(threads)
    summaries = _write_results(plan, runs)
    lr = "lr per model from a sweep" if sweep else f"lr {settings.lr}"
    title = (
        f"{data.name}: {train_size_label(train_size)} ({train_images} images), seeds {len(seed_list)}, "
        f"epochs {settings.epochs}, {settings.input_size}px, {settings.opt} {lr} (overparam-zoo compare)"
    )
    return CompareResult(
        summaries,
        markdown_table(summaries),
        out / "results.json",
        plot_comparison(summaries, out / "compare.png", title) if figure else None,
        trained,
        resumed,
        time.perf_counter() - start,
        _ordered(specs, seed_list, runs),
    )


@dataclass
class _Plan:
    """One comparison: its models, seeds, data and recipe, where its runs are kept, and the
    learning rate each model trains with (``settings.lr`` unless a sweep chose one)."""

    specs: Sequence[ModelSpec]
    seeds: Sequence[int]
    store: RunStore
    data: ImageData
    settings: TrainSettings
    train_size: TrainSize
    keep_exports: bool
    dataset: str
    int8_calibration: int = 0
    updates: int | None = None  # set: ``settings.epochs`` makes this many updates on the training images
    lrs: dict[str, dict[str, Any]] = field(default_factory=dict)  # model -> the sweep's choice
    _subsets: dict[int, tuple[ImageData, dict[int, tuple[Any, Any]]]] = field(default_factory=dict)

    def data_at(self, seed: int) -> tuple[ImageData, dict[int, tuple[Any, Any]]]:
        """The training images of ``seed`` and the loaders over them (shared by its runs)."""
        key = seed if self.train_size is not None else -1  # all images: one set of loaders
        if key not in self._subsets:
            self._subsets[key] = (training_subset(self.data, self.train_size, seed), {})
        return self._subsets[key]

    def settings_for(self, spec: ModelSpec) -> TrainSettings:
        chosen = self.lrs.get(spec.name)
        return self.settings if chosen is None else replace(self.settings, lr=chosen["lr"])


def _choose_lrs(
    plan: _Plan, lrs: Sequence[float], validation_fraction: float, progress: Progress
) -> dict[str, dict[str, Any]]:
    """Each model's learning rate: every candidate trained at the first seed on the training
    images minus a validation split carved from them, scored on that split (resumable). With
    ``updates``, a candidate makes as many updates as the final runs (more epochs of fewer images)."""
    seed = plan.seeds[0]
    data = split_validation(plan.data_at(seed)[0], validation_fraction, seed)
    settings = plan.settings
    if plan.updates is not None:  # as many updates as the final runs, on fewer images
        settings = replace(settings, epochs=math.ceil(plan.updates / (len(data.train) // settings.batch_size)))
    loaders: dict[int, tuple[Any, Any]] = {}
    chosen = {}
    for spec in plan.specs:
        records = []
        for lr in lrs:
            record = plan.store.load_sweep(spec.name, lr)
            if record is None:
                progress.note(f"{spec.name} lr {lr:g} (sweep)")
                run = _Run(spec, seed, data, replace(settings, lr=lr), plan.dataset, loaders, Path())
                record = _sweep_one(run)
                plan.store.save_sweep(record)
                progress.update(1, f"{spec.name} lr {lr:g}: validation top-1 {record['validation_top1']:.4f}")
            else:
                progress.update(1)
            records.append(record)
        chosen[spec.name] = _choice(records)
    return chosen


def _ordered(
    specs: Sequence[ModelSpec], seeds: Sequence[int], runs: dict[tuple[str, int], dict[str, Any]]
) -> list[dict[str, Any]]:
    return [runs[(s.name, k)] for s in specs for k in seeds if (s.name, k) in runs]


def _run_missing(
    plan: _Plan, progress: Progress
) -> tuple[dict[tuple[str, int], dict[str, Any]], list[tuple[str, int]], list[tuple[str, int]]]:
    """Every (model, seed) run: loaded when the store has it, otherwise trained and saved at once."""
    store, out = plan.store, plan.store.out
    runs: dict[tuple[str, int], dict[str, Any]] = {}
    trained, resumed = [], []
    todo = [(spec, seed) for seed in plan.seeds for spec in plan.specs]  # every model at a seed first
    for spec, seed in todo:
        record = store.load(spec.name, seed)
        if record is not None:
            runs[(spec.name, seed)] = record
            resumed.append((spec.name, seed))
    progress.update(len(runs))
    for spec, seed in todo:
        if (spec.name, seed) in runs:
            continue
        progress.note(f"{spec.name} seed {seed}")
        export_dir = out / "exports" / spec.name / f"seed{seed}"
        data, loaders = plan.data_at(seed)
        run = _Run(spec, seed, data, plan.settings_for(spec), plan.dataset, loaders, export_dir, plan.int8_calibration)
        record = _run_one(run)
        if spec.is_variant and not plan.keep_exports:
            _remove_export(export_dir, out)
            record["deployed"]["export_dir"] = None
        store.save(record)
        runs[(spec.name, seed)] = record
        trained.append((spec.name, seed))
        _write_results(plan, runs)
        progress.update(1, f"{spec.name} seed {seed}: top-1 {record['top1']:.4f}")
    return runs, trained, resumed


def _remove_export(export_dir: Path, out: Path) -> None:
    shutil.rmtree(export_dir, ignore_errors=True)
    for parent in (export_dir.parent, export_dir.parent.parent):  # empty model and exports folders
        if parent != out and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()


def _write_results(plan: _Plan, runs: dict[tuple[str, int], dict[str, Any]]) -> list[dict[str, Any]]:
    """Summaries of the models with finished runs, written to ``out/results.json``."""
    specs, seeds, data, settings = plan.specs, plan.seeds, plan.data, plan.settings
    by_model = {s.name: [runs[(s.name, k)] for k in seeds if (s.name, k) in runs] for s in specs}
    summaries = [summarize_model(by_model[s.name], by_model.get(s.base)) for s in specs if by_model[s.name]]
    missing = [{"model": s.name, "seed": k} for s in specs for k in seeds if (s.name, k) not in runs]
    _write_json(
        plan.store.out / "results.json",
        {
            "schema": SCHEMA,
            "complete": not missing,
            "missing": missing,
            "data": {
                "name": data.name,
                "train_images": len(plan.data_at(seeds[0])[0].train),
                "train_size": train_size_label(plan.train_size),
                "all_train_images": len(data.train),
                "test_images": len(data.test),
                "num_classes": data.num_classes,
                "in_chans": data.in_chans,
            },
            "settings": {**asdict(settings), "seeds": list(seeds)},
            "learning_rates": plan.lrs or None,
            "environment": _environment(settings),
            "verdict_rule": VERDICT_RULE,
            "compute_seconds": sum(r["run_seconds"] for r in runs.values())
            + sum(c["run_seconds"] for chosen in plan.lrs.values() for c in chosen["candidates"]),
            "models": summaries,
            "runs": _ordered(specs, seeds, runs),
        },
    )
    return summaries
