"""One adapter per model zoo: the few things ``overparam_zoo`` asks of timm and torchvision.

Everything about *building* models that differs by zoo lives here, behind :class:`Zoo`: whether a
name is a model, building one, registering an op variant (so ``timm.create_model`` and
``torchvision.models.get_model``/``get_model_weights`` find it), the input size to probe a model
with, the class count and input channels a state dict implies. The registry decides which zoo a
name belongs to; what an *export* of each zoo looks like is :mod:`overparam_zoo.checkpoints.formats`.
This is the only module that imports torchvision (an import-linter contract).

Private library API is looked up, never assumed: torchvision registers builders only through
``torchvision.models._api`` (no public equivalent), so a torchvision without it gets variants
through :func:`overparam_zoo.create_model` only, with a warning; timm's input-size reader is
public in recent timm (``timm.models.get_model_input_config``) and the model's ``pretrained_cfg``
stands in for it before.
"""

from __future__ import annotations

import functools
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Optional, Protocol, cast

import torch
from torch import nn

from overparam_zoo.registry import op_models

if TYPE_CHECKING:
    from overparam_zoo.registry.recipe import Variant

__all__ = ["ZOOS", "Zoo", "TimmZoo", "TorchvisionZoo", "Builder", "get_zoo"]

ZOOS: tuple[str, ...] = ("timm", "torchvision")
"""The zoos, in the order a name both know is resolved (timm first)."""

#: ``builder(**kwargs) -> nn.Module`` for one variant, as the zoo's registry calls it
Builder = Callable[..., nn.Module]


class BuiltModel(Protocol):
    """The plain attributes a model built here carries (``nn.Module``'s typing admits tensors and
    modules only): timm's ``pretrained_cfg`` (``default_cfg`` its old name) and, on an op model,
    ``overparam_zoo``: ``{"variant", "zoo", "model_args"}``, what export needs to collapse it."""

    pretrained_cfg: dict[str, Any]
    default_cfg: dict[str, Any]
    num_classes: int
    overparam_zoo: dict[str, Any]


class Zoo(ABC):
    """What the registry and the exports need from a model zoo."""

    name: str
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
    def variant_builder(self, variant: Variant, convert: Callable[[nn.Module, bool], None]) -> Builder:
        """A builder for ``variant``: the base built with the zoo's arguments, then
        ``convert(model, pretrained)`` turns it into the op model in place."""

    @abstractmethod
    def register(self, variant: Variant, builder: Builder) -> bool:
        """Register ``builder`` under ``variant.name``; ``False`` (with a warning) when the zoo
        refuses it, in which case :func:`overparam_zoo.create_model` still builds it."""

    @abstractmethod
    def input_size(self, model: nn.Module) -> tuple[int, ...]:
        """The input size (without batch) the model is meant for."""

    @abstractmethod
    def shape_args(self, name: str, state: dict[str, torch.Tensor], variant: Variant | None = None) -> dict[str, Any]:
        """Build arguments (``num_classes``, ``in_chans``) that make model ``name`` (the op
        ``variant``, if it is one) fit ``state``."""

    def pretrained_origin(self, base: str, trained_name: str) -> str | None:
        """The hub id of the pretrained weights a run named ``trained_name`` started from."""
        return None

    def _taken(self, variant: Variant) -> bool:
        """Whether ``variant.name`` is already a model of this zoo; then a warning says the variant
        is not registered (the zoo's own model keeps the name)."""
        if not self.is_model(variant.name):
            return False
        warnings.warn(
            f"overparam_zoo: {variant.name} is already a {self.name} model; the variant from "
            f"{variant.recipe.path} is not registered",
            stacklevel=5,
        )
        return True


class TimmZoo(Zoo):
    """timm: variants are registered into timm's registry under the module ``op_models``."""

    name = "timm"
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

    def variant_builder(self, variant: Variant, convert: Callable[[nn.Module, bool], None]) -> Builder:
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
            built = cast(BuiltModel, model)
            built.pretrained_cfg = built.default_cfg = cfg
            built.overparam_zoo = {"variant": variant.name, "zoo": self.name, "model_args": kwargs}
            return model

        build.__name__ = build.__qualname__ = variant.name
        build.__module__ = op_models.__name__
        build.__doc__ = f"{variant.base} over-parameterized at depth {variant.depth} ({variant.recipe.path.name})."
        return build

    def register(self, variant: Variant, builder: Builder) -> bool:
        from timm.models import register_model

        if self._taken(variant):
            return False
        if not variant.recipe.is_generic:
            # a registry cfg costs ~0.5 ms (timm deep-copies the base's): worth it for the named
            # variants, not for thousands of generic ones, whose models carry it once built
            op_models.default_cfgs[variant.name] = self._variant_cfg(variant)
        register_model(builder)
        return True

    def _variant_cfg(self, variant: Variant) -> dict[str, Any]:
        """The base's pretrained cfg, with ``first_conv``/``classifier`` naming factors."""
        from timm.models import get_pretrained_cfg

        base_cfg = get_pretrained_cfg(variant.base, allow_unregistered=False)
        cfg = base_cfg.to_dict() if base_cfg is not None else {}
        cfg.pop("architecture", None)
        cfg.pop("tag", None)
        return _map_cfg_paths(cfg, variant, None)

    def input_size(self, model: nn.Module) -> tuple[int, ...]:
        import timm.models

        # public in recent timm: the size the model is built for now (img_size, in_chans);
        # before it, the pretrained cfg the model was built with
        current = getattr(timm.models, "get_model_input_config", None)
        if current is not None:
            try:
                return tuple(current(model)["input_size"])
            except (KeyError, AttributeError):
                pass
        return pretrained_input_size(model)

    def shape_args(self, name: str, state: dict[str, torch.Tensor], variant: Variant | None = None) -> dict[str, Any]:
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

    def pretrained_origin(self, base: str, trained_name: str) -> str | None:
        from timm.models import get_pretrained_cfg, split_model_name_tag

        _, tag = split_model_name_tag(trained_name)
        cfg = get_pretrained_cfg(f"{base}.{tag}" if tag else base)
        return getattr(cfg, "hf_hub_id", None) or None


class TorchvisionZoo(Zoo):
    """torchvision: stock models through their public builders (``torchvision.models.<name>``,
    ``get_model_builder``); variants registered into ``torchvision.models`` where it lets us, with
    the base's weights enum, so ``get_model_weights`` and ``get_model(..., weights=...)`` work."""

    name = "torchvision"

    @staticmethod
    def _public_builder(name: str) -> Builder | None:
        import torchvision.models

        builder = getattr(torchvision.models, name, None)
        module = getattr(builder, "__module__", "") or ""
        is_builder = (
            callable(builder) and not isinstance(builder, type) and not module.rsplit(".", 1)[-1].startswith("_")
        )
        return builder if is_builder and module.startswith("torchvision.models.") else None

    @staticmethod
    def _registered_builder(name: str) -> Builder | None:
        import torchvision.models

        try:  # list_models: exact names (get_model_builder lower-cases them)
            known = name in torchvision.models.list_models()
            return torchvision.models.get_model_builder(name) if known else None
        except (NameError, AttributeError):  # a registry laid out otherwise
            return None

    @staticmethod
    def _registrar() -> Callable[[str], Callable[[Builder], Builder]] | None:
        """torchvision's ``register_model`` decorator, if its registry is as expected: it is
        private (``torchvision.models._api``, torchvision >= 0.14; there is no public one)."""
        try:
            from torchvision.models import _api

            if isinstance(_api.BUILTIN_MODELS, dict):  # the table register_model writes
                return _api.register_model
        except (ImportError, AttributeError):
            pass
        return None

    @staticmethod
    @functools.cache  # a base has several variants
    def _weights_enum(base: str) -> type | None:
        """The base's ``WeightsEnum`` class, ``None`` for a builder without one."""
        import torchvision.models

        try:
            return torchvision.models.get_model_weights(base)
        except (ValueError, KeyError, NameError, AttributeError):
            return None

    def is_model(self, name: str) -> bool:
        return self._public_builder(name) is not None or self._registered_builder(name) is not None

    def list_models(self) -> list[str]:
        import torchvision.models

        return [n for n in torchvision.models.list_models(module=torchvision.models) if self._public_builder(n)]

    def build(self, name: str, **kwargs: Any) -> nn.Module:
        builder = self._public_builder(name) or self._registered_builder(name)
        if builder is None:
            raise KeyError(name)
        return builder(**kwargs)

    def variant_builder(self, variant: Variant, convert: Callable[[nn.Module, bool], None]) -> Builder:
        def build(*, weights: Any = None, progress: bool = True, **kwargs: Any) -> nn.Module:
            model = self.build(variant.base, weights=weights, progress=progress, **kwargs)
            convert(model, weights is not None)
            cast(BuiltModel, model).overparam_zoo = {"variant": variant.name, "zoo": self.name, "model_args": kwargs}
            return model

        build.__name__ = build.__qualname__ = variant.name
        build.__module__ = op_models.__name__
        build.__doc__ = f"torchvision {variant.base} over-parameterized at depth {variant.depth}."
        enum = self._weights_enum(variant.base)
        if enum is not None:  # what get_model_weights reads: the annotation of `weights`
            build.__annotations__ = {**build.__annotations__, "weights": Optional[enum]}  # noqa: UP045
        return build

    def register(self, variant: Variant, builder: Builder) -> bool:
        register = self._registrar()
        if register is None:
            warnings.warn(
                f"overparam_zoo: torchvision's model registry API is not as expected; {variant.name} is "
                f"available through overparam_zoo.create_model(..., zoo='torchvision') only",
                stacklevel=4,
            )
            return False
        if self._taken(variant):
            return False
        register(variant.name)(builder)
        return True

    def input_size(self, model: nn.Module) -> tuple[int, ...]:
        first = next(m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
        return (first.in_channels, 224, 224) if isinstance(first, nn.Conv2d) else (first.in_features,)

    def shape_args(self, name: str, state: dict[str, torch.Tensor], variant: Variant | None = None) -> dict[str, Any]:
        linears = [k for k in state if k.endswith(".weight") and state[k].dim() == 2]
        return {"num_classes": state[linears[-1]].shape[0]} if linears else {}


def pretrained_input_size(model: nn.Module) -> tuple[int, ...]:
    """The input size a timm model's ``pretrained_cfg`` gives (what timm before
    ``get_model_input_config`` offers), with the channels of the first conv it names (the cfg
    keeps the pretrained weights' channels when the model is built with other ``in_chans``)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = tuple(cfg["input_size"])
    try:
        return (model.get_submodule(cfg["first_conv"]).in_channels, *size[1:])
    except (KeyError, TypeError, AttributeError):
        return size


def _map_cfg_paths(cfg: dict[str, Any], variant: Variant, model: nn.Module | None) -> dict[str, Any]:
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


_ADAPTERS: dict[str, Zoo] = {zoo.name: zoo for zoo in (TimmZoo(), TorchvisionZoo())}


def get_zoo(name: str) -> Zoo:
    """The adapter for ``name``, one of :data:`ZOOS`."""
    return _ADAPTERS[name]
