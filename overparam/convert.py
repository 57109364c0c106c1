"""Model conversion: stock layers to chains (``overparameterize``) and back (``collapse``)."""

from __future__ import annotations

import fnmatch
import logging
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import torch
from torch import Tensor, nn
from torch.nn.modules.conv import _ConvNd

from .bias_fold import find_following_batch_norms, needs_bias_fold
from .chain import OverparamChain
from .expand import expand_into_
from .init import init_chain_
from .layers import OverparamConv1d, OverparamConv2d, OverparamConv3d, OverparamLinear
from .options import ChainOptions
from .plan import SkipError

__all__ = [
    "STOCK_LAYERS",
    "LayerConversionError",
    "ConversionReport",
    "from_stock",
    "convert_model",
    "overparameterize",
    "collapse",
    "collapsed_state_dict",
]

logger = logging.getLogger("overparam")

STOCK_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CHAIN_FOR: dict[type[nn.Module], Callable[..., OverparamChain]] = {
    nn.Conv1d: OverparamConv1d,
    nn.Conv2d: OverparamConv2d,
    nn.Conv3d: OverparamConv3d,
}

Init = Literal["match", "default", "expand"]

# reasons for layers the caller chose to leave stock (not warned about)
NOT_INCLUDED = "not matched by include"
EXCLUDED = "matched by exclude"
LEFT_BY_RULES = "left stock by the layer rules"
Converter = Callable[..., nn.Module]


class LayerConversionError(ValueError):
    """Options that cannot be realised exactly for one layer (raised with ``strict=True``)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path


@dataclass
class ConversionReport:
    """What :func:`convert_model` did, by module path."""

    model: nn.Module
    converted: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    expansion_errors: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        lines = [f"converted {len(self.converted)} layers, left {len(self.skipped)} stock"]
        lines += [f"  skipped {path}: {why}" for path, why in self.skipped.items()]
        lines += [f"  note {path}: {what}" for path, what in self.notes.items()]
        return "\n".join(lines)


def from_stock(
    layer: nn.Module,
    options: ChainOptions | Mapping[str, Any] | None = None,
    *,
    init: Init = "match",
    chain_class: type[OverparamChain] | None = None,
    **option_kwargs: Any,
) -> OverparamChain:
    """A chain with exactly the architecture of a stock ``nn.Linear``/``nn.ConvNd``.

    Kernel, stride, padding, dilation, groups, padding mode, bias, device and dtype are the
    layer's, so the collapsed weights always fit the stock module again.

    Args:
        layer: the stock layer (its exact class must be one of :data:`STOCK_LAYERS`).
        options: :class:`~overparam.options.ChainOptions` (or a mapping of them); a
            ``kernel_sizes`` list must compose to the layer's kernel and sets the depth
            (default ``[k, 1, ...]``).
        init: ``"match"`` draws factors whose effective weight has the std of the layer's
            current weight (which carries the architecture's own init) and copies its bias;
            ``"default"`` uses the stock default init scale. Either is multiplied by the
            ``init_scale`` option.
        chain_class: the chain class to build, for converters of stock subclasses whose
            forward or ``fuse()`` differ (default: the matching ``Overparam*`` class).
        **option_kwargs: chain options by name (``depth=2``, ...), applied over ``options``.

    Raises:
        TypeError: for a layer that is not a stock Linear/ConvNd (or a subclass, with
            ``chain_class``).
        ValueError: for options that cannot be realised exactly for this layer.
    """
    kind = _stock_base(layer) if chain_class is not None else type(layer)
    if kind is None or kind not in STOCK_LAYERS:
        raise TypeError(f"from_stock expects one of {[c.__name__ for c in STOCK_LAYERS]}, got {type(layer).__name__}")
    opts = ChainOptions.of(options, **option_kwargs)
    weight, bias = cast(Tensor, layer.weight), cast("Tensor | None", layer.bias)
    factory: dict[str, Any] = {"device": weight.device, "dtype": weight.dtype}
    chain: OverparamChain
    if kind is nn.Linear:
        linear = cast(nn.Linear, layer)
        opts = ChainOptions.of(opts, depth=opts.factor_count, kernel_sizes=None)
        build_linear: Callable[..., OverparamChain] = chain_class or OverparamLinear
        chain = build_linear(
            linear.in_features,
            linear.out_features,
            **{k: v for k, v in opts.as_kwargs().items() if k != "kernel_sizes"},
            bias=bias is not None,
            **factory,
        )
    else:
        conv = cast(_ConvNd, layer)
        ones = (1,) * len(conv.kernel_size)
        split = opts.kernel_sizes
        if split is None:  # the layer's kernel on the first factor
            split = [tuple(conv.kernel_size)] + [ones] * (opts.factor_count - 1)
        elif not isinstance(split, Sequence):
            split = [split] + [ones] * (opts.factor_count - 1)
        build_conv: Callable[..., OverparamChain] = chain_class or _CHAIN_FOR[kind]
        chain = build_conv(
            conv.in_channels,
            conv.out_channels,
            **{**opts.as_kwargs(), "depth": None, "kernel_sizes": split},
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            groups=conv.groups,
            padding_mode=conv.padding_mode,
            bias=bias is not None,
            **factory,
        )
        if tuple(chain.plan.kernel_size) != tuple(conv.kernel_size):
            raise ValueError(
                f"kernel_sizes={list(split)} composes to kernel {chain.plan.kernel_size}, but the "
                f"stock layer has kernel {tuple(conv.kernel_size)}; the split must compose to it "
                f"(sum(k) - depth + 1 per dim)"
            )
    if init == "match":
        with torch.no_grad():
            std = float(weight.detach().double().std(unbiased=False)) if weight.numel() > 1 else 0.0
        init_chain_(chain, weight_std=opts.init_scale * std, bias=None if bias is None else bias.detach())
    elif init != "default":
        raise ValueError(f"init must be 'match' or 'default', got {init!r}")
    return chain.train(layer.training)


def _matches(path: str, patterns: Iterable[str] | None) -> bool:
    return patterns is not None and any(fnmatch.fnmatchcase(path, p) for p in patterns)


def _set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, module)


def _paths_by_module(model: nn.Module) -> dict[nn.Module, list[str]]:
    """Every path of every module, first path first: a shared module (one object reachable
    under several paths, e.g. ``model.a = model.b = conv``) has several."""
    paths: dict[nn.Module, list[str]] = {}
    for path, module in model.named_modules(remove_duplicate=False):
        paths.setdefault(module, []).append(path)
    return paths


def _tied_tensors(paths_of: Mapping[nn.Module, list[str]]) -> dict[nn.Module, str]:
    """Modules holding a parameter that another module holds too (tied weights), which a chain
    in the place of either would untie, each with where the tie is."""
    owners: dict[int, list[tuple[nn.Module, str]]] = {}
    for module, paths in paths_of.items():
        for name, tensor in module.named_parameters(recurse=False):
            owners.setdefault(id(tensor), []).append((module, f"{paths[0]}.{name}"))
    tied: dict[nn.Module, str] = {}
    for holders in owners.values():
        for module, where in holders:
            others = [w for m, w in holders if m is not module]
            if others:
                tied.setdefault(module, f"{where} is also {', '.join(others)} (tied weights)")
    return tied


def _stock_base(module: nn.Module) -> type[nn.Module] | None:
    for base in STOCK_LAYERS:
        if isinstance(module, base):
            return base
    return None


def convert_model(
    model: nn.Module,
    options: ChainOptions | Mapping[str, Any] | None = None,
    *,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    converters: Mapping[type[nn.Module], Converter] | None = None,
    options_for: Callable[[str, nn.Module], Mapping[str, Any] | None] | None = None,
    init: Init = "match",
    strict: bool = False,
    **option_kwargs: Any,
) -> ConversionReport:
    """Replace stock layers by chains, in place, and report every decision.

    Args:
        model: the model to convert (a stock layer alone is returned converted).
        options: :class:`~overparam.options.ChainOptions` for every layer (default depth 2).
            ``residual=True`` adds skips where a layer's shape allows them; other layers are
            converted without and listed in ``notes``.
        include: module-path globs to convert (default: all).
        exclude: module-path globs to leave stock.
        converters: per exact module class, ``fn(module, *, init, **options) -> nn.Module``
            for layer types that are not stock (e.g. timm's ``Conv2dSame``); it may raise
            ``NotImplementedError`` with a reason to leave the layer stock.
        options_for: ``fn(path, module)`` returning per-layer chain options (overrides of
            ``options``), or ``None`` to leave the layer stock.
        init: ``"match"``/``"default"`` (see :func:`from_stock`), or ``"expand"``: set the
            factors so each chain computes exactly the layer's current weights (see
            :func:`overparam.expand.expand_into_`); errors above 1e-6 are listed in ``notes``.
        strict: raise :class:`LayerConversionError` for options a layer cannot take, instead
            of leaving it stock and listing it in ``skipped``.
        **option_kwargs: chain options by name (``depth=4``, ``batch_norm=True``, ...).

    Returns:
        A :class:`ConversionReport`; ``report.model`` is the converted model.
    """
    defaults = ChainOptions.of(options, **option_kwargs)
    converters = dict(converters or {})
    report = ConversionReport(model=model)
    if isinstance(model, OverparamChain):
        return report
    paths_of = _paths_by_module(model)
    tied = _tied_tensors(paths_of)
    inside = tuple(p + "." for m, ps in paths_of.items() if isinstance(m, OverparamChain) for p in ps)
    candidates = [
        (paths, m)
        for m, paths in paths_of.items()
        if (_stock_base(m) or type(m) in converters) and not any(p.startswith(inside) for p in paths)
    ]

    def decide(path: str, module: nn.Module) -> str | ChainOptions:
        """The options for the layer at ``path``, or why it stays stock."""
        if include is not None and not _matches(path, include):
            return NOT_INCLUDED
        if _matches(path, exclude):
            return EXCLUDED
        chosen = options_for(path, module) if options_for is not None else {}
        return LEFT_BY_RULES if chosen is None else ChainOptions.of(defaults, **dict(chosen))

    for paths, module in candidates:
        label = paths[0] or "<root>"
        # a shared layer becomes one shared chain, so every path must ask for the same one
        decisions = [decide(p, module) for p in paths]
        if any(d != decisions[0] for d in decisions[1:]):
            conflict = f"one module shared by {', '.join(paths)}, whose rules disagree: {decisions}"
            if strict:
                raise LayerConversionError(label, conflict)
            report.skipped[label] = conflict
            continue
        if isinstance(decisions[0], str):
            report.skipped[label] = decisions[0]
            continue
        if module in tied:
            report.skipped[label] = f"{tied[module]}; a chain in its place would untie them"
            continue
        layer_options = decisions[0]
        kind = type(module)
        if kind in converters:
            convert: Converter = converters[kind]
        elif kind in STOCK_LAYERS:
            convert = from_stock
        else:
            report.skipped[label] = (
                f"{kind.__module__}.{kind.__name__} subclasses nn.{_stock_base(module).__name__} "  # type: ignore[union-attr]
                f"with its own behaviour; register a converter for it to convert exactly"
            )
            continue
        layer_init = "match" if init == "expand" else init
        try:
            try:
                new = convert(module, init=layer_init, **layer_options.as_kwargs())
            except SkipError as err:
                new = convert(module, init=layer_init, **{**layer_options.as_kwargs(), "residual": False})
                report.notes[label] = f"converted without residual: {err}"
        except NotImplementedError as err:
            report.skipped[label] = str(err)
            continue
        except ValueError as err:
            if strict:
                raise LayerConversionError(label, str(err)) from err
            report.skipped[label] = str(err)
            continue
        if init == "expand":
            error = expand_into_(
                cast(OverparamChain, new), cast(Tensor, module.weight), cast("Tensor | None", module.bias)
            )
            report.expansion_errors[label] = error
            if error > 1e-6:
                report.notes[label] = f"no exact split of the stock weights: relative error {error:.2e}"
        if paths == [""]:
            report.model = new
        for path in paths:
            if path:
                _set_submodule(model, path, new)
        for alias in paths[1:]:
            report.notes[alias] = f"the same module as {label}: converted once, into the same chain"
        report.converted.append(label)
    return report


def overparameterize(
    model: nn.Module,
    depth: int = 2,
    *,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    converters: Mapping[type[nn.Module], Converter] | None = None,
    init: Init = "match",
    verbose: bool = False,
    **options: Any,
) -> nn.Module:
    """Replace every stock Linear/ConvNd of ``model`` by an over-parameterized chain.

    The seed API (``model = overparameterize(model, depth=2, batch_norm=True)``). Layers that
    cannot be converted are named in a warning, never skipped silently; :func:`convert_model`
    returns the full report. ``options`` are the other chain options (``width``,
    ``batch_norm``, ``residual``, ``residual_intervals``, ``kernel_sizes``, ``init_scale``); the
    rest are :func:`convert_model`'s
    arguments; ``verbose`` prints the summary.
    """
    report = convert_model(
        model,
        ChainOptions.of(options, depth=depth),
        include=include,
        exclude=exclude,
        converters=converters,
        init=init,
    )
    chosen = (NOT_INCLUDED, EXCLUDED, LEFT_BY_RULES)
    unconvertible = {p: why for p, why in report.skipped.items() if why not in chosen}
    if unconvertible:
        listing = "; ".join(f"{p} ({why})" for p, why in unconvertible.items())
        warnings.warn(f"overparameterize left {len(unconvertible)} layers stock: {listing}", stacklevel=2)
    (print if verbose else logger.info)(report.summary())
    return report.model


def _folds(
    model: nn.Module, paths_of: Mapping[nn.Module, list[str]], trace_options: Mapping[str, Any] | None
) -> dict[nn.Module, list[nn.Module]]:
    """Each chain whose gained bias must be folded, with the BatchNorms that absorb it."""
    # fx names a shared module by its first path, as named_modules() does
    first = {paths[0]: m for m, paths in paths_of.items() if isinstance(m, OverparamChain) and needs_bias_fold(m)}
    found = find_following_batch_norms(model, first, **dict(trace_options or {}))
    return {first[path]: [model.get_submodule(bn) for bn in bns] for path, bns in found.items()}


def collapse(model: nn.Module, *, trace_options: Mapping[str, Any] | None = None) -> nn.Module:
    """Replace every chain by its stock layer (``fuse()``), in place, at the same paths.

    The result's ``state_dict`` loads with ``strict=True`` into the unmodified architecture:
    a bias that batch norm inside a chain adds to a bias-free layer is folded into the
    BatchNorm that follows it (see :mod:`overparam.bias_fold`), or a ``ValueError`` names the layer.
    A chain shared by several paths is fused once and the same stock layer is set at each.

    Args:
        model: the model (a single chain returns its stock layer).
        trace_options: ``leaf_modules``/``autowrap_functions`` for the fx trace that finds
            those BatchNorms (only traced when a fold is needed).
    """
    if isinstance(model, OverparamChain):
        if needs_bias_fold(model):
            raise ValueError("a lone chain with batch norm and bias=False has no BatchNorm to fold its bias into")
        return model.fuse()
    paths_of = _paths_by_module(model)
    folds = _folds(model, paths_of, trace_options)
    for module, paths in paths_of.items():
        if isinstance(module, OverparamChain):
            stock = module.fuse()
            if module in folds:
                gained = cast(Tensor, stock.bias)  # a fold is needed only for a bias the chain gained
                for bn in folds[module]:
                    mean = cast(Tensor, bn.running_mean)
                    with torch.no_grad():
                        mean.sub_(gained.to(mean.dtype))
                stock.register_parameter("bias", None)
            for path in paths:
                _set_submodule(model, path, stock)
    return model


def _owner(key: str, chain_at: Mapping[str, OverparamChain]) -> str | None:
    """The path of the chain whose state holds ``key``, if any."""
    parts = key.split(".")
    for end in range(len(parts) - 1, 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in chain_at:
            return prefix
    return None


def collapsed_state_dict(
    model: nn.Module, *, trace_options: Mapping[str, Any] | None = None
) -> dict[str, torch.Tensor]:
    """The state dict of ``collapse(model)``, without changing ``model``.

    Keys keep the model's order, and the module versions that ``load_state_dict`` reads are
    kept. Each chain's keys become ``{path}.weight`` (and ``.bias``) at every path of the chain
    (a shared chain is collapsed once and its tensors repeated, as the stock model's
    ``state_dict`` repeats a shared layer's).
    """
    if isinstance(model, OverparamChain):
        return collapse(model).state_dict()
    paths_of = _paths_by_module(model)
    chain_at = {p: m for m, paths in paths_of.items() if isinstance(m, OverparamChain) for p in paths}
    folds = _folds(model, paths_of, trace_options)
    collapsed: dict[OverparamChain, tuple[torch.Tensor, torch.Tensor | None]] = {}
    state = model.state_dict()
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    # load_state_dict hands each module its version from here (torchvision's MNASNet refuses to load without)
    inside = tuple(p + "." for p in chain_at)
    out._metadata = OrderedDict((k, v) for k, v in state._metadata.items() if not k.startswith(inside))  # type: ignore[attr-defined]
    for key, value in state.items():
        owner = _owner(key, chain_at)
        # a chain's own tensors (a ScaledStdConv2d's gain) are the stock layer's too: kept as they are
        if owner is None or not key[len(owner) + 1 :].startswith(OverparamChain.COLLAPSED_PREFIXES):
            out[key] = value
            continue
        if f"{owner}.weight" in out:
            continue
        chain = chain_at[owner]
        if chain not in collapsed:
            with torch.no_grad():
                weight, bias = chain._weight_and_bias()
            collapsed[chain] = weight.detach(), bias if bias is None else bias.detach()
        weight, bias = collapsed[chain]
        out[f"{owner}.weight"] = weight
        if bias is not None and chain not in folds:
            out[f"{owner}.bias"] = bias
    for folded, bns in folds.items():
        gained = cast(Tensor, collapsed[cast(OverparamChain, folded)][1])  # a fold is needed only for a bias
        for bn in bns:
            for key in (f"{path}.running_mean" for path in paths_of[bn]):
                out[key] = out[key] - gained.to(out[key].dtype)
    return out
