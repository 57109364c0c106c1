"""Public layers: ``OverparamLinear`` and ``OverparamConv1d/2d/3d``.

Argument names and semantics follow the paper's code (minyoungg/overparam): ``width`` scales
the hidden channels (``int(out * width)``), ``kernel_sizes=k`` means ``[k, 1, ..., 1]``,
``residual_intervals=n`` adds ``x_{m-n}`` into ``x_m`` for ``m = n, 2n, ...`` (``-1``: one
skip over the whole chain). Batch norm follows every factor, as in the paper's code.
``init_scale`` (not in the paper's code) starts the effective weight at a multiple of the
stock layer's default scale.
"""

from __future__ import annotations

from collections.abc import Sequence

from .chain import OverparamChain
from .init import default_weight_std, init_chain_
from .options import ChainOptions
from .plan import make_plan

__all__ = ["OverparamLinear", "OverparamConv1d", "OverparamConv2d", "OverparamConv3d"]


class _OverparamLayer(OverparamChain):
    """What the public layers share: factors drawn at ``init_scale`` times the stock layer's
    default scale."""

    init_scale: float = 1.0

    def reset_parameters(self) -> None:
        """Factors drawn so the effective weight has ``init_scale`` times the std of
        ``nn.Linear``/``nn.ConvNd``'s default init (the bias keeps the stock default)."""
        init_chain_(self, weight_std=self.init_scale * default_weight_std(self))

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s if self.init_scale == 1 else f"{s}, init_scale={self.init_scale}"


class OverparamLinear(_OverparamLayer):
    """A ``nn.Linear`` trained as a chain of ``depth`` linear layers.

    Works on inputs with any leading dims. In ``eval()`` it runs as one ``F.linear`` with
    the cached effective weight; ``weight``/``bias`` give the effective parameters.

    Args:
        in_features: size of each input sample.
        out_features: size of each output sample.
        width: hidden features are ``int(out_features * width)``.
        depth: number of factors.
        bias: give every factor a bias.
        batch_norm: a ``BatchNorm1d`` after every factor (forces the expanded path in training).
        residual: add identity skips (need equal feature counts at both ends).
        residual_intervals: an int or list of skip intervals; ``-1`` spans the whole chain.
        init_scale: the effective weight starts at ``init_scale`` times ``nn.Linear``'s default
            scale (see :class:`~overparam.options.ChainOptions`); ``1`` is the stock scale.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        width: float = 1,
        depth: int = 2,
        bias: bool = True,
        batch_norm: bool = False,
        residual: bool = False,
        residual_intervals: int | Sequence[int] = 2,
        *,
        init_scale: float = 1.0,
        device=None,
        dtype=None,
    ) -> None:
        options = ChainOptions(depth, width, batch_norm, residual, residual_intervals, init_scale=init_scale)
        plan = make_plan(in_features, out_features, ndim=0, options=options, bias=bias)
        super().__init__(plan, device=device, dtype=dtype)
        self.in_features = in_features
        self.out_features = out_features
        self.width = width
        self.init_scale = options.init_scale
        self.reset_parameters()

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, " + super().extra_repr()


class _OverparamConvNd(_OverparamLayer):
    _ndim: int

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_sizes: int | Sequence[int | Sequence[int]] = 3,
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] | str = 0,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        padding_mode: str = "zeros",
        width: float = 1,
        depth: int | None = None,
        bias: bool = True,
        batch_norm: bool = False,
        residual: bool = False,
        residual_intervals: int | Sequence[int] = 2,
        *,
        init_scale: float = 1.0,
        device=None,
        dtype=None,
    ) -> None:
        options = ChainOptions(depth, width, batch_norm, residual, residual_intervals, kernel_sizes, init_scale)
        plan = make_plan(
            in_channels,
            out_channels,
            ndim=self._ndim,
            options=options,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            padding_mode=padding_mode,
            bias=bias,
        )
        super().__init__(plan, device=device, dtype=dtype)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_sizes = plan.kernels
        self.kernel_size = plan.kernel_size
        self.stride = plan.stride
        self.padding = padding if isinstance(padding, str) else tuple(left for left, _ in plan.padding)
        self.dilation = plan.dilation
        self.groups = groups
        self.padding_mode = padding_mode
        self.width = width
        self.init_scale = options.init_scale
        self.reset_parameters()

    def extra_repr(self) -> str:
        factors = [k[0] if len(set(k)) == 1 else k for k in self.kernel_sizes]
        s = (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"kernel_sizes={factors}, stride={self.stride}"
        )
        if isinstance(self.padding, str) or any(self.padding):
            s += f", padding={self.padding}"
        if any(d != 1 for d in self.dilation):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode!r}"
        return s + ", " + super().extra_repr()


class OverparamConv1d(_OverparamConvNd):
    """A ``nn.Conv1d`` trained as a chain of convolutions (see :class:`OverparamConv2d`)."""

    _ndim = 1


class OverparamConv2d(_OverparamConvNd):
    """A ``nn.Conv2d`` trained as a chain of ``depth`` convolutions.

    The effective kernel is ``sum(kernel_sizes) - depth + 1`` per dim (``layer.kernel_size``).
    All padding is applied once, before the first factor, and the stride sits on the last
    factor with a kernel larger than 1, which keeps the collapse exact for every padding mode
    and input size. In ``eval()`` it runs as one conv with the cached effective weight.

    Args:
        in_channels: channels of the input.
        out_channels: channels produced.
        kernel_sizes: an int ``k`` (``[k, 1, ..., 1]`` of length ``depth``) or one kernel size
            (int or per-dim tuple) per factor; a list sets the depth.
        stride: stride of the effective conv.
        padding: padding of the effective conv: int, tuple, ``'same'`` or ``'valid'``.
        dilation: dilation of every factor, hence of the effective conv.
        groups: groups of every factor; hidden channels must be divisible by it.
        padding_mode: ``'zeros'``, ``'reflect'``, ``'replicate'`` or ``'circular'``.
        width: hidden channels are ``int(out_channels * width)``.
        depth: number of factors when ``kernel_sizes`` is an int (default 2).
        bias: give every factor a bias.
        batch_norm: a ``BatchNorm`` after every factor (forces the expanded path in training).
        residual: add identity skips (equal channels, even receptive-field growth).
        residual_intervals: an int or list of skip intervals; ``-1`` spans the whole chain.
        init_scale: the effective weight starts at ``init_scale`` times ``nn.Conv2d``'s default
            scale (see :class:`~overparam.options.ChainOptions`); ``1`` is the stock scale.
    """

    _ndim = 2


class OverparamConv3d(_OverparamConvNd):
    """A ``nn.Conv3d`` trained as a chain of convolutions (see :class:`OverparamConv2d`)."""

    _ndim = 3
