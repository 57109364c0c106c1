"""How a variant name becomes a model: recipes registered into timm's and torchvision's
registries, and the build that converts a base model by its recipe.

``timm.create_model("resnet18_op_d2", **kwargs)`` builds the base ``resnet18`` with the same
kwargs (``num_classes``, ``in_chans``, ``drop_path_rate``, ``features_only``, ...), then
converts its layers by the recipe. ``pretrained=True`` loads the base's weights the usual
timm way (hub, or ``pretrained_cfg_overlay=dict(file=...)``) and expands them exactly into the
factors.
"""

from __future__ import annotations

import fnmatch
import logging
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from overparam import OverparamChain, convert_model
from overparam.convert import ConversionReport, LayerConversionError

from . import op_models
from .errors import UnknownModelError
from .plugins import get_plugin_manager
from .recipe import Recipe, RecipeError, Variant, load_recipe

__all__ = [
    "register_all",
    "register_recipe",
    "load_recipes",
    "list_variants",
    "get_variant",
    "create_model",
    "apply_variant",
    "check_variant",
    "converters",
    "build_base",
    "torchvision_builder",
]

logger = logging.getLogger("overparam_zoo")

_VARIANTS: dict[tuple[str, str], Variant] = {}


def torchvision_builder(name: str) -> Any | None:
    """torchvision's public builder function for a model name (``torchvision.models.resnet18``),
    or ``None``. Used instead of torchvision's registry, whose internals may change."""
    import torchvision.models

    builder = getattr(torchvision.models, name, None)
    module = getattr(builder, "__module__", "") or ""
    is_builder = callable(builder) and not isinstance(builder, type) and not module.rsplit(".", 1)[-1].startswith("_")
    return builder if is_builder and module.startswith("torchvision.models.") else None


def build_base(variant: Variant, **kwargs: Any) -> nn.Module:
    """The unmodified base architecture of ``variant``, built with ``kwargs``."""
    if variant.zoo == "timm":
        import timm

        return timm.create_model(variant.base, **kwargs)
    return torchvision_builder(variant.base)(**kwargs)


def converters() -> dict[type[nn.Module], Any]:
    """Layer converters contributed by every plugin (later plugins cannot override earlier)."""
    merged: dict[type[nn.Module], Any] = {}
    for contributed in reversed(get_plugin_manager().hook.overparam_zoo_converters()):
        for cls, fn in (contributed or {}).items():
            merged.setdefault(cls, fn)
    return merged


def apply_variant(model: nn.Module, variant: Variant, *, init: str = "match") -> ConversionReport:
    """Convert ``model`` (an instance of ``variant.base``) in place by the variant's recipe.

    Raises:
        RecipeError: when a rule asks for chain options a layer cannot take exactly (e.g. a
            kernel split that does not compose to the layer's kernel), naming the rule.
    """

    def options_for(path: str, module: nn.Module) -> dict[str, Any] | None:
        return variant.layer_options(path, type(module).__name__)

    try:
        return convert_model(model, options_for=options_for, converters=converters(), init=init, strict=True)
    except LayerConversionError as err:
        module = model.get_submodule(err.path)
        rule = variant.recipe.rule_for(err.path, type(module).__name__)
        key = f"layers[{rule.index}]" if rule is not None else "variants"
        raise RecipeError(variant.recipe.path, key, f"cannot apply to {variant.base} layer {err}") from err


def _map_cfg_paths(cfg: dict[str, Any], variant: Variant, model: nn.Module | None) -> dict[str, Any]:
    """``first_conv``/``classifier`` name layers whose ``.weight`` is in the op model's state
    dict: the first factor (its input is the image) and the last factor (its output is the logits)."""
    cfg = dict(cfg, architecture=variant.name)

    def factor_path(path: str, first: bool, guess_type: str) -> str:
        if model is not None:
            try:
                layer = model.get_submodule(path)
            except AttributeError:
                return path
            if isinstance(layer, OverparamChain):
                return f"{path}.factors.{0 if first else layer.depth - 1}"
            return path
        options = variant.layer_options(path, guess_type)
        if options is None:
            return path
        depth = len(options["kernel_sizes"]) if "kernel_sizes" in options else options["depth"]
        return f"{path}.factors.{0 if first else depth - 1}"

    for key, first, guess in (("first_conv", True, "Conv2d"), ("classifier", False, "Linear")):
        value = cfg.get(key)
        if not value:
            continue
        if isinstance(value, str):
            cfg[key] = factor_path(value, first, guess)
        else:
            cfg[key] = type(value)(factor_path(v, first, guess) for v in value)
    return cfg


def _timm_builder(variant: Variant):
    def build(pretrained: bool = False, pretrained_cfg: Any = None, pretrained_cfg_overlay: Any = None, **kwargs: Any):
        import timm

        base_name = variant.base
        if isinstance(pretrained_cfg, str):  # a pretrained tag, as in "resnet18_op_d2.a1_in1k"
            base_name, pretrained_cfg = f"{variant.base}.{pretrained_cfg}", None
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        model = timm.create_model(
            base_name,
            pretrained=pretrained,
            pretrained_cfg=pretrained_cfg,
            pretrained_cfg_overlay=pretrained_cfg_overlay,
            **kwargs,
        )
        apply_variant(model, variant, init="expand" if pretrained else "match")
        cfg = _map_cfg_paths(dict(getattr(model, "pretrained_cfg", {}) or {}), variant, model)
        model.pretrained_cfg = model.default_cfg = cfg
        model.overparam_zoo = {"variant": variant.name, "zoo": "timm", "model_args": kwargs}
        return model

    build.__name__ = build.__qualname__ = variant.name
    build.__module__ = op_models.__name__
    build.__doc__ = f"{variant.base} over-parameterized at depth {variant.depth} ({variant.recipe.path.name})."
    return build


def _torchvision_builder(variant: Variant):
    def build(*, weights: Any = None, progress: bool = True, **kwargs: Any) -> nn.Module:
        model = torchvision_builder(variant.base)(weights=weights, progress=progress, **kwargs)
        apply_variant(model, variant, init="expand" if weights is not None else "match")
        model.overparam_zoo = {"variant": variant.name, "zoo": "torchvision", "model_args": kwargs}
        return model

    build.__name__ = build.__qualname__ = variant.name
    build.__module__ = "overparam_zoo.torchvision_models"
    build.__doc__ = f"torchvision {variant.base} over-parameterized at depth {variant.depth}."
    return build


def _register_timm(variant: Variant) -> bool:
    import timm
    from timm.models import get_pretrained_cfg, register_model

    if timm.is_model(variant.name):
        warnings.warn(
            f"overparam_zoo: {variant.name} is already a timm model; the variant from "
            f"{variant.recipe.path} is not registered",
            stacklevel=3,
        )
        return False
    base_cfg = get_pretrained_cfg(variant.base, allow_unregistered=False)
    cfg = base_cfg.to_dict() if base_cfg is not None else {}
    cfg.pop("architecture", None)
    cfg.pop("tag", None)
    op_models.default_cfgs[variant.name] = _map_cfg_paths(cfg, variant, None)
    register_model(_timm_builder(variant))
    return True


def _register_torchvision(variant: Variant) -> bool:
    try:
        from torchvision.models import _api

        registry = _api.BUILTIN_MODELS
        register = _api.register_model
    except (ImportError, AttributeError) as err:
        warnings.warn(
            f"overparam_zoo: torchvision's model registry API is not as expected ({err}); "
            f"{variant.name} is available through overparam_zoo.create_model(..., zoo='torchvision') only",
            stacklevel=3,
        )
        return False
    if variant.name in registry:
        warnings.warn(
            f"overparam_zoo: {variant.name} is already a torchvision model; the variant from "
            f"{variant.recipe.path} is not registered",
            stacklevel=3,
        )
        return False
    register(variant.name)(_torchvision_builder(variant))
    return True


def _check_bases(recipe: Recipe) -> None:
    if recipe.zoo == "timm":
        import timm

        known = timm.is_model
    else:

        def known(name: str) -> bool:
            return torchvision_builder(name) is not None

    for i, base in enumerate(recipe.bases):
        if not known(base):
            raise RecipeError(recipe.path, f"bases[{i}]", f"{base!r} is not a {recipe.zoo} model")


def register_recipe(recipe: Recipe) -> list[str]:
    """Register every variant of ``recipe``; variants already registered are left alone.

    Raises:
        RecipeError: for an unknown base model.
    """
    _check_bases(recipe)
    added = []
    for variant in recipe.variants():
        key = (recipe.zoo, variant.name)
        if key in _VARIANTS:
            continue
        ok = _register_timm(variant) if recipe.zoo == "timm" else _register_torchvision(variant)
        _VARIANTS[key] = variant  # also when the zoo refused it: create_model() still builds it
        if ok:
            added.append(variant.name)
    return added


def _recipe_files(entry: str | Path) -> list[Path]:
    entry = Path(entry)
    return sorted([*entry.glob("*.yaml"), *entry.glob("*.yml")]) if entry.is_dir() else [entry]


def load_recipes(paths: Iterable[str | Path]) -> list[Recipe]:
    """Recipes from files and folders (``*.yaml``, ``*.yml`` inside, sorted)."""
    return [load_recipe(f) for entry in paths for f in _recipe_files(entry)]


def register_all() -> list[str]:
    """Register the recipes every plugin contributes. A broken recipe gives a warning naming
    it; the others are registered."""
    added = []
    for paths in reversed(get_plugin_manager().hook.overparam_zoo_recipe_paths()):
        for entry in paths or []:
            for file in _recipe_files(entry):
                try:
                    added += register_recipe(load_recipe(file))
                except RecipeError as err:
                    warnings.warn(f"overparam_zoo: recipe not registered: {err}", stacklevel=2)
    return added


def list_variants(pattern: str | None = None, zoo: str | None = None) -> list[str]:
    """Registered variant names, optionally filtered by a glob and a zoo."""
    names = sorted({name for (z, name) in _VARIANTS if zoo is None or z == zoo})
    return [n for n in names if pattern is None or fnmatch.fnmatchcase(n, pattern)]


def get_variant(name: str, zoo: str | None = None) -> Variant:
    """The variant registered under ``name`` (timm first, unless ``zoo`` says otherwise)."""
    for z in [zoo] if zoo else ["timm", "torchvision"]:
        if (z, name) in _VARIANTS:
            return _VARIANTS[(z, name)]
    close = [n for n in list_variants() if n.split("_op_")[0] == name.split("_op_")[0]][:5]
    hint = f"; variants of that base: {', '.join(close)}" if close else "; see `overparam-zoo list`"
    raise UnknownModelError(f"unknown op variant {name!r}{hint}")


def create_model(name: str, zoo: str | None = None, **kwargs: Any) -> nn.Module:
    """Build a registered variant from either zoo (timm's ``create_model`` arguments for timm
    variants, torchvision's ``get_model`` arguments for torchvision ones)."""
    variant = get_variant(name, zoo)
    if variant.zoo == "timm":
        return _timm_builder(variant)(**kwargs)
    return _torchvision_builder(variant)(**kwargs)


def check_variant(variant: Variant) -> None:
    """Build the variant's base on the meta device and check that every rule matches a layer.

    Raises:
        RecipeError: naming the rule that matches nothing in the base model.
    """
    with torch.device("meta"):
        model = build_base(variant)
    layers = [(path, type(m).__name__) for path, m in model.named_modules() if path]
    for rule in variant.recipe.rules:
        if not any(rule.matches(path, type_name) for path, type_name in layers):
            raise RecipeError(
                variant.recipe.path,
                f"layers[{rule.index}]",
                f"matches no layer of {variant.base} (match={list(rule.match)}, "
                f"types={list(rule.types) if rule.types else 'any'})",
            )
