"""Every user-facing error of ``overparam_zoo`` has a test that triggers it.

A *raise site* is every place the package builds an :class:`~overparam_zoo.errors.OverparamZooError`
(``raise CheckpointError(...)``, or a helper's ``return PublishError(...)`` that a caller raises),
found by reading the source with :mod:`ast`. Each is named ``module:function:ErrorClass:stem``,
where *stem* is the first words of the message's literal text, so the name survives edits that
move lines. ``tests/error_sites.json`` maps every name to the test that triggers it (or to
``"untested: <why>"``). The fast tests fail when a site has no entry (a new raise) or an entry
names no site or no test (a removed or reworded one), and print the lines to paste.

The strict test checks that each site's line really runs *inside* the test named for it. It
reads coverage data with one context per test (pytest-cov's ``--cov-context=test``) from the file
``$OVERPARAM_ERROR_COVERAGE`` names, and is skipped, saying so, where that is not set. ``.ci/run``
writes the data by running just the named tests under coverage, then runs the suite with it; by
hand::

    export OVERPARAM_ERROR_COVERAGE=$PWD/.coverage.error-sites
    COVERAGE_FILE=$OVERPARAM_ERROR_COVERAGE python3 -m pytest -q -p no:randomly --cov=overparam_zoo \
        --cov-context=test --cov-report= $(python3 -m tests.test_error_coverage --tests)
    python3 -m pytest -q tests/test_error_coverage.py       # or: python3 -m tests.test_error_coverage FILE
"""

from __future__ import annotations

import ast
import inspect
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import overparam_zoo.errors as errors_module

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "overparam_zoo"
SITES_FILE = Path(__file__).with_name("error_sites.json")
UNTESTED = "untested: "
COVERAGE_ENV = "OVERPARAM_ERROR_COVERAGE"
"""Names the coverage data file (per-test contexts) the strict test reads."""

ERROR_CLASSES = frozenset(
    name
    for name, obj in vars(errors_module).items()
    if inspect.isclass(obj) and issubclass(obj, errors_module.OverparamZooError)
)


@dataclass(frozen=True)
class Site:
    """One place that builds a user-facing error."""

    name: str
    path: Path
    line: int


def _called_name(func: ast.expr) -> str | None:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None


def _literal_text(node: ast.expr) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):  # "a" + "b" or implicit joins
        left, right = _literal_text(node.left), _literal_text(node.right)
        return None if left is None else left + (right or "{}")
    return None


def _stem(call: ast.Call, words: int = 5) -> str:
    """The first words of the call's first literal string argument (the message, or a recipe key)."""
    for arg in call.args:
        text = _literal_text(arg)
        if text is not None:
            return " ".join(re.sub(r"[^\w{}'.=-]+", " ", text).split()[:words])
    return ""


class _Finder(ast.NodeVisitor):
    def __init__(self, module: str, path: Path) -> None:
        self.module, self.path, self.scope, self.sites = module, path, [], []

    def _scoped(self, node: ast.AST) -> None:
        self.scope.append(node.name)  # type: ignore[attr-defined]
        self.generic_visit(node)
        self.scope.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _scoped

    def visit_Call(self, node: ast.Call) -> None:
        cls = _called_name(node.func)
        if cls in ERROR_CLASSES:
            function = ".".join(self.scope) or "<module>"
            name = f"{self.module}:{function}:{cls}:{_stem(node)}"
            self.sites.append(Site(name, self.path, node.lineno))
        self.generic_visit(node)


def raise_sites() -> list[Site]:
    """Every user-facing raise site of the package; repeated names get ``#2``, ``#3``..."""
    found: list[Site] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "errors.py" and path.parent == PACKAGE:
            continue  # the classes themselves
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        finder = _Finder(module, path)
        finder.visit(ast.parse(path.read_text(), str(path)))
        found += finder.sites
    seen: dict[str, int] = {}
    named = []
    for site in found:
        seen[site.name] = seen.get(site.name, 0) + 1
        suffix = f" #{seen[site.name]}" if seen[site.name] > 1 else ""
        named.append(Site(site.name + suffix, site.path, site.line))
    return named


def listed() -> dict[str, str]:
    return json.loads(SITES_FILE.read_text())


def _test_exists(node_id: str) -> bool:
    file, _, test = node_id.partition("::")
    path = ROOT / file
    if not path.is_file():
        return False
    tree = ast.parse(path.read_text())
    return any(isinstance(n, ast.FunctionDef) and n.name == test for n in tree.body)


def _json_line(name: str, value: str) -> str:
    return f"{json.dumps(name)}: {json.dumps(value)},"


def test_every_raise_site_has_a_test():
    sites = {s.name: s for s in raise_sites()}
    entries = listed()
    missing = [s for name, s in sites.items() if name not in entries]
    stale = sorted(set(entries) - set(sites))
    message = []
    if missing:
        message.append(f"{len(missing)} raise site(s) with no entry in {SITES_FILE.name}; add a test and these lines:")
        message += [
            f"  from {s.path.relative_to(ROOT)}:{s.line}:\n    {_json_line(s.name, 'tests/test_error_paths.py::test_...')}"
            for s in missing
        ]
    if stale:
        message.append(f"{len(stale)} entry(ies) in {SITES_FILE.name} name no raise site (removed or reworded):")
        message += [f"  {name}" for name in stale]
    assert not message, "\n".join(message)


def test_every_listed_test_exists():
    bad = {name: node for name, node in listed().items() if not node.startswith(UNTESTED) and not _test_exists(node)}
    assert not bad, f"entries naming tests that do not exist: {bad}"
    assert all(len(node) > len(UNTESTED) + 10 for node in listed().values() if node.startswith(UNTESTED))


def test_the_finder_sees_raises_and_returned_errors():
    names = {s.name for s in raise_sites()}
    assert any(n.startswith("overparam_zoo.files:") and ":OutputError:" in n for n in names)
    assert any(n.startswith("overparam_zoo.checkpoints.reading:_untrusted:CheckpointError:") for n in names)


def named_tests() -> list[str]:
    """The tests ``error_sites.json`` names, once each, for the coverage run's command line."""
    return sorted({node for node in listed().values() if not node.startswith(UNTESTED)})


def _test_of(context: str) -> str:
    """``tests/a.py::test_b`` from pytest-cov's context ``tests/a.py::test_b[param]|run``."""
    return context.partition("|")[0].partition("[")[0]


def not_run_in_their_test(data_file: str | Path) -> list[tuple[Site, str, list[str]]]:
    """Each listed site whose line did not run inside its named test, with that test and the
    tests that did run it, from a coverage data file written with per-test contexts."""
    import coverage

    data = coverage.CoverageData(basename=str(data_file))
    data.read()
    if not data.measured_contexts() - {""}:
        raise ValueError(f"{data_file} holds no per-test contexts; expected a pytest --cov-context=test run")
    by_line = {str(Path(f).resolve()): data.contexts_by_lineno(f) for f in data.measured_files()}
    entries = listed()
    missed = []
    for site in raise_sites():
        test = entries.get(site.name, "")
        if test.startswith(UNTESTED):
            continue
        ran_in = sorted({_test_of(c) for c in by_line.get(str(site.path.resolve()), {}).get(site.line, [])} - {""})
        if test not in ran_in:
            missed.append((site, test, ran_in))
    return missed


def test_every_site_runs_inside_its_named_test():
    data_file = os.environ.get(COVERAGE_ENV)
    if not data_file:
        pytest.skip(
            f"needs coverage data with per-test contexts: set {COVERAGE_ENV} to the data file of a --cov-context=test "
            "run of the named tests (.ci/run does; see this module's docstring)"
        )
    assert Path(data_file).is_file(), f"{COVERAGE_ENV}={data_file}: no such coverage data file"
    missed = not_run_in_their_test(data_file)
    lines = [
        f"  {site.name} ({site.path.relative_to(ROOT)}:{site.line}) did not run in {test}; "
        + (f"it ran in {', '.join(ran_in)}" if ran_in else "no test ran it")
        for site, test, ran_in in missed
    ]
    assert not missed, f"{len(missed)} raise site(s) not run inside the test {SITES_FILE.name} names:\n" + "\n".join(
        lines
    )


if __name__ == "__main__":
    if sys.argv[1:] == ["--tests"]:  # the named tests, for the coverage run's command line
        print("\n".join(named_tests()))
        sys.exit(0)
    missed = not_run_in_their_test(sys.argv[1] if len(sys.argv) > 1 else ".coverage")
    print(f"{len(listed()) - len(missed)} of {len(listed())} entries hold; sites not run inside their named test:")
    for site, test, ran_in in missed:
        print(f"  {site.name}  ({site.path.relative_to(ROOT)}:{site.line}) -> {test}; ran in {ran_in or 'no test'}")
