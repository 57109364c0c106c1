"""The ``README.md`` model card of an export, in the Hugging Face / timm convention: the one
module that writes its text (the export's card, the INT8 section quantize adds, the repo id push
fills in) and reads its front matter. The file itself is the export folder's
(:class:`~overparam_zoo.checkpoints.folder.ExportFolder`).

YAML front matter (``library_name: timm``, ``license``, ``tags``, ``pipeline_tag``,
``base_model`` when the run started from the base's pretrained weights, ``datasets`` for Hugging
Face datasets), then what the weights are, how to load them with timm, their provenance, the
training arguments that shaped them and the results ``train.py`` logged. Everything comes from
the export's own ``config.json`` and its :class:`~overparam_zoo.sharing.metadata.ExportMetadata`, so the
card never claims more than the export knows.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import yaml

from overparam_zoo.checkpoints.folder import ALLOWED_KEY, PROVENANCE_KEY, ExportFolder
from overparam_zoo.checkpoints.formats import export_format
from overparam_zoo.errors import ExportFolderError
from overparam_zoo.registry.recipe import Variant
from overparam_zoo.registry.zoos import get_zoo
from overparam_zoo.sharing.metadata import ExportMetadata, TrainResults

__all__ = [
    "REPO_PLACEHOLDER",
    "TRAINING_ARG_KEYS",
    "base_model_id",
    "render_model_card",
    "with_int8_section",
    "point_card_at",
    "check_front_matter",
]

REPO_PLACEHOLDER = "OWNER/NAME"
"""Stands for the hub repository in a card written before upload; ``overparam-zoo push`` fills it in."""

TRAINING_ARG_KEYS: tuple[str, ...] = (
    "model",
    "pretrained",
    "initial_checkpoint",
    "dataset",
    "train_split",
    "val_split",
    "num_classes",
    "in_chans",
    "img_size",
    "input_size",
    "epochs",
    "batch_size",
    "world_size",
    "grad_accum_steps",
    "opt",
    "lr",
    "momentum",
    "weight_decay",
    "sched",
    "warmup_epochs",
    "min_lr",
    "smoothing",
    "mixup",
    "cutmix",
    "aa",
    "reprob",
    "drop",
    "drop_path",
    "model_ema",
    "model_ema_decay",
    "amp",
    "amp_dtype",
    "seed",
)
"""``train.py`` arguments the card lists (those that shape the weights), where set."""

_HF_DATASET_PREFIXES = ("hfds/", "hfids/")
_CITATION = """@article{huh2023simplicitybias,
  title={The Low-Rank Simplicity Bias in Deep Networks},
  author={Minyoung Huh and Hossein Mobahi and Richard Zhang and Brian Cheung and Pulkit Agrawal and Phillip Isola},
  journal={Transactions on Machine Learning Research},
  issn={2835-8856},
  year={2023},
  url={https://openreview.net/forum?id=bCiNWDmlY2},
}"""


def base_model_id(variant: Variant, metadata: ExportMetadata | None) -> str | None:
    """The hub id of the weights the run started from: the explicit ``base_model``, or, for a
    ``train.py --pretrained`` run of a timm variant, the base's pretrained tag's ``hf_hub_id``
    (``timm/resnet18.a1_in1k``); ``None`` for a run from scratch or an ``--initial-checkpoint``."""
    if metadata is None:
        return None
    if metadata.base_model:
        return metadata.base_model
    args = metadata.training_args or {}
    if not args.get("pretrained") or args.get("initial_checkpoint"):
        return None
    return get_zoo(variant.zoo).pretrained_origin(variant.base, str(args.get("model") or variant.name))


def _front_matter(
    variant: Variant, metadata: ExportMetadata | None, license_id: str | None, base_model: str | None
) -> dict[str, Any]:
    library = export_format(variant.zoo).library_name
    matter: dict[str, Any] = {}
    if library:
        matter["library_name"] = library
    if license_id:
        matter["license"] = license_id
    matter["tags"] = ["image-classification", variant.zoo, "overparam-zoo"]
    matter["pipeline_tag"] = "image-classification"
    if base_model:
        matter["base_model"] = base_model
    dataset = str(((metadata.training_args if metadata else None) or {}).get("dataset") or "")
    for prefix in _HF_DATASET_PREFIXES:
        if dataset.startswith(prefix):
            matter["datasets"] = [dataset[len(prefix) :]]
    return matter


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "(" + ", ".join(_fmt(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    return str(value)


def _labels(names: list[str] | tuple[str, ...] | None) -> str:
    if not names:
        return "class indices only (no label names were recorded)"
    shown = ", ".join(f"`{n}`" for n in names[:12])
    return shown + (f", ... ({len(names)} in `config.json`)" if len(names) > 12 else "")


def _details(
    config: Mapping[str, Any], variant: Variant, params: tuple[int, int], license_id: str | None, base_model: str | None
) -> str:
    cfg = config.get("pretrained_cfg") or {}
    lines = [
        "- **Model type:** image classification",
        f"- **Architecture:** `{variant.base}` ({variant.zoo}), {config.get('num_classes')} classes",
        f"- **Parameters:** {params[1] / 1e6:.2f}M deployed ({params[1]:,}); "
        f"{params[0] / 1e6:.2f}M while training as `{variant.name}` ({params[0]:,})",
    ]
    if "input_size" in cfg:
        size = "x".join(str(s) for s in cfg["input_size"])
        lines.append(
            f"- **Preprocessing:** input {size}, `{cfg.get('interpolation')}` resize, crop_pct {_fmt(cfg.get('crop_pct'))} "
            f"({cfg.get('crop_mode', 'center')}), mean {_fmt(cfg.get('mean'))}, std {_fmt(cfg.get('std'))}"
        )
    lines.append(f"- **Labels:** {_labels(config.get('label_names'))}")
    lines.append(f"- **License:** {license_id or 'not specified (set one with `overparam-zoo export --license`)'}")
    if base_model:
        lines.append(f"- **Started from:** [`{base_model}`](https://huggingface.co/{base_model})")
    return "\n".join(lines)


def _usage(config: Mapping[str, Any], variant: Variant) -> str:
    usage = export_format(variant.zoo).usage(variant.base, config.get("num_classes"), REPO_PLACEHOLDER)
    return usage + _transformers_usage(config)


_IMAGENET_CLASS_COUNTS = (1000, 11221, 11821, 21841, 21842, 21843)
"""Class counts for which transformers, given no label names, falls back to ImageNet's (timm's table)."""


def _transformers_usage(config: Mapping[str, Any]) -> str:
    """Loading with Hugging Face transformers, whose timm wrapper takes any ``config.json`` with a
    ``pretrained_cfg`` (``AutoImageProcessor`` reads the preprocessing from it)."""
    cfg = config.get("pretrained_cfg")
    if not isinstance(cfg, Mapping):
        return ""
    channels = int((cfg.get("input_size") or (3,))[0])
    repo = REPO_PLACEHOLDER
    imports = "from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline\n\n"
    if channels == 1:
        head = "import numpy\nimport torch\nfrom PIL import Image\n" + imports
        head += 'image = Image.open("image.png").convert("L")  # this model takes 1-channel (grayscale) images\n'
        pipe_input = "numpy.asarray(image)[:, :, None]"
        pipe_note = "  # an H x W x 1 array: the pipeline turns PIL images and paths into RGB"
    else:
        head = "import torch\nfrom PIL import Image\n" + imports + 'image = Image.open("image.png").convert("RGB")\n'
        pipe_input, pipe_note = "image", "  # or a path or URL"
    code = (
        f"```python\n{head}"
        f'classifier = pipeline("image-classification", model="{repo}")\n'
        f"print(classifier({pipe_input}, top_k=3)){pipe_note}\n\n"
        f'processor = AutoImageProcessor.from_pretrained("{repo}")  # the preprocessing of config.json\n'
        f'model = AutoModelForImageClassification.from_pretrained("{repo}").eval()\n'
        "with torch.no_grad():\n"
        "    logits = model(**processor(image)).logits\n"
        "print(model.config.id2label[int(logits.argmax(-1))])\n```\n\n"
    )
    notes = [
        "transformers (5.x, with timm installed) loads the folder through its timm wrapper and predicts what "
        "timm does; for a local copy, pass the folder's path instead of the repo id."
    ]
    if channels == 1:
        notes.append(
            "The model takes 1-channel images. `AutoImageProcessor` keeps a grayscale (`L`) PIL image as it is, "
            "but the pipeline converts every PIL image, path or URL to RGB, which this model refuses (3 channels "
            "for 1), so give the pipeline the grayscale pixels as an H x W x 1 `uint8` array, as above; with timm "
            'too, convert images with `.convert("L")` first.'
        )
    elif channels != 3:
        notes.append(
            f"The model takes {channels}-channel inputs; transformers' pipeline converts images to RGB, so prepare "
            "the input tensor yourself and call the model directly."
        )
    if not config.get("label_names"):
        count = config.get("num_classes")
        guess = (
            f" (for {count} classes it falls back to ImageNet's names, which may not be these classes)"
            if count in _IMAGENET_CLASS_COUNTS
            else ""
        )
        notes.append(
            f"No label names were recorded, so transformers calls the classes `LABEL_0`, `LABEL_1`, ...{guess}; "
            "export with `--label-names FILE` to name them."
        )
    return "\n### With Hugging Face transformers\n\n" + code + " ".join(notes) + "\n"


def _provenance_section(config: Mapping[str, Any], variant: Variant, metadata: ExportMetadata | None) -> str:
    prov = config.get(PROVENANCE_KEY) or {}
    options = ", ".join(f"{k}={v}" for k, v in sorted(variant.options.items()) if k != "depth")
    rows = [
        ("variant", f"`{variant.name}`"),
        (
            "recipe",
            f"`{prov.get('recipe', variant.recipe.path.name)}` (sha256 `{str(prov.get('recipe_sha256', ''))[:12]}`)",
        ),
        ("chain depth", f"{variant.depth}" + (f" ({options})" if options else "")),
        (
            "collapse error",
            f"{float(prov.get('max_collapse_error', float('nan'))):.1e} (max relative output difference, op model "
            f"vs this export, float64, probe input {'x'.join(str(s) for s in prov.get('probe_input_size', []))})"
            + (
                f"; **not an exact collapse**: exported with an allowed collapse error of {prov[ALLOWED_KEY]:g}"
                if ALLOWED_KEY in prov
                else ""
            ),
        ),
    ]
    if metadata is not None and metadata.checkpoint:
        ema = (metadata.training_args or {}).get("model_ema")
        which = " (EMA weights)" if ema and metadata.used_ema else " (non-EMA weights)" if ema else ""
        rows.append(("checkpoint", f"`{metadata.checkpoint}`{which}"))
    versions = prov.get("versions") or {}
    if versions:
        rows.append(("versions", ", ".join(f"{k} {v}" for k, v in versions.items())))
    table = "| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)
    return (
        f"Trained as `{variant.name}`: every converted layer of `{variant.base}` was a chain of {variant.depth} "
        "linear layers (same function class, different implicit bias: deeper chains favour low effective rank). "
        "After training each chain was collapsed in closed form into the single layer it stands for.\n\n" + table + "\n"
    )


def _is_set(key: str, args: Mapping[str, Any]) -> bool:
    """Whether a train.py argument was set to something that changes the run."""
    value = args.get(key)
    if value in (None, "", False, []):
        return False
    if key in ("world_size", "grad_accum_steps"):
        return value != 1
    return key != "amp_dtype" or bool(args.get("amp"))


def _training(metadata: ExportMetadata | None) -> str:
    args = (metadata.training_args if metadata else None) or {}
    if not args:
        return "No training arguments were recorded with these weights (not a timm `train.py` checkpoint).\n"
    rows = [(k, args[k]) for k in TRAINING_ARG_KEYS if _is_set(k, args)]
    if not rows:
        return "The recorded training arguments hold none of the usual `train.py` settings.\n"
    return (
        "timm `train.py` arguments that shaped the weights (unset ones omitted):\n\n| argument | value |\n|---|---|\n"
        + "\n".join(f"| `{k}` | `{_fmt(v)}` |" for k, v in rows)
        + "\n"
    )


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def _evaluation(results: TrainResults, metadata: ExportMetadata) -> str:
    rows = [("best epoch" + (" (these weights)" if results.checkpoint == results.best else ""), results.best)]
    if results.checkpoint is not None and results.checkpoint != results.best:
        rows.append(("these weights", results.checkpoint))
    split = (metadata.training_args or {}).get("val_split")
    text = (
        f"From `{results.path.name}`, which timm `train.py` wrote beside the checkpoint ({results.epochs} epochs; "
        f"best by `{results.metric}`"
        + (f"; evaluated on split `{split}`" if split else "")
        + "):\n\n| | epoch | top-1 (%) | top-5 (%) |\n|---|---|---|---|\n"
        + "\n".join(f"| {name} | {r.epoch} | {_percent(r.top1)} | {_percent(r.top5)} |" for name, r in rows)
        + "\n\n"
        "train.py evaluated the over-parameterized model; this export computes the same function up to the "
        "collapse error above.\n"
    )
    args = metadata.training_args or {}
    if args.get("model_ema") and not args.get("model_ema_force_cpu"):
        text += "With `--model-ema`, train.py logs the EMA weights' results" + (
            ".\n" if metadata.used_ema else "; this export holds the non-EMA weights, whose results may differ.\n"
        )
    elif args.get("model_ema") and metadata.used_ema:
        text += "With `--model-ema-force-cpu`, train.py logs the non-EMA model's results; this export holds the EMA "
        text += "weights, whose results may differ.\n"
    return text


def render_model_card(
    config: Mapping[str, Any],
    variant: Variant,
    metadata: ExportMetadata | None,
    *,
    params: tuple[int, int],
) -> str:
    """The ``README.md`` text of an export.

    Args:
        config: the export's ``config.json`` as written.
        variant: the op variant the weights were trained as.
        metadata: the training run (``None`` for an export of a live model without one).
        params: parameter counts (while training, deployed).
    """
    base_model = base_model_id(variant, metadata)
    license_id = metadata.license if metadata is not None else None
    inexact = ALLOWED_KEY in (config.get(PROVENANCE_KEY) or {})
    how = "approximately (see the collapse error under Provenance)" if inexact else "exactly"
    matter = yaml.safe_dump(_front_matter(variant, metadata, license_id, base_model), sort_keys=False)
    sections = [
        f"---\n{matter}---\n",
        f"# {variant.base}, trained over-parameterized as {variant.name}\n",
        f"Weights of the stock `{variant.base}` architecture, trained as the linearly over-parameterized variant "
        f"`{variant.name}` with overparam-zoo and collapsed {how} back to `{variant.base}`. "
        f"The folder is a plain {variant.zoo} checkpoint (`model.safetensors` + `config.json`).\n",
        "## Model details\n\n" + _details(config, variant, params, license_id, base_model) + "\n",
        "## How to use\n\n" + _usage(config, variant),
        "## Provenance\n\n" + _provenance_section(config, variant, metadata),
        "## Training\n\n" + _training(metadata),
    ]
    if metadata is not None and metadata.results is not None:
        sections.append("## Evaluation\n\n" + _evaluation(metadata.results, metadata))
    sections.append(f"## Citation\n\n```bibtex\n{_CITATION}\n```\n")
    return "\n".join(sections)


# ---------------------------------------------------------------------- INT8 section (quantize)
_INT8_START, _INT8_END = "<!-- overparam-zoo:int8 -->", "<!-- /overparam-zoo:int8 -->"


def _int8_section(acc: Mapping[str, Any]) -> str:
    return "\n".join(
        [
            _INT8_START,
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
            _INT8_END,
        ]
    )


def with_int8_section(card: str, record: Mapping[str, Any]) -> str:
    """``card`` with its INT8 section (from ``record``, what ``config.json`` holds under
    ``overparam_zoo.int8``) replaced, or inserted before the citation (else appended)."""
    section = _int8_section(record)
    block = re.compile(re.escape(_INT8_START) + r".*?" + re.escape(_INT8_END), re.DOTALL)
    if block.search(card):
        return block.sub(lambda _m: section, card, count=1)
    cut = card.find("\n## Citation")
    if cut < 0:
        return card.rstrip("\n") + "\n\n" + section + "\n"
    return card[: cut + 1] + section + "\n\n" + card[cut + 1 :]


# ---------------------------------------------------------------------- hub (push)
# the load lines of the card (timm, transformers); their repo id is set to where the folder is pushed
_HUB_LOAD = re.compile(
    r'(timm\.create_model\("hf-hub:)[^"]*(", pretrained=True\))'
    r'|(\.from_pretrained\(")[^"]*("\))'
    r'|(pipeline\("image-classification", model=")[^"]*("\))'
)


def point_card_at(folder: ExportFolder, repo_id: str) -> bool:
    """Point the card's hub load lines at ``repo_id`` (atomic rewrite); ``True`` if it changed."""
    text = folder.read_card()
    updated = _HUB_LOAD.sub(lambda m: repo_id.join(g for g in m.groups() if g is not None), text)
    if updated == text:
        return False
    folder.write_card(updated)
    return True


def check_front_matter(folder: ExportFolder) -> dict[str, Any]:
    """The card's YAML front matter, as the hub reads it (needs ``huggingface_hub``).

    Raises:
        ExportFolderError: for a card without front matter, or whose front matter is not a
            readable YAML mapping.
    """
    from huggingface_hub.repocard import REGEX_YAML_BLOCK  # the block as the hub finds it

    path = folder.card_path
    try:
        found = REGEX_YAML_BLOCK.search(folder.read_card().removeprefix("\ufeff"))
        matter = yaml.safe_load(found.group(2)) if found else None
    except (yaml.YAMLError, OSError, UnicodeDecodeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ExportFolderError(f"{path}: front matter is not readable YAML ({first})") from err
    if not isinstance(matter, dict):
        raise ExportFolderError(f"{path}: no YAML front matter (a block between '---' lines at the top)")
    return matter
