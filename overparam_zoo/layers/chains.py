"""Chains standing for timm's own layer types (those that subclass the stock layers), and
their converters.

Each converter builds a chain whose ``fuse()`` gives back the same timm class with the same
settings (so a collapsed model is the stock timm model again and its state dict loads strictly
into it), or refuses with the reason, which the conversion report and ``overparam-zoo show``
print. What a timm layer does besides its conv lives in the chain's two hooks: the input
(``_prepare_input``: dynamic "same" padding) and the effective weight (``_transform_weight``:
weight standardisation).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch
import torch.nn.functional as F
from timm.layers import Conv2dSame, Linear, ScaledStdConv2d, ScaledStdConv2dSame, StdConv2d, StdConv2dSame, pad_same
from torch import Tensor, nn
from torch.nn.modules.linear import NonDynamicallyQuantizableLinear

from overparam import OverparamChain, OverparamConv2d, OverparamLinear, from_stock

__all__ = [
    "OverparamConv2dSame",
    "OverparamTimmLinear",
    "OverparamStdConv2d",
    "OverparamStdConv2dSame",
    "OverparamScaledStdConv2d",
    "OverparamScaledStdConv2dSame",
    "TIMM_CONVERTERS",
]

#: timm's weight-standardised convs
StandardisedConv = StdConv2d | StdConv2dSame | ScaledStdConv2d | ScaledStdConv2dSame

_STANDARDISED = (
    "timm's weight-standardised convs standardise the effective weight per output channel in every forward, "
    "which is not linear in the factors, so the chain trains composed only"
)


def _fused_as(chain: OverparamChain, cls: type[nn.Module], **init: Any) -> nn.Module:
    """The chain's collapsed layer as timm's ``cls``: the effective weight and bias plus the
    chain's own parameters (a ``ScaledStdConv2d``'s gain), trainable and in mode as the chain."""
    plain = OverparamChain.fuse(chain)
    weight = cast(Tensor, plain.weight)
    stock = cls(**init, bias=plain.bias is not None).to(device=weight.device, dtype=weight.dtype)
    stock.load_state_dict({**plain.state_dict(), **dict(chain.named_parameters(recurse=False))})
    stock.requires_grad_(weight.requires_grad)
    return stock.train(chain.training)


class OverparamTimmLinear(OverparamLinear):
    """A chain standing for ``timm.layers.Linear`` (same function as ``nn.Linear`` in eager)."""

    def fuse(self) -> nn.Module:
        return _fused_as(self, Linear, in_features=self.in_features, out_features=self.out_features)


class OverparamConv2dSame(OverparamConv2d):
    """A chain standing for timm's ``Conv2dSame``: TensorFlow "same" padding computed from the
    input size in every forward, applied once before the chain, so the collapse stays exact."""

    def _prepare_input(self, x: Tensor) -> Tensor:
        return pad_same(x, list(self.kernel_size), list(self.stride), list(self.dilation))

    def fuse(self) -> nn.Module:
        return _fused_as(
            self,
            Conv2dSame,
            in_channels=self.in_channels,
            out_channels=self.out_channels,
            kernel_size=self.kernel_size,
            stride=self.stride,
            dilation=self.dilation,
            groups=self.groups,
        )


class _StandardisedConv2d(OverparamConv2d):
    """What timm's weight-standardised convs share: the stock layer standardises its weight per
    output channel in every forward (optionally scaled per channel); applied to the chain's
    effective weight that is the same function, exactly. It is not linear in the factors, so
    the chain trains composed only (no batch norm inside it)."""

    composed_only = _STANDARDISED
    #: the standardisation's epsilon; the converter copies the stock layer's
    eps: float = 1e-6
    #: the timm class ``fuse()`` gives back
    stock_class: type[nn.Module]
    #: the stock constructor's name for the input channels (``StdConv2d`` says ``in_channel``)
    _in_channels_arg = "in_channels"

    def adopt_settings_(self, stock: StandardisedConv) -> None:
        """Take the stock layer's settings besides its weight and bias (``eps``)."""
        self.eps = stock.eps

    def _channel_scale(self) -> Tensor | None:
        """Per-channel factor applied after standardising (``None``: none)."""
        return None

    def _transform_weight(self, weight: Tensor) -> Tensor:
        return F.batch_norm(
            weight.reshape(1, self.out_channels, -1),
            None,
            None,
            weight=self._channel_scale(),
            training=True,
            momentum=0.0,
            eps=self.eps,
        ).reshape_as(weight)

    def _stock_init(self) -> dict[str, Any]:
        return {
            self._in_channels_arg: self.in_channels,
            "out_channels": self.out_channels,
            "kernel_size": self.kernel_size,
            "stride": self.stride,
            "padding": self.padding,
            "dilation": self.dilation,
            "groups": self.groups,
            "eps": self.eps,
        }

    def _finish(self, stock: nn.Module) -> nn.Module:
        """Settings the stock constructor does not take."""
        return stock

    def fuse(self) -> nn.Module:
        return self._finish(_fused_as(self, self.stock_class, **self._stock_init()))


class _SamePadded:
    """The ``Same`` variants: TensorFlow "same" padding, dynamic (from the input size, once,
    before the chain) when it cannot be static. Mixed in before a standardised chain class."""

    #: whether the padding is computed from the input size in every forward
    same_pad: bool = False

    def adopt_settings_(self, stock: StandardisedConv) -> None:
        super().adopt_settings_(stock)  # type: ignore[misc]
        self.same_pad = cast(StdConv2dSame, stock).same_pad

    def _prepare_input(self, x: Tensor) -> Tensor:
        if not self.same_pad:
            return x
        return pad_same(x, list(self.kernel_size), list(self.stride), list(self.dilation))  # type: ignore[attr-defined]

    def _stock_init(self) -> dict[str, Any]:
        # "SAME" rebuilds the dynamic padding; a static one is passed as it is
        init = super()._stock_init()  # type: ignore[misc]
        return {**init, "padding": "SAME" if self.same_pad else init["padding"]}


class OverparamStdConv2d(_StandardisedConv2d):
    """A chain standing for timm's ``StdConv2d`` (BiT, ResNetV2)."""

    stock_class: type[nn.Module] = StdConv2d
    _in_channels_arg = "in_channel"


class OverparamStdConv2dSame(_SamePadded, OverparamStdConv2d):
    """A chain standing for timm's ``StdConv2dSame`` (ViT hybrids)."""

    stock_class = StdConv2dSame


class OverparamScaledStdConv2d(_StandardisedConv2d):
    """A chain standing for timm's ``ScaledStdConv2d`` (NFNet, NF-ResNet, NF-RegNet): the
    standardised weight is scaled by a learned ``gain`` times a constant ``scale``. The chain
    holds ``gain`` itself (one per output channel, as the stock layer)."""

    stock_class: type[nn.Module] = ScaledStdConv2d

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        weight = self.factor_layers[0].weight
        self.gain = nn.Parameter(torch.ones(self.out_channels, 1, 1, 1, device=weight.device, dtype=weight.dtype))
        #: ``gamma / sqrt(fan_in)`` (gamma 1 until the converter copies the stock layer's float,
        #: which is never rebuilt from gamma: that could round differently)
        self.scale = (self.in_channels // self.groups * self.kernel_size[0] * self.kernel_size[1]) ** -0.5

    def adopt_settings_(self, stock: StandardisedConv) -> None:
        """Take the stock layer's settings besides its weight and bias (``gain``, ``scale``, ``eps``)."""
        super().adopt_settings_(stock)
        scaled = cast(ScaledStdConv2d, stock)
        with torch.no_grad():
            self.gain.copy_(scaled.gain)
        self.scale = scaled.scale

    def _channel_scale(self) -> Tensor:
        return (self.gain * self.scale).view(-1)

    def _finish(self, stock: nn.Module) -> nn.Module:
        stock.scale = self.scale
        return stock


class OverparamScaledStdConv2dSame(_SamePadded, OverparamScaledStdConv2d):
    """A chain standing for timm's ``ScaledStdConv2dSame`` (the ``tf`` NFNets)."""

    stock_class = ScaledStdConv2dSame


_STANDARDISED_CHAINS: dict[type[nn.Module], type[OverparamConv2d]] = {
    StdConv2d: OverparamStdConv2d,
    StdConv2dSame: OverparamStdConv2dSame,
    ScaledStdConv2d: OverparamScaledStdConv2d,
    ScaledStdConv2dSame: OverparamScaledStdConv2dSame,
}


def convert_timm_linear(module: nn.Module, **options: Any) -> nn.Module:
    """``timm.layers.Linear`` as a chain that fuses back to it."""
    return from_stock(module, chain_class=OverparamTimmLinear, **options)


def convert_conv2d_same(module: nn.Module, **options: Any) -> nn.Module:
    """timm's ``Conv2dSame`` as a chain that pads its input as the stock layer does."""
    return from_stock(module, chain_class=OverparamConv2dSame, **options)


def convert_standardised_conv(module: nn.Module, **options: Any) -> nn.Module:
    """timm's ``StdConv2d``/``ScaledStdConv2d`` (and their ``Same`` variants) as composed-only chains.

    Raises:
        ValueError: for options that need the expanded path (``batch_norm=True``).
    """
    chain = cast(_StandardisedConv2d, from_stock(module, chain_class=_STANDARDISED_CHAINS[type(module)], **options))
    chain.adopt_settings_(cast(StandardisedConv, module))
    return chain


def refuse_multihead_attention(module: nn.Module, **options: Any) -> nn.Module:
    raise NotImplementedError(
        "NonDynamicallyQuantizableLinear is the out_proj of an nn.MultiheadAttention, whose forward reads "
        "out_proj.weight and its bare in_proj_weight directly instead of calling layers, so no chain can stand "
        "for either; the attention's projections stay stock"
    )


TIMM_CONVERTERS: dict[type[nn.Module], Callable[..., nn.Module]] = {
    Linear: convert_timm_linear,
    Conv2dSame: convert_conv2d_same,
    **{cls: convert_standardised_conv for cls in _STANDARDISED_CHAINS},
    NonDynamicallyQuantizableLinear: refuse_multihead_attention,
}
