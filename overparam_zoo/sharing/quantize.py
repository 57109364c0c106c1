"""Static INT8 through torchao's PT2E flow, with its accuracy against float32 measured and recorded.

Reparameterized models are known to lose accuracy under post-training quantization, so an INT8
artifact is only worth shipping with its measured cost. The flow is the current PyTorch one
(``torch.ao.quantization`` is deprecated): ``torch.export`` with a dynamic batch dimension,
``prepare_pt2e`` with torchao's ``X86InductorQuantizer`` (its default static config: per-channel
symmetric int8 weights, per-tensor affine uint8 activations from a histogram observer), calibration on training images,
``convert_pt2e``, then ``torch.export`` again so the result is a self-contained program:

- :func:`quantize_model`: any float model (a stock model, or an op model, which is collapsed
  first) and batches of preprocessed images; returns the INT8 program and its
  :class:`Int8Accuracy`. Nothing is written; this is what a comparison calls per run.
- :func:`quantize_export`: an export folder and datasets of PIL images; preprocesses them with
  the export's own data config (as a consumer would), writes ``model_int8.pt2`` atomically and
  records the accuracy in ``config.json`` (under ``overparam_zoo``, through
  :class:`~overparam_zoo.checkpoints.folder.ExportFolder`) and in the model card (its INT8
  section is :mod:`~overparam_zoo.sharing.model_card`'s).

The ``.pt2`` file loads with torch and torchao alone (``import torchao`` registers the
quantized ops the program calls; the x86 quantizer's module also registers inductor's INT8
passes, which run on frozen graphs only)::

    import torch
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer  # noqa: F401
    model = torch.export.load("model_int8.pt2").module()  # any batch size; runs as is, in float emulation
    torch._inductor.config.freezing = True
    model = torch.compile(model)  # inductor runs INT8 convolution and linear kernels
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol, cast

import torch
from torch import nn

from overparam import OverparamChain, collapse
from overparam.compat import version_tuple
from overparam_zoo.checkpoints.folder import INT8_KEY, INT8_NAME, ExportFolder, package_versions
from overparam_zoo.errors import QuantizeError, first_line
from overparam_zoo.extras import require
from overparam_zoo.files import atomic_write
from overparam_zoo.sharing.model_card import with_int8_section

__all__ = [
    "LabelledImages",
    "Int8Accuracy",
    "QuantizedModel",
    "Int8Result",
    "image_batches",
    "quantize_model",
    "quantize_export",
    "record_int8",
]

_QUANTIZER = (
    "torchao X86InductorQuantizer, default static config: per-channel symmetric int8 weights, "
    "per-tensor affine uint8 activations"
)


class LabelledImages(Protocol):
    """The datasets quantization (and the comparison) take: map-style, sized, of ``(image, class)``
    pairs, with the ``transform`` attribute timm's ``create_loader`` sets, as timm's
    ``ImageDataset`` and :class:`~overparam_zoo.experiments.datasets.ArrayImageDataset` have."""

    transform: Any

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[Any, int]: ...


@dataclass(frozen=True)
class Int8Accuracy:
    """Top-1 of the float32 model and of its INT8 program on the same held-out images, and the
    fraction of those images on which their predicted classes agree."""

    float32_top1: float
    int8_top1: float
    agreement: float
    calibration_images: int
    evaluation_images: int

    @property
    def drop(self) -> float:
        """``float32_top1 - int8_top1``: what quantization costs, in top-1 (positive is a loss)."""
        return self.float32_top1 - self.int8_top1


@dataclass
class QuantizedModel:
    """The INT8 program (``.module()`` runs it; ``torch.export.save`` writes it) and its accuracy."""

    program: torch.export.ExportedProgram
    accuracy: Int8Accuracy


@dataclass
class Int8Result:
    """What :func:`quantize_export` wrote (the program, at ``path``), measured and recorded."""

    path: Path
    program: torch.export.ExportedProgram
    accuracy: Int8Accuracy
    config: dict[str, Any]


_STRICT_EXPORT = version_tuple(torch.__version__) < (2, 12)


def _torchao() -> ModuleType:
    return require("torchao.quantization.pt2e.quantize_pt2e", "quantize", "INT8 quantization")


def _quantizer() -> Any:
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer,
        get_default_x86_inductor_quantization_config,
    )

    quantizer = X86InductorQuantizer()
    quantizer.set_global(get_default_x86_inductor_quantization_config())
    return quantizer


def _float_model(model: nn.Module) -> nn.Module:
    """An eval-mode float32 copy on the CPU (the x86 quantizer's target); an op model's chains
    collapsed into the stock layers it deploys as."""
    model = copy.deepcopy(model).cpu().float().eval()
    if any(isinstance(m, OverparamChain) for m in model.modules()):
        try:
            model = collapse(model).eval()
        except ValueError as err:
            raise QuantizeError(f"model: cannot collapse it before quantizing: {err}") from err
    return model


def _export(module: nn.Module, example: torch.Tensor, what: str, strict: bool = False) -> torch.export.ExportedProgram:
    dims = ({0: torch.export.Dim("batch", min=1)},)
    try:
        return torch.export.export(module, (example,), dynamic_shapes=dims, strict=strict)
    except Exception as err:  # torch.export raises many kinds for code it cannot trace
        raise QuantizeError(f"torch.export cannot capture {what} with a dynamic batch: {first_line(err)}") from err


def _drop_unused_tensors(module: torch.fx.GraphModule) -> None:
    """``convert_pt2e`` leaves the float weights it replaced by INT8 ones as attributes; without
    this the saved program would carry both (five times the INT8 size)."""
    used = {node.target for node in module.graph.nodes if node.op == "get_attr"}
    for name in [n for n, _ in module.named_parameters()] + [n for n, _ in module.named_buffers()]:
        if name not in used:
            owner, _, attr = name.rpartition(".")
            delattr(module.get_submodule(owner), attr)


def _run(model: nn.Module, images: torch.Tensor, where: str) -> torch.Tensor:
    try:
        return model(images)
    except (RuntimeError, ValueError, AssertionError) as err:  # a shape the model or its program does not take
        raise QuantizeError(
            f"{where}: the model does not take images of shape {list(images.shape)}: {first_line(err)}"
        ) from err


def _check_batch(images: Any, targets: Any, where: str, num_classes: int | None) -> None:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or not images.is_floating_point():
        raise QuantizeError(f"{where}: expected batches of float image tensors [N, C, H, W] with targets")
    if num_classes is not None and targets is not None and len(targets) and int(targets.max()) >= num_classes:
        raise QuantizeError(
            f"{where}: class index {int(targets.max())} does not fit the model's {num_classes} classes; "
            f"expected labels 0..{num_classes - 1}"
        )


@torch.no_grad()
def quantize_model(
    model: nn.Module,
    calibration: Iterable[tuple[torch.Tensor, torch.Tensor]],
    evaluation: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    num_classes: int | None = None,
) -> QuantizedModel:
    """Static INT8 of ``model`` by torchao PT2E, calibrated and then measured against float32.

    Args:
        model: a float model (not changed; an op model is collapsed on a copy first).
        calibration: ``(images, targets)`` batches of preprocessed *training* images, as the
            model takes them (e.g. :func:`image_batches` or a timm eval loader); all are used.
        evaluation: ``(images, targets)`` batches of held-out images, the same preprocessing.
        num_classes: the model's class count, to refuse labels it cannot predict.

    Raises:
        QuantizeError: for empty ``calibration`` or ``evaluation``, batches that are not image
            tensors, labels out of range, or a model ``torch.export`` cannot capture.
    """
    pt2e = _torchao()
    float_model = _float_model(model)
    prepared, seen, example = None, 0, None
    for images, targets in calibration:
        _check_batch(images, targets, "calibration", num_classes)
        images = images.cpu().float()
        if prepared is None:
            example = images[:1].repeat(2, 1, 1, 1)  # two images: a batch of one would be specialised
            _run(float_model, example, "calibration")
            # torch < 2.12's non-strict export records no ``source_fn_stack``, without which the x86
            # quantizer annotates nothing (the program would come back all float)
            program = _export(float_model, example, type(float_model).__name__, strict=_STRICT_EXPORT)
            try:
                prepared = pt2e.prepare_pt2e(program.module(), _quantizer())
            except Exception as err:
                raise QuantizeError(f"torchao cannot prepare {type(float_model).__name__}: {first_line(err)}") from err
        _run(prepared, images, "calibration")
        seen += len(images)
    if prepared is None or example is None or seen == 0:
        raise QuantizeError("calibration: no images; expected at least one batch of training images")
    converted = pt2e.convert_pt2e(prepared)
    _drop_unused_tensors(converted)
    program = _export(converted, example, "the INT8 model")
    accuracy = _measure(float_model, program.module(), evaluation, seen, num_classes)
    return QuantizedModel(program, accuracy)


def _measure(
    float_model: nn.Module,
    int8_model: nn.Module,
    evaluation: Iterable[tuple[torch.Tensor, torch.Tensor]],
    calibration_images: int,
    num_classes: int | None,
) -> Int8Accuracy:
    right32 = right8 = same = total = 0
    for images, targets in evaluation:
        _check_batch(images, targets, "evaluation", num_classes)
        images, targets = images.cpu().float(), targets.cpu()
        pred32, pred8 = (
            _run(float_model, images, "evaluation").argmax(1),
            _run(int8_model, images, "evaluation").argmax(1),
        )
        right32 += int((pred32 == targets).sum())
        right8 += int((pred8 == targets).sum())
        same += int((pred32 == pred8).sum())
        total += len(targets)
    if total == 0:
        raise QuantizeError("evaluation: no images; expected at least one batch of held-out images")
    return Int8Accuracy(right32 / total, right8 / total, same / total, calibration_images, total)


def image_batches(
    dataset: LabelledImages,
    transform: Any,
    *,
    limit: int | None = None,
    batch_size: int = 64,
    seed: int = 0,
) -> torch.utils.data.DataLoader:
    """Batches of ``dataset`` through ``transform`` (:meth:`ExportFolder.transform`); with ``limit``, a
    fixed random subset of that size.

    ``dataset`` is a map-style dataset with a ``transform`` attribute, as timm's datasets and
    :mod:`overparam_zoo.experiments.datasets`' are; like timm's ``create_loader`` this sets it,
    but on a shallow copy, so a transform set earlier (by a training loader) is neither used nor
    changed.

    Raises:
        QuantizeError: for a ``limit`` below one, or a dataset without a ``transform`` attribute.
    """
    if limit is not None and limit < 1:
        raise QuantizeError(f"limit: {limit} images; expected at least 1")
    if not hasattr(dataset, "transform"):
        raise QuantizeError(
            f"dataset: a {type(dataset).__name__} has no transform attribute; expected a map-style dataset of "
            "(PIL image, class) pairs with one, as timm's datasets have"
        )
    view = copy.copy(dataset)
    view.transform = transform
    batches = cast("torch.utils.data.Dataset[Any]", view)  # a torch Dataset, as LabelledImages are
    if limit is not None and limit < len(dataset):
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
        batches = torch.utils.data.Subset(batches, sorted(order[:limit].tolist()))
    return torch.utils.data.DataLoader(batches, batch_size=batch_size)


def _check_data(
    export: ExportFolder,
    calibration: LabelledImages,
    evaluation: LabelledImages,
    transform: Any,
    num_classes: int | None,
    data_name: str,
) -> None:
    """Refuse data that does not fit the export before anything is computed or written."""
    folder = export.path
    for split, dataset in (("training", calibration), ("held-out", evaluation)):
        if len(dataset) == 0:
            raise QuantizeError(f"{data_name}: the {split} split holds no images; expected some to quantize with")
    if num_classes is not None and num_classes != export.num_classes:
        raise QuantizeError(
            f"{data_name} has {num_classes} classes; {folder} was trained for {export.num_classes}; "
            "expected the data the export was trained on"
        )
    expected = export.pretrained_cfg.get("input_size")
    raw = copy.copy(calibration)
    raw.transform = None  # the image as stored, whatever transform a training loader set
    image = raw[0][0]
    channels = len(image.getbands()) if hasattr(image, "getbands") else None  # a PIL image's channels
    if channels is None or not expected or channels == expected[0]:
        try:
            channels = transform(image).shape[0]
        except (RuntimeError, ValueError, TypeError) as err:
            raise QuantizeError(
                f"{data_name} images do not go through {folder}'s preprocessing: {first_line(err)}"
            ) from err
    if expected and channels != expected[0]:
        raise QuantizeError(
            f"{data_name} images have {channels} channel(s); {folder} takes {expected[0]} "
            f"(config.json input_size {list(expected)})"
        )


def record_int8(folder: str | Path, record: dict[str, Any]) -> dict[str, Any]:
    """Write ``record`` into ``config.json`` (``overparam_zoo.int8``) and an INT8 section into
    the model card (replacing an earlier one), each atomically; returns the new config."""
    return _record_int8(ExportFolder.open(folder), record)


def _record_int8(export: ExportFolder, record: dict[str, Any]) -> dict[str, Any]:
    card = with_int8_section(export.read_card(), record)
    config = export.record(INT8_KEY, record)
    export.write_card(card)
    return config


def quantize_export(
    folder: str | Path,
    calibration: LabelledImages,
    evaluation: LabelledImages,
    *,
    calibration_images: int = 512,
    out: str | Path | None = None,
    num_classes: int | None = None,
    data_name: str = "data",
) -> Int8Result:
    """Quantize an export folder to INT8, write ``model_int8.pt2``, record its accuracy.

    Args:
        folder: the output folder of ``overparam-zoo export``.
        calibration: training images, ``(PIL image, class)`` pairs (their ``transform`` unset);
            ``calibration_images`` of them, a fixed random subset, calibrate the activations.
        evaluation: held-out images, same form; all of them measure float32 and INT8 top-1.
        calibration_images: how many training images calibrate (at least 1).
        out: where the program goes; ``folder/model_int8.pt2`` by default.
        num_classes: the data's class count, checked against the export's.
        data_name: how messages and the card name the data (``"--dataset digits"``, ``"digits"``).

    Raises:
        ExportFolderError: for a folder that is not a complete timm export that loads.
        QuantizeError: for no calibration or evaluation images, or images whose channels or
            classes do not fit the export; nothing is written then.
    """
    if calibration_images < 1:
        raise QuantizeError(f"calibration_images: {calibration_images}; expected at least 1")
    export = ExportFolder.open(folder)
    transform = export.transform()
    model = export.load_model()
    _check_data(export, calibration, evaluation, transform, num_classes, data_name)
    quantized = quantize_model(
        model,
        image_batches(calibration, transform, limit=calibration_images),
        image_batches(evaluation, transform),
        num_classes=export.num_classes,
    )
    path = Path(out) if out is not None else export.path / INT8_NAME
    atomic_write(path, lambda tmp: torch.export.save(quantized.program, tmp))
    try:
        shown = str(path.resolve().relative_to(export.path.resolve()))
    except ValueError:
        shown = str(path.resolve())
    versions = package_versions("torch", "torchao")
    record = {"file": shown, "dataset": data_name, "quantizer": _QUANTIZER, "versions": versions}
    record.update(asdict(quantized.accuracy))
    return Int8Result(path, quantized.program, quantized.accuracy, _record_int8(export, record))
