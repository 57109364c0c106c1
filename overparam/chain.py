"""The over-parameterized layer: a chain of factors that trains expanded and runs collapsed.

Training runs either the factors in sequence ("expanded", required when the chain has batch
norm) or one conv/linear with the effective weight built by autograd ("composed"), chosen per
input shape by counted multiply-adds, or (``path_choice = "measure"``) by timing both once per
input shape on the device at hand, as cuDNN's benchmark mode does. Eval uses the effective weight, cached and rebuilt
whenever a factor or BN tensor changes. Both paths compute the same function.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any, ClassVar, Literal, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .bn_merge import merge_batch_norm, scale_input_channels
from .compat import is_autocast_enabled, is_compiling
from .compose import bn_affine, collapse_chain
from .cost import prefer_composed
from .path_timing import time_paths
from .plan import ChainPlan

__all__ = ["OverparamChain", "TrainPath", "PathChoice"]

TrainPath = Literal["auto", "expanded", "composed"]
#: how ``train_path="auto"`` chooses: counted multiply-adds, or both paths timed once per shape
PathChoice = Literal["count", "measure"]

#: one factor of a chain: a stock Linear or ConvNd without padding
Factor = nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d
#: the ConvNd class per spatial dimension (its tuple arguments have that length)
_CONV_MODULES: dict[int, Callable[..., Factor]] = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_BN_MODULES: dict[int, type[nn.modules.batchnorm._BatchNorm]] = {
    0: nn.BatchNorm1d,
    1: nn.BatchNorm1d,
    2: nn.BatchNorm2d,
    3: nn.BatchNorm3d,
}
_CONV_FUNCTIONS: dict[int, Callable[..., Tensor]] = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_PAD_MODES = {"zeros": "constant", "reflect": "reflect", "replicate": "replicate", "circular": "circular"}


class OverparamChain(nn.Module):
    """Shared machinery of :class:`OverparamLinear` and ``OverparamConv1d/2d/3d``.

    Factors live in ``factors`` (stock ``nn.Linear``/``nn.ConvNd`` modules with padding 0,
    so ``state_dict`` keys are ``factors.{i}.weight``) and batch norms in ``norms``. The
    collapsed weight is never a parameter or buffer, so keys are the same in train and eval.
    """

    plan: ChainPlan
    factors: nn.ModuleList
    norms: nn.ModuleList | None
    #: ``None``, or why the layer has no factor-by-factor form (its function transforms the
    #: effective weight non-linearly, see :meth:`_transform_weight`): such a chain trains
    #: composed only and refuses options that need the expanded path (batch norm)
    composed_only: ClassVar[str | None] = None
    #: state-dict key prefixes (relative to the chain) of the tensors that collapse into the
    #: stock weight and bias; any other tensor of a chain (a ScaledStdConv2d's gain) is the
    #: stock layer's own and is kept as it is by collapse and expansion
    COLLAPSED_PREFIXES: ClassVar[tuple[str, ...]] = ("factors.", "norms.")
    #: the class default; set per chain through :attr:`path_choice`
    _path_choice: PathChoice = "count"

    def __init__(self, plan: ChainPlan, *, device: Any = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if self.composed_only is not None and plan.batch_norm:
            raise ValueError(
                f"batch_norm=True is impossible for {type(self).__name__}: {self.composed_only}, and batch norm "
                f"inside the chain needs the expanded path in training (batch statistics of the intermediate maps)"
            )
        self.plan = plan
        factory = {"device": device, "dtype": dtype}
        factors: list[Factor] = []
        for i, k in enumerate(plan.kernels):
            c_in, c_out = plan.channels[i], plan.channels[i + 1]
            if plan.ndim == 0:
                factors.append(nn.Linear(c_in, c_out, bias=plan.bias, **factory))
            else:
                factors.append(
                    _CONV_MODULES[plan.ndim](
                        c_in,
                        c_out,
                        k,
                        stride=plan.factor_stride(i),
                        padding=0,
                        dilation=plan.dilation,
                        groups=plan.groups,
                        bias=plan.bias,
                        **factory,
                    )
                )
        self.factors = nn.ModuleList(factors)
        if plan.batch_norm:
            bn = _BN_MODULES[plan.ndim]
            self.norms = nn.ModuleList(bn(c, **factory) for c in plan.channels[1:])
        else:
            self.norms = None
        self._train_path: TrainPath = "auto" if self.composed_only is None else "composed"
        self._path_by_shape: dict[tuple[int, ...], bool] = {}
        self._cache: tuple[tuple, Tensor, Tensor | None] | None = None

    # ------------------------------------------------------------------ structure
    @property
    def factor_layers(self) -> Sequence[Factor]:
        """The factors, typed (``factors`` is their ``nn.ModuleList``)."""
        return cast("Sequence[Factor]", self.factors)

    @property
    def norm_layers(self) -> Sequence[nn.modules.batchnorm._BatchNorm] | None:
        """The batch norms between factors, typed; ``None`` without batch norm."""
        return cast("Sequence[nn.modules.batchnorm._BatchNorm] | None", self.norms)

    @property
    def depth(self) -> int:
        return self.plan.depth

    @property
    def hidden_channels(self) -> int:
        return self.plan.channels[1] if self.plan.depth > 1 else self.plan.out_channels

    @property
    def train_path(self) -> TrainPath:
        """``"auto"`` (by counted multiply-adds), ``"expanded"`` or ``"composed"``."""
        return self._train_path

    @train_path.setter
    def train_path(self, value: TrainPath) -> None:
        if value not in ("auto", "expanded", "composed"):
            raise ValueError(f"train_path must be 'auto', 'expanded' or 'composed', got {value!r}")
        if self.composed_only is not None:
            if value == "expanded":
                raise ValueError(f"train_path='expanded' is impossible: {self.composed_only}")
            value = "composed"
        if value == "composed" and self.plan.batch_norm:
            raise ValueError(
                "train_path='composed' is impossible with batch_norm=True: batch statistics "
                "depend on the intermediate maps, so the chain must run expanded in training"
            )
        self._train_path = value

    @property
    def path_choice(self) -> PathChoice:
        """How ``train_path="auto"`` picks a path per input shape.

        ``"count"`` (default): by counted multiply-adds (:func:`overparam.cost.prefer_composed`),
        free and deterministic, tuned where compute is the only cost. ``"measure"``: the first
        training forward of each input shape, dtype, device and autocast state times both
        paths (:func:`overparam.path_timing.time_paths`) and keeps the faster, for devices where kernel launches,
        memory traffic or tensor-core shapes decide. Both paths compute the same function, so
        the choice changes speed only. Under ``torch.compile`` or without grad it counts.
        """
        return self._path_choice

    @path_choice.setter
    def path_choice(self, value: PathChoice) -> None:
        if value not in ("count", "measure"):
            raise ValueError(f"path_choice must be 'count' or 'measure', got {value!r}")
        self._path_choice = value
        self._path_by_shape.clear()

    # ------------------------------------------------------------------ effective weights
    def _state_tensors(self) -> list[Tensor]:
        """Every tensor the effective weight depends on: factor weights and biases, BN
        affine parameters and running statistics.

        Reads the modules' ``_parameters``/``_buffers`` directly: this runs on every eval
        forward, and ``nn.Module.__getattr__`` would cost more than a small conv.
        """
        tensors: list[Tensor] = []
        factors = cast(nn.Module, self._modules["factors"])
        for f in cast("dict[str, nn.Module]", factors._modules).values():
            params = f._parameters
            weight = params["weight"] if "weight" in params else cast(Tensor, f.weight)  # parametrized: fresh
            tensors.append(cast(Tensor, weight))
            bias = params.get("bias")
            if bias is not None:
                tensors.append(bias)
        norms = self._modules.get("norms")
        if norms is not None:
            for bn in cast("dict[str, nn.Module]", norms._modules).values():
                params, buffers = bn._parameters, bn._buffers
                for t in (
                    params.get("weight"),
                    params.get("bias"),
                    buffers.get("running_mean"),
                    buffers.get("running_var"),
                ):
                    if t is not None:
                        tensors.append(t)
        return tensors

    def effective_weight_and_bias(self) -> tuple[Tensor, Tensor | None]:
        """Collapse the chain now, with autograd, in the parameters' dtype (never autocast)."""
        factors, norms = self.factor_layers, self.norm_layers
        device_type = factors[0].weight.device.type
        # autocast has no "meta" backend (models built on the meta device for shapes or FLOPs); the
        # context only where autocast is on: torch.export before torch 2.5 cannot trace it
        autocast_on = device_type != "meta" and is_autocast_enabled(device_type)
        no_autocast = torch.autocast(device_type, enabled=False) if autocast_on else nullcontext()
        with no_autocast:
            return collapse_chain(
                self.plan,
                [f.weight for f in factors],
                [f.bias for f in factors],
                [None] * self.depth if norms is None else [bn_affine(bn) for bn in norms],
            )

    def _cached_weight_and_bias(self, tensors: list[Tensor] | None = None) -> tuple[Tensor, Tensor | None]:
        """The effective weight, rebuilt when any factor or BN tensor changed.

        In-place updates (optimizers, EMA, ``load_state_dict``) bump a tensor's ``_version``;
        a replaced tensor changes ``data_ptr``; ``.to()`` clears the cache in ``_apply``.
        """
        if tensors is None:
            tensors = self._state_tensors()
        key = tuple((t._version, t.data_ptr()) for t in tensors) + (torch.is_inference_mode_enabled(),)
        if self._cache is None or self._cache[0] != key:
            with torch.no_grad():
                weight, bias = self.effective_weight_and_bias()
            self._cache = (key, weight, bias)
        return self._cache[1], self._cache[2]

    def _weight_and_bias(self) -> tuple[Tensor, Tensor | None]:
        if is_compiling():
            return self.effective_weight_and_bias()
        tensors = self._state_tensors()
        if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
            return self.effective_weight_and_bias()
        return self._cached_weight_and_bias(tensors)

    @property
    def weight(self) -> Tensor:
        """The effective (collapsed) weight; differentiable when grad is enabled."""
        return self._weight_and_bias()[0]

    @property
    def bias(self) -> Tensor | None:
        """The effective bias, ``None`` when the chain has no factor bias and no batch norm."""
        return self._weight_and_bias()[1]

    def _apply(self, fn, recurse: bool = True):
        self._cache = None
        return super()._apply(fn, recurse)

    # ------------------------------------------------------------------ forward
    def _pad(self, x: Tensor) -> Tensor:
        pads = [p for pair in reversed(self.plan.padding) for p in pair]
        if not any(pads):
            return x
        return F.pad(x, pads, mode=_PAD_MODES[self.plan.padding_mode])

    def _single_layer(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        plan = self.plan
        if plan.ndim == 0:
            return F.linear(x, weight, bias)
        padding: tuple[int, ...] | int | None = plan.conv_padding
        if padding is None:
            x, padding = self._pad(x), 0
        return _CONV_FUNCTIONS[plan.ndim](x, weight, bias, plan.stride, padding, plan.dilation, plan.groups)

    def _prepare_input(self, x: Tensor) -> Tensor:
        """The input as the chain's first factor sees it, before the plan's padding.

        The identity here; a subclass whose stock layer transforms its input first (timm's
        dynamic TensorFlow "same" padding) overrides it. Every path (training expanded or
        composed, eval, ``expanded_forward``, ``composed_forward``) calls it exactly once.
        """
        return x

    def _transform_weight(self, weight: Tensor) -> Tensor:
        """The weight the layer's function convolves with, given the effective weight.

        The identity here; a subclass whose stock layer transforms its weight in every forward
        (timm's weight standardisation) overrides it and sets :attr:`composed_only`. Applied
        by the composed and eval paths; ``weight``, ``fuse()`` and the collapsed state dict
        keep the untransformed effective weight, as the stock layer keeps its parameter.
        """
        return weight

    def expanded_forward(self, x: Tensor) -> Tensor:
        """Run the factors in sequence in the current mode (BN uses running stats in eval)."""
        if self.composed_only is not None:
            raise NotImplementedError(f"{type(self).__name__} has no factor-by-factor forward: {self.composed_only}")
        return self._expanded_forward(self._prepare_input(x))

    def composed_forward(self, x: Tensor) -> Tensor:
        """Build the effective weight with autograd, then run one conv/linear."""
        return self._composed_forward(self._prepare_input(x))

    def _expanded_forward(self, x: Tensor) -> Tensor:
        """:meth:`expanded_forward` of a prepared input.

        All padding is applied once, before the first factor; later factors are "valid".
        Symmetric zero padding is left to the first conv (no padded copy is made and saved
        for backward) unless an identity skip needs the padded input.

        In training, a batch norm between two factors (no skip leaving or entering there) is
        merged into the next factor (:mod:`overparam.bn_merge`): same function, same gradients
        and running statistics as the module, without writing the normalised map.
        """
        plan = self.plan
        lead = None
        first_padding = None
        if plan.ndim == 0:
            lead = x.shape[:-1]
            x = x.reshape(-1, x.shape[-1])
        elif 0 not in plan.skip_sources and plan.conv_padding is not None:
            first_padding = plan.conv_padding
        else:
            x = self._pad(x)
        sources = plan.skip_sources
        saved: dict[int, Tensor] = {0: x} if 0 in sources else {}
        norms = self.norm_layers
        merge = norms is not None and self.training and not is_compiling()
        merged: tuple[Tensor, Tensor] | None = None  # (scale, shift) of the batch norm before this factor
        for index, factor in enumerate(self.factor_layers):  # enumerate(start=1) is beyond torch 2.2's compiler
            i = index + 1
            if i == 1 and first_padding is not None:
                x = _CONV_FUNCTIONS[plan.ndim](
                    x, factor.weight, factor.bias, factor.stride, first_padding, factor.dilation, factor.groups
                )
            elif merged is not None:
                weight, bias = scale_input_channels(factor.weight, factor.bias, *merged, plan.groups)
                x = (
                    F.linear(x, weight, bias)
                    if isinstance(factor, nn.Linear)
                    else factor._conv_forward(x, weight, bias)
                )
                merged = None
            else:
                x = factor(x)
            if norms is not None:
                bn = norms[i - 1]
                if merge and i < plan.depth and i not in sources and not plan.skips_into(i):
                    merged = merge_batch_norm(bn, x)
                if merged is None:
                    x = bn(x)
            for skip in plan.skips_into(i):
                x = x + _crop(saved[skip.source], skip.offset, skip.step, x.shape[2:])
            if i in sources:
                saved[i] = x
        return x if lead is None else x.reshape(*lead, x.shape[-1])

    def _composed_forward(self, x: Tensor) -> Tensor:
        """:meth:`composed_forward` of a prepared input."""
        weight, bias = self.effective_weight_and_bias()
        return self._single_layer(x, self._transform_weight(weight), bias)

    def _prefers_composed(self, x: Tensor) -> bool:
        if self._train_path != "auto":
            return self._train_path == "composed"
        shape = tuple(x.shape)
        # counted for forward + backward: the input's own gradient is only paid when needed
        needs_input_grad = x.requires_grad
        if is_compiling():
            # Traced once per graph and folded to a constant; reading or filling the memo here
            # would guard on its contents and recompile after the first compiled call.
            return prefer_composed(self.plan, shape, needs_input_grad)
        key: tuple = (shape, needs_input_grad)
        measure = self._path_choice == "measure" and not self.plan.batch_norm and torch.is_grad_enabled()
        if measure:
            key += (x.dtype, x.device, is_autocast_enabled(x.device.type))
        choice = self._path_by_shape.get(key)
        if choice is None:
            if measure:
                composed, expanded = time_paths(self, x)
                choice = composed < expanded
            else:
                choice = prefer_composed(self.plan, shape, needs_input_grad)
            self._path_by_shape[key] = choice
        return choice

    def forward(self, x: Tensor) -> Tensor:
        x = self._prepare_input(x)
        if self.training:
            if self._prefers_composed(x):
                return self._composed_forward(x)
            return self._expanded_forward(x)
        weight, bias = self._weight_and_bias()
        return self._single_layer(x, self._transform_weight(weight), bias)

    # ------------------------------------------------------------------ deploy
    def fuse(self) -> nn.Module:
        """The stock ``nn.Linear``/``nn.ConvNd`` computing the same function.

        timm's ``reparameterize_model`` calls this on every module that has it.
        """
        plan = self.plan
        weight, bias = self._weight_and_bias()
        factory = {"device": weight.device, "dtype": weight.dtype}
        if plan.ndim == 0:
            module: Factor = nn.Linear(plan.in_channels, plan.out_channels, bias=bias is not None, **factory)
        else:
            symmetric = all(left == right for left, right in plan.padding)
            module = _CONV_MODULES[plan.ndim](
                plan.in_channels,
                plan.out_channels,
                plan.kernel_size,
                stride=plan.stride,
                padding=tuple(left for left, _ in plan.padding) if symmetric else "same",
                dilation=plan.dilation,
                groups=plan.groups,
                bias=bias is not None,
                padding_mode=plan.padding_mode,
                **factory,
            )
        requires_grad = self.factor_layers[0].weight.requires_grad
        with torch.no_grad():
            module.weight.copy_(weight)
            if bias is not None and module.bias is not None:  # built with a bias exactly then
                module.bias.copy_(bias)
        module.requires_grad_(requires_grad)
        return module.train(self.training)

    def __prepare_scriptable__(self) -> nn.Module:
        """What ``torch.jit.script`` compiles in the chain's place: its collapsed stock layer.

        TorchScript is a deployment format, and the chain in eval mode computes exactly its
        ``fuse()``. PyTorch stores the returned module in the parent, so the eager model given
        to ``torch.jit.script`` is collapsed too: said in a warning, as it ends training the
        chain. A chain in training mode refuses: the fused layer would train as the stock
        layer, silently without the over-parameterization.
        """
        if self.training:
            raise RuntimeError(
                f"torch.jit.script of an over-parameterized layer ({type(self).__name__}) in training mode: "
                f"TorchScript gets the collapsed stock layer, which would train without the chain. Call "
                f".eval() first to script the collapsed model, or collapse it (overparam.collapse(model)); "
                f"train in eager mode or with torch.compile"
            )
        warnings.warn(
            "torch.jit.script compiles over-parameterized layers as their collapsed stock layers and, as "
            "PyTorch stores them in place, collapses the eager model too; script a copy.deepcopy(model) "
            "to keep training it",
            stacklevel=2,
        )
        return self.fuse()

    def extra_repr(self) -> str:
        plan = self.plan
        parts = [f"depth={plan.depth}", f"hidden={self.hidden_channels}"]
        if plan.batch_norm:
            parts.append("batch_norm=True")
        if plan.skips:
            parts.append("skips=" + ",".join(f"{s.source}->{s.target}" for s in plan.skips))
        return ", ".join(parts)


def _crop(source: Tensor, offset: tuple[int, ...], step: tuple[int, ...], size: torch.Size) -> Tensor:
    """Centre-crop ``source`` by ``offset`` and subsample by ``step`` to spatial ``size``."""
    if not offset or (not any(offset) and all(s == 1 for s in step) and source.shape[2:] == size):
        return source
    index = [slice(None), slice(None)]
    for o, s, n in zip(offset, step, size):
        index.append(slice(o, o + s * (n - 1) + 1, s))
    return source[tuple(index)]
