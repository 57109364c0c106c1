"""The declared version bounds: a too-old torch or timm is named in one line on import, the
bounds in code are the ones ``pyproject.toml`` declares, and the shims for older torch behave
like the APIs they stand in for (CI's lowest-versions job runs them on the oldest releases)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from overparam.compat import MIN_TORCH, is_autocast_enabled, require_version, safe_globals, version_tuple

PYPROJECT = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()


def _declared(extra: str | None, package: str) -> str:
    """The ``>=`` bound ``pyproject.toml`` gives ``package`` in ``extra`` (or the core dependencies)."""
    if extra is None:
        block = re.search(r"^dependencies = \[(.*?)^\]", PYPROJECT, re.S | re.M).group(1)
    else:
        block = re.search(rf"^{extra} = \[(.*?)\]$", PYPROJECT, re.M).group(1)
    return re.search(rf'"{package}>=([\d.]+)"', block).group(1)


def _import_with(fake: str, module: str) -> str:
    """The last stderr line of importing ``module`` in a fresh process with ``fake`` run first."""
    run = subprocess.run([sys.executable, "-c", f"{fake}\nimport {module}"], capture_output=True, text=True)
    assert run.returncode == 1
    return run.stderr.strip().splitlines()[-1]


def test_the_bounds_in_code_are_the_declared_ones():
    assert _declared(None, "torch") == MIN_TORCH
    assert re.search(r'requires-python = ">=3.10"', PYPROJECT)
    assert '"Programming Language :: Python :: 3.10"' in PYPROJECT  # the lowest, tested by CI's lowest job
    pytest.importorskip("timm")
    from overparam_zoo.compat import MIN_VERSIONS

    assert _declared("zoo", "torch") == MIN_VERSIONS["torch"]
    assert _declared("zoo", "timm") == MIN_VERSIONS["timm"]


def test_a_too_old_torch_is_named_in_one_line():
    line = _import_with("import torch; torch.__version__ = '2.1.2+cu121'", "overparam")
    assert line == (
        f"ImportError: overparam needs torch>={MIN_TORCH}, but torch 2.1.2+cu121 is installed: "
        f"pip install 'torch>={MIN_TORCH}'"
    )


def test_a_too_old_torch_or_timm_for_the_zoo_is_named_in_one_line():
    pytest.importorskip("timm")
    from overparam_zoo.compat import MIN_VERSIONS

    timm_line = _import_with("import timm; timm.__version__ = '1.0.3'", "overparam_zoo")
    assert timm_line == (
        f"ImportError: overparam_zoo needs timm>={MIN_VERSIONS['timm']}, but timm 1.0.3 is installed: "
        f"pip install 'timm>={MIN_VERSIONS['timm']}'"
    )
    torch_line = _import_with("import torch; torch.__version__ = '2.3.1'", "overparam_zoo")
    assert torch_line.startswith(f"ImportError: overparam_zoo needs torch>={MIN_VERSIONS['torch']}, but torch 2.3.1 ")


def test_version_tuple_and_require_version():
    assert version_tuple("2.3.1+cu121") == (2, 3, 1)
    assert version_tuple("2.5.0a0+git1234") == (2, 5, 0)
    assert version_tuple("1.0.26") > version_tuple("1.0.3")  # numbers, not strings
    assert version_tuple("nightly") == ()
    require_version("x", "torch", "2.2.0", "2.2")  # equal is enough
    with pytest.raises(ImportError, match=r"^x needs timm>=1\.0\.26, but timm 1\.0\.9 is installed"):
        require_version("x", "timm", "1.0.9", "1.0.26")


def test_the_autocast_check_takes_a_device_type():
    assert not is_autocast_enabled("cpu")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert is_autocast_enabled("cpu")
        assert not is_autocast_enabled("cuda")


@pytest.mark.skipif(
    version_tuple(torch.__version__) < (2, 4), reason="torch < 2.4 cannot allow a type (the zoo needs 2.4)"
)
def test_safe_globals_allows_a_type_inside_the_block_only(tmp_path):
    import argparse

    path = tmp_path / "args.pth"
    torch.save({"args": argparse.Namespace(lr=0.1)}, path)
    with safe_globals([argparse.Namespace]):
        assert torch.load(path, weights_only=True)["args"].lr == 0.1
    with pytest.raises(Exception, match="Namespace"):
        torch.load(path, weights_only=True)
