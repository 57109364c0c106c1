"""The oldest torch and timm ``overparam_zoo`` runs on, checked on import.

Invariant: ``import overparam_zoo`` on an older torch or timm fails with one line naming the
version needed (``overparam`` alone needs less: :data:`overparam.compat.MIN_TORCH`). The
``zoo`` extra in ``pyproject.toml`` declares the same bounds, and CI's lowest-versions job
(``.ci/run``) runs the fast tests on them.
"""

from __future__ import annotations

import timm
import torch

from overparam.compat import require_version

__all__ = ["MIN_VERSIONS"]

#: torch 2.4 for ``weights_only`` loading of ``train.py`` checkpoints (their ``argparse.Namespace``);
#: timm 1.0.26 for ``timm.create_model("local-dir:...")`` loading the exports' ``model.safetensors``.
MIN_VERSIONS = {"torch": "2.4", "timm": "1.0.26"}

require_version("overparam_zoo", "torch", torch.__version__, MIN_VERSIONS["torch"])
require_version("overparam_zoo", "timm", timm.__version__, MIN_VERSIONS["timm"])
