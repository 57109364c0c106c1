"""The export folder: the one module that knows its file names and keys, reads and validates it,
builds and loads its model, gives its evaluation transform and records provenance into it.

An export folder is a standard checkpoint of a stock architecture::

    model.safetensors   the collapsed weights: exactly the base's keys and shapes
    config.json         what rebuilds the model (its zoo's format, :mod:`.formats`), with
                        overparam-zoo's provenance under "overparam_zoo"
    README.md           the model card (its text: :mod:`overparam_zoo.sharing.model_card`)
    model_int8.pt2      optional: the INT8 program ``overparam-zoo quantize`` writes

Invariants: every command (export, push, quantize, compare, demo, verify) reads a folder
through :class:`ExportFolder`, so a bad folder is one :class:`~overparam_zoo.errors.ExportFolderError`
with the same one-line message whichever command meets it; which zoo a folder belongs to has one
answer (:attr:`ExportFolder.zoo`); ``config.json`` is written here only, whole, atomically.
"""

from __future__ import annotations

import importlib.metadata
import json
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from overparam.state import describe_mismatch
from overparam_zoo.errors import ExportFolderError, UnknownModelError, first_line
from overparam_zoo.files import atomic_write
from overparam_zoo.registry.variants import create_model

if TYPE_CHECKING:
    from overparam_zoo.registry.recipe import Variant

__all__ = [
    "WEIGHTS_NAME",
    "CONFIG_NAME",
    "CARD_NAME",
    "INT8_NAME",
    "PROVENANCE_KEY",
    "INT8_KEY",
    "ERROR_KEY",
    "ALLOWED_KEY",
    "ExportFolder",
    "package_versions",
    "provenance",
    "read_config",
]

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
CARD_NAME = "README.md"
INT8_NAME = "model_int8.pt2"
PROVENANCE_KEY = "overparam_zoo"
"""Where overparam-zoo's provenance sits in ``config.json`` (top level, where timm ignores it)."""
INT8_KEY = "int8"
"""Where the measured INT8 accuracy sits: ``config["overparam_zoo"]["int8"]``."""
ERROR_KEY = "max_collapse_error"
"""Where the measured float64 collapse error sits: ``config["overparam_zoo"]["max_collapse_error"]``."""
ALLOWED_KEY = "allowed_collapse_error"
"""Present only when the export was told to accept an inexact collapse (``allow_collapse_error``):
the error it accepted, ``config["overparam_zoo"]["allowed_collapse_error"]``."""

_REQUIRED = (WEIGHTS_NAME, CONFIG_NAME)
_WRITTEN = (WEIGHTS_NAME, CONFIG_NAME, CARD_NAME)
_NOT_OURS = "expected the config.json that overparam-zoo export writes"


def package_versions(*names: str) -> dict[str, str]:
    """The installed versions of ``names`` (distribution names), those installed only."""
    found = {}
    for name in names:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


def provenance(
    variant: Variant, error: float, shape: tuple[int, ...], *, allowed: float | None = None
) -> dict[str, Any]:
    """The provenance an export records under :data:`PROVENANCE_KEY`: the variant and recipe
    the weights were trained as, the versions that wrote them, the measured collapse error and,
    for an export told to accept an inexact collapse, the error it was allowed."""
    return {
        "variant": variant.name,
        "zoo": variant.zoo,
        "base": variant.base,
        "recipe": variant.recipe.path.name,
        "recipe_sha256": variant.recipe.sha256,
        "versions": package_versions("overparam-zoo", "torch", "timm", "torchvision", "safetensors"),
        ERROR_KEY: error,
        "probe_input_size": list(shape),
        **({ALLOWED_KEY: allowed} if allowed is not None else {}),
    }


def read_config(path: Path) -> dict[str, Any]:
    """A ``config.json`` parsed: a JSON object, or an :class:`ExportFolderError` naming the file."""
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ExportFolderError(f"{path}: not readable JSON ({first_line(err)})") from err
    if not isinstance(config, dict):
        raise ExportFolderError(f"{path}: expected a JSON object")
    return config


def _write_json(path: Path, config: Mapping[str, Any], end: str = "") -> None:
    text = json.dumps(config, indent=2) + end
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


@dataclass(frozen=True)
class ExportFolder:
    """An export folder, its ``config.json`` read and checked (:meth:`open`).

    Attributes:
        path: the folder.
        config: the parsed ``config.json``; ``architecture`` (a string) and ``num_classes``
            (an int) are checked, the rest is checked where it is used.
    """

    path: Path
    config: dict[str, Any]

    # ------------------------------------------------------------------ reading
    @classmethod
    def open(cls, path: str | Path, *, card: bool = False) -> ExportFolder:
        """Read an export folder's ``config.json``.

        Args:
            path: the folder ``overparam-zoo export`` wrote.
            card: require the ``README.md`` model card too (publishing does).

        Raises:
            ExportFolderError: for a path that is not a folder, a missing file, a ``config.json``
                that is not a JSON object or lacks ``architecture`` or ``num_classes``.
        """
        path = Path(path)
        if not path.is_dir():
            raise ExportFolderError(f"{path} is not a folder; expected the output folder of overparam-zoo export")
        required = (*_REQUIRED, CARD_NAME) if card else _REQUIRED
        missing = [name for name in required if not (path / name).is_file()]
        if missing:  # the same message whichever files a command needs
            raise ExportFolderError(
                f"{path} lacks {', '.join(missing)}; expected {', '.join(_WRITTEN)} as overparam-zoo export writes them"
            )
        config = read_config(path / CONFIG_NAME)
        folder = cls(path, config)
        folder._require("architecture", str)
        folder._require("num_classes", int)
        return folder

    @staticmethod
    def names_beside(checkpoint: str | Path) -> list[str]:
        """The model names the ``config.json`` beside a checkpoint file gives, most specific first
        (the variant it was trained as, then its architecture); none without one.

        Raises:
            ExportFolderError: for a ``config.json`` there that is not a JSON object.
        """
        path = Path(checkpoint).parent / CONFIG_NAME
        if not path.is_file():
            return []
        config = read_config(path)
        trained = config.get(PROVENANCE_KEY)
        names = [trained.get("variant") if isinstance(trained, dict) else None, config.get("architecture")]
        return [n for n in names if isinstance(n, str) and n]

    def _require(self, key: str, kind: type | tuple[type, ...], where: Mapping[str, Any] | None = None) -> Any:
        value = (self.config if where is None else where).get(key)
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):  # JSON true is no number
            names = " or ".join(k.__name__ for k in kinds)
            raise ExportFolderError(f"{self.config_path}: '{key}' is missing or not a {names}; {_NOT_OURS}")
        return value

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_NAME

    @property
    def weights_path(self) -> Path:
        return self.path / WEIGHTS_NAME

    @property
    def card_path(self) -> Path:
        return self.path / CARD_NAME

    @property
    def architecture(self) -> str:
        """The stock architecture the weights load into (the base, never the op variant)."""
        return str(self.config["architecture"])

    @property
    def num_classes(self) -> int:
        return int(self.config["num_classes"])

    @property
    def model_args(self) -> dict[str, Any]:
        """Build arguments besides ``num_classes`` (timm's ``model_args``)."""
        args = self.config.get("model_args") or {}
        return dict(args) if isinstance(args, dict) else {}

    @property
    def zoo(self) -> str:
        """Which zoo builds :attr:`architecture`: the top-level ``zoo`` a torchvision export writes
        for its loaders, else the one provenance records, else timm (whose configs name none)."""
        trained = self.config.get(PROVENANCE_KEY)
        recorded = trained.get("zoo") if isinstance(trained, dict) else None
        return str(self.config.get("zoo") or recorded or "timm")

    @property
    def provenance(self) -> dict[str, Any]:
        """What overparam-zoo recorded (variant, recipe, versions, collapse error, INT8).

        Raises:
            ExportFolderError: for a ``config.json`` without it (not written by overparam-zoo).
        """
        return dict(self._require(PROVENANCE_KEY, dict))

    @property
    def collapse_error(self) -> float:
        """The float64 collapse error the export measured (relative, op model vs these weights).

        Raises:
            ExportFolderError: for a ``config.json`` that records none, or not a number.
        """
        return float(self._require(ERROR_KEY, (int, float), self.provenance))

    @property
    def allowed_collapse_error(self) -> float | None:
        """The collapse error the export was told to accept (``allow_collapse_error``), or ``None``
        for an export held to the exact bound.

        Raises:
            ExportFolderError: for a recorded allowance that is not a number.
        """
        if ALLOWED_KEY not in self.provenance:
            return None
        return float(self._require(ALLOWED_KEY, (int, float), self.provenance))

    @property
    def pretrained_cfg(self) -> dict[str, Any]:
        """timm's description of the weights: preprocessing, input size, classes.

        Raises:
            ExportFolderError: for an export that records no preprocessing (torchvision's).
        """
        if "pretrained_cfg" not in self.config and self.zoo != "timm":
            raise ExportFolderError(
                f"{self.config_path}: a {self.zoo} export records no preprocessing (pretrained_cfg); "
                "expected a timm export, whose config.json says how its training images were preprocessed"
            )
        return dict(self._require("pretrained_cfg", dict))

    def read_weights(self) -> dict[str, torch.Tensor]:
        """``model.safetensors``'s tensors.

        Raises:
            ExportFolderError: for a file safetensors cannot read.
        """
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(self.weights_path))
        except (OSError, SafetensorError) as err:
            raise ExportFolderError(
                f"{self.weights_path}: not a readable safetensors file ({first_line(err)})"
            ) from err

    def read_card(self) -> str:
        """The ``README.md`` model card's text ("" when there is none)."""
        return self.card_path.read_text(encoding="utf-8") if self.card_path.is_file() else ""

    # ------------------------------------------------------------------ models
    def build(self, *, device: str | torch.device | None = None) -> nn.Module:
        """The architecture ``config.json`` names, built by its zoo with its arguments (no weights).

        Args:
            device: where to build it; ``"meta"`` for shapes only (no memory, no init).

        Raises:
            ExportFolderError: for an architecture its zoo does not know, or arguments that do
                not build it.
        """
        arch, zoo = self.architecture, self.zoo
        kwargs = {**self.model_args, "num_classes": self.num_classes}
        try:
            with torch.device(device) if device is not None else nullcontext():
                return create_model(arch, zoo=zoo, **kwargs)
        except UnknownModelError as err:
            raise ExportFolderError(f"{self.config_path} names {arch!r}, which is not a {zoo} model") from err
        except (TypeError, ValueError, RuntimeError, AssertionError, KeyError) as err:  # arguments that do not build it
            raise ExportFolderError(f"{self.config_path} does not build {arch}: {first_line(err)}") from err

    def load_model(
        self, state: Mapping[str, torch.Tensor] | None = None, *, device: str | torch.device | None = None
    ) -> nn.Module:
        """The stock model with the folder's weights loaded strictly, in eval mode.

        Args:
            state: the weights, if already read (:meth:`read_weights`).
            device: where to build it; on ``"meta"`` the weights are assigned, not copied,
                which checks that they load at no cost.

        Raises:
            ExportFolderError: for weights that cannot be read or do not fit the architecture.
        """
        state = self.read_weights() if state is None else state
        model = self.build(device=device)
        mismatch = describe_mismatch(model.state_dict(), state)
        if mismatch:
            raise ExportFolderError(
                f"{self.weights_path} does not load into {self.architecture}(num_classes={self.num_classes}): {mismatch}"
            )
        model.load_state_dict(state, strict=True, assign=torch.device(device or "cpu").type == "meta")
        return model.eval()

    def transform(self) -> Callable[[Any], torch.Tensor]:
        """The evaluation transform a consumer builds from the export's ``pretrained_cfg``
        (timm's ``resolve_data_config``, then ``create_transform``).

        Raises:
            ExportFolderError: for an export that records no preprocessing.
        """
        from timm.data import create_transform, resolve_data_config

        data_config = resolve_data_config(pretrained_cfg=self.pretrained_cfg)
        return create_transform(**data_config, is_training=False)

    # ------------------------------------------------------------------ writing
    @staticmethod
    def write(folder: Path, state: Mapping[str, torch.Tensor], config: Mapping[str, Any], card: str) -> None:
        """Write an export's weights, ``config.json`` and model card into ``folder``, each once
        (the export's temporary folder, which the export renames into place whole)."""
        from safetensors.torch import save_file

        save_file(dict(state), str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
        (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2), encoding="utf-8")
        (folder / CARD_NAME).write_text(card, encoding="utf-8")

    def record(self, key: str, value: Any) -> dict[str, Any]:
        """Record ``value`` under ``config["overparam_zoo"][key]`` (atomically); returns the new config."""
        config = dict(self.config)
        trained = config.get(PROVENANCE_KEY)
        config[PROVENANCE_KEY] = {**(trained if isinstance(trained, dict) else {}), key: value}
        _write_json(self.config_path, config, end="\n")
        self.config.clear()
        self.config.update(config)
        return config

    def write_card(self, text: str) -> None:
        """Replace the model card (atomically); its text comes from :mod:`overparam_zoo.sharing.model_card`."""
        atomic_write(self.card_path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
