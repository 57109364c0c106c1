"""One adapter per model zoo: the few things ``overparam_zoo`` asks of timm and torchvision.

Everything zoo-specific lives here, behind :class:`Zoo`: whether a name is a model, building
one, registering an op variant (so ``timm.create_model``/``torchvision.models.get_model`` find
it), the input size to probe a model with, the class count and input channels a state dict
implies, and the ``config.json`` that describes a model. The registry decides which zoo a
name belongs to; the modules that then need zoo-specific behaviour (export, verify, the model
card, loading, compare) ask the :class:`Zoo` it names, and only this module imports torchvision
(an import-linter contract).
"""

from __future__ import annotations

import json
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from overparam_zoo.names import op_models

__all__ = ["Zoo", "TimmZoo", "TorchvisionZoo", "ZOOS", "get_zoo"]

#: ``builder(**kwargs) -> nn.Module`` for one variant, as the zoo's registry calls it
Builder = Callable[..., nn.Module]

#: build arguments a timm ``config.json`` keeps at its top level only, never in ``model_args``
_LOADER_ARGS = ("num_classes",)


class Zoo(ABC):
    """What the registry and the exports need from a model zoo."""

    name: str
    #: the Hugging Face ``library_name`` of the zoo's checkpoints, if the hub knows it
    library_name: str | None = None
    #: the build argument that sets a model's input channels (``None``: the zoo's models take
    #: the channels they were designed for, e.g. torchvision's RGB; see :meth:`input_size`)
    channels_arg: str | None = None

    @abstractmethod
    def is_model(self, name: str) -> bool:
        """Whether ``name`` builds a model of this zoo (registered variants included)."""

    @abstractmethod
    def list_models(self) -> list[str]:
        """Every stock model name this zoo builds (classification models for torchvision)."""

    @abstractmethod
    def build(self, name: str, **kwargs: Any) -> nn.Module:
        """The model ``name``, built the zoo's own way (``timm.create_model``, ``get_model``)."""

    @abstractmethod
    def variant_builder(self, variant: Any, convert: Callable[[nn.Module, bool], None]) -> Builder:
        """A builder for ``variant``: the base built with the zoo's arguments, then
        ``convert(model, pretrained)`` turns it into the op model in place."""

    @abstractmethod
    def register(self, variant: Any, builder: Builder) -> bool:
        """Register ``builder`` under ``variant.name``; ``False`` (with a warning) when the zoo
        refuses it, in which case :func:`overparam_zoo.create_model` still builds it."""

    @abstractmethod
    def input_size(self, model: nn.Module) -> tuple[int, ...]:
        """The input size (without batch) the model is meant for."""

    @abstractmethod
    def shape_args(self, name: str, state: dict[str, torch.Tensor], variant: Any = None) -> dict[str, Any]:
        """Build arguments (``num_classes``, ``in_chans``) that make model ``name`` (the op
        ``variant``, if it is one) fit ``state``."""

    @abstractmethod
    def write_config(self, model: nn.Module, architecture: str, path: Path, extra: dict[str, Any]) -> dict[str, Any]:
        """Write the ``config.json`` that lets the zoo rebuild ``model`` as ``architecture``,
        with ``extra`` merged at the top level; returns what was written."""

    def pretrained_origin(self, base: str, trained_name: str) -> str | None:
        """The hub id of the pretrained weights a run named ``trained_name`` started from."""
        return None

    @abstractmethod
    def card_usage(self, base: str, num_classes: int | None, repo: str) -> str:
        """The model card's "how to load" section for an export of ``base``."""


class TimmZoo(Zoo):
    """timm: variants are registered into timm's registry under the module ``op_models``."""

    name = "timm"
    library_name = "timm"
    channels_arg = "in_chans"

    def is_model(self, name: str) -> bool:
        import timm

        return timm.is_model(name)

    def list_models(self) -> list[str]:
        import timm

        return [n for n in timm.list_models() if n not in op_models.__all__]  # our variants are not bases

    def build(self, name: str, **kwargs: Any) -> nn.Module:
        import timm

        return timm.create_model(name, **kwargs)

    def variant_builder(self, variant: Any, convert: Callable[[nn.Module, bool], None]) -> Builder:
        def build(
            pretrained: bool = False, pretrained_cfg: Any = None, pretrained_cfg_overlay: Any = None, **kwargs: Any
        ) -> nn.Module:
            base_name = variant.base
            if isinstance(pretrained_cfg, str):  # a pretrained tag, as in "resnet18_op_d2.a1_in1k"
                base_name, pretrained_cfg = f"{variant.base}.{pretrained_cfg}", None
            kwargs = {k: v for k, v in kwargs.items() if v is not None}
            model = self.build(
                base_name,
                pretrained=pretrained,
                pretrained_cfg=pretrained_cfg,
                pretrained_cfg_overlay=pretrained_cfg_overlay,
                **kwargs,
            )
            convert(model, pretrained)
            cfg = _map_cfg_paths(dict(getattr(model, "pretrained_cfg", {}) or {}), variant, model)
            model.pretrained_cfg = model.default_cfg = cfg
            model.overparam_zoo = {"variant": variant.name, "zoo": self.name, "model_args": kwargs}
            return model

        build.__name__ = build.__qualname__ = variant.name
        build.__module__ = op_models.__name__
        build.__doc__ = f"{variant.base} over-parameterized at depth {variant.depth} ({variant.recipe.path.name})."
        return build

    def register(self, variant: Any, builder: Builder) -> bool:
        import timm
        from timm.models import register_model

        if timm.is_model(variant.name):
            warnings.warn(
                f"overparam_zoo: {variant.name} is already a timm model; the variant from "
                f"{variant.recipe.path} is not registered",
                stacklevel=4,
            )
            return False
        if not variant.recipe.is_generic:
            # a registry cfg costs ~0.5 ms (timm deep-copies the base's): worth it for the named
            # variants, not for thousands of generic ones, whose models carry it once built
            op_models.default_cfgs[variant.name] = self._variant_cfg(variant)
        register_model(builder)
        return True

    def _variant_cfg(self, variant: Any) -> dict[str, Any]:
        """The base's pretrained cfg, with ``first_conv``/``classifier`` naming factors."""
        from timm.models import get_pretrained_cfg

        base_cfg = get_pretrained_cfg(variant.base, allow_unregistered=False)
        cfg = base_cfg.to_dict() if base_cfg is not None else {}
        cfg.pop("architecture", None)
        cfg.pop("tag", None)
        return _map_cfg_paths(cfg, variant, None)

    def input_size(self, model: nn.Module) -> tuple[int, ...]:
        try:
            from timm.models._hub import get_model_input_config

            return tuple(get_model_input_config(model)["input_size"])
        except (ImportError, KeyError, AttributeError):  # timm < 1.0.31: the cfg's size, the first conv's channels
            size = tuple(model.pretrained_cfg["input_size"])
            try:
                return (model.get_submodule(model.pretrained_cfg["first_conv"]).in_channels, *size[1:])
            except (KeyError, TypeError, AttributeError):
                return size

    def shape_args(self, name: str, state: dict[str, torch.Tensor], variant: Any = None) -> dict[str, Any]:
        from timm.models import get_pretrained_cfg

        if variant is not None:
            cfg = self._variant_cfg(variant)
        else:
            found = get_pretrained_cfg(name)
            cfg = found.to_dict() if found is not None else {}
        args: dict[str, Any] = {}
        classifier = cfg.get("classifier")
        if isinstance(classifier, str) and f"{classifier}.weight" in state:
            args["num_classes"] = state[f"{classifier}.weight"].shape[0]
        first = cfg.get("first_conv")
        if isinstance(first, str) and f"{first}.weight" in state:
            args["in_chans"] = state[f"{first}.weight"].shape[1]
        return args

    def write_config(self, model: nn.Module, architecture: str, path: Path, extra: dict[str, Any]) -> dict[str, Any]:
        from timm.models import _hub

        if not hasattr(_hub, "get_model_args"):  # timm < 1.0.31 records no build arguments: keep the channels
            extra = {**extra, "model_args": {"in_chans": self.input_size(model)[0], **extra.get("model_args", {})}}
        _hub.save_config_for_hf(model, path, model_config=extra)  # a Path: timm < 1.0.31 calls path.open()
        config = json.loads(path.read_text())
        # loaders pass these themselves: transformers builds ``timm.create_model(architecture,
        # num_classes=num_labels, **model_args)`` (a repeated key is a TypeError), timm reads the top level
        for key in _LOADER_ARGS:
            config.get("model_args", {}).pop(key, None)
        if config.get("model_args") == {}:
            del config["model_args"]
        path.write_text(json.dumps(config, indent=2))
        return config

    def pretrained_origin(self, base: str, trained_name: str) -> str | None:
        from timm.models import get_pretrained_cfg, split_model_name_tag

        _, tag = split_model_name_tag(trained_name)
        cfg = get_pretrained_cfg(f"{base}.{tag}" if tag else base)
        return getattr(cfg, "hf_hub_id", None) or None

    def card_usage(self, base: str, num_classes: int | None, repo: str) -> str:
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


class TorchvisionZoo(Zoo):
    """torchvision: stock models through their public builder functions (the registry's
    internals may change); variants through ``torchvision.models`` registration where it exists."""

    name = "torchvision"

    @staticmethod
    def _public_builder(name: str) -> Builder | None:
        import torchvision.models

        builder = getattr(torchvision.models, name, None)
        module = getattr(builder, "__module__", "") or ""
        is_builder = callable(builder) and not isinstance(builder, type) and not module.rsplit(".", 1)[-1].startswith("_")
        return builder if is_builder and module.startswith("torchvision.models.") else None

    @staticmethod
    def _registry() -> tuple[dict[str, Any], Callable[..., Any]] | None:
        try:
            from torchvision.models import _api

            return _api.BUILTIN_MODELS, _api.register_model
        except (ImportError, AttributeError):
            return None

    def is_model(self, name: str) -> bool:
        registry = self._registry()
        return self._public_builder(name) is not None or (registry is not None and name in registry[0])

    def list_models(self) -> list[str]:
        import torchvision.models

        return [n for n in torchvision.models.list_models(module=torchvision.models) if self._public_builder(n)]

    def build(self, name: str, **kwargs: Any) -> nn.Module:
        builder = self._public_builder(name)
        if builder is None:
            registry = self._registry()
            builder = registry[0][name] if registry is not None else None
        if builder is None:
            raise KeyError(name)
        return builder(**kwargs)

    def variant_builder(self, variant: Any, convert: Callable[[nn.Module, bool], None]) -> Builder:
        def build(*, weights: Any = None, progress: bool = True, **kwargs: Any) -> nn.Module:
            model = self.build(variant.base, weights=weights, progress=progress, **kwargs)
            convert(model, weights is not None)
            model.overparam_zoo = {"variant": variant.name, "zoo": self.name, "model_args": kwargs}
            return model

        build.__name__ = build.__qualname__ = variant.name
        build.__module__ = "overparam_zoo.torchvision_models"
        build.__doc__ = f"torchvision {variant.base} over-parameterized at depth {variant.depth}."
        return build

    def register(self, variant: Any, builder: Builder) -> bool:
        registry = self._registry()
        if registry is None:
            warnings.warn(
                f"overparam_zoo: torchvision's model registry API is not as expected; {variant.name} is "
                f"available through overparam_zoo.create_model(..., zoo='torchvision') only",
                stacklevel=4,
            )
            return False
        models, register = registry
        if variant.name in models:
            warnings.warn(
                f"overparam_zoo: {variant.name} is already a torchvision model; the variant from "
                f"{variant.recipe.path} is not registered",
                stacklevel=4,
            )
            return False
        register(variant.name)(builder)
        return True

    def input_size(self, model: nn.Module) -> tuple[int, ...]:
        first = next(m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
        return (first.in_channels, 224, 224) if isinstance(first, nn.Conv2d) else (first.in_features,)

    def shape_args(self, name: str, state: dict[str, torch.Tensor], variant: Any = None) -> dict[str, Any]:
        linears = [k for k in state if k.endswith(".weight") and state[k].dim() == 2]
        return {"num_classes": state[linears[-1]].shape[0]} if linears else {}

    def write_config(self, model: nn.Module, architecture: str, path: Path, extra: dict[str, Any]) -> dict[str, Any]:
        classifier = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
        config = {"architecture": architecture, "zoo": self.name, "num_classes": classifier.out_features, **extra}
        path.write_text(json.dumps(config, indent=2))
        return config

    def card_usage(self, base: str, num_classes: int | None, repo: str) -> str:
        return (
            "```python\nimport torchvision\nfrom safetensors.torch import load_file\n\n"
            f"model = torchvision.models.{base}(num_classes={num_classes})\n"
            'model.load_state_dict(load_file("model.safetensors"), strict=True)\nmodel.eval()\n```\n'
        )


def _map_cfg_paths(cfg: dict[str, Any], variant: Any, model: nn.Module | None) -> dict[str, Any]:
    """``first_conv``/``classifier`` name layers whose ``.weight`` is in the op model's state
    dict: the first factor (its input is the image) and the last factor (its output is the logits)."""
    from overparam import ChainOptions, OverparamChain

    cfg = dict(cfg, architecture=variant.name)

    def factor_path(path: str, first: bool, guess_type: str) -> str:
        if model is not None:
            try:
                layer = model.get_submodule(path)
            except AttributeError:
                return path
            return f"{path}.factors.{0 if first else layer.depth - 1}" if isinstance(layer, OverparamChain) else path
        options = variant.layer_options(path, guess_type)
        if options is None:
            return path
        return f"{path}.factors.{0 if first else ChainOptions.of(options).factor_count - 1}"

    for key, first, guess in (("first_conv", True, "Conv2d"), ("classifier", False, "Linear")):
        value = cfg.get(key)
        if not value:
            continue
        if isinstance(value, str):
            cfg[key] = factor_path(value, first, guess)
        else:
            cfg[key] = type(value)(factor_path(v, first, guess) for v in value)
    return cfg


ZOOS: dict[str, Zoo] = {zoo.name: zoo for zoo in (TimmZoo(), TorchvisionZoo())}


def get_zoo(name: str) -> Zoo:
    """The adapter for ``name`` (``"timm"`` or ``"torchvision"``)."""
    return ZOOS[name]
