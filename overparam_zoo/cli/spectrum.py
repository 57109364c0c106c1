"""``overparam-zoo spectrum``: per-layer effective rank and singular spectra of a model.

``MODEL_OR_CHECKPOINT`` is a timm model name (``resnet18``, or a registered variant such as
``resnet18_op_d2``; torchvision names work too) or a checkpoint file: ``.safetensors`` or a
torch file holding a plain state dict or a timm ``train.py`` checkpoint (EMA weights
preferred; ``module.`` prefixes are stripped). A checkpoint needs the architecture:
``--model NAME``, the checkpoint's ``args.model``, or a ``config.json`` beside it (as written
by an export). Over-parameterized layers are measured on their
effective (collapsed) weight, so a training checkpoint and its export give the same numbers.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from overparam.analysis import LayerSpectrum, spectrum
from overparam_zoo.errors import AnalysisError
from overparam_zoo.extras import require

__all__ = ["register", "run", "format_table", "plot_spectrum"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``spectrum`` subcommand.

    Args:
        subparsers: the object returned by ``ArgumentParser.add_subparsers``.
    """
    parser = subparsers.add_parser(
        "spectrum",
        help="per-layer effective rank and singular spectra of a model or checkpoint",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("source", metavar="MODEL_OR_CHECKPOINT", help="a timm model name or a checkpoint file")
    parser.add_argument("--model", metavar="NAME", help="architecture of a checkpoint file (timm name)")
    parser.add_argument("--plot", metavar="OUT.png", help="save a figure: effective rank per layer and spectra")
    parser.add_argument("--json", metavar="OUT.json", help="write the numbers as JSON (atomically)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the per-layer table and write the optional plot and JSON; returns the exit code."""
    from overparam_zoo.checkpoints.loading import load_model
    from overparam_zoo.files import atomic_write
    from overparam_zoo.progress import Progress

    if args.plot:
        _import_matplotlib()
    with Progress("spectrum", 2) as progress:
        progress.update(1, note=f"loading {args.source}")
        model, architecture = load_model(args.source, model=args.model)
        progress.update(1, note=f"singular values of {architecture}'s layers")
        try:
            layers = spectrum(model)
        except ValueError as err:
            raise AnalysisError(f"{architecture}: {err}") from None
    if not layers:
        raise AnalysisError(f"{architecture} has no Linear/Conv layers to measure")
    title = architecture if args.source == architecture else f"{args.source} ({architecture})"
    print(format_table(layers, title=title))
    if args.json:
        payload = {"source": str(args.source), "architecture": architecture, "layers": [x.to_dict() for x in layers]}
        atomic_write(args.json, lambda path: Path(path).write_text(json.dumps(payload, indent=1) + "\n"))
        print(f"wrote {args.json}")
    if args.plot:
        atomic_write(args.plot, lambda path: plot_spectrum(layers, path, title=title))
        print(f"wrote {args.plot}")
    return 0


# ---------------------------------------------------------------------- output
def format_table(layers: list[LayerSpectrum], title: str = "") -> str:
    """The terminal table: one row per layer, effective rank against the largest possible."""
    width = max(len("layer"), *(len(layer.path or "<root>") for layer in layers))
    kind_width = max(len("kind"), *(len(layer.kind) for layer in layers))
    header = f"{'#':>3}  {'layer':<{width}}  {'kind':<{kind_width}}  {'shape':<18}  {'eff. rank':>9}  {'max':>5}  {'ratio':>5}"
    lines = [title] if title else []
    lines += [header, "-" * len(header)]
    for i, layer in enumerate(layers):
        shape = "x".join(str(d) for d in layer.shape)
        ratio = layer.effective_rank / layer.max_rank if layer.max_rank else 0.0
        lines.append(
            f"{i:>3}  {layer.path or '<root>':<{width}}  {layer.kind:<{kind_width}}  {shape:<18}  "
            f"{layer.effective_rank:>9.2f}  {layer.max_rank:>5}  {ratio:>5.2f}"
        )
    mean_ratio = sum(layer.effective_rank / max(layer.max_rank, 1) for layer in layers) / len(layers)
    lines.append(f"{len(layers)} layers; mean effective rank / max rank = {mean_ratio:.3f}")
    return "\n".join(lines)


def _import_matplotlib() -> Any:
    return require("matplotlib.figure", "plot", "--plot").Figure


def plot_spectrum(layers: list[LayerSpectrum], path: str, title: str = "") -> None:
    """Save a figure: effective rank per layer (bars) and normalised singular-value curves.

    Args:
        layers: the output of :func:`overparam.analysis.spectrum`.
        path: the image file; its suffix picks the format.
        title: the figure title.
    """
    figure_class = _import_matplotlib()
    from matplotlib import cm, colormaps, colors

    fig = figure_class(figsize=(12, 4.5), layout="constrained")
    bars, curves = fig.subplots(1, 2, width_ratios=[1.4, 1])
    index = list(range(len(layers)))
    cmap = colormaps["viridis"]
    norm = colors.Normalize(vmin=0, vmax=max(len(layers) - 1, 1))
    bars.bar(index, [layer.max_rank for layer in layers], color="0.88", label="max rank")
    bars.bar(
        index, [layer.effective_rank for layer in layers], color=[cmap(norm(i)) for i in index], label="effective rank"
    )
    bars.set_xlabel("layer")
    bars.set_ylabel("rank")
    bars.set_title("effective rank per layer")
    if len(layers) <= 40:
        bars.set_xticks(index, [layer.path or "<root>" for layer in layers], rotation=90, fontsize=6)
    bars.legend(loc="upper left", fontsize=8)
    for i, layer in enumerate(layers):
        s = layer.singular_values
        if s.numel() == 0 or float(s[0]) <= 0:
            continue
        x = torch.linspace(0, 1, s.numel()) if s.numel() > 1 else torch.zeros(1)
        curves.plot(x.tolist(), (s / s[0]).tolist(), color=cmap(norm(i)), linewidth=1)
    curves.set_xlabel("singular value index / (max rank - 1)")
    curves.set_ylabel("singular value / largest")
    curves.set_title("normalised singular values")
    fig.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), ax=curves, label="layer")
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=100)
