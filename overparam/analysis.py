"""Effective rank and singular spectra of layers, models and embeddings.

The effective rank of Roy & Vetterli (2007) is ``exp(H(p))`` where ``p = s / sum(s)`` are the
singular values ``s`` normalised to sum 1 and ``H`` is the Shannon entropy (natural log, with
``0 log 0 = 0``). It lies between 1 (rank one) and the number of singular values (all equal),
and it is what Huh et al., "The Low-Rank Simplicity Bias in Deep Networks" (TMLR 2023), use to
show that deeper linear chains learn lower-rank solutions.

Everything is computed in float64, on the effective (collapsed) weight of a chain, so an
over-parameterized model and its :func:`~overparam.convert.collapse` give identical numbers.
This module depends on torch only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .chain import OverparamChain

__all__ = [
    "LayerSpectrum",
    "SpectrumInput",
    "as_matrix",
    "singular_values",
    "effective_rank",
    "effective_rank_from_singular_values",
    "spectrum",
    "embedding_effective_rank",
]

_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, OverparamChain)

SpectrumInput = Tensor | nn.Module
"""A 2-D matrix, a conv weight ``[out, in/groups, *kernel]``, or a Linear/ConvNd/chain layer."""


def _layer_kind(module: nn.Module) -> str:
    return type(module).__name__


def as_matrix(x: SpectrumInput) -> Tensor:
    """The matrix whose singular values describe ``x``, detached, in float64.

    A conv weight ``[out, in/groups, *kernel]`` is read as ``[out, in/groups * prod(kernel)]``
    (``weight.flatten(1)``, the usual reading, also for grouped and depthwise convs: the
    rows of all groups are stacked). A layer contributes its weight; an
    :class:`~overparam.chain.OverparamChain` its effective (collapsed) weight.

    Args:
        x: a tensor with at least 2 dims, or an ``nn.Linear``/``nn.ConvNd``/``OverparamChain``.

    Raises:
        TypeError: for a module that is not one of those layers.
        ValueError: for a tensor with fewer than 2 dims, no elements, or non-finite values.
    """
    if isinstance(x, nn.Module):
        if not isinstance(x, _LAYERS):
            names = ", ".join(c.__name__ for c in _LAYERS)
            raise TypeError(f"expected a tensor or one of {names}, got {type(x).__name__}")
        with torch.no_grad():
            weight = x.weight
        x = weight
    if not isinstance(x, Tensor):
        raise TypeError(f"expected a tensor or a layer, got {type(x).__name__}")
    if x.dim() < 2:
        raise ValueError(f"expected a matrix or a conv weight (>= 2 dims), got a tensor of shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"cannot take the spectrum of an empty tensor of shape {tuple(x.shape)}")
    matrix = x.detach().to(torch.float64).reshape(x.shape[0], -1)
    if not bool(torch.isfinite(matrix).all()):
        raise ValueError(f"the weight of shape {tuple(x.shape)} contains NaN or infinite values")
    return matrix


def singular_values(x: SpectrumInput) -> Tensor:
    """Singular values of ``x`` (see :func:`as_matrix`), in float64, in descending order.

    Args:
        x: a matrix, a conv weight, or a Linear/ConvNd/OverparamChain layer.

    Returns:
        A 1-D float64 tensor of ``min(rows, cols)`` values, on ``x``'s device.
    """
    matrix = as_matrix(x)
    rows, cols = matrix.shape
    if rows > cols:
        matrix = matrix.T
        rows, cols = cols, rows
    if cols >= 2 * rows:
        # Same singular values as the R of a QR of the tall transpose, and much faster than a
        # direct SVD of a very wide matrix (e.g. a 3x3 conv weight [c, 9c]) on CPU LAPACK.
        matrix = torch.linalg.qr(matrix.T, mode="r")[1]
    return torch.linalg.svdvals(matrix)


def effective_rank_from_singular_values(s: Tensor) -> float:
    """``exp`` of the Shannon entropy of ``s / s.sum()`` (zero values contribute 0).

    Args:
        s: non-negative singular values (any order).

    Returns:
        The effective rank, between 1 and ``len(s)``; 0.0 when every value is zero.
    """
    s = s.detach().to(torch.float64).flatten()
    total = s.sum()
    if not float(total) > 0:
        return 0.0
    p = s / total
    p = p[p > 0]
    entropy = -(p * p.log()).sum()
    return float(entropy.exp())


def effective_rank(x: SpectrumInput) -> float:
    """Effective rank (Roy & Vetterli, 2007) of a matrix, conv weight or layer.

    ``exp(-sum_i p_i log p_i)`` with ``p = s / sum(s)`` over the singular values ``s``,
    computed in float64. The identity of size ``n`` gives ``n``, a rank-one matrix 1, and
    singular values ``[3, 1]`` give ``exp(-(0.75 log 0.75 + 0.25 log 0.25)) ~= 1.7548``.

    Args:
        x: a 2-D tensor; a conv weight ``[out, in/groups, *kernel]`` (read as
            ``[out, in/groups * prod(kernel)]``); or an ``nn.Linear``/``nn.ConvNd``/
            ``OverparamChain`` (its effective weight).

    Returns:
        The effective rank as a Python float (0.0 for an all-zero matrix).
    """
    return effective_rank_from_singular_values(singular_values(x))


@dataclass(frozen=True)
class LayerSpectrum:
    """The spectrum of one layer of a model.

    Attributes:
        path: the module path in the model (``named_modules`` name, ``""`` for the root).
        kind: the module's class name (e.g. ``Conv2d``, ``OverparamConv2d``).
        shape: the shape of the (effective) weight.
        singular_values: float64 singular values of the weight matrix, descending.
        effective_rank: :func:`effective_rank` of the weight.
    """

    path: str
    kind: str
    shape: tuple[int, ...]
    singular_values: Tensor
    effective_rank: float

    @property
    def max_rank(self) -> int:
        """The number of singular values, ``min(rows, cols)`` of the weight matrix."""
        return int(self.singular_values.numel())

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready dict (singular values as a list of floats)."""
        return {
            "path": self.path,
            "kind": self.kind,
            "shape": list(self.shape),
            "effective_rank": self.effective_rank,
            "max_rank": self.max_rank,
            "singular_values": [float(v) for v in self.singular_values.tolist()],
        }


def spectrum(model: nn.Module) -> list[LayerSpectrum]:
    """Singular values and effective rank of every Linear/ConvNd/OverparamChain layer.

    Layers are listed in ``named_modules`` order. A chain counts as one layer (its effective
    weight); its factors are not listed. Subclasses of the stock layers (e.g. timm's
    ``Conv2dSame``) are included; a layer without a weight tensor is skipped. The numbers
    for an over-parameterized model and for its ``collapse()`` are identical.

    Args:
        model: any ``nn.Module`` (a single layer is reported with path ``""``).

    Returns:
        One :class:`LayerSpectrum` per layer.
    """
    out: list[LayerSpectrum] = []
    chains: list[str] = []
    for path, module in model.named_modules():
        if any(path.startswith(c + ".") or c == "" for c in chains):
            continue
        if isinstance(module, OverparamChain):
            chains.append(path)
        elif not isinstance(module, _LAYERS) or not isinstance(getattr(module, "weight", None), Tensor):
            continue
        with torch.no_grad():
            weight = module.weight
        s = singular_values(weight)
        out.append(
            LayerSpectrum(
                path=path,
                kind=_layer_kind(module),
                shape=tuple(weight.shape),
                singular_values=s.cpu(),
                effective_rank=effective_rank_from_singular_values(s),
            )
        )
    return out


def embedding_effective_rank(features: Tensor, *, center: bool = False) -> float:
    """Effective rank of the Gram matrix of a batch of embeddings (Huh et al., 2023).

    The paper measures how low-rank a network's *representation* is by the effective rank of
    the ``N x N`` Gram (kernel) matrix ``K = Phi Phi^T`` of the embeddings ``Phi`` of ``N``
    inputs, each flattened to a vector. ``K``'s singular values are the squared singular
    values of ``Phi``, so this is more peaked (lower) than ``effective_rank(Phi)`` unless the
    spectrum is flat: e.g. embeddings with singular values ``[3, 1]`` give ``K`` with
    ``[9, 1]`` and an effective rank of ``exp(-(0.9 log 0.9 + 0.1 log 0.1)) ~= 1.384``.

    Args:
        features: ``[N, ...]`` embeddings, one row per sample (flattened per sample).
        center: subtract the mean embedding first (the Gram matrix of centred features).

    Returns:
        The effective rank of ``K``, between 1 and ``min(N, feature dim)`` (0.0 if all zero).
    """
    if features.dim() < 1 or features.shape[0] == 0:
        raise ValueError(f"expected a batch of features [N, ...] with N >= 1, got shape {tuple(features.shape)}")
    phi = features.detach().to(torch.float64).reshape(features.shape[0], -1)
    if center:
        phi = phi - phi.mean(dim=0, keepdim=True)
    gram = phi @ phi.T
    # K is symmetric PSD: its singular values are its eigenvalues (clamped against rounding).
    s = torch.linalg.eigvalsh(gram).clamp_min(0).flip(0)
    return effective_rank_from_singular_values(s)
