"""torch.fx settings for op models: chains are leaf modules (their forward branches on the
mode and a weight cache, which symbolic tracing cannot follow)."""

from __future__ import annotations

from typing import Any

from overparam import OverparamChain, OverparamConv1d, OverparamConv2d, OverparamConv3d, OverparamLinear

__all__ = ["register_with_timm_fx", "timm_trace_options"]

_CHAIN_CLASSES = (OverparamChain, OverparamLinear, OverparamConv1d, OverparamConv2d, OverparamConv3d)


def register_with_timm_fx() -> None:
    """Make timm's fx feature extraction (``features_only`` with fx, ``create_feature_extractor``)
    treat every chain class as a leaf."""
    from timm.layers import register_notrace_module

    from .converters import TIMM_CHAIN_CLASSES

    for cls in (*_CHAIN_CLASSES, *TIMM_CHAIN_CLASSES):
        register_notrace_module(cls)


def timm_trace_options() -> dict[str, Any]:
    """``trace_options`` for :func:`overparam.collapse` on timm models (timm's leaf modules and
    wrapped functions)."""
    from timm.layers import get_notrace_functions, get_notrace_modules

    return {"leaf_modules": tuple(get_notrace_modules()), "autowrap_functions": tuple(get_notrace_functions())}
