"""Expanding stock weights into a chain's factors (the inverse of the collapse).

Like ``right_inverse`` in ``torch.nn.utils.parametrize``: given a stock layer's weight and
bias, set the factors so the chain, in eval, computes the same function. When the first
factor carries the whole kernel the split is a balanced SVD, exact whenever the hidden width
can hold the weight's rank; batch norms start as the identity and an identity skip over the
whole chain is subtracted first. Otherwise the best split is fitted and its error reported.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .chain import OverparamChain
from .state import describe_mismatch

__all__ = ["expand_into_", "expand_pretrained"]


def _identity_skip_target(chain: OverparamChain, weight: Tensor) -> Tensor:
    """The part of ``weight`` the factors must carry, once identity skips are removed."""
    plan = chain.plan
    if not plan.skips:
        return weight
    if [(s.source, s.target) for s in plan.skips] != [(0, plan.depth)]:
        raise NotImplementedError(
            f"exact expansion supports one identity skip over the whole chain (residual_intervals=-1), "
            f"got skips {[(s.source, s.target) for s in plan.skips]}"
        )
    identity = torch.zeros_like(weight)
    per_group = weight.shape[1]
    centre = tuple(k // 2 for k in weight.shape[2:])
    rows = torch.arange(weight.shape[0])
    index = (rows, rows % per_group, *[torch.full_like(rows, c) for c in centre])
    identity[index] = 1
    return weight - identity


def _svd_split(chain: OverparamChain, target: Tensor) -> None:
    """Balanced split ``W = (U S^{1/L}) diag(S^{1/L})... (S^{1/L} V^T)`` per group."""
    plan = chain.plan
    g, depth = plan.groups, plan.depth
    out_ch, in_per_group = target.shape[:2]
    kernel = target.shape[2:]
    hidden_per_group = plan.channels[1] // g if depth > 1 else out_ch // g
    rows = target.reshape(g, out_ch // g, in_per_group * math.prod(kernel)).double()
    u, s, vh = torch.linalg.svd(rows, full_matrices=False)
    rank = min(s.shape[-1], hidden_per_group)
    u, s, vh = u[..., :rank], s[..., :rank], vh[..., :rank, :]
    root = s.pow(1.0 / depth)

    def padded(matrix: Tensor, rows_to: int | None, cols_to: int | None) -> Tensor:
        r = rows_to - matrix.shape[-2] if rows_to else 0
        c = cols_to - matrix.shape[-1] if cols_to else 0
        return torch.nn.functional.pad(matrix, (0, c, 0, r))

    first = padded(root.unsqueeze(-1) * vh, hidden_per_group, None)  # [g, h/g, in/g*K]
    last = padded(u * root.unsqueeze(-2), None, hidden_per_group)  # [g, out/g, h/g]
    middle = padded(torch.diag_embed(root), hidden_per_group, hidden_per_group)
    factors = chain.factor_layers
    with torch.no_grad():
        w0 = factors[0].weight
        w0.copy_(first.reshape(w0.shape))
        for f in factors[1:-1]:
            f.weight.copy_(middle.reshape(f.weight.shape))
        wl = factors[-1].weight
        if depth > 1:
            wl.copy_(last.reshape(wl.shape))
        else:
            w0.copy_((u * s.unsqueeze(-2) @ vh).reshape(w0.shape))


def _fit_split(chain: OverparamChain, target: Tensor, steps: int) -> None:
    """Least-squares fit of the factors for splits with no closed form (several big kernels)."""
    params = [f.weight for f in chain.factor_layers]
    opt = torch.optim.Adam(params, lr=1e-2)
    scale = target.norm().clamp_min(1e-12)
    for _ in range(steps):
        weight, _ = chain.effective_weight_and_bias()
        loss = ((weight - target).norm() / scale) ** 2
        opt.zero_grad()
        loss.backward()
        opt.step()


def expand_into_(chain: OverparamChain, weight: Tensor, bias: Tensor | None = None, *, fit_steps: int = 500) -> float:
    """Set ``chain``'s factors so that, in eval, it computes the stock ``weight``/``bias``.

    Args:
        chain: the over-parameterized layer (its shape must match ``weight``).
        weight: the stock layer's weight ``[out, in/groups, *kernel]`` (``[out, in]`` for Linear).
        bias: the stock bias, or ``None``.
        fit_steps: optimisation steps for splits with no closed form.

    Returns:
        The relative Frobenius error of the resulting effective weight (0 up to rounding when
        an exact split exists: first factor carries the whole kernel and width >= 1).

    Raises:
        ValueError: if the shapes do not match the chain.
        NotImplementedError: for skip structures other than one skip over the whole chain.
    """
    plan = chain.plan
    expected = plan.weight_shape
    if tuple(weight.shape) != expected:
        raise ValueError(f"weight of shape {tuple(weight.shape)} does not fit this chain, expected {expected}")
    if (bias is not None) and not plan.has_bias:
        raise ValueError("a stock bias cannot be expanded into a chain with no factor bias and no batch norm")
    with torch.no_grad():
        for f in chain.factor_layers:
            if f.bias is not None:
                f.bias.zero_()
        norms = chain.norm_layers
        if norms is not None:
            for bn in norms:
                bn.reset_parameters()
                if bn.running_var is not None:  # a chain's batch norms track statistics
                    bn.running_var.fill_(1.0 - bn.eps)
    target = _identity_skip_target(chain, weight.detach().to(chain.factor_layers[0].weight.dtype))
    single_kernel = all(all(k == 1 for k in ks) for ks in plan.kernels[1:])
    if single_kernel:
        _svd_split(chain, target)
    else:
        with torch.enable_grad():
            _fit_split(chain, weight.detach(), fit_steps)
    with torch.no_grad():
        if bias is not None:
            norms = chain.norm_layers
            shift = chain.factor_layers[-1].bias if plan.bias or norms is None else norms[-1].bias
            assert shift is not None  # plan.has_bias: the last factor's bias, else the last batch norm's
            shift.copy_(bias)
        effective, _ = chain.effective_weight_and_bias()
        return float((effective - weight).norm() / weight.norm().clamp_min(1e-300))


def expand_pretrained(model: torch.nn.Module, state_dict: dict[str, Tensor]) -> dict[str, float]:
    """Load a stock state dict into an op model: every chain gets its layer's weights expanded
    into factors (:func:`expand_into_`), every other tensor is copied.

    Args:
        model: the over-parameterized model (chains at the stock layers' paths).
        state_dict: a state dict of the unmodified architecture (a chain's own tensors, such
            as a ScaledStdConv2d chain's gain, are copied like every other tensor).

    Returns:
        Per chain path, the relative error of its expansion (0 up to rounding when exact).

    Raises:
        ValueError: naming the missing, unexpected or misshapen keys, before anything changes.
    """
    chains = {path: m for path, m in model.named_modules() if isinstance(m, OverparamChain)}
    collapsed = tuple(f"{p}.{prefix}" if p else prefix for p in chains for prefix in OverparamChain.COLLAPSED_PREFIXES)
    own = {k: v for k, v in model.state_dict().items() if not k.startswith(collapsed)}
    for path, chain in chains.items():
        own[f"{path}.weight"] = chain.plan.weight_shape
        if chain.plan.bias:
            own[f"{path}.bias"] = (chain.plan.out_channels,)
    mismatch = describe_mismatch(own, state_dict)
    if mismatch:
        raise ValueError(f"the state dict does not fit the stock architecture of this model: {mismatch}")
    errors = {
        path: expand_into_(chain, state_dict[f"{path}.weight"], state_dict.get(f"{path}.bias"))
        for path, chain in chains.items()
    }
    rest = {k: v for k, v in state_dict.items() if not any(k == f"{p}.weight" or k == f"{p}.bias" for p in chains)}
    model.load_state_dict(rest, strict=False)
    return errors
