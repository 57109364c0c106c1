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
  records the accuracy in ``config.json`` (under ``overparam_zoo``) and in the model card.

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
import importlib.metadata
import json
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from overparam import OverparamChain, collapse
from overparam.versions import version_tuple
from overparam_zoo.errors import QuantizeError, first_line
from overparam_zoo.extras import require
from overparam_zoo.files import atomic_write

__all__ = [
    "INT8_NAME",
    "INT8_KEY",
    "Int8Accuracy",
    "QuantizedModel",
    "Int8Result",
    "load_export",
    "export_transform",
    "image_batches",
    "quantize_model",
    "quantize_export",
    "record_int8",
]

INT8_NAME = "model_int8.pt2"
INT8_KEY = "int8"
"""Where the measured accuracy sits in ``config.json``: ``config["overparam_zoo"]["int8"]``."""

_PROVENANCE_KEY = "overparam_zoo"  # export.PROVENANCE_KEY; export imports model_card, which must not import this
_CONFIG_NAME = "config.json"
_WEIGHTS_NAME = "model.safetensors"
_CARD_NAME = "README.md"
_CARD_START, _CARD_END = "<!-- overparam-zoo:int8 -->", "<!-- /overparam-zoo:int8 -->"
_QUANTIZER = (
    "torchao X86InductorQuantizer, default static config: per-channel symmetric int8 weights, "
    "per-tensor affine uint8 activations"
)


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
    if prepared is None or seen == 0:
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
    dataset: torch.utils.data.Dataset,
    transform: Any,
    *,
    limit: int | None = None,
    batch_size: int = 64,
    seed: int = 0,
) -> torch.utils.data.DataLoader:
    """Batches of ``dataset`` through ``transform`` (:func:`export_transform`); with ``limit``, a
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
    if limit is not None and limit < len(dataset):
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
        view = torch.utils.data.Subset(view, sorted(order[:limit].tolist()))
    return torch.utils.data.DataLoader(view, batch_size=batch_size)


def _zoo(config: dict[str, Any]) -> str:
    return str(config.get("zoo") or (config.get(_PROVENANCE_KEY) or {}).get("zoo") or "timm")


def _read_config(folder: Path) -> dict[str, Any]:
    if not folder.is_dir():
        raise QuantizeError(f"{folder} is not a folder; expected the output folder of overparam-zoo export")
    missing = [name for name in (_CONFIG_NAME, _WEIGHTS_NAME) if not (folder / name).is_file()]
    if missing:
        raise QuantizeError(
            f"{folder} lacks {', '.join(missing)}; expected {_CONFIG_NAME} and {_WEIGHTS_NAME} as overparam-zoo export "
            "writes them"
        )
    try:
        config = json.loads((folder / _CONFIG_NAME).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise QuantizeError(f"{folder / _CONFIG_NAME}: not readable JSON ({first_line(err)})") from err
    if not isinstance(config, dict):
        raise QuantizeError(f"{folder / _CONFIG_NAME}: expected a JSON object")
    if "pretrained_cfg" not in config and _zoo(config) != "timm":
        raise QuantizeError(
            f"{folder / _CONFIG_NAME}: a {_zoo(config)} export records no preprocessing (pretrained_cfg); "
            "expected a timm export, whose config.json says how its training images were preprocessed"
        )
    for key, kind in (("architecture", str), ("num_classes", int), ("pretrained_cfg", dict)):
        if not isinstance(config.get(key), kind):
            raise QuantizeError(
                f"{folder / _CONFIG_NAME}: '{key}' is missing or not a {kind.__name__}; "
                "expected the config.json that overparam-zoo export writes"
            )
    return config


def load_export(folder: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """The float model of an export folder (the architecture ``config.json`` names, its
    ``model.safetensors`` loaded strictly) and the parsed ``config.json``.

    Raises:
        QuantizeError: for a missing folder, ``config.json`` or weights, or weights that do not
            load into the architecture.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from overparam_zoo.errors import UnknownModelError
    from overparam_zoo.names.registry import create_model

    folder = Path(folder)
    config = _read_config(folder)
    arch = config["architecture"]
    zoo = _zoo(config)
    try:
        model = create_model(arch, zoo=zoo, **{**config.get("model_args", {}), "num_classes": config["num_classes"]})
    except UnknownModelError as err:
        raise QuantizeError(f"{folder / _CONFIG_NAME} names {arch!r}, which is not a {zoo} model") from err
    except (TypeError, ValueError, RuntimeError, AssertionError, KeyError) as err:
        raise QuantizeError(f"{folder / _CONFIG_NAME} does not build {arch}: {first_line(err)}") from err
    try:
        model.load_state_dict(load_file(str(folder / _WEIGHTS_NAME)), strict=True)
    except (OSError, SafetensorError, RuntimeError) as err:
        raise QuantizeError(f"{folder / _WEIGHTS_NAME} does not load into {arch}: {first_line(err)}") from err
    return model.eval(), config


def export_transform(config: dict[str, Any]) -> Any:
    """The evaluation transform a consumer builds from the export's ``pretrained_cfg``
    (``timm.data.resolve_data_config`` then ``create_transform``)."""
    from timm.data import create_transform, resolve_data_config

    data_config = resolve_data_config(pretrained_cfg=config["pretrained_cfg"])
    return create_transform(**data_config, is_training=False)


def _check_data(
    folder: Path,
    config: dict[str, Any],
    calibration: torch.utils.data.Dataset,
    evaluation: torch.utils.data.Dataset,
    transform: Any,
    num_classes: int | None,
    data_name: str,
) -> None:
    """Refuse data that does not fit the export before anything is computed or written."""
    for split, dataset in (("training", calibration), ("held-out", evaluation)):
        if len(dataset) == 0:
            raise QuantizeError(f"{data_name}: the {split} split holds no images; expected some to quantize with")
    if num_classes is not None and num_classes != config["num_classes"]:
        raise QuantizeError(
            f"{data_name} has {num_classes} classes; {folder} was trained for {config['num_classes']}; "
            "expected the data the export was trained on"
        )
    expected = config["pretrained_cfg"].get("input_size")
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


def _versions() -> dict[str, str]:
    return {name: importlib.metadata.version(name) for name in ("torch", "torchao")}


def _card_section(acc: dict[str, Any]) -> str:
    return "\n".join(
        [
            _CARD_START,
            "## INT8 (torchao PT2E)",
            "",
            f"`{acc['file']}` is a static INT8 version of these weights, calibrated on {acc['calibration_images']} "
            f"training images of `{acc['dataset']}` preprocessed as `config.json` says ({acc['quantizer']}).",
            "",
            "| | top-1 |",
            "|---|---|",
            f"| float32 | {acc['float32_top1']:.4f} |",
            f"| INT8 | {acc['int8_top1']:.4f} |",
            f"| drop | {acc['float32_top1'] - acc['int8_top1']:+.4f} |",
            "",
            f"Measured on {acc['evaluation_images']} held-out images of `{acc['dataset']}`; float32 and INT8 predict "
            f"the same class on {acc['agreement']:.2%} of them "
            f"(torch {acc['versions']['torch']}, torchao {acc['versions']['torchao']}, INT8 run as exported, uncompiled).",
            "",
            "```python",
            "import torch",
            "import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer  # the quantized ops, inductor's INT8 passes",
            "",
            f'model = torch.export.load("{acc["file"]}").module()  # any batch size; runs as is, in float emulation',
            "torch._inductor.config.freezing = True  # inductor's INT8 passes run on frozen graphs only",
            "model = torch.compile(model)  # INT8 convolution and linear kernels on x86 CPUs",
            "```",
            _CARD_END,
        ]
    )


def _with_section(card: str, section: str) -> str:
    """``card`` with its INT8 section replaced, or inserted before the citation (else appended)."""
    block = re.compile(re.escape(_CARD_START) + r".*?" + re.escape(_CARD_END), re.DOTALL)
    if block.search(card):
        return block.sub(lambda _m: section, card, count=1)
    cut = card.find("\n## Citation")
    if cut < 0:
        return card.rstrip("\n") + "\n\n" + section + "\n"
    return card[: cut + 1] + section + "\n\n" + card[cut + 1 :]


def record_int8(folder: str | Path, record: dict[str, Any]) -> dict[str, Any]:
    """Write ``record`` into ``config.json`` (``overparam_zoo.int8``) and an INT8 section into
    the model card (replacing an earlier one), each atomically; returns the new config."""
    folder = Path(folder)
    config = json.loads((folder / _CONFIG_NAME).read_text(encoding="utf-8"))
    config.setdefault(_PROVENANCE_KEY, {})[INT8_KEY] = record
    text = json.dumps(config, indent=2) + "\n"
    card_path = folder / _CARD_NAME
    card = _with_section(card_path.read_text(encoding="utf-8") if card_path.is_file() else "", _card_section(record))
    atomic_write(folder / _CONFIG_NAME, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    atomic_write(card_path, lambda tmp: Path(tmp).write_text(card, encoding="utf-8"))
    return config


def quantize_export(
    folder: str | Path,
    calibration: torch.utils.data.Dataset,
    evaluation: torch.utils.data.Dataset,
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
        QuantizeError: for an incomplete export folder, no calibration or evaluation images,
            or images whose channels or classes do not fit the export; nothing is written then.
    """
    folder = Path(folder)
    if calibration_images < 1:
        raise QuantizeError(f"calibration_images: {calibration_images}; expected at least 1")
    model, config = load_export(folder)
    transform = export_transform(config)
    _check_data(folder, config, calibration, evaluation, transform, num_classes, data_name)
    quantized = quantize_model(
        model,
        image_batches(calibration, transform, limit=calibration_images),
        image_batches(evaluation, transform),
        num_classes=config["num_classes"],
    )
    path = Path(out) if out is not None else folder / INT8_NAME
    atomic_write(path, lambda tmp: torch.export.save(quantized.program, tmp))
    try:
        shown = str(path.resolve().relative_to(folder.resolve()))
    except ValueError:
        shown = str(path.resolve())
    record = {"file": shown, "dataset": data_name, "quantizer": _QUANTIZER, "versions": _versions()}
    record.update(asdict(quantized.accuracy))
    return Int8Result(path, quantized.program, quantized.accuracy, record_int8(folder, record))
