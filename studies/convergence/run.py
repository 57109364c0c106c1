"""The convergence study: when does linear over-parameterization pay on images?

The protocol is ``docs/study/protocol.md`` (written before any of these runs). This script is
that protocol as data: each *cell* is one learning curve (a model and its variants, one dataset,
one optimizer and weight decay, several training-set sizes, 5 seeds, each model at its own
learning rate from a validation sweep), run by :func:`overparam_zoo.run_learning_curve` into
``docs/study/<cell>/``. Every finished run is a file there, so the study resumes where it stopped:

    python studies/convergence/run.py                    # every cell, in priority order
    python studies/convergence/run.py --cells effgn-digits-sgd resnet18-digits-sgd
    python studies/convergence/run.py --report           # docs/study/results.md from the JSON

The study's own variants (batch norm in the chains of a model without it, a small start) are
two recipes beside this file, registered here as a user registers theirs.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
OUT = ROOT / "docs" / "study"

SEEDS = 5
UPDATES = 600  # optimizer updates per run, whatever the training-set size
BATCH_SIZE = 32
INPUT_SIZE = 32
VALIDATION_FRACTION = 0.2
LRS = {"sgd": (0.003, 0.01, 0.03, 0.1), "adamw": (3e-4, 1e-3, 3e-3)}
WEIGHT_DECAY = {"sgd": 5e-4, "adamw": 0.05}

SMALL = "test_efficientnet_gn"  # timm's tiny EfficientNet with GroupNorm: no batch norm anywhere
SMALL_ALL = tuple(f"{SMALL}{v}" for v in ("", "_op_d2", "_op_d4", "_op_d2_small", "_op_d4_small"))
SMALL_CORE = (SMALL, f"{SMALL}_op_d2", f"{SMALL}_op_d4")
RESNET = ("resnet18", "resnet18_op_d2", "resnet18_op_d4", "resnet18_op_d2_bn")


@dataclass(frozen=True)
class Cell:
    """One learning curve of the study."""

    name: str
    models: tuple[str, ...]
    dataset: str
    sizes: tuple[int | None, ...]  # images per class; None: all
    opt: str = "sgd"
    weight_decay: bool = True

    @property
    def lrs(self) -> tuple[float, ...]:
        return LRS[self.opt]

    def settings(self):
        from overparam_zoo import TrainSettings

        return TrainSettings(
            epochs=1,  # replaced by ceil(UPDATES / batches per epoch) for each size
            batch_size=BATCH_SIZE,
            input_size=INPUT_SIZE,
            opt=self.opt,
            lr=self.lrs[0],  # unused: every model's rate comes from the sweep
            weight_decay=WEIGHT_DECAY[self.opt] if self.weight_decay else 0.0,
            sched="cosine",
            warmup_epochs=0,
            smoothing=0.0,
            threads=1,
        )


#: in priority order: the main question first (the small model, both datasets, the paper's
#: optimizer), then resnet18, then the optimizer and weight-decay factors
CELLS = (
    Cell("effgn-digits-sgd", SMALL_ALL, "digits", (10, 30, None)),
    Cell("resnet18-digits-sgd", RESNET, "digits", (10, None)),
    Cell("effgn-mnist5k-sgd", SMALL_ALL, "mnist5k", (10, 50, None)),
    Cell("effgn-digits-adamw", SMALL_CORE, "digits", (10, None), opt="adamw"),
    Cell("effgn-digits-sgd-nowd", SMALL_CORE, "digits", (10, None), weight_decay=False),
    Cell("resnet18-mnist5k-sgd", RESNET[:3], "mnist5k", (10, None)),
)


def register_study_variants() -> None:
    from overparam_zoo import load_recipe, register_recipe

    for path in sorted(HERE.glob("*.yaml")):
        register_recipe(load_recipe(path))


def run(cells: list[Cell]) -> None:
    from overparam_zoo import run_learning_curve

    register_study_variants()
    for cell in cells:
        start = time.perf_counter()
        print(f"== {cell.name}", flush=True)
        run_learning_curve(
            cell.models,
            cell.sizes,
            out=OUT / cell.name,
            seeds=SEEDS,
            dataset=cell.dataset,
            settings=cell.settings(),
            lr_sweep=cell.lrs,
            validation_fraction=VALIDATION_FRACTION,
            updates=UPDATES,
            figure=False,
        )
        print(f"== {cell.name} done in {time.perf_counter() - start:.0f} s", flush=True)


# ---------------------------------------------------------------------------------- report
def _label(size: int | None) -> str:
    from overparam_zoo.experiments.datasets import train_size_label

    return train_size_label(size)


def _finished(cell: Cell, out: Path = OUT) -> list[dict[str, Any]]:
    """The results.json of each size of ``cell`` that has any finished run, in the cell's order."""
    found = []
    for size in cell.sizes:
        path = out / cell.name / f"train-{_label(size)}" / "results.json"
        if path.is_file():
            found.append(json.loads(path.read_text()))
    return found


def _pm(stats: dict[str, Any], scale: float = 100, digits: int = 1) -> str:
    if stats["std"] is None:
        return f"{stats['mean'] * scale:.{digits}f}"
    return f"{stats['mean'] * scale:.{digits}f} ± {stats['std'] * scale:.{digits}f}"


def _accuracy_table(results: list[dict[str, Any]]) -> list[str]:
    sizes = [f"{r['data']['train_size']} ({r['data']['train_images']})" for r in results]
    lines = ["| model | " + " | ".join(sizes) + " |", "|---|" + "---|" * len(sizes)]
    models = list(dict.fromkeys(m["model"] for r in results for m in r["models"]))
    for name in models:
        cells = []
        for r in results:
            s = next((m for m in r["models"] if m["model"] == name), None)
            if s is None:
                cells.append("")
                continue
            cell = f"{_pm(s['top1'])} (n={len(s['seeds'])})"
            verdict = s.get("verdict")
            if verdict and verdict["p_value"] is not None:
                cell += f"; Δ {verdict['difference'] * 100:+.1f}, p={verdict['p_value']:.2g}"
                cell += f" **{verdict['call']}**" if verdict["call"] in ("better", "worse") else ""
            cells.append(cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _fit_table(results: list[dict[str, Any]]) -> list[str]:
    sizes = [r["data"]["train_size"] for r in results]
    lines = [
        "| model | " + " | ".join(f"{s}: lr, train top-1, train loss, epochs" for s in sizes) + " |",
        "|---|" + "---|" * len(sizes),
    ]
    models = list(dict.fromkeys(m["model"] for r in results for m in r["models"]))
    for name in models:
        cells = []
        for r in results:
            s = next((m for m in r["models"] if m["model"] == name and m.get("fit")), None)
            if s is None:
                cells.append("")
                continue
            fit = s["fit"]
            cells.append(f"{fit['lr']:g}, {_pm(fit['train_top1'])}, {fit['train_loss']['mean']:.2g}, {fit['epochs']}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _convergence(results: list[dict[str, Any]]) -> list[str]:
    """The stock model's mean training loss at 50%, 75% and 100% of its updates, per size."""
    lines = []
    for r in results:
        stock = [run for run in r["runs"] if run["model"] == run["base"]]
        if not stock:
            continue
        curves = [run["train_loss_by_epoch"] for run in stock]
        n = len(curves[0])

        def at(fraction: float, curves=curves, n=n) -> float:
            return sum(c[max(0, math.ceil(fraction * n) - 1)] for c in curves) / len(curves)

        lines.append(
            f"- {r['data']['train_size']}: {stock[0]['model']}'s training loss (mean over {len(curves)} seeds) "
            f"{at(0.5):.3g} at half its {n} epochs, {at(0.75):.3g} at three quarters, {at(1.0):.3g} at the end"
        )
    return lines


def _finished_at(results: list[dict[str, Any]]) -> str:
    return max((run["finished_at"] for r in results for run in r["runs"]), default="")[:10]


def render(out: Path = OUT, figures: bool = True) -> str:
    """The results page from the JSON under ``out`` (and, with ``figures``, one learning-curve
    figure per cell beside its runs). Dated by the last run it holds, so the same runs always
    give the same page."""
    from overparam_zoo.experiments.report import plot_learning_curve

    body: list[str] = []
    seconds, machines, dates = 0.0, set(), []
    for cell in CELLS:
        results = _finished(cell, out)
        if not results:
            body += [f"## {cell.name}", "", "Not run yet.", ""]
            continue
        seconds += sum(r["compute_seconds"] for r in results)
        dates.append(_finished_at(results))
        env = results[0]["environment"]
        machines.add(f"{env['cpu']} ({env['cpu_count']} cores), torch {env['torch']}, timm {env['timm']}")
        done = sum(len(r["runs"]) for r in results)
        planned = len(cell.sizes) * len(cell.models) * SEEDS
        wd = WEIGHT_DECAY[cell.opt] if cell.weight_decay else 0
        body += [
            f"## {cell.name}",
            "",
            f"{cell.dataset}, {cell.opt} (weight decay {wd}), {done} of {planned} runs finished"
            + ("" if done == planned else " (the rest still to run)")
            + ".",
            "",
            *_accuracy_table(results),
            "",
            "Fit of the training images (learning rate chosen by the sweep; training top-1 and loss "
            "measured in eval mode on the un-augmented training images):",
            "",
            *_fit_table(results),
            "",
            "Convergence:",
            "",
            *_convergence(results),
            "",
        ]
        if figures:
            curve = [
                {
                    "train_size": r["data"]["train_size"],
                    "train_images": r["data"]["train_images"],
                    "models": r["models"],
                }
                for r in results
            ]
            title = f"{cell.name}: test split {results[0]['data']['test_images']} images"
            plot_learning_curve(curve, out / cell.name / "learning_curve.png", title)
        body += [f"![{cell.name}]({cell.name}/learning_curve.png)", ""]
    head = [
        "# Convergence study: results",
        "",
        "Generated by `python studies/convergence/run.py --report` from the JSON under `docs/study/`; the "
        "protocol is [protocol.md](protocol.md). Top-1 in %, mean ± std over seeds; Δ is the op model minus "
        "its stock base in points, with Welch's p (called better/worse at p < 0.05). Every model trained at "
        "the learning rate its sweep chose on a validation split carved from its training images.",
        "",
        f"Runs finished by {max(dates, default='-')}: {seconds / 3600:.1f} CPU-hours (one thread per run) on "
        f"{'; '.join(sorted(machines)) or '-'}.",
        "",
    ]
    return "\n".join(head + body).rstrip() + "\n"


def report(out: Path = OUT) -> Path:
    """Write ``out/results.md`` and the figures."""
    page = out / "results.md"
    page.write_text(render(out))
    return page


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", nargs="+", choices=[c.name for c in CELLS], help="default: every cell, in order")
    parser.add_argument("--report", action="store_true", help="only write docs/study/results.md from the JSON")
    args = parser.parse_args(argv)
    if not args.report:
        run([c for c in CELLS if args.cells is None or c.name in args.cells])
    print(f"wrote {report()}")


if __name__ == "__main__":
    main()
