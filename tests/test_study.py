"""The convergence study's driver (studies/convergence/run.py): its grid resolves, its recipes are
valid, and its results page is exactly what the committed JSON gives."""

import importlib.util
import sys
from pathlib import Path

import pytest

STUDY = Path(__file__).resolve().parents[1] / "studies" / "convergence"


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("convergence_study", STUDY / "run.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def test_every_cell_of_the_grid_resolves_with_the_study_recipes(study, isolated_registries):
    from overparam_zoo import resolve

    study.register_study_variants()
    for cell in study.CELLS:
        for name in cell.models:
            assert resolve(name).name == name
        settings = cell.settings()
        assert (settings.opt, settings.threads, settings.smoothing) == (cell.opt, 1, 0.0)
    assert resolve("test_efficientnet_gn_op_d4_small").variant.options["init_scale"] == 0.1


def test_the_committed_results_page_is_generated_from_the_committed_runs(study):
    assert study.render(figures=False) == (study.OUT / "results.md").read_text()
