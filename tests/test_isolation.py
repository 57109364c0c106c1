"""The guards of ``tests/conftest.py`` fail what they guard against: a test that leaves torch's
thread count changed (the session pins one thread, so a test that forgets to restore two would
otherwise go unseen) fails, naming the change, in a pytest run of its own; the next test is not
hit."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

LEAKY = """
import torch


def test_leaves_two_threads():
    torch.set_num_threads(2)


def test_restores_its_threads():
    torch.set_num_threads(2)
    torch.set_num_threads(1)
"""


def test_a_test_that_leaves_torch_threads_changed_fails(tmp_path):
    (tmp_path / "conftest.py").write_text("from tests.conftest import _no_leaks, _seed  # noqa: F401\\n")
    (tmp_path / "test_leaky.py").write_text(LEAKY)
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert run.returncode == 1, run.stdout
    assert "test_leaky.py::test_leaves_two_threads left process-wide state changed: torch threads: 1 -> 2" in run.stdout
    assert "2 passed, 1 error" in run.stdout  # an error at teardown; the next test starts from one thread again
