"""What an export folder looks like in each zoo: its ``config.json`` and how its card says to load it.

One :class:`ExportFormat` per zoo, beside :mod:`.folder` (which writes what they render). A timm
export's ``config.json`` is what timm's own ``save_config_for_hf`` writes, so ``local-dir:``,
``hf-hub:`` and transformers load it; a torchvision export's names the architecture, the zoo and
the class count, which is all ``torchvision.models.<base>(num_classes=N)`` needs. Neither imports
torchvision: a format describes files, the registry builds models.
"""

from __future__ import annotations

import json
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

from torch import nn

from overparam_zoo.checkpoints.folder import CONFIG_NAME
from overparam_zoo.errors import ExportError

__all__ = ["ExportFormat", "TimmFormat", "TorchvisionFormat", "export_format"]

#: build arguments a timm ``config.json`` keeps at its top level only, never in ``model_args``
_LOADER_ARGS = ("num_classes",)


class ExportFormat(ABC):
    """How an export of one zoo's model is described and loaded."""

    #: the zoo (:data:`overparam_zoo.registry.zoos.ZOOS`)
    zoo: str
    #: the Hugging Face ``library_name`` of the zoo's checkpoints, if the hub knows it
    library_name: str | None = None

    @abstractmethod
    def config(self, model: nn.Module, architecture: str, extra: Mapping[str, Any]) -> dict[str, Any]:
        """The ``config.json`` that rebuilds ``model`` (the stock model holding the exported
        weights) as ``architecture``, with ``extra`` at the top level."""

    @abstractmethod
    def usage(self, base: str, num_classes: int | None, repo: str) -> str:
        """The model card's "how to load" section (Markdown) for an export of ``base``."""


class TimmFormat(ExportFormat):
    zoo = "timm"
    library_name = "timm"

    def config(self, model: nn.Module, architecture: str, extra: Mapping[str, Any]) -> dict[str, Any]:
        # private, in every timm the project supports; the only writer of timm's config
        from timm.models import _hub

        if not hasattr(_hub, "save_config_for_hf"):
            raise ExportError("this timm has no config writer (timm.models._hub.save_config_for_hf)")
        if not hasattr(_hub, "get_model_args"):  # timm < 1.0.31 records no build arguments: keep the channels
            from overparam_zoo.registry.zoos import pretrained_input_size

            channels = pretrained_input_size(model)[0]
            extra = {**extra, "model_args": {"in_chans": channels, **extra.get("model_args", {})}}

        # timm's writer only writes a file: it renders into a scratch file, read back here, so
        # the export folder's config.json is written once, whole, by the folder
        with tempfile.TemporaryDirectory(prefix="overparam-zoo-config-") as scratch:
            path = Path(scratch) / CONFIG_NAME
            # a Path: timm < 1.0.31 calls path.open() (its annotation says str)
            _hub.save_config_for_hf(model, cast(Any, path), model_config=dict(extra))
            config: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        # loaders pass these themselves: transformers builds ``timm.create_model(architecture,
        # num_classes=num_labels, **model_args)`` (a repeated key is a TypeError), timm reads the top level
        for key in _LOADER_ARGS:
            config.get("model_args", {}).pop(key, None)
        if config.get("model_args") == {}:
            del config["model_args"]
        return config

    def usage(self, base: str, num_classes: int | None, repo: str) -> str:
        return (
            "```python\nimport timm\nimport torch\n\n"
            f'model = timm.create_model("hf-hub:{repo}", pretrained=True).eval()\n'
            "# or, from a local copy of this folder:\n"
            '# model = timm.create_model("local-dir:path/to/folder", pretrained=True).eval()\n\n'
            "data_config = timm.data.resolve_data_config(model=model)\n"
            "transform = timm.data.create_transform(**data_config, is_training=False)\n"
            "with torch.no_grad():\n"
            "    probabilities = model(transform(image).unsqueeze(0)).softmax(-1)  # image: a PIL image\n"
            "```\n\n"
            f"`model.safetensors` holds exactly the keys and shapes of timm's `{base}` with {num_classes} classes, "
            f"so timm's scripts take it as it is: `validate.py DATA --model {base} --num-classes {num_classes} "
            "--checkpoint model.safetensors`. No overparam-zoo install is needed.\n"
        )


class TorchvisionFormat(ExportFormat):
    zoo = "torchvision"

    def config(self, model: nn.Module, architecture: str, extra: Mapping[str, Any]) -> dict[str, Any]:
        classifier = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
        return {"architecture": architecture, "zoo": self.zoo, "num_classes": classifier.out_features, **extra}

    def usage(self, base: str, num_classes: int | None, repo: str) -> str:
        return (
            "```python\nimport torchvision\nfrom safetensors.torch import load_file\n\n"
            f"model = torchvision.models.{base}(num_classes={num_classes})\n"
            'model.load_state_dict(load_file("model.safetensors"), strict=True)\nmodel.eval()\n```\n'
        )


_FORMATS: dict[str, ExportFormat] = {f.zoo: f for f in (TimmFormat(), TorchvisionFormat())}


def export_format(zoo: str) -> ExportFormat:
    """The format of ``zoo``'s exports (``"timm"`` or ``"torchvision"``)."""
    return _FORMATS[zoo]
