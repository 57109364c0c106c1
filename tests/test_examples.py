"""The examples in ``examples/``, run as a user runs them (in a reduced form where they are long)."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load_example(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def recovery():
    return load_example("low_rank_recovery")


# a 50x50 rank-3 target observed on 30% of its entries (750, against 291 degrees of freedom)
SMALL = dict(observed=0.3, seed=0, size=50, rank=3, steps=800, lr=1e-2)


def test_depth_recovers_a_low_rank_target_where_one_layer_cannot(recovery):
    shallow = recovery.fit(recovery.Setting(depth=1, init_scale=0.02, **SMALL))
    deep = recovery.fit(recovery.Setting(depth=3, init_scale=0.02, **SMALL))
    # both fit what they see ...
    assert shallow.train_loss < 1e-2 and deep.train_loss < 1e-2
    # ... one layer leaves the unseen entries at their start, depth fills them in at low rank
    assert shallow.test_error > 0.99 and shallow.effective_rank > 20
    assert deep.test_error < 0.3 and deep.effective_rank < 6


def test_recovery_example_runs_end_to_end(recovery, tmp_path, capsys):
    figure, numbers = tmp_path / "recovery.png", tmp_path / "recovery.json"
    args = ["--observed", "0.3", "--depths", "1", "3", "--init-scales", "0.02", "--seeds", "0"]
    args += ["--size", "50", "--rank", "3", "--steps", "800", "--lr", "1e-2", "--workers", "1"]
    recovery.main(args + ["--out", str(figure), "--json", str(numbers)])
    printed = capsys.readouterr().out
    assert "| 0.02 | 30% (750) |" in printed
    assert figure.stat().st_size > 10_000
    runs = json.loads(numbers.read_text())["runs"]
    assert [(r["depth"], r["init_scale"]) for r in runs] == [(1, 0.02), (3, 0.02)]
    assert runs[0]["test_error"] > 0.99 > 0.3 > runs[1]["test_error"]
