"""Timing a chain's two training paths, for ``path_choice = "measure"``.

Invariant: timing changes which path runs, never what is computed (both paths compute the same
function). Each path is one forward + backward on a copy of the input, gradients taken with
``torch.autograd.grad`` so no ``.grad`` is touched, device-synchronised, after a warm-up run,
in alternating order so drift does not favour one path.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from .chain import OverparamChain

__all__ = ["time_paths"]


def time_paths(chain: OverparamChain, x: Tensor, repeats: int = 3) -> tuple[float, float]:
    """Median seconds of one forward + backward of ``chain``'s composed and of its expanded
    path on a prepared input like ``x`` (in the current autocast state).

    Raises:
        ValueError: for a chain with batch norm (or a composed-only one): it has a single
            training path, so there is nothing to time.
    """
    if chain.plan.batch_norm or chain.composed_only is not None:
        raise ValueError(f"{type(chain).__name__} has a single training path here; nothing to time")
    probe = x.detach().requires_grad_(x.requires_grad)
    params = [p for p in chain.parameters() if p.requires_grad]
    inputs = params + ([probe] if probe.requires_grad else [])
    sync: Callable[[], None] = torch.cuda.synchronize if probe.is_cuda else (lambda: None)

    def run(forward: Callable[[Tensor], Tensor]) -> float:
        sync()
        start = time.perf_counter()
        out = forward(probe)
        if inputs:
            torch.autograd.grad(out, inputs, torch.ones_like(out), allow_unused=True)
        sync()
        return time.perf_counter() - start

    paths = (chain._composed_forward, chain._expanded_forward)
    for forward in paths:  # warm-up: kernel selection, allocator
        run(forward)
    times: tuple[list[float], list[float]] = ([], [])
    for r in range(repeats):
        for i in (0, 1) if r % 2 == 0 else (1, 0):
            times[i].append(run(paths[i]))
    return statistics.median(times[0]), statistics.median(times[1])
