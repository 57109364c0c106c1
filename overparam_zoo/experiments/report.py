"""What a comparison found: per-model statistics over seeds, the verdict, a table and a figure.

The verdict is deliberately conservative. Seeds move top-1 by about as much as
over-parameterization is claimed to, so an op model is called *better* or *worse* than its base
only when Welch's two-sided t-test on the per-seed top-1 accuracies (unequal variances, no
pairing: the two models start from different weights) gives p < 0.05. Anything else is
reported as *no difference*: the gap is within the seed spread. With one seed per model no
call is made. Standard deviations are over seeds (ddof=1).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from overparam_zoo.files import atomic_write

__all__ = [
    "VERDICT_RULE",
    "ALPHA",
    "summarize_model",
    "welch_verdict",
    "markdown_table",
    "plot_comparison",
    "learning_curve_table",
    "plot_learning_curve",
]

ALPHA = 0.05
VERDICT_RULE = (
    "an op model is called better or worse than its base only when Welch's two-sided t-test on the "
    f"per-seed top-1 accuracies gives p < {ALPHA}; otherwise 'no difference' (the gap is within the seed "
    "spread); no call with fewer than 2 seeds. Std is over seeds (ddof=1)."
)


def _stats(values: Sequence[float]) -> dict[str, Any]:
    n = len(values)
    mean = sum(values) / n if n else 0.0
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return {"mean": mean if n else None, "std": std, "per_seed": list(values)}


def welch_verdict(model: Sequence[float], base: Sequence[float]) -> dict[str, Any]:
    """The call for ``model`` against ``base`` (per-seed top-1 in [0, 1]), by :data:`VERDICT_RULE`."""
    difference = (sum(model) / len(model) - sum(base) / len(base)) if model and base else None
    if len(model) < 2 or len(base) < 2:
        return {"difference": difference, "p_value": None, "call": "n/a (fewer than 2 seeds)"}
    from scipy.stats import ttest_ind  # only here: a one-seed comparison (the demo) needs no scipy

    with warnings.catch_warnings():  # nearly identical samples: scipy warns, the p-value stays usable
        warnings.simplefilter("ignore", RuntimeWarning)
        p = float(ttest_ind(model, base, equal_var=False).pvalue)
    if math.isnan(p):  # both constant and equal
        p = 1.0
    call = ("better" if (difference or 0.0) > 0 else "worse") if p < ALPHA else "no difference"
    return {"difference": difference, "p_value": p, "call": call}


def summarize_model(runs: Sequence[dict[str, Any]], base_runs: Sequence[dict[str, Any]] | None) -> dict[str, Any]:
    """Statistics over the seeds of one model; with ``base_runs``, its time ratio and verdict."""
    first = runs[0]
    top1 = [r["top1"] for r in runs]
    train_seconds = _stats([r["train_seconds"] for r in runs])
    summary: dict[str, Any] = {
        "model": first["model"],
        "base": first["base"],
        "zoo": first.get("zoo", "timm"),  # runs written before torchvision models could be compared
        "depth": first["depth"],
        "tag": first["tag"],
        "seeds": [r["seed"] for r in runs],
        "top1": _stats(top1),
        "test_loss": _stats([r["test_loss"] for r in runs]),
        "train_loss_last_epoch": _stats([r["train_loss_last_epoch"] for r in runs]),
        "train_seconds": train_seconds,
        "params_training": first["params_training"],
        "params_deployed": first["params_deployed"],
        "feature_effective_rank": _stats([r["feature_effective_rank"] for r in runs]),
        "weight_effective_rank": _stats([r["weight_effective_rank"] for r in runs]),
        "deployed": None,
        "time_ratio": None,
        "verdict": None,
    }
    if all("train_top1" in r for r in runs):  # runs written before training-set fit was measured have none
        summary["fit"] = {
            "lr": first["lr"],
            "epochs": first["epochs"],
            "train_images": first["train_images"],
            "train_top1": _stats([r["train_top1"] for r in runs]),
            "train_loss": _stats([r["train_loss"] for r in runs]),
        }
    if all(r["deployed"] is not None for r in runs):
        summary["deployed"] = {
            "top1": _stats([r["deployed"]["top1"] for r in runs]),
            "predictions_equal": all(r["deployed"]["predictions_equal"] for r in runs),
            "max_logit_difference": max(r["deployed"]["max_logit_difference"] for r in runs),
        }
    if all(r.get("int8") for r in runs):  # compare --int8 (runs made without it have none)
        summary["int8"] = {
            "top1": _stats([r["int8"]["top1"] for r in runs]),
            "drop": _stats([r["int8"]["drop"] for r in runs]),
            "agreement": _stats([r["int8"]["agreement"] for r in runs]),
            "calibration_images": first["int8"]["calibration_images"],
        }
    if base_runs:
        base_seconds = _stats([r["train_seconds"] for r in base_runs])["mean"]
        summary["time_ratio"] = train_seconds["mean"] / base_seconds
        if first["model"] != first["base"]:
            summary["verdict"] = welch_verdict(top1, [r["top1"] for r in base_runs])
    return summary


def _pm(stats: dict[str, Any], scale: float = 1.0, digits: int = 2) -> str:
    if stats["std"] is None:
        return f"{stats['mean'] * scale:.{digits}f}"
    return f"{stats['mean'] * scale:.{digits}f} ± {stats['std'] * scale:.{digits}f}"


def _row(s: dict[str, Any]) -> list[str]:
    verdict = s["verdict"]
    if verdict is None:
        difference, call = "—", "base"
    else:
        difference = f"{verdict['difference'] * 100:+.2f}"
        p = verdict["p_value"]
        call = verdict["call"] + (f" (p={p:.2g})" if p is not None else "")
    deployed = s["deployed"]
    if deployed is None:
        same = "— (stock)"
    else:
        same = f"{deployed['top1']['mean'] * 100:.2f} ({'=' if deployed['predictions_equal'] else 'NOT ='} trained)"
    return [
        s["model"],
        str(s["depth"]),
        _pm(s["top1"], 100),
        " ".join(f"{v * 100:.2f}" for v in s["top1"]["per_seed"]),
        difference,
        call,
        _pm(s["test_loss"], 1, 3),
        _pm(s["train_seconds"], 1, 0),
        f"{s['time_ratio']:.2f}x" if s["time_ratio"] is not None else "—",
        f"{s['params_training'] / 1e6:.2f}M / {s['params_deployed'] / 1e6:.2f}M",
        _pm(s["feature_effective_rank"], 1, 1),
        _pm(s["weight_effective_rank"], 1, 3),
        same,
    ]


HEADER = [
    "model",
    "depth",
    "top-1 %",
    "top-1 per seed",
    "Δ top-1 (pp)",
    "verdict",
    "test loss",
    "train s",
    "time × base",
    "params train / deployed",
    "feature erank",
    "weight erank",
    "deployed top-1 %",
]


INT8_HEADER = ["INT8 top-1 %", "INT8 drop (pp)", "INT8 agreement %"]
FIT_HEADER = ["lr", "train top-1 %", "train loss"]


def _fit_cells(s: dict[str, Any]) -> list[str]:
    fit = s.get("fit")
    if fit is None:
        return ["—"] * len(FIT_HEADER)
    return [f"{fit['lr']:g}", _pm(fit["train_top1"], 100), _pm(fit["train_loss"], 1, 3)]


def _int8_cells(s: dict[str, Any]) -> list[str]:
    int8 = s.get("int8")
    if int8 is None:
        return ["—"] * len(INT8_HEADER)
    return [_pm(int8["top1"], 100), _pm(int8["drop"], 100), _pm(int8["agreement"], 100)]


def _markdown(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def markdown_table(summaries: Sequence[dict[str, Any]]) -> str:
    """One row per model, in the comparison's order; the fit columns (learning rate, training
    top-1 and loss) and the INT8 columns when any model has them."""
    fit = any(s.get("fit") for s in summaries)
    int8 = any(s.get("int8") for s in summaries)
    rows = [HEADER + (FIT_HEADER if fit else []) + (INT8_HEADER if int8 else [])]
    rows += [_row(s) + (_fit_cells(s) if fit else []) + (_int8_cells(s) if int8 else []) for s in summaries]
    return _markdown(rows)


def learning_curve_table(sizes: Sequence[dict[str, Any]]) -> str:
    """One row per model, one column per training-set size: test top-1 (mean ± std over
    seeds), the training top-1 beside it, and for an op model its verdict against its base."""
    models = list(dict.fromkeys(m["model"] for size in sizes for m in size["models"]))
    rows = [["model"] + [f"{size['train_size']} ({size['train_images']} images)" for size in sizes]]
    for name in models:
        row = [name]
        for size in sizes:
            s = next((m for m in size["models"] if m["model"] == name), None)
            if s is None:
                row.append("—")
                continue
            cell = _pm(s["top1"], 100)
            if s.get("fit"):
                cell += f" (train {s['fit']['train_top1']['mean'] * 100:.1f})"
            verdict = s.get("verdict")
            if verdict is not None and verdict["call"] in ("better", "worse"):
                cell += f" {verdict['call']}"
            row.append(cell)
        rows.append(row)
    return _markdown(rows)


def _families(summaries: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Lines of the depth plots: one per (base, tag), each starting at the stock base (depth 1)."""
    stock = {s["model"]: s for s in summaries if s["model"] == s["base"]}
    families: dict[str, list[dict[str, Any]]] = {}
    for s in summaries:
        if s["model"] == s["base"]:
            continue
        label = s["base"] if s["tag"] == "plain" else f"{s['base']} {s['tag']}"
        line = families.setdefault(label, [stock[s["base"]]] if s["base"] in stock else [])
        line.append(s)
    return {label: sorted(line, key=lambda s: s["depth"]) for label, line in families.items()}


def plot_comparison(summaries: Sequence[dict[str, Any]], path: str | Path, title: str) -> Path:
    """A PNG: top-1 per model (mean ± std, seeds as dots; one panel per base, so each has its own
    scale), then feature and weight effective rank vs depth. Written atomically. Uses
    matplotlib's object API, so no global backend is changed."""
    from matplotlib.figure import Figure

    path = Path(path)
    bases = list(dict.fromkeys(s["base"] for s in summaries))
    fig = Figure(figsize=(4.4 * (len(bases) + 2), 4.8), layout="constrained")
    *acc_axes, ax_feat, ax_weight = fig.subplots(1, len(bases) + 2)
    for ax_acc, base in zip(acc_axes, bases):
        models = [s for s in summaries if s["base"] == base]
        for i, s in enumerate(models):
            seeds = [v * 100 for v in s["top1"]["per_seed"]]
            ax_acc.errorbar(i, s["top1"]["mean"] * 100, yerr=(s["top1"]["std"] or 0) * 100, fmt="o", capsize=4)
            ax_acc.scatter([i + 0.15] * len(seeds), seeds, s=10, color="0.5", zorder=3)
        ax_acc.set_xticks(range(len(models)), [s["model"] for s in models], rotation=30, ha="right", fontsize=8)
        ax_acc.set_xlim(-0.5, len(models) - 0.5)
        ax_acc.set_ylabel("test top-1 % (mean ± std; dots: seeds)")
        ax_acc.set_title(f"{base}: accuracy", fontsize=10)
    for ax, key, short, label in (
        (ax_feat, "feature_effective_rank", "feature erank", "effective rank of penultimate features (test set)"),
        (ax_weight, "weight_effective_rank", "weight erank", "mean over layers of effective rank / max rank"),
    ):
        for name, line in _families(summaries).items():
            ax.errorbar(
                [s["depth"] for s in line],
                [s[key]["mean"] for s in line],
                yerr=[s[key]["std"] or 0 for s in line],
                marker="o",
                capsize=4,
                label=name,
            )
        depths = sorted({s["depth"] for s in summaries})
        ax.set_xscale("log", base=2)
        ax.set_xticks(depths, [str(d) for d in depths])
        ax.set_xlabel("depth of each chain (1 = stock)")
        ax.set_ylabel(label)
        ax.set_title(f"{short} vs depth", fontsize=10)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110))
    return path


def plot_learning_curve(sizes: Sequence[dict[str, Any]], path: str | Path, title: str) -> Path:
    """A PNG: test top-1 against the number of training images (mean ± std over seeds, a line
    per model), and the training minus test top-1 (how much each model overfits). Written
    atomically, with matplotlib's object API."""
    from matplotlib.figure import Figure

    path = Path(path)
    fig = Figure(figsize=(10, 4.2), layout="constrained")
    ax_test, ax_gap = fig.subplots(1, 2)
    models = list(dict.fromkeys(m["model"] for size in sizes for m in size["models"]))
    for name in models:
        points = [(size["train_images"], m) for size in sizes for m in size["models"] if m["model"] == name]
        xs = [x for x, _ in points]
        ax_test.errorbar(
            xs,
            [m["top1"]["mean"] * 100 for _, m in points],
            yerr=[(m["top1"]["std"] or 0) * 100 for _, m in points],
            marker="o",
            capsize=3,
            label=name,
        )
        fitted = [(x, m) for x, m in points if m.get("fit")]
        if fitted:
            ax_gap.plot(
                [x for x, _ in fitted],
                [(m["fit"]["train_top1"]["mean"] - m["top1"]["mean"]) * 100 for _, m in fitted],
                marker="o",
                label=name,
            )
    for ax, label in ((ax_test, "test top-1 % (mean ± std over seeds)"), (ax_gap, "train top-1 - test top-1 (pp)")):
        ax.set_xscale("log")
        ax.set_xlabel("training images")
        ax.set_ylabel(label)
    ax_test.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110))
    return path
