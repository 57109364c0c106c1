"""``collapse``/``collapsed_state_dict`` with timm's fx settings, for models from either zoo."""

from __future__ import annotations

import torch
from torch import nn

import overparam

from .tracing import timm_trace_options

__all__ = ["collapse", "collapsed_state_dict"]


def collapse(model: nn.Module) -> nn.Module:
    """:func:`overparam.collapse` tracing with timm's leaf modules and wrapped functions."""
    return overparam.collapse(model, trace_options=timm_trace_options())


def collapsed_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """:func:`overparam.collapsed_state_dict` tracing with timm's leaf modules and wrapped functions."""
    return overparam.collapsed_state_dict(model, trace_options=timm_trace_options())
