"""The main job, end to end on real bundled data: train an op variant and its stock base on
scikit-learn's handwritten digits, compare, export the op model collapsed, and check that
plain timm in a fresh process reproduces its predictions."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DemoResult", "load_digits_split", "run_demo"]


@dataclass
class DemoResult:
    rows: list[dict[str, str]]
    export_dir: Path
    predictions_match: bool
    max_logit_difference: float
    seconds: float


def load_digits_split(seed: int, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The 1,797 8x8 digits, scaled to [0, 1], standardised, resized to ``size``; 80/20 split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = (x - x.mean()) / x.std()
    y = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    cut = int(0.8 * len(y))
    train, test = order[:cut], order[cut:]
    return x[train], y[train], x[test], y[test]


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int, label: str) -> None:
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2
    from tqdm import tqdm

    torch.manual_seed(seed)
    batch = 64
    steps = math.ceil(len(y) / batch)
    optimizer = create_optimizer_v2(model, opt="adamw", lr=2e-3, weight_decay=0.05)
    scheduler, _ = create_scheduler_v2(
        optimizer, sched="cosine", num_epochs=epochs, warmup_epochs=1, step_on_epochs=False, updates_per_epoch=steps
    )
    model.train()
    bar = tqdm(total=epochs * steps, desc=f"train {label}", leave=False, file=sys.stderr)
    for epoch in range(epochs):
        order = torch.randperm(len(y))
        for i in range(steps):
            idx = order[i * batch : (i + 1) * batch]
            loss = F.cross_entropy(model(x[idx]), y[idx], label_smoothing=0.1)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step_update(num_updates=epoch * steps + i + 1)
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}")
    bar.close()


@torch.no_grad()
def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.eval()(x)


_RELOAD = """
import sys, torch, timm
model = timm.create_model("local-dir:" + sys.argv[1], pretrained=True).eval()
with torch.no_grad():
    torch.save(model(torch.load(sys.argv[2])), sys.argv[3])
"""


def _reload_in_fresh_process(export_dir: Path, x: torch.Tensor, work: Path) -> torch.Tensor:
    """Predictions of the export from plain timm, in an interpreter that never imports overparam."""
    torch.save(x, work / "x.pt")
    code = (
        "import sys\nclass _NoOverparam:\n    def find_spec(self, name, *a):\n"
        "        if name.startswith('overparam'):\n            raise ImportError(name)\n"
        "sys.meta_path.insert(0, _NoOverparam())\n" + _RELOAD
    )
    subprocess.run(
        [sys.executable, "-c", code, str(export_dir), str(work / "x.pt"), str(work / "y.pt")],
        check=True,
        capture_output=True,
        text=True,
    )
    return torch.load(work / "y.pt")


def _is_previous_export(folder: Path) -> bool:
    config = folder / "config.json"
    try:
        return "overparam_zoo" in json.loads(config.read_text())
    except (OSError, ValueError):
        return False


def run_demo(
    model_name: str = "resnet18_op_d2",
    *,
    epochs: int = 8,
    out: str | Path = "overparam-demo",
    seed: int = 0,
    size: int = 32,
    force: bool = False,
) -> DemoResult:
    """Train ``model_name`` and its base the same way, export, reload and compare.

    Args:
        model_name: a timm op variant.
        epochs: training epochs for each model.
        out: folder for the export (``<out>/<model_name>``).
        seed: seed for the split, the initialisation and the batches.
        size: input size the 8x8 digits are resized to.
        force: replace an existing folder (a previous export of the demo is always replaced).
    """
    import timm

    from overparam_zoo.names.registry import build_base, get_variant
    from overparam_zoo.sharing.export import check_out_dir, export_collapsed

    start = time.perf_counter()
    variant = get_variant(model_name, "timm")
    export_dir = Path(out) / model_name
    force = force or _is_previous_export(export_dir)  # rerunning the demo replaces its own export
    check_out_dir(export_dir, force)  # before training, not after
    x_train, y_train, x_test, y_test = load_digits_split(seed, size)
    models = {}
    for label, name in (("stock", variant.base), ("op", model_name)):
        torch.manual_seed(seed)
        models[label] = timm.create_model(name, in_chans=1, num_classes=10)
        train_params = sum(p.numel() for p in models[label].parameters())
        _train(models[label], x_train, y_train, epochs, seed, label)
        models[label].train_params = train_params
    export_collapsed(models["op"], export_dir, force=force)
    op_logits = _logits(models["op"], x_test)
    with tempfile.TemporaryDirectory() as work:
        reloaded = _reload_in_fresh_process(export_dir, x_test, Path(work))
    exported_params = sum(p.numel() for p in build_base(variant, in_chans=1, num_classes=10).parameters())
    rows = []
    for label, name in (("stock", variant.base), ("op", model_name)):
        accuracy = (_logits(models[label], x_test).argmax(1) == y_test).float().mean().item()
        rows.append(
            {
                "model": name,
                "test accuracy": f"{accuracy:.2%}",
                "params training": f"{models[label].train_params:,}",
                "params deployed": f"{exported_params:,}",
            }
        )
    accuracy = (reloaded.argmax(1) == y_test).float().mean().item()
    rows.append(
        {
            "model": f"{variant.base} from export",
            "test accuracy": f"{accuracy:.2%}",
            "params training": "-",
            "params deployed": f"{exported_params:,}",
        }
    )
    difference = float((reloaded - op_logits).abs().max())
    return DemoResult(
        rows,
        export_dir,
        bool((reloaded.argmax(1) == op_logits.argmax(1)).all()),
        difference,
        time.perf_counter() - start,
    )


def format_table(rows: list[dict[str, str]]) -> str:
    widths = {k: max(len(k), *(len(r[k]) for r in rows)) for k in rows[0]}
    lines = [
        "| " + " | ".join(k.ljust(w) for k, w in widths.items()) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths.values()) + "|",
    ]
    lines += ["| " + " | ".join(r[k].ljust(w) for k, w in widths.items()) + " |" for r in rows]
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    print(json.dumps(run_demo().rows, indent=2))
