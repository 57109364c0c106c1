"""Pick one small model per architecture family of timm and torchvision for the zoo-wide test.

A family is a timm model module (``timm.list_modules()``) or the torchvision module that
defines a classification builder. Per family the smallest few models are tried (parameters
counted on the meta device, with ``SHRINK``'s constructor arguments where a family has no small
model), each at the smallest input size from ``SIZES`` at which it runs a batch of 2 in training
and eval (through ``img_size``/``image_size`` only where it needs it); the cheapest (parameters
times pixels) is kept, in float64 where it runs in float64 and is cheap enough. The table goes
to ``tests/zoo_families.json``.

    python benchmarks/zoo_families.py                      # every family (~10 min on 2 cores)
    python benchmarks/zoo_families.py --families timm:vgg  # refresh some rows, keep the others
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path
from typing import Any

import timm
import torch
import torchvision
from torch import nn

TABLE = Path(__file__).resolve().parent.parent / "tests" / "zoo_families.json"
SIZES = (32, 64, 96, 128, 160, 192, 224, 256)
NUM_CLASSES = 8
CANDIDATES = 4  # per family, smallest first
FLOAT64_MAX_PARAMS = 50_000_000  # larger models (and 224 px inputs) run in float32: float64 doubles their time

# Constructor arguments that shrink a family whose smallest registered model is large (depth,
# width); the family's own blocks still run. Keyed by model name.
SHRINK: dict[str, dict[str, Any]] = {
    "beit_base_patch16_224": {"depth": 2, "embed_dim": 64, "num_heads": 2},
    "deepseek_vit_412m": {"depth": 2, "embed_dim": 64, "num_heads": 2, "patch_size": 16},
    "gemma4_vit_167m": {"depth": 2, "embed_dim": 64, "num_heads": 2, "head_dim": 32, "intermediate_size": 128},
    "gemma4_vit_167m_enc": {"depth": 2, "embed_dim": 64, "num_heads": 2, "head_dim": 32, "intermediate_size": 128},
    "qwen3_vit_88m": {"depth": 2, "embed_dim": 64, "num_heads": 2},
    "naflexvit_base_patch16_parfac_gap": {"depth": 2, "embed_dim": 64, "num_heads": 2},
    "samvit_base_patch16_224": {"depth": 2, "embed_dim": 64, "num_heads": 2},
    "vgg11": {"mlp_ratio": 1 / 32},
    "nasnetalarge": {"stem_size": 32, "num_features": 480},
    "mobilenetv5_base": {"channel_multiplier": 0.25, "num_features": 256},
}


def timm_families() -> dict[str, list[str]]:
    """Model names per timm model module (one module per architecture)."""
    return {module: timm.list_models(module=module) for module in timm.list_modules()}


def torchvision_families() -> dict[str, list[str]]:
    """Classification model names per torchvision module that defines their builders."""
    families: dict[str, list[str]] = {}
    for name in torchvision.models.list_models(module=torchvision.models):
        module = torchvision.models.get_model_builder(name).__module__.rsplit(".", 1)[-1]
        families.setdefault(module, []).append(name)
    return families


def build(zoo: str, name: str, **kwargs: Any) -> nn.Module:
    """The stock model, exactly as the zoo-wide test builds it (``kwargs`` hold ``num_classes``)."""
    if zoo == "timm":
        return timm.create_model(name, **kwargs)
    return torchvision.models.get_model(name, **kwargs)


def count_params(zoo: str, name: str) -> int | None:
    """Parameters of the (shrunk) model, built on the meta device so nothing is allocated."""
    kwargs = {"num_classes": NUM_CLASSES, **SHRINK.get(name, {})}
    for device in ("meta", "cpu"):  # a few builders need real tensors
        try:
            with torch.device(device):
                return sum(p.numel() for p in build(zoo, name, **kwargs).parameters())
        except Exception:
            continue
    return None


def runs(model: nn.Module, size: int, dtype: torch.dtype) -> bool:
    """Whether ``model`` runs a batch of 2 in training and in eval, and gives logits in eval."""
    x = torch.randn(2, 3, size, size, dtype=dtype)
    try:
        model.to(dtype).train()(x)
        with torch.no_grad():
            out = model.eval()(x)
    except Exception:
        return False
    out = out[0] if isinstance(out, (tuple, list)) else out
    return out.dtype == dtype and tuple(out.shape) == (2, NUM_CLASSES)


def default_size(zoo: str, name: str) -> int:
    """The input size of the model's pretrained weights."""
    if zoo == "timm":
        return int(timm.models.get_pretrained_cfg(name).input_size[-1])
    return int(torchvision.models.get_model_weights(name).DEFAULT.transforms.keywords.get("crop_size", 224))


def probe(zoo: str, name: str) -> dict[str, Any] | None:
    """The smallest input size at which ``name`` runs (without a size argument, else with
    ``img_size``/``image_size``), with the constructor arguments, or None."""
    size_arg = "img_size" if zoo == "timm" else "image_size"
    extra = {"num_classes": NUM_CLASSES, **SHRINK.get(name, {})}
    for size in (*SIZES, default_size(zoo, name)):
        for kwargs in (extra, {**extra, size_arg: size}):
            try:
                model = build(zoo, name, **kwargs)
            except Exception:
                continue
            if runs(model, size, torch.float32):
                costly = sum(p.numel() for p in model.parameters()) > FLOAT64_MAX_PARAMS or size >= 224
                dtype = "float64" if not costly and runs(model, size, torch.float64) else "float32"
                return {"kwargs": kwargs, "input_size": size, "dtype": dtype}
    return None


def pick(zoo: str, family: str, names: list[str]) -> dict[str, Any]:
    """The cheapest of the smallest candidates that run (parameters times input pixels)."""
    counted = sorted((n, name) for name in names if (n := count_params(zoo, name)) is not None)
    found, failed = [], []
    for params, name in counted[:CANDIDATES]:
        row = probe(zoo, name)
        if row is None:
            failed.append(name)
            continue
        row = {"zoo": zoo, "family": family, "model": name, **row, "params_m": round(params / 1e6, 3)}
        found.append(row)
        if row["input_size"] == SIZES[0]:  # no larger candidate is cheaper
            break
    if not found:
        return {"zoo": zoo, "family": family, "model": None, "note": f"no candidate runs: {', '.join(failed)}"}
    return min(found, key=lambda r: r["params_m"] * r["input_size"] ** 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", nargs="*", help="zoo:family entries to refresh (default: all)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    rows = {(r["zoo"], r["family"]): r for r in json.loads(TABLE.read_text())} if TABLE.exists() else {}
    wanted = {tuple(f.split(":", 1)) for f in args.families} if args.families else None
    for zoo, families in (("timm", timm_families()), ("torchvision", torchvision_families())):
        for family, names in sorted(families.items()):
            if wanted is not None and (zoo, family) not in wanted:
                continue
            torch.manual_seed(0)
            rows[(zoo, family)] = row = pick(zoo, family, names)
            print(json.dumps(row), flush=True)
    TABLE.write_text(json.dumps([rows[k] for k in sorted(rows)], indent=1) + "\n")


if __name__ == "__main__":
    main()
