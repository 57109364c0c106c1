"""Multi-process training on CPU: DDP and FSDP2 (gloo, 2 processes started by torchrun).

``tests/ddp_worker.py`` trains an op model on each rank's half of a global batch and an
unwrapped copy on the whole batch; both must end with the same weights (float64) and the
same eval outputs after every step.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

WORKER = Path(__file__).with_name("ddp_worker.py")


@pytest.fixture(scope="module")
def distributed_results(tmp_path_factory):
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    out = tmp_path_factory.mktemp("ddp") / "results.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # loopback only: no network needed
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--standalone",
        str(WORKER),
        "--modes",
        "ddp",
        "fsdp2",
        "--steps",
        "3",
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert out.exists(), (
        f"worker wrote no results (rc={proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    )
    results = {r["mode"]: r for r in json.loads(out.read_text())}
    print(proc.stdout)
    return results


def check(result: dict) -> None:
    assert "error" not in result, result.get("traceback", result.get("error"))
    assert result["world_size"] == 2
    assert result["ranks_equal"]
    assert result["max_rel_state_err"] < 1e-10, result
    assert max(result["eval_rel_errs"]) < 1e-10, result


@pytest.mark.slow
def test_ddp_matches_single_process_with_global_batch(distributed_results):
    result = distributed_results["ddp"]
    check(result)
    assert result["held_fraction"] == 1.0


@pytest.mark.slow
def test_fsdp2_fully_shard_matches_single_process_with_global_batch(distributed_results):
    result = distributed_results["fsdp2"]
    check(result)
    assert result["held_fraction"] < 0.75  # really sharded
