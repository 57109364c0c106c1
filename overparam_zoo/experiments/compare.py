"""``overparam-zoo compare``: does over-parameterization help on *this* data and architecture?

Trains every model (a timm or torchvision base and its op variants, every name through
:func:`overparam_zoo.registry.variants.resolve` and built by its ``create_model``) with one recipe
(:class:`~overparam_zoo.experiments.training.TrainSettings`) over several seeds and measures, per
run: test top-1 and loss, training wall time, parameters while training and deployed, the
effective rank of the penultimate features and of the (collapsed) weights. Every op model is
exported collapsed with :func:`~overparam_zoo.sharing.export.export_collapsed`, with the run's own
preprocessing, label names and recipe as its metadata (:func:`training_args`), reloaded as its
zoo's stock model with ``strict=True`` (:class:`~overparam_zoo.checkpoints.folder.ExportFolder`) and evaluated again, so the table
shows the deployed stock model's accuracy.

Resuming: each finished (model, seed) run is written atomically to
``OUT/runs/<model>/seed<k>.json`` as soon as it completes; a rerun with the same settings skips
the runs found there, so an interrupted comparison loses at most the run in progress and never
counts a run twice. ``OUT/results.json`` is rewritten (atomically) after every run.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from overparam.analysis import embedding_effective_rank, spectrum
from overparam_zoo.checkpoints.folder import ExportFolder
from overparam_zoo.errors import CompareError
from overparam_zoo.experiments.datasets import ImageData, load_bundled, load_image_folder
from overparam_zoo.experiments.report import VERDICT_RULE, markdown_table, plot_comparison, summarize_model
from overparam_zoo.experiments.training import (
    Evaluation,
    TrainSettings,
    check_classifier,
    data_config,
    evaluate,
    make_loaders,
    train_model,
)
from overparam_zoo.extras import require
from overparam_zoo.files import atomic_write
from overparam_zoo.progress import Progress
from overparam_zoo.registry.variants import Resolved, create_model, resolve
from overparam_zoo.registry.zoos import ZOOS, get_zoo
from overparam_zoo.sharing.export import export_collapsed
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
]

SCHEMA = "overparam-zoo/compare/1"


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
        path = self.path(model, seed)
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
    """What one (model, seed) run works with; ``loaders`` are shared by the runs of a comparison,
    one pair per channel count."""

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


def _run_one(run: _Run) -> dict[str, Any]:
    """Train, evaluate, and for an op model export, reload as the stock base and evaluate again."""
    spec, seed, settings = run.spec, run.seed, run.settings
    start = time.perf_counter()
    torch.manual_seed(seed)
    model, data = _build(spec, run.data)
    check_classifier(model)
    params_training = _params(model)
    train_loader, test_loader = run.loaders_for(data)
    torch.manual_seed(seed)  # the same batch order (and augmentation) for every model at this seed
    trained = train_model(model, train_loader, settings, label=f"{spec.name} seed {seed}")
    result = evaluate(trained.model, test_loader, settings.device)
    deployed_model, deployed = trained.model, None
    if spec.is_variant:
        deployed_model, deployed = _deploy(run, trained.model, data, result)
    return {
        "model": spec.name,
        "base": spec.base,
        "zoo": spec.zoo,
        "depth": spec.depth,
        "tag": spec.tag,
        "seed": seed,
        "top1": result.top1,
        "test_loss": result.loss,
        "train_seconds": trained.seconds,
        "train_loss_last_epoch": trained.last_epoch_loss,
        "params_training": params_training,
        "params_deployed": _params(deployed_model),
        "feature_effective_rank": embedding_effective_rank(result.features),
        "weight_effective_rank": _weight_effective_rank(deployed_model.cpu()),
        "deployed": deployed,
        "int8": _int8(run, deployed_model, data) if run.int8_calibration else None,
        "run_seconds": time.perf_counter() - start,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


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

    Raises:
        UnknownModelError: for a name no zoo (or not ``zoo``) knows.
        DataError: for a dataset that cannot be read or whose dependency is missing.
        CompareError: for bad ``seeds`` or ``settings``, settings differing from the runs in
            ``out``, or a batch larger than the training set.
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
    if settings.batch_size > len(data.train):
        raise CompareError(
            f"settings.batch_size={settings.batch_size} is larger than the {len(data.train)} training images; "
            "expected at most that many (the last partial batch is dropped)"
        )
    out = Path(out)
    source = {
        "dataset": data.name if data_dir is None else None,
        "data_dir": str(Path(data_dir).resolve()) if data_dir else None,
        "zoo": zoo,
    }
    quantization = {"calibration_images": calibration_images} if int8 else {}  # resuming without int8 keeps them
    store = RunStore(out, {**source, **asdict(settings), "scale": list(settings.scale), **quantization})
    start = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(settings.threads)  # the same for every run, so wall times compare
    try:
        runs, trained, resumed = _run_missing(
            specs, seed_list, store, data, settings, keep_exports, source["dataset"], quantization.get("calibration_images", 0)
        )
    finally:
        torch.set_num_threads(threads)
    summaries = _write_results(out, specs, seed_list, runs, data, settings)
    title = (
        f"{data.name}: seeds {len(seed_list)}, epochs {settings.epochs}, {settings.input_size}px, "
        f"{settings.opt} lr {settings.lr} (overparam-zoo compare)"
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


def _ordered(
    specs: Sequence[ModelSpec], seeds: Sequence[int], runs: dict[tuple[str, int], dict[str, Any]]
) -> list[dict[str, Any]]:
    return [runs[(s.name, k)] for s in specs for k in seeds if (s.name, k) in runs]


def _run_missing(
    specs: Sequence[ModelSpec],
    seeds: Sequence[int],
    store: RunStore,
    data: ImageData,
    settings: TrainSettings,
    keep_exports: bool,
    dataset: str | None,
    int8_calibration: int = 0,
) -> tuple[dict[tuple[str, int], dict[str, Any]], list[tuple[str, int]], list[tuple[str, int]]]:
    """Every (model, seed) run: loaded when ``store`` has it, otherwise trained and saved at once."""
    out = store.out
    loaders: dict[int, tuple[Any, Any]] = {}
    runs: dict[tuple[str, int], dict[str, Any]] = {}
    trained, resumed = [], []
    todo = [(spec, seed) for seed in seeds for spec in specs]  # every model at a seed first
    for spec, seed in todo:
        record = store.load(spec.name, seed)
        if record is not None:
            runs[(spec.name, seed)] = record
            resumed.append((spec.name, seed))
    with Progress("compare", len(todo), unit="run", initial=len(runs)) as progress:
        for spec, seed in todo:
            if (spec.name, seed) in runs:
                continue
            progress.note(f"{spec.name} seed {seed}")
            export_dir = out / "exports" / spec.name / f"seed{seed}"
            record = _run_one(_Run(spec, seed, data, settings, dataset or "", loaders, export_dir, int8_calibration))
            if spec.is_variant and not keep_exports:
                _remove_export(export_dir, out)
                record["deployed"]["export_dir"] = None
            store.save(record)
            runs[(spec.name, seed)] = record
            trained.append((spec.name, seed))
            _write_results(out, specs, seeds, runs, data, settings)
            progress.update(1, f"{spec.name} seed {seed}: top-1 {record['top1']:.4f}")
    return runs, trained, resumed


def _remove_export(export_dir: Path, out: Path) -> None:
    shutil.rmtree(export_dir, ignore_errors=True)
    for parent in (export_dir.parent, export_dir.parent.parent):  # empty model and exports folders
        if parent != out and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()


def _write_results(
    out: Path,
    specs: Sequence[ModelSpec],
    seeds: Sequence[int],
    runs: dict[tuple[str, int], dict[str, Any]],
    data: ImageData,
    settings: TrainSettings,
) -> list[dict[str, Any]]:
    """Summaries of the models with finished runs, written to ``out/results.json``."""
    by_model = {s.name: [runs[(s.name, k)] for k in seeds if (s.name, k) in runs] for s in specs}
    summaries = [summarize_model(by_model[s.name], by_model.get(s.base)) for s in specs if by_model[s.name]]
    missing = [{"model": s.name, "seed": k} for s in specs for k in seeds if (s.name, k) not in runs]
    _write_json(
        out / "results.json",
        {
            "schema": SCHEMA,
            "complete": not missing,
            "missing": missing,
            "data": {
                "name": data.name,
                "train_images": len(data.train),
                "test_images": len(data.test),
                "num_classes": data.num_classes,
                "in_chans": data.in_chans,
            },
            "settings": {**asdict(settings), "seeds": list(seeds)},
            "environment": _environment(settings),
            "verdict_rule": VERDICT_RULE,
            "compute_seconds": sum(r["run_seconds"] for r in runs.values()),
            "models": summaries,
            "runs": _ordered(specs, seeds, runs),
        },
    )
    return summaries
