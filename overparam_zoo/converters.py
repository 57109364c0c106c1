"""Converters for timm's layer types that subclass the stock layers.

Each converter either builds a chain whose ``fuse()`` gives back the same timm class (so a
collapsed model is the stock timm model again) or refuses with the reason, which the
conversion report and ``overparam-zoo show`` print.
"""

from __future__ import annotations

from typing import Any

from timm.layers import Conv2dSame, Linear, ScaledStdConv2d, ScaledStdConv2dSame, StdConv2d, StdConv2dSame
from timm.layers.padding import pad_same
from torch import Tensor, nn
from torch.nn.modules.linear import NonDynamicallyQuantizableLinear

from overparam import OverparamConv2d, OverparamLinear, from_stock

__all__ = ["OverparamConv2dSame", "OverparamTimmLinear", "TIMM_CONVERTERS"]


def _fused_as(chain_fuse: nn.Module, cls: type[nn.Module], **init: Any) -> nn.Module:
    stock = cls(**init).to(device=chain_fuse.weight.device, dtype=chain_fuse.weight.dtype)
    stock.load_state_dict(chain_fuse.state_dict())
    stock.requires_grad_(chain_fuse.weight.requires_grad)
    return stock.train(chain_fuse.training)


class OverparamTimmLinear(OverparamLinear):
    """A chain standing for ``timm.layers.Linear`` (same function as ``nn.Linear`` in eager)."""

    def fuse(self) -> nn.Module:
        fused = super().fuse()
        return _fused_as(
            fused, Linear, in_features=self.in_features, out_features=self.out_features, bias=fused.bias is not None
        )


class OverparamConv2dSame(OverparamConv2d):
    """A chain standing for timm's ``Conv2dSame``: TensorFlow "same" padding computed from the
    input size in every forward, applied once before the chain, so the collapse stays exact."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(pad_same(x, list(self.kernel_size), list(self.stride), list(self.dilation)))

    def expanded_forward(self, x: Tensor) -> Tensor:
        return super().expanded_forward(pad_same(x, list(self.kernel_size), list(self.stride), list(self.dilation)))

    def fuse(self) -> nn.Module:
        fused = super().fuse()
        return _fused_as(
            fused,
            Conv2dSame,
            in_channels=self.in_channels,
            out_channels=self.out_channels,
            kernel_size=self.kernel_size,
            stride=self.stride,
            dilation=self.dilation,
            groups=self.groups,
            bias=fused.bias is not None,
        )


def convert_timm_linear(module: nn.Module, **options: Any) -> nn.Module:
    return from_stock(module, chain_class=OverparamTimmLinear, **options)


def convert_conv2d_same(module: nn.Module, **options: Any) -> nn.Module:
    if any(p != 0 for p in module.padding):
        raise NotImplementedError("Conv2dSame with explicit padding besides its dynamic 'same' padding")
    return from_stock(module, chain_class=OverparamConv2dSame, **options)


def refuse_weight_standardisation(module: nn.Module, **options: Any) -> nn.Module:
    raise NotImplementedError(
        f"{type(module).__name__} standardises its weight in every forward, which is not linear in the "
        f"factors, so a chain cannot stand for it exactly; left stock"
    )


def refuse_multihead_attention(module: nn.Module, **options: Any) -> nn.Module:
    raise NotImplementedError(
        "NonDynamicallyQuantizableLinear is the out_proj of an nn.MultiheadAttention, whose forward reads "
        "out_proj.weight and its bare in_proj_weight directly instead of calling layers, so no chain can stand "
        "for either; the attention's projections stay stock"
    )


TIMM_CONVERTERS: dict[type[nn.Module], Any] = {
    Linear: convert_timm_linear,
    Conv2dSame: convert_conv2d_same,
    StdConv2d: refuse_weight_standardisation,
    StdConv2dSame: refuse_weight_standardisation,
    ScaledStdConv2d: refuse_weight_standardisation,
    ScaledStdConv2dSame: refuse_weight_standardisation,
    NonDynamicallyQuantizableLinear: refuse_multihead_attention,
}
