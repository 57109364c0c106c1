"""YAML recipes: which base models, which variants, and per-layer chain options.

A recipe never changes the stock architecture: layers keep their kernel, stride, padding,
dilation and groups, so collapsed weights always fit the base model. Every validation error
names the file, the key path and what was expected.

Example::

    zoo: timm
    bases: [resnet18, resnet34]
    variants:
      - {depth: [2, 4]}
      - {depth: [2, 4], tag: bn, batch_norm: true}
    layers:                       # first matching rule wins; unmatched layers stay stock
      - {match: "fc", depth: 2}
      - {match: "*", types: [Conv2d, Linear]}
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from overparam.options import CHAIN_OPTION_NAMES, ChainOptionError, ChainOptions
from overparam_zoo.errors import RecipeError
from overparam_zoo.registry.zoos import ZOOS

__all__ = ["Recipe", "LayerRule", "Variant", "load_recipe", "is_glob"]

_TOP_KEYS = ("zoo", "bases", "variants", "layers", "description")
_VARIANT_KEYS = tuple(k for k in CHAIN_OPTION_NAMES if k != "kernel_sizes") + ("tag",)
_RULE_KEYS = ("match", "types", "skip") + CHAIN_OPTION_NAMES
_TAG = re.compile(r"^[a-z0-9]+$")


@dataclass(frozen=True)
class LayerRule:
    """One entry of ``layers``: which layers it matches and the chain options it sets."""

    index: int
    match: tuple[str, ...]
    types: tuple[str, ...] | None
    skip: bool
    options: Mapping[str, Any]

    def matches(self, path: str, type_name: str) -> bool:
        if self.types is not None and type_name not in self.types:
            return False
        return any(fnmatch.fnmatchcase(path, pattern) for pattern in self.match)


@dataclass(frozen=True)
class Variant:
    """One registered model: ``<base>_op_d<depth>[_<tag>]`` built by applying ``recipe``."""

    name: str
    base: str
    depth: int
    tag: str | None
    options: Mapping[str, Any]
    recipe: Recipe

    @property
    def zoo(self) -> str:
        return self.recipe.zoo

    def layer_options(self, path: str, type_name: str) -> dict[str, Any] | None:
        """Chain options for one layer (variant options, then the first matching rule's), or
        ``None`` to leave it stock. ``type_name`` is the layer's class name."""
        rule = self.recipe.rule_for(path, type_name)
        if rule is None or rule.skip:
            return None
        return {**self.options, **rule.options}


@dataclass(frozen=True)
class Recipe:
    """A validated recipe file."""

    path: Path
    zoo: str
    bases: tuple[str, ...]
    variant_specs: tuple[Mapping[str, Any], ...]
    rules: tuple[LayerRule, ...]
    sha256: str
    description: str = ""
    _variants: list[Variant] = field(default_factory=list, compare=False, repr=False)

    def rule_for(self, path: str, type_name: str) -> LayerRule | None:
        return next((r for r in self.rules if r.matches(path, type_name)), None)

    @functools.cached_property
    def is_generic(self) -> bool:
        """Whether ``bases`` holds globs (``"*"``): the recipe's variants then yield to any
        other recipe's variant of the same name."""
        return any(is_glob(b) for b in self.bases)

    def variants(self, bases: Iterable[str] | None = None) -> list[Variant]:
        """Every (base, depth, tag) combination this recipe defines, for ``bases`` (default:
        the recipe's own, which must then be model names, not globs)."""
        if bases is None and self._variants:
            return list(self._variants)
        made = []
        for base in self.bases if bases is None else bases:
            for spec in self.variant_specs:
                depths = spec["depth"] if isinstance(spec["depth"], list) else [spec["depth"]]
                tag = spec.get("tag")
                options = {k: v for k, v in spec.items() if k not in ("depth", "tag")}
                for depth in depths:
                    name = f"{base}_op_d{depth}" + (f"_{tag}" if tag else "")
                    made.append(Variant(name, base, depth, tag, {**options, "depth": depth}, self))
        if bases is None:
            self._variants.extend(made)
        return made


def is_glob(pattern: str) -> bool:
    """Whether a ``bases`` entry is a glob over the zoo's model names."""
    return any(c in pattern for c in "*?[")


def _check_keys(path: Path, where: str, data: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
    for key in data:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise RecipeError(
                path,
                f"{where}.{key}" if where else str(key),
                f"unknown key{hint}; expected one of {', '.join(allowed)}",
            )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_chain_options(path: Path, where: str, data: Mapping[str, Any]) -> None:
    """Chain options are validated by :class:`overparam.ChainOptions`; errors get the file and key."""
    if "skip" in data and not isinstance(data["skip"], bool):
        raise RecipeError(path, f"{where}.skip", f"got {data['skip']!r}; expected true or false")
    try:
        ChainOptions.of({k: v for k, v in data.items() if k in CHAIN_OPTION_NAMES})
    except ChainOptionError as err:
        raise RecipeError(path, f"{where}.{err.option}", f"got {err.value!r}; expected {err.expected}") from None


def _string_list(path: Path, key: str, value: Any) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(i, str) and i for i in items):
        raise RecipeError(path, key, f"got {value!r}; expected a non-empty string or list of strings")
    return tuple(items)


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe file (``yaml.safe_load``).

    Base-model names are checked against the zoo when the recipe is registered
    (:func:`overparam_zoo.registry.variants.register_recipe`), and layer rules when a variant is built.

    Raises:
        RecipeError: naming the file, the key path and what was expected.
    """
    path = Path(path)
    try:
        raw_text = path.read_bytes()
    except OSError as err:
        raise RecipeError(path, "<file>", f"cannot read: {err.strerror or err}") from err
    try:
        data = yaml.safe_load(raw_text)
    except yaml.YAMLError as err:
        raise RecipeError(path, "<file>", f"not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise RecipeError(
            path, "<top>", f"got {type(data).__name__}; expected a mapping with keys {', '.join(_TOP_KEYS)}"
        )
    _check_keys(path, "", data, _TOP_KEYS)
    for required in ("zoo", "bases", "variants", "layers"):
        if required not in data:
            raise RecipeError(path, required, "missing; it is required")
    if data["zoo"] not in ZOOS:
        raise RecipeError(path, "zoo", f"got {data['zoo']!r}; expected one of {', '.join(ZOOS)}")
    bases = _string_list(path, "bases", data["bases"])

    specs = data["variants"]
    if not isinstance(specs, list) or not specs:
        raise RecipeError(path, "variants", f"got {specs!r}; expected a non-empty list of mappings")
    for i, spec in enumerate(specs):
        where = f"variants[{i}]"
        if not isinstance(spec, dict):
            raise RecipeError(path, where, f"got {spec!r}; expected a mapping")
        _check_keys(path, where, spec, _VARIANT_KEYS)
        if "depth" not in spec:
            raise RecipeError(path, f"{where}.depth", "missing; expected an int >= 1 or a list of them")
        depths = spec["depth"] if isinstance(spec["depth"], list) else [spec["depth"]]
        if not depths or not all(_is_int(d) and d >= 1 for d in depths):
            raise RecipeError(path, f"{where}.depth", f"got {spec['depth']!r}; expected an int >= 1 or a list of them")
        if "tag" in spec and not (isinstance(spec["tag"], str) and _TAG.match(spec["tag"])):
            raise RecipeError(path, f"{where}.tag", f"got {spec['tag']!r}; expected lowercase letters and digits")
        _check_chain_options(path, where, {k: v for k, v in spec.items() if k != "depth"})

    rules_data = data["layers"]
    if not isinstance(rules_data, list) or not rules_data:
        raise RecipeError(path, "layers", f"got {rules_data!r}; expected a non-empty list of rules")
    rules = []
    for i, rule in enumerate(rules_data):
        where = f"layers[{i}]"
        if not isinstance(rule, dict):
            raise RecipeError(path, where, f"got {rule!r}; expected a mapping")
        _check_keys(path, where, rule, _RULE_KEYS)
        _check_chain_options(path, where, rule)
        rules.append(
            LayerRule(
                index=i,
                match=_string_list(path, f"{where}.match", rule.get("match", "*")),
                types=_string_list(path, f"{where}.types", rule["types"]) if "types" in rule else None,
                skip=bool(rule.get("skip", False)),
                options={k: v for k, v in rule.items() if k in CHAIN_OPTION_NAMES},
            )
        )
    return Recipe(
        path=path,
        zoo=data["zoo"],
        bases=bases,
        variant_specs=tuple(specs),
        rules=tuple(rules),
        sha256=hashlib.sha256(raw_text).hexdigest(),
        description=str(data.get("description", "")),
    )
