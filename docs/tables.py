"""The manual's generated tables, rendered from the JSON in the repository.

A page under ``docs/`` marks a generated block with two comments::

    <!-- generated: KIND PATH -->
    ... (written by this script, never by hand) ...
    <!-- /generated -->

and KIND's renderer (``RENDERERS``) turns the JSON file at PATH (relative to the repository)
into the Markdown between them. The prose around a block (what was run, on which machine and
date, what it shows) stays hand-written in the page.

    python docs/tables.py           # rewrite every block
    python docs/tables.py --check   # exit 1 naming each block that differs (tests/test_docs.py)

Invariants: a block's numbers come from the file it names and nowhere else; the renderers of
results that the project's own tools print (compare's table, the recovery example's table) are
those tools' functions, so a page shows exactly what the run printed.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
BLOCK = re.compile(r"(<!-- generated: (\S+) (\S+) -->\n)(.*?)(<!-- /generated -->)", re.DOTALL)


def _json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def compare_table(path: Path) -> str:
    """``overparam-zoo compare``'s own table, from its ``results.json``."""
    from overparam_zoo.experiments.report import markdown_table

    return markdown_table(_json(path)["models"])


def recovery_table(path: Path) -> str:
    """``examples/low_rank_recovery.py``'s own table, from the JSON its ``--json`` writes."""
    spec = importlib.util.spec_from_file_location("low_rank_recovery", ROOT / "examples" / "low_rank_recovery.py")
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("low_rank_recovery", example)  # dataclasses look their module up
    spec.loader.exec_module(example)
    fields = set(example.Setting.__dataclass_fields__)
    results = [
        example.Result(
            example.Setting(**{k: v for k, v in run.items() if k in fields}),
            run["test_error"],
            run["train_loss"],
            run["effective_rank"],
            run["seconds"],
        )
        for run in _json(path)["runs"]
    ]
    return example.table(results)


def _rows(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def performance_table(path: Path) -> str:
    """The training-step table of ``benchmarks/train_step.py``'s columns (``benchmarks/README.md``)."""
    data = _json(path)

    def ratio(value: float | None, digits: int = 2) -> str:
        return "—" if value is None else f"{value:.{digits}f}x"

    rows = []
    for r in data["rows"]:
        step = "—" if r["train_step"] is None else f"{r['train_step']:.3f}x ({r['stock_train_step_ms']:g} ms)"
        rows.append(
            [
                r["model"],
                str(r["depth"]),
                "yes" if r["batch_norm"] else "no",
                r["input"] or "—",
                step,
                ratio(r["saved_activations"]),
                ratio(r["peak_rss"]),
                ratio(r["eval_b1"], 3),
                ratio(r["eval_b32"], 3),
                f"{r['collapse_s']:.3f}",
            ]
        )
    header = ["model", "depth", "BN", "input", "train step", "saved act.", "peak RSS", "eval b1", "eval b32"]
    return _rows(header + ["collapse (s)"], rows)


def _zoo_wide_refused() -> dict[str, tuple[str, ...]]:
    """``REFUSED`` of ``tests/test_zoo_wide.py`` (read, not imported: the test imports every zoo)."""
    tree = ast.parse((ROOT / "tests" / "test_zoo_wide.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", None) == "REFUSED":
            assert node.value is not None
            return ast.literal_eval(node.value)
    raise LookupError("tests/test_zoo_wide.py defines no REFUSED")


#: what a family's row says besides "exact" (the mechanism its conversion goes through)
ZOO_NOTES = {
    "timm:coat": "28 shared layers, one chain each",
    "timm:nasnet": "`Conv2dSame` chains, padded once",
    "timm:pnasnet": "`Conv2dSame` chains, padded once",
    "timm:nfnet": "`ScaledStdConv2d` as composed-only chains",
    "timm:vision_transformer_hybrid": "`StdConv2dSame` as composed-only chains",
}

#: build arguments every row passes (the class count, the input size): not shrinks
_NOT_SHRINKS = ("num_classes", "img_size", "image_size")


def zoo_families_table(path: Path) -> str:
    """One row per family of ``tests/zoo_families.json`` (written by ``benchmarks/zoo_families.py``)."""
    refused = _zoo_wide_refused()
    rows = []
    for r in _json(path):
        family = f"{r['zoo']}:{r['family']}"
        shrink = ", ".join(
            f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in r["kwargs"].items()
            if k not in _NOT_SHRINKS
        )
        model = f"`{r['model']}`" + (f" ({shrink})" if shrink else "")
        result = "exact"
        if family in ZOO_NOTES:
            result += f" ({ZOO_NOTES[family]})"
        if family in refused:
            result += "; refused: " + ", ".join(f"`{kind}`" for kind in refused[family])
        rows.append([family, model, f"{r['input_size']} px, {r['dtype']}", f"{r['params_m']:g}M", result])
    return _rows(["family", "model tried", "input", "params", "result"], rows)


RENDERERS: dict[str, Callable[[Path], str]] = {
    "compare": compare_table,
    "recovery": recovery_table,
    "performance": performance_table,
    "zoo-families": zoo_families_table,
}


def render(text: str, page: Path) -> str:
    """``text`` with every generated block rendered again.

    Raises:
        ValueError: for a block of an unknown kind, naming the page.
    """

    def block(match: re.Match[str]) -> str:
        kind, source = match.group(2), match.group(3)
        if kind not in RENDERERS:
            raise ValueError(f"{page}: unknown generated block {kind!r}; expected one of {', '.join(RENDERERS)}")
        return f"{match.group(1)}\n{RENDERERS[kind](ROOT / source).rstrip()}\n\n{match.group(5)}"

    return BLOCK.sub(block, text)


def pages() -> list[Path]:
    """The pages holding generated blocks."""
    return sorted(p for p in DOCS.rglob("*.md") if "<!-- generated: " in p.read_text(encoding="utf-8"))


def stale() -> list[Path]:
    """The pages whose generated blocks differ from what their files render."""
    return [p for p in pages() if render(p.read_text(encoding="utf-8"), p) != p.read_text(encoding="utf-8")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a block is out of date")
    args = parser.parse_args(argv)
    if args.check:
        out_of_date = stale()
        for page in out_of_date:
            print(f"{page.relative_to(ROOT)}: a generated block is out of date; run python docs/tables.py")
        return 1 if out_of_date else 0
    for page in pages():
        text = page.read_text(encoding="utf-8")
        new = render(text, page)
        if new != text:
            page.write_text(new, encoding="utf-8")
            print(f"wrote {page.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
