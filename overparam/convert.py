"""Model conversion: stock layers to chains (``overparameterize``) and back (``collapse``)."""

from __future__ import annotations

import fnmatch
import logging
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from .chain import OverparamChain
from .expand import expand_into_
from .fold import find_following_batch_norms, needs_bias_fold
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
_CHAIN_FOR = {nn.Conv1d: OverparamConv1d, nn.Conv2d: OverparamConv2d, nn.Conv3d: OverparamConv3d}

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
            ``"default"`` uses the stock default init scale.
        chain_class: the chain class to build, for converters of stock subclasses whose
            forward or ``fuse()`` differ (default: the matching ``Overparam*`` class).
        **option_kwargs: chain options by name (``depth=2``, ...), applied over ``options``.

    Raises:
        TypeError: for a layer that is not a stock Linear/ConvNd (or a subclass, with
            ``chain_class``).
        ValueError: for options that cannot be realised exactly for this layer.
    """
    kind = _stock_base(layer) if chain_class is not None else type(layer)
    if kind not in STOCK_LAYERS:
        raise TypeError(f"from_stock expects one of {[c.__name__ for c in STOCK_LAYERS]}, got {type(layer).__name__}")
    opts = ChainOptions.of(options, **option_kwargs)
    factory: dict[str, Any] = {"device": layer.weight.device, "dtype": layer.weight.dtype}
    chain: OverparamChain
    if kind is nn.Linear:
        opts = ChainOptions.of(opts, depth=opts.factor_count, kernel_sizes=None)
        chain = (chain_class or OverparamLinear)(
            layer.in_features,
            layer.out_features,
            **{k: v for k, v in opts.as_kwargs().items() if k != "kernel_sizes"},
            bias=layer.bias is not None,
            **factory,
        )
    else:
        ones = (1,) * len(layer.kernel_size)
        split = opts.kernel_sizes
        if split is None:  # the layer's kernel on the first factor
            split = [tuple(layer.kernel_size)] + [ones] * (opts.factor_count - 1)
        elif not isinstance(split, Sequence):
            split = [split] + [ones] * (opts.factor_count - 1)
        chain = (chain_class or _CHAIN_FOR[kind])(
            layer.in_channels,
            layer.out_channels,
            **{**opts.as_kwargs(), "depth": None, "kernel_sizes": split},
            stride=layer.stride,
            padding=layer.padding,
            dilation=layer.dilation,
            groups=layer.groups,
            padding_mode=layer.padding_mode,
            bias=layer.bias is not None,
            **factory,
        )
        if tuple(chain.kernel_size) != tuple(layer.kernel_size):
            raise ValueError(
                f"kernel_sizes={list(split)} composes to kernel {chain.kernel_size}, but the "
                f"stock layer has kernel {tuple(layer.kernel_size)}; the split must compose to it "
                f"(sum(k) - depth + 1 per dim)"
            )
    if init == "match":
        with torch.no_grad():
            std = float(layer.weight.detach().double().std(unbiased=False)) if layer.weight.numel() > 1 else 0.0
        init_chain_(chain, weight_std=std, bias=None if layer.bias is None else layer.bias.detach())
    elif init != "default":
        raise ValueError(f"init must be 'match' or 'default', got {init!r}")
    return chain.train(layer.training)


def _matches(path: str, patterns: Iterable[str] | None) -> bool:
    return patterns is not None and any(fnmatch.fnmatchcase(path, p) for p in patterns)


def _set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, module)


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
    candidates = [(path, m) for path, m in model.named_modules() if _stock_base(m) or type(m) in converters]
    chains = [path for path, m in model.named_modules() if isinstance(m, OverparamChain)]
    for path, module in candidates:
        if any(path.startswith(c + ".") for c in chains):
            continue
        label = path or "<root>"
        if include is not None and not _matches(path, include):
            report.skipped[label] = NOT_INCLUDED
            continue
        if _matches(path, exclude):
            report.skipped[label] = EXCLUDED
            continue
        layer_options = defaults
        if options_for is not None:
            chosen = options_for(path, module)
            if chosen is None:
                report.skipped[label] = LEFT_BY_RULES
                continue
            layer_options = ChainOptions.of(defaults, **dict(chosen))
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
            error = expand_into_(new, module.weight, module.bias)
            report.expansion_errors[label] = error
            if error > 1e-6:
                report.notes[label] = f"no exact split of the stock weights: relative error {error:.2e}"
        if not path:
            report.model = new
        else:
            _set_submodule(model, path, new)
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
    ``batch_norm``, ``residual``, ``residual_intervals``); the rest are :func:`convert_model`'s
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


def _folds(model: nn.Module, trace_options: Mapping[str, Any] | None) -> dict[str, str]:
    paths = [p for p, m in model.named_modules() if isinstance(m, OverparamChain) and needs_bias_fold(m)]
    return find_following_batch_norms(model, paths, **dict(trace_options or {}))


def collapse(model: nn.Module, *, trace_options: Mapping[str, Any] | None = None) -> nn.Module:
    """Replace every chain by its stock layer (``fuse()``), in place, at the same paths.

    The result's ``state_dict`` loads with ``strict=True`` into the unmodified architecture:
    a bias that batch norm inside a chain adds to a bias-free layer is folded into the
    BatchNorm that follows it (see :mod:`overparam.fold`), or a ``ValueError`` names the layer.

    Args:
        model: the model (a single chain returns its stock layer).
        trace_options: ``leaf_modules``/``autowrap_functions`` for the fx trace that finds
            those BatchNorms (only traced when a fold is needed).
    """
    if isinstance(model, OverparamChain):
        if needs_bias_fold(model):
            raise ValueError("a lone chain with batch norm and bias=False has no BatchNorm to fold its bias into")
        return model.fuse()
    folds = _folds(model, trace_options)
    for path, module in list(model.named_modules()):
        if isinstance(module, OverparamChain):
            stock = module.fuse()
            if path in folds:
                bn = model.get_submodule(folds[path])
                with torch.no_grad():
                    bn.running_mean.sub_(stock.bias.to(bn.running_mean.dtype))
                stock.bias = None
            _set_submodule(model, path, stock)
    return model


def collapsed_state_dict(
    model: nn.Module, *, trace_options: Mapping[str, Any] | None = None
) -> dict[str, torch.Tensor]:
    """The state dict of ``collapse(model)``, without changing ``model``.

    Keys keep the model's order; each chain's keys become ``{path}.weight`` (and ``.bias``).
    """
    chains = {path: m for path, m in model.named_modules() if isinstance(m, OverparamChain)}
    if "" in chains:
        return dict(collapse(chains[""]).state_dict())
    folds = _folds(model, trace_options)
    out: dict[str, torch.Tensor] = {}
    gained: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        owner = next((p for p in chains if key.startswith(p + ".")), None)
        if owner is None or not key[len(owner) + 1 :].startswith(OverparamChain.COLLAPSED_PREFIXES):
            out[key] = value
        elif f"{owner}.weight" not in out:
            with torch.no_grad():
                weight, bias = chains[owner]._weight_and_bias()
            out[f"{owner}.weight"] = weight.detach()
            if owner in folds:
                gained[folds[owner]] = bias.detach()
            elif bias is not None:
                out[f"{owner}.bias"] = bias.detach()
    for bn_path, bias in gained.items():
        key = f"{bn_path}.running_mean"
        out[key] = out[key] - bias.to(out[key].dtype)
    return out
