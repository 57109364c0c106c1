"""The main job, end to end on real bundled data: a one-seed :func:`~overparam_zoo.experiments.compare.run_compare`
of a timm op variant and its stock base on scikit-learn's handwritten digits, then the check a
user of the export would make: plain timm, in a fresh process that cannot import overparam,
loads the export the usual way (``local-dir:``), rebuilds the preprocessing from the export's
own data config (``resolve_data_config`` + ``create_transform``) on the digits as PIL images,
and must predict what the comparison's deployed model predicted.

Everything but that check is compare's: the stratified split, timm's loaders, the recipe, the
export (with the run's true preprocessing and the label names ``"0"``..``"9"``) and the table.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import torch

from overparam_zoo.checkpoints.folder import ExportFolder
from overparam_zoo.errors import CompareError
from overparam_zoo.experiments.compare import SCHEMA, CompareResult, run_compare
from overparam_zoo.experiments.datasets import ArrayImageDataset, load_bundled
from overparam_zoo.experiments.training import TrainSettings, evaluate, make_loaders
from overparam_zoo.extras import require
from overparam_zoo.registry.variants import resolve

__all__ = ["DemoResult", "run_demo"]

#: what compare writes into its output folder; a rerun of the demo replaces exactly these
_COMPARE_OUTPUTS = ("runs", "exports", "settings.json", "results.json")


@dataclass
class DemoResult:
    """The comparison, where the op model's export is, and what plain timm made of it.

    ``reported_top1`` is the deployed top-1 the comparison reported for the export;
    ``fresh_top1`` is what plain timm in a fresh process scored with the export's own
    preprocessing; ``predictions_match`` says it predicted every test digit as the op model did.
    """

    compare: CompareResult
    export_dir: Path
    reported_top1: float
    fresh_top1: float
    predictions_match: bool
    max_logit_difference: float
    seconds: float


_FRESH = """
import sys
class _NoOverparam:
    def find_spec(self, name, *args):
        if name.split(".")[0] in ("overparam", "overparam_zoo"):
            raise ImportError("blocked " + name)
sys.meta_path.insert(0, _NoOverparam())
import numpy as np, timm, torch
from PIL import Image
model = timm.create_model("local-dir:" + sys.argv[1], pretrained=True).eval()
transform = timm.data.create_transform(**timm.data.resolve_data_config(model=model), is_training=False)
images = np.load(sys.argv[2])
with torch.no_grad():
    torch.save(model(torch.stack([transform(Image.fromarray(a)) for a in images])), sys.argv[3])
"""


def _fresh_process_logits(export_dir: Path, images: np.ndarray) -> torch.Tensor:
    """Logits of the export on ``images`` (``uint8 [N, H, W]``, as PIL images), from plain timm
    in an interpreter that never imports overparam, preprocessed as the export's config says."""
    with tempfile.TemporaryDirectory() as work:
        np.save(Path(work) / "images.npy", images)
        done = subprocess.run(
            [sys.executable, "-c", _FRESH, str(export_dir), str(Path(work) / "images.npy"), str(Path(work) / "y.pt")],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            lines = done.stderr.strip().splitlines() or ["(no output)"]
            raise CompareError(f"plain timm could not load and run {export_dir} in a fresh process: {lines[-1]}")
        return torch.load(Path(work) / "y.pt")


def _is_previous_demo(out: Path) -> bool:
    try:
        results = json.loads((out / "results.json").read_text())
    except (OSError, ValueError):
        return False
    return results.get("schema") == SCHEMA and results.get("data", {}).get("name") == "digits"


def _prepare_out(out: Path, force: bool) -> None:
    """Clear compare's outputs of a previous demo (or any, with ``force``) before training, so
    the demo always trains; anything else in ``out`` is left alone."""
    if out.exists() and not out.is_dir():
        raise CompareError(f"out={out}: exists and is not a folder; expected a folder for the demo's outputs")
    ours = [out / name for name in _COMPARE_OUTPUTS if (out / name).exists()]
    if ours and not (force or _is_previous_demo(out)):
        raise CompareError(
            f"out={out}: holds {', '.join(p.name for p in ours)}, not from a previous demo; expected a new or empty "
            "folder, or force=True to replace them"
        )
    for path in ours:
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def run_demo(
    model: str = "resnet18_op_d2",
    *,
    epochs: int = 8,
    out: str | Path = "overparam-demo",
    seed: int = 0,
    input_size: int = 32,
    threads: int | None = None,
    force: bool = False,
) -> DemoResult:
    """Compare the timm op variant ``model`` with its base on the digits (seed ``seed``), then
    reload the op model's export with plain timm in a fresh process.

    Args:
        model: a timm op variant (``overparam-zoo list``).
        epochs: training epochs for each model.
        out: compare's output folder (the export is ``out/exports/<model>/seed<seed>``).
        seed: the seed of both runs (initialisation and batch order).
        input_size: the square the 8x8 digits are resized to.
        threads: torch intra-op threads (default: the current number).
        force: replace compare outputs in ``out`` that are not a previous demo's.

    Raises:
        UnknownModelError: for a name that is not a timm model.
        MissingExtraError: without scikit-learn (``pip install 'overparam-zoo[demo]'``).
        CompareError: for a stock model, a bad ``epochs``, ``input_size`` or ``seed``, an occupied
            ``out``, or a failed reload.
    """
    start = time.perf_counter()
    require("sklearn.datasets", "demo", "the demo")  # before anything is cleared or trained
    found = resolve(model, "timm")
    if found.variant is None:
        raise CompareError(f"model={model}: a stock timm model; expected an op variant such as {model}_op_d2")
    threads = threads if threads is not None else torch.get_num_threads()
    for name, value, least in (
        ("epochs", epochs, 1),
        ("input_size", input_size, 1),
        ("seed", seed, 0),
        ("threads", threads, 1),
    ):
        if value < least:  # before the previous demo's outputs are cleared
            raise CompareError(f"{name}={value}: expected at least {least}")
    out = Path(out)
    settings = TrainSettings(epochs=epochs, input_size=input_size, threads=threads)
    _prepare_out(out, force)
    result = run_compare(
        [model], seeds=[seed], dataset="digits", settings=settings, out=out, keep_exports=True, figure=False
    )
    op = next(r for r in result.runs if r["model"] == model)
    export_dir = Path(op["deployed"]["export_dir"])
    data = load_bundled("digits")
    test = cast(ArrayImageDataset, data.test)  # the digits: images and targets as arrays
    reference = evaluate(ExportFolder.open(export_dir).load_model(), make_loaders(data, settings)[1], settings.device)
    fresh = _fresh_process_logits(export_dir, test.images)
    predicted = fresh.argmax(1)
    same = op["deployed"]["predictions_equal"] and bool((predicted == reference.logits.argmax(1)).all())
    return DemoResult(
        compare=result,
        export_dir=export_dir,
        reported_top1=op["deployed"]["top1"],
        fresh_top1=float((predicted == torch.as_tensor(test.targets)).double().mean()),
        predictions_match=same,
        max_logit_difference=float((fresh - reference.logits).abs().max()),
        seconds=time.perf_counter() - start,
    )
