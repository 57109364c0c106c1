"""``overparam-zoo compare``: does over-parameterization help on *this* data and architecture?

Trains every model (a timm base and its op variants) with one recipe
(:class:`~overparam_zoo.experiments.training.TrainSettings`) over several seeds and measures, per run:
test top-1 and loss, training wall time, parameters while training and deployed, the effective
rank of the penultimate features and of the (collapsed) weights. Every op model is exported
collapsed with :func:`~overparam_zoo.sharing.export.export_collapsed`, reloaded with plain timm
(``local-dir:``) and evaluated again, so the table shows the deployed stock model's accuracy.

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
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from overparam.analysis import embedding_effective_rank, spectrum
from overparam_zoo.errors import CompareError, UnknownModelError
from overparam_zoo.experiments.datasets import ImageData, load_bundled, load_image_folder
from overparam_zoo.experiments.report import VERDICT_RULE, markdown_table, plot_comparison, summarize_model
from overparam_zoo.experiments.training import TrainSettings, evaluate, make_loaders, train_model
from overparam_zoo.extras import require
from overparam_zoo.files import atomic_write

__all__ = [
    "ModelSpec",
    "CompareResult",
    "RunStore",
    "SCHEMA",
    "resolve_models",
    "variant_names",
    "run_compare",
]

SCHEMA = "overparam-zoo/compare/1"


@dataclass(frozen=True)
class ModelSpec:
    """One model of a comparison: a timm base (depth 1) or one of its registered op variants."""

    name: str
    base: str
    depth: int
    tag: str  # "stock" for the base, "plain" for an untagged variant

    @property
    def is_variant(self) -> bool:
        return self.name != self.base


def _spec(name: str) -> ModelSpec:
    import timm

    from overparam_zoo.names.registry import get_variant, list_variants

    if name in list_variants(zoo="timm"):
        variant = get_variant(name, "timm")
        return ModelSpec(name, variant.base, variant.depth, variant.tag or "plain")
    if name in list_variants(zoo="torchvision"):
        raise UnknownModelError(
            f"{name!r} is a torchvision variant; compare trains timm models (see `overparam-zoo list`)"
        )
    if "_op_d" in name:
        get_variant(name, "timm")  # raises, naming the variants of that base
    if timm.is_model(name):
        return ModelSpec(name, name, 1, "stock")
    raise UnknownModelError(
        f"unknown model {name!r}: neither a registered op variant (`overparam-zoo list`) nor a timm model"
    )


def variant_names(bases: Sequence[str], depths: Sequence[int], tags: Sequence[str]) -> list[str]:
    """``<base>_op_d<depth>[_<tag>]`` for every combination (``plain`` is the untagged variant)."""
    return [f"{b}_op_d{d}" + ("" if t == "plain" else f"_{t}") for b in bases for t in tags for d in depths]


def resolve_models(names: Sequence[str]) -> list[ModelSpec]:
    """Specs for ``names`` in order, without duplicates, each variant's base added before it
    (a variant is always compared with its base).

    Raises:
        UnknownModelError: naming a model that is neither a timm model nor a registered timm variant.
    """
    specs: list[ModelSpec] = []
    for name in names:
        spec = _spec(name)
        for needed in ([_spec(spec.base)] if spec.is_variant else []) + [spec]:
            if needed not in specs:
                specs.append(needed)
    return specs


def _write_json(path: Path, payload: Any) -> None:
    """Written atomically: readers (and a resumed comparison) see the old file or the new one."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(payload, indent=2) + "\n"))


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
                detail = ", ".join(f"{k}: {old!r} there, {new!r} now" for k, (old, new) in changed.items())
                raise CompareError(
                    f"{out} holds runs made with other settings ({detail}); "
                    "expected the same settings to resume: use another --out, or delete the folder to start over"
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
    """What :func:`run_compare` did and found."""

    summaries: list[dict[str, Any]]
    table: str
    results_path: Path
    figure_path: Path
    trained: list[tuple[str, int]] = field(default_factory=list)
    resumed: list[tuple[str, int]] = field(default_factory=list)
    seconds: float = 0.0


def _build(spec: ModelSpec, data: ImageData) -> nn.Module:
    import timm

    from overparam_zoo.names.registry import create_model

    kwargs = dict(num_classes=data.num_classes, in_chans=data.in_chans)
    return create_model(spec.name, "timm", **kwargs) if spec.is_variant else timm.create_model(spec.name, **kwargs)


def _weight_effective_rank(model: nn.Module) -> float:
    """Mean over Linear/Conv layers of effective rank / max rank (0-1, comparable across depths)."""
    layers = spectrum(model)
    return sum(s.effective_rank / s.max_rank for s in layers) / len(layers)


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _run_one(
    spec: ModelSpec, seed: int, data: ImageData, loaders: tuple[Any, Any], settings: TrainSettings, export_dir: Path
) -> dict[str, Any]:
    """Train, evaluate, and for an op model export, reload with plain timm and evaluate again."""
    import timm

    from overparam_zoo.sharing.export import export_collapsed

    start = time.perf_counter()
    torch.manual_seed(seed)
    model = _build(spec, data)
    params_training = _params(model)
    torch.manual_seed(seed)  # the same batch order (and augmentation) for every model at this seed
    trained = train_model(model, loaders[0], settings, label=f"{spec.name} seed {seed}")
    result = evaluate(trained.model, loaders[1], settings.device)
    deployed_model, deployed = trained.model, None
    if spec.is_variant:
        exported = export_collapsed(trained.model.cpu(), export_dir, force=True)
        deployed_model = timm.create_model(f"local-dir:{export_dir}", pretrained=True)
        again = evaluate(deployed_model, loaders[1], settings.device)
        deployed = {
            "top1": again.top1,
            "test_loss": again.loss,
            "predictions_equal": bool((again.logits.argmax(1) == result.logits.argmax(1)).all()),
            "max_logit_difference": float((again.logits - result.logits).abs().max()),
            "max_collapse_error": exported.max_collapse_error,
            "export_dir": str(export_dir),
        }
    return {
        "model": spec.name,
        "base": spec.base,
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


def run_compare(
    models: Sequence[str],
    *,
    seeds: int = 3,
    dataset: str | None = "digits",
    data_dir: str | Path | None = None,
    settings: TrainSettings | None = None,
    out: str | Path = "compare-out",
    keep_exports: bool = False,
) -> CompareResult:
    """Train ``models`` (each variant with its base) over seeds ``0..seeds-1``, resuming from ``out``.

    Args:
        models: timm model names and registered timm op variant names.
        seeds: how many seeds per model.
        dataset: a bundled dataset (``digits`` or ``mnist5k``), when ``data_dir`` is not given.
        data_dir: an image folder in timm ``train.py``'s layout (``train/`` and ``validation/``).
        settings: the training recipe; its ``threads`` are pinned with ``torch.set_num_threads``.
        out: output folder: ``runs/``, ``settings.json``, ``results.json``, ``compare.png``.
        keep_exports: keep each op run's collapsed export in ``out/exports/<model>/seed<k>/``
            (otherwise it is deleted once re-evaluated).

    Raises:
        UnknownModelError: for a name that is not a timm model or registered timm variant.
        DataError: for a dataset that cannot be read or whose dependency is missing.
        CompareError: for settings differing from the runs in ``out``, a missing dependency,
            or a batch larger than the training set.
    """
    settings = settings or TrainSettings()
    if seeds < 1:
        raise CompareError(f"--seeds {seeds}: expected at least 1")
    if not models:
        raise CompareError("no models to compare; expected --models NAME ... or --base NAME")
    require("scipy", "compare", "compare")
    require("matplotlib", "plot", "compare")
    specs = resolve_models(models)
    data = load_image_folder(data_dir) if data_dir is not None else load_bundled(dataset)
    if settings.batch_size > len(data.train):
        raise CompareError(
            f"--batch-size {settings.batch_size} is larger than the {len(data.train)} training images; "
            "expected at most that many (the last partial batch is dropped)"
        )
    out = Path(out)
    source = {
        "dataset": data.name if data_dir is None else None,
        "data_dir": str(Path(data_dir).resolve()) if data_dir else None,
    }
    store = RunStore(out, {**source, **asdict(settings), "scale": list(settings.scale)})
    start = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(settings.threads)  # the same for every run, so wall times compare
    try:
        runs, trained, resumed = _run_missing(specs, seeds, store, data, settings, keep_exports)
    finally:
        torch.set_num_threads(threads)
    summaries = _write_results(out, specs, seeds, runs, data, settings)
    title = (
        f"{data.name}: seeds {seeds}, epochs {settings.epochs}, {settings.input_size}px, {settings.opt} lr {settings.lr} "
        f"(overparam-zoo compare)"
    )
    figure = plot_comparison(summaries, out / "compare.png", title)
    return CompareResult(
        summaries,
        markdown_table(summaries),
        out / "results.json",
        figure,
        trained,
        resumed,
        time.perf_counter() - start,
    )


def _run_missing(
    specs: Sequence[ModelSpec],
    seeds: int,
    store: RunStore,
    data: ImageData,
    settings: TrainSettings,
    keep_exports: bool,
) -> tuple[dict[tuple[str, int], dict[str, Any]], list[tuple[str, int]], list[tuple[str, int]]]:
    """Every (model, seed) run: loaded when ``store`` has it, otherwise trained and saved at once."""
    from tqdm import tqdm

    out = store.out
    loaders = make_loaders(data, settings)
    runs: dict[tuple[str, int], dict[str, Any]] = {}
    trained, resumed = [], []
    todo = [(spec, seed) for seed in range(seeds) for spec in specs]  # every model at a seed first
    for spec, seed in todo:
        record = store.load(spec.name, seed)
        if record is not None:
            runs[(spec.name, seed)] = record
            resumed.append((spec.name, seed))
    bar = tqdm(total=len(todo), initial=len(runs), desc="compare", unit="run", file=sys.stderr)
    for spec, seed in todo:
        if (spec.name, seed) in runs:
            continue
        bar.set_postfix_str(f"{spec.name} seed {seed}")
        export_dir = out / "exports" / spec.name / f"seed{seed}"
        record = _run_one(spec, seed, data, loaders, settings, export_dir)
        if spec.is_variant and not keep_exports:
            _remove_export(export_dir, out)
            record["deployed"]["export_dir"] = None
        store.save(record)
        runs[(spec.name, seed)] = record
        trained.append((spec.name, seed))
        _write_results(out, specs, seeds, runs, data, settings)
        bar.update(1)
    bar.close()
    return runs, trained, resumed


def _remove_export(export_dir: Path, out: Path) -> None:
    shutil.rmtree(export_dir, ignore_errors=True)
    for parent in (export_dir.parent, export_dir.parent.parent):  # empty model and exports folders
        if parent != out and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()


def _write_results(
    out: Path,
    specs: Sequence[ModelSpec],
    seeds: int,
    runs: dict[tuple[str, int], dict[str, Any]],
    data: ImageData,
    settings: TrainSettings,
) -> list[dict[str, Any]]:
    """Summaries of the models with finished runs, written to ``out/results.json``."""
    by_model = {s.name: [runs[(s.name, k)] for k in range(seeds) if (s.name, k) in runs] for s in specs}
    summaries = [summarize_model(by_model[s.name], by_model.get(s.base)) for s in specs if by_model[s.name]]
    missing = [{"model": s.name, "seed": k} for s in specs for k in range(seeds) if (s.name, k) not in runs]
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
            "settings": {**asdict(settings), "seeds": list(range(seeds))},
            "environment": _environment(settings),
            "verdict_rule": VERDICT_RULE,
            "compute_seconds": sum(r["run_seconds"] for r in runs.values()),
            "models": summaries,
            "runs": [runs[(s.name, k)] for s in specs for k in range(seeds) if (s.name, k) in runs],
        },
    )
    return summaries
