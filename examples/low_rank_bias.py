"""The low-rank simplicity bias, on matrix completion: deeper linear chains find lower rank.

A rank-``r`` matrix ``M`` (``n x n``) is observed on a random subset of its entries. We learn
``W``, the effective weight of an ``OverparamLinear(n, n, depth=L)`` chain, by gradient descent
on the squared error over the observed entries only. The problem is under-determined: every
``W`` that matches the observed entries fits the data, and the choice among them is made by
the parameterization alone. A single layer (``L = 1``) leaves the unobserved entries where
they started (near zero), a full-rank answer; deeper chains drift towards low effective rank
and, because ``M`` is low rank, fill in the missing entries (Huh et al., TMLR 2023; Arora et
al., NeurIPS 2019).

    python examples/low_rank_bias.py                       # ~1-2 minutes on 2 CPU cores
    python examples/low_rank_bias.py --depths 1 2 4 8 --seeds 0 1 2 --out docs/low_rank_bias.png

Prints a table of the effective rank of the learned weight and the relative test error on
the unobserved entries per depth (mean and std over seeds), and saves a figure (needs
matplotlib: ``pip install overparam-zoo[plot]``).
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

import torch

from overparam import OverparamLinear, effective_rank, init_chain_, singular_values


@dataclass
class Result:
    depth: int
    seed: int
    effective_rank: float
    test_error: float
    train_loss: float
    singular_values: torch.Tensor


def make_problem(size: int, rank: int, observed: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A rank-``rank`` target with entries of variance 1, and a mask of observed entries."""
    g = torch.Generator().manual_seed(seed)
    u, v = torch.randn(size, rank, generator=g), torch.randn(size, rank, generator=g)
    target = u @ v.T / rank**0.5
    mask = torch.rand(size, size, generator=g) < observed
    return target, mask


def fit(depth: int, seed: int, args: argparse.Namespace) -> Result:
    target, mask = make_problem(args.size, args.rank, args.observed, seed)
    torch.manual_seed(seed)
    layer = OverparamLinear(args.size, args.size, depth=depth, bias=False)
    # the same small effective scale at every depth: only the parameterization differs
    init_chain_(layer, weight_std=args.init_std)
    optimizer = torch.optim.SGD(layer.parameters(), lr=args.lr)
    for _ in range(args.steps):
        weight = layer.weight  # the effective weight, composed with autograd through the factors
        loss = (weight - target)[mask].pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        weight = layer.weight
        train_loss = float((weight - target)[mask].pow(2).mean())
        test_error = float((weight - target)[~mask].norm() / target[~mask].norm())
    return Result(depth, seed, effective_rank(layer), test_error, train_loss, singular_values(layer))


def mean_std(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):6.3f} ± {spread:5.3f}"


def print_table(results: list[Result], args: argparse.Namespace) -> None:
    seeds = sorted({r.seed for r in results})
    target_ranks = [effective_rank(make_problem(args.size, args.rank, args.observed, s)[0]) for s in seeds]
    print(
        f"matrix completion: {args.size}x{args.size}, rank {args.rank}, {args.observed:.0%} of entries observed, "
        f"{args.steps} SGD steps (lr {args.lr}), init std {args.init_std:g}, seeds {seeds}"
    )
    print(f"target effective rank: {statistics.mean(target_ranks):.3f} (max {args.size})")
    print(f"{'depth':>5}  {'effective rank':>15}  {'test error':>15}  {'train loss':>10}")
    for depth in args.depths:
        rows = [r for r in results if r.depth == depth]
        train = statistics.mean(r.train_loss for r in rows)
        print(
            f"{depth:>5}  {mean_std([r.effective_rank for r in rows]):>15}  "
            f"{mean_std([r.test_error for r in rows]):>15}  {train:>10.1e}"
        )


def plot(results: list[Result], args: argparse.Namespace) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed, no figure saved: pip install overparam-zoo[plot]")
        return
    fig, (curves, bars) = plt.subplots(1, 2, figsize=(9, 3.4), layout="constrained")
    colors = plt.get_cmap("viridis")
    for i, depth in enumerate(args.depths):
        rows = [r for r in results if r.depth == depth]
        color = colors(i / max(len(args.depths) - 1, 1))
        for j, r in enumerate(rows):
            s = r.singular_values / r.singular_values[0]
            curves.semilogy(
                range(1, len(s) + 1), s.tolist(), color=color, alpha=0.8, label=None if j else f"depth {depth}"
            )
    curves.axvline(args.rank + 0.5, color="0.6", linestyle=":", linewidth=1)
    curves.set_ylim(1e-4, 1.5)
    curves.set_xlabel("index i")
    curves.set_ylabel(r"$\sigma_i / \sigma_1$ of the learned weight")
    curves.set_title("singular values (one curve per seed)")
    curves.legend(fontsize=8)

    x = list(range(len(args.depths)))
    ranks = [statistics.mean(r.effective_rank for r in results if r.depth == d) for d in args.depths]
    errors = [statistics.mean(r.test_error for r in results if r.depth == d) for d in args.depths]
    bars.bar(x, ranks, color=[colors(i / max(len(x) - 1, 1)) for i in x])
    bars.axhline(args.rank, color="0.6", linestyle=":", linewidth=1)
    bars.set_xticks(x, [str(d) for d in args.depths])
    bars.set_xlabel("depth")
    bars.set_ylabel("effective rank (bars)")
    twin = bars.twinx()
    twin.plot(x, errors, "o-", color="crimson")
    twin.set_ylim(0, max(1.05, max(errors) * 1.05))
    twin.set_ylabel("test error on unobserved entries (dots)", color="crimson")
    bars.set_title("mean over seeds")
    fig.savefig(args.out, dpi=90)
    print(f"saved {args.out}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depths", type=int, nargs="+", default=[1, 2, 4, 8], help="chain depths")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="random seeds (problem and init)")
    parser.add_argument("--steps", type=int, default=6000, help="SGD steps per run")
    parser.add_argument("--lr", type=float, default=0.2, help="SGD learning rate")
    parser.add_argument("--size", type=int, default=32, help="the matrix is size x size")
    parser.add_argument("--rank", type=int, default=2, help="rank of the target matrix")
    parser.add_argument("--observed", type=float, default=0.3, help="fraction of entries observed")
    parser.add_argument("--init-std", type=float, default=1e-3, help="std of the effective weight at init")
    parser.add_argument("--out", default="low_rank_bias.png", help="where to save the figure")
    args = parser.parse_args(argv)
    # the matrices are tiny: extra threads only add synchronisation (and suffer on a busy machine)
    torch.set_num_threads(1)
    start = time.perf_counter()
    results = []
    for depth in args.depths:
        for seed in args.seeds:
            results.append(fit(depth, seed, args))
    print_table(results, args)
    plot(results, args)
    print(f"wall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
