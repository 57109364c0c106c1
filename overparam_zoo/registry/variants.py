"""How a name becomes a model: one door for op variants, timm models and torchvision models.

Variants come from recipes and are registered into timm's and torchvision's registries (through
the adapters in :mod:`overparam_zoo.registry.zoos`), so ``timm.create_model("resnet18_op_d2", **kwargs)``
builds the base ``resnet18`` with the same kwargs (``num_classes``, ``in_chans``,
``drop_path_rate``, ``features_only``, ...), then converts its layers by the recipe.
``pretrained=True`` loads the base's weights the usual timm way and expands them exactly into
the factors. :func:`resolve` is the only place that decides what a name is.
"""

from __future__ import annotations

import fnmatch
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from overparam import convert_model
from overparam.convert import ConversionReport, LayerConversionError
from overparam_zoo.errors import RecipeError, UnknownModelError
from overparam_zoo.registry.hookspecs import Converter
from overparam_zoo.registry.plugins import get_plugin_manager
from overparam_zoo.registry.recipe import Recipe, Variant, is_glob, load_recipe
from overparam_zoo.registry.zoos import ZOOS, Zoo, get_zoo

__all__ = [
    "BASES_ENV",
    "Resolved",
    "resolve",
    "create_model",
    "build_base",
    "get_variant",
    "list_variants",
    "register_recipe",
    "register_all",
    "apply_variant",
    "check_variant",
    "converters",
]

#: comma-separated globs: only these bases get the variants of generic recipes (default ``*``)
BASES_ENV = "OVERPARAM_ZOO_BASES"

_VARIANTS: dict[tuple[str, str], Variant] = {}
_REGISTERED: set[tuple[str, str]] = set()  # variants the zoo itself builds by name


@dataclass(frozen=True)
class Resolved:
    """What a model name is: a variant (``variant`` set) or a stock model of ``zoo``."""

    name: str
    zoo: Zoo
    variant: Variant | None = None


def converters() -> dict[type[nn.Module], Converter]:
    """Layer converters contributed by every plugin (later plugins cannot override earlier)."""
    merged: dict[type[nn.Module], Converter] = {}
    for contributed in reversed(get_plugin_manager().hook.overparam_zoo_converters()):
        for cls, fn in (contributed or {}).items():
            merged.setdefault(cls, fn)
    return merged


def apply_variant(
    model: nn.Module, variant: Variant, *, init: Literal["match", "default", "expand"] = "match"
) -> ConversionReport:
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


def _builder(variant: Variant):
    def convert(model: nn.Module, pretrained: bool) -> None:
        apply_variant(model, variant, init="expand" if pretrained else "match")

    return get_zoo(variant.zoo).variant_builder(variant, convert)


def _bases(recipe: Recipe, zoo: Zoo) -> list[str]:
    """The recipe's bases, globs expanded over the zoo's models and narrowed by
    ``OVERPARAM_ZOO_BASES``; explicit names are checked."""
    names: list[str] = []
    allowed = [p.strip() for p in os.environ.get(BASES_ENV, "*").split(",") if p.strip()]
    everything = None
    for i, base in enumerate(recipe.bases):
        if not is_glob(base):
            if not zoo.is_model(base):
                raise RecipeError(recipe.path, f"bases[{i}]", f"{base!r} is not a {recipe.zoo} model")
            names.append(base)
            continue
        everything = zoo.list_models() if everything is None else everything
        names += [n for n in fnmatch.filter(everything, base) if any(fnmatch.fnmatchcase(n, p) for p in allowed)]
    return list(dict.fromkeys(names))


def register_recipe(recipe: Recipe) -> list[str]:
    """Register every variant of ``recipe``; variants already registered are left alone, so a
    variant registered first (a specific recipe, before a generic one) wins.

    Raises:
        RecipeError: for an unknown base model.
    """
    zoo = get_zoo(recipe.zoo)
    added = []
    for variant in recipe.variants(_bases(recipe, zoo)):
        key = (recipe.zoo, variant.name)
        if key in _VARIANTS:
            continue
        _VARIANTS[key] = variant  # also when the zoo refuses it: create_model() still builds it
        if zoo.register(variant, _builder(variant)):
            _REGISTERED.add(key)
            added.append(variant.name)
    return added


def _recipe_files(entry: str | Path) -> list[Path]:
    entry = Path(entry)
    return sorted([*entry.glob("*.yaml"), *entry.glob("*.yml")]) if entry.is_dir() else [entry]


def register_all() -> list[str]:
    """Register the recipes every plugin contributes: recipes that name their bases first,
    then generic ones (globs), so a recipe's entry for a base overrides the generic variant of
    the same name. A broken recipe gives a warning naming it; the others are registered."""
    recipes: list[Recipe] = []
    for paths in reversed(get_plugin_manager().hook.overparam_zoo_recipe_paths()):
        for entry in paths or []:
            for file in _recipe_files(entry):
                try:
                    recipes.append(load_recipe(file))
                except RecipeError as err:
                    warnings.warn(f"overparam_zoo: recipe not registered: {err}", stacklevel=2)
    added = []
    for recipe in sorted(recipes, key=lambda r: r.is_generic):
        try:
            added += register_recipe(recipe)
        except RecipeError as err:
            warnings.warn(f"overparam_zoo: recipe not registered: {err}", stacklevel=2)
    return added


def list_variants(pattern: str | None = None, zoo: str | None = None, base: str | None = None) -> list[str]:
    """Registered variant names, optionally filtered by a glob on the name, a zoo and a glob
    on the base model's name."""
    names = {
        name
        for (z, name), variant in _VARIANTS.items()
        if (zoo is None or z == zoo) and (base is None or fnmatch.fnmatchcase(variant.base, base))
    }
    return sorted(n for n in names if pattern is None or fnmatch.fnmatchcase(n, pattern))


def get_variant(name: str, zoo: str | None = None) -> Variant:
    """The variant registered under ``name`` (timm first, unless ``zoo`` says otherwise).

    Raises:
        UnknownModelError: naming close variants of the same base, if any.
    """
    for z in [zoo] if zoo else list(ZOOS):
        if (z, name) in _VARIANTS:
            return _VARIANTS[(z, name)]
    close = [n for n in list_variants() if n.split("_op_")[0] == name.split("_op_")[0]][:5]
    hint = f"; variants of that base: {', '.join(close)}" if close else "; see `overparam-zoo list`"
    raise UnknownModelError(f"unknown op variant {name!r}{hint}")


def resolve(name: str, zoo: str | None = None) -> Resolved:
    """What ``name`` is: a registered variant first, then a timm model, then a torchvision one.

    Raises:
        UnknownModelError: for a name no zoo knows.
    """
    zoos = [zoo] if zoo else list(ZOOS)
    for z in zoos:
        if (z, name) in _VARIANTS:
            return Resolved(name, get_zoo(z), _VARIANTS[(z, name)])
    for z in zoos:
        if get_zoo(z).is_model(name):
            return Resolved(name, get_zoo(z))
    where = f"not a {zoo} model" if zoo else "neither a timm nor a torchvision model"
    if "_op_" in name:
        try:
            get_variant(name, zoo)
        except UnknownModelError as err:  # names variants of the same base
            raise UnknownModelError(f"unknown model {name!r}: {where}; {err}") from None
    raise UnknownModelError(f"unknown model {name!r}: {where}; see `overparam-zoo list`")


def create_model(name: str, zoo: str | None = None, **kwargs: Any) -> nn.Module:
    """Build a variant or a stock model by name, exactly as its zoo would.

    A registered timm variant goes through ``timm.create_model(name, **kwargs)`` itself (so
    ``checkpoint_path``, ``pretrained_cfg_overlay``, ... behave as in timm); a torchvision one
    through its ``get_model`` arguments.

    Raises:
        UnknownModelError: for a name no zoo knows.
    """
    found = resolve(name, zoo)
    if found.variant is not None and (found.zoo.name, name) not in _REGISTERED:
        return _builder(found.variant)(**kwargs)
    return found.zoo.build(name, **kwargs)


def build_base(variant: Variant, **kwargs: Any) -> nn.Module:
    """The unmodified base architecture of ``variant``, built with ``kwargs``."""
    return get_zoo(variant.zoo).build(variant.base, **kwargs)


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
