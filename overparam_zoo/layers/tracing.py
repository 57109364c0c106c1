"""torch.fx settings for op models: chains are leaf modules (their forward branches on the
mode and a weight cache, which symbolic tracing cannot follow), and timm's own no-trace
modules and functions apply to every fx trace the core makes (the BN-bias fold)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from overparam import OverparamChain
from overparam.bias_fold import register_trace_options

__all__ = ["register_tracing", "timm_trace_options"]


def timm_trace_options() -> dict[str, Any]:
    """timm's leaf modules and wrapped functions, as the core's fx trace takes them."""
    from timm.layers import get_notrace_functions, get_notrace_modules

    return {"leaf_modules": tuple(get_notrace_modules()), "autowrap_functions": tuple(get_notrace_functions())}


def _chain_classes(cls: type[OverparamChain] = OverparamChain) -> Iterator[type[OverparamChain]]:
    yield cls
    for sub in cls.__subclasses__():
        yield from _chain_classes(sub)


def register_tracing() -> None:
    """Make timm's fx feature extraction (``features_only`` with fx, ``create_feature_extractor``)
    treat every chain class as a leaf (timm matches classes exactly), and the core's traces
    honour timm's no-trace lists. Idempotent."""
    from timm.layers import register_notrace_module

    from overparam_zoo.layers import chains  # noqa: F401 - defines the chain classes for timm's layer types

    for cls in _chain_classes():
        register_notrace_module(cls)
    register_trace_options(timm_trace_options)
