"""CUDA: exactness, mixed precision, device moves, torch.compile, export and DDP on a GPU.

Every ``test_cuda_*`` test is marked ``cuda`` and skips without a GPU (``pytest -m cuda`` runs
them where one exists; ``benchmarks/device_check.sh`` does). Each one calls a helper that takes
the device as a parameter, and the ``test_cpu_*`` tests run the same helpers on the CPU, except
what needs a second device or the GPU's compiler: the eval-cache twin moves between dtypes only,
the collapse-grid twin has no CPU-vs-GPU comparison, DDP's CPU run (gloo) is
tests/test_distributed.py's, and the compile twins run ``aot_eager`` (fast) and inductor's CPU
code generation (slow) where the GPU test runs inductor's CUDA code generation.

Tolerances follow from the dtype and the size of the computation: ``tolerance`` below.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

import overparam_zoo  # noqa: F401  (registers resnet18_op_d2)
from overparam import (
    OverparamChain,
    OverparamConv2d,
    OverparamLinear,
    collapsed_state_dict,
    expand_pretrained,
)
from overparam.path_timing import time_paths
from overparam_zoo.sharing.export import export_collapsed

from .helpers import randomize_, relative_error, stock_counterpart, tiny_op_net

HAS_CUDA = torch.cuda.is_available()


def cuda_test(fn: Callable) -> Callable:
    """Marked ``cuda``, skipped without a GPU."""
    return pytest.mark.cuda(pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")(fn))


def tolerance(dtype: torch.dtype, layers: int, depth: int, fan_in: int) -> float:
    """Relative rounding bound of a network's output computed in ``dtype``.

    Each of ``layers`` stock layers rounds its input once and its weight ``depth`` times (once
    per factor, or once per product when collapsed): ``(depth + 1) * eps``; its dot products of
    ``fan_in`` terms add ``sqrt(fan_in) * eps`` of the accumulation dtype (a random walk),
    float32 for float16/bfloat16 (autocast, cuBLAS and cuDNN accumulate in float32); times 2.
    """
    eps = torch.finfo(dtype).eps
    accumulate = torch.finfo(torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype).eps
    return 2 * layers * ((depth + 1) * eps + math.sqrt(fan_in) * accumulate)


@contextlib.contextmanager
def no_tf32() -> Iterator[None]:
    """TF32 off for matmuls and cuDNN convs (it rounds float32 inputs to 10 mantissa bits)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


# ----------------------------------------------------------------------- float64 collapse grid
#: a subset of tests/test_collapse_grid.py: each kind of kernel split, skips, BN, groups, dilation
GRID: list[tuple[str, Callable[[], OverparamChain], tuple[int, ...]]] = [
    ("linear-d4-res", lambda: OverparamLinear(6, 6, depth=4, residual=True, batch_norm=True), (3, 5, 6)),
    ("conv-5-d4-bn", lambda: OverparamConv2d(4, 4, 5, depth=4, padding=2, batch_norm=True), (2, 4, 9, 9)),
    ("conv-1-3-5-res", lambda: OverparamConv2d(4, 4, kernel_sizes=[1, 3, 5], padding=3, residual=True), (2, 4, 9, 9)),
    ("conv-3x8-res2-s2", lambda: OverparamConv2d(4, 4, kernel_sizes=[3] * 8, residual=True, residual_intervals=2, stride=2, padding=8), (2, 4, 17, 17)),
    ("conv-groups-dil", lambda: OverparamConv2d(4, 8, 3, depth=3, groups=2, dilation=2, padding=2, width=2, bias=True), (2, 4, 9, 9)),
    ("conv-reflect-bn", lambda: OverparamConv2d(4, 4, 3, depth=2, padding=1, padding_mode="reflect", batch_norm=True), (2, 4, 8, 8)),
]  # fmt: skip

#: float64: eps 2.2e-16 times the longest reduction here (~10^3 terms) and depth 8 stays < 1e-11;
#: the same 1e-10 as tests/test_collapse_grid.py
TOL64 = 1e-10


def check_collapse_grid(device: str) -> float:
    """Worst float64 error of collapsed eval vs factor-by-factor, on ``device``; on another
    device than the CPU, each layer's output is also compared with the CPU's (the CPU twin has
    no second device: that comparison is the one thing it does not run)."""
    worst = 0.0
    with no_tf32():
        for _name, build, shape in GRID:
            layer = randomize_(build()).double().eval()
            x = torch.randn(shape, dtype=torch.float64)
            with torch.no_grad():
                on_cpu = layer(x) if device != "cpu" else None
                layer.to(device)
                out = layer(x.to(device))
                assert out.device.type == device
                worst = max(worst, relative_error(out, layer.expanded_forward(x.to(device))))
                if on_cpu is not None:
                    worst = max(worst, relative_error(out.cpu(), on_cpu))
    return worst


def test_cpu_collapse_grid_logic():
    assert check_collapse_grid("cpu") < TOL64


@cuda_test
def test_cuda_collapse_grid_float64_without_tf32():
    assert check_collapse_grid("cuda") < TOL64


# ----------------------------------------------------------------------- mixed precision
TINY = {"layers": 3, "depth": 2, "fan_in": 72}


def grads(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.detach().float().flatten() for p in model.parameters()])


#: how much more than its stock counterpart an op model may lose to reduced precision, in
#: logits and in gradients (norm). Measured on the CPU (2026-12-06, 6 batches): 0.8-1.35x for
#: chains without batch norm against their collapsed layers, 1.00x for chains with batch norm
#: against their factors and norms run as modules (the same operations). A gradient off by 2x is
#: a relative error of ~1, 15-50x the stock counterpart's own (0.002-0.03).
AMP_MARGIN = 2.0


def amp_step(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step of ``model`` under autocast (``GradScaler`` for float16): its float32
    logits and unscaled gradients. Checks that the chains ran in ``dtype``, no overflow
    skipped the step, and every factor got a finite, non-zero gradient and moved."""
    device = x.device.type
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler(device, init_scale=2.0**8, enabled=dtype == torch.float16)
    with torch.autocast(device, dtype=dtype):
        logits = model(x)
        loss = F.cross_entropy(logits, y)
    assert logits.dtype == dtype  # the chains really ran in reduced precision
    scaler.scale(loss).backward()
    scaler.unscale_(opt)
    unscaled = grads(model)
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() == (2.0**8 if scaler.is_enabled() else 1.0)  # no inf/nan found
    for chain in (m for m in model.modules() if isinstance(m, OverparamChain)):
        for factor in chain.factors:
            g = factor.weight.grad
            assert g is not None and bool(torch.isfinite(g).all()) and float(g.abs().max()) > 0
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()) if p.grad is not None)
    return logits.detach().float(), unscaled


def float32_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logits = model(x)
    F.cross_entropy(logits, y).backward()
    return logits.detach(), grads(model)


def check_amp_train_step(device: str, dtype: torch.dtype, batch_norm: bool) -> None:
    """One SGD step under autocast against float32, for the op model and for its stock
    counterpart (:func:`~tests.helpers.stock_counterpart`, the same function in stock layers):
    the op model's relative error in logits and in gradients stays within :data:`AMP_MARGIN`
    of the stock counterpart's own."""
    model = tiny_op_net(batch_norm).to(device).train()
    x = torch.randn(8, 3, 16, 16, device=device)
    y = torch.arange(8, device=device) % 10
    errors = {}
    for name, net in (("op", model), ("stock", stock_counterpart(model))):
        logits, amp_grads = amp_step(copy.deepcopy(net), x, y, dtype)
        ref_logits, ref_grads = float32_step(copy.deepcopy(net), x, y)
        errors[name] = (
            float((logits - ref_logits).norm() / ref_logits.norm()),
            float((amp_grads - ref_grads).norm() / ref_grads.norm()),
        )
    (op_logits, op_grads), (stock_logits, stock_grads) = errors["op"], errors["stock"]
    assert op_logits < AMP_MARGIN * stock_logits, errors
    assert op_grads < AMP_MARGIN * stock_grads, errors


@pytest.mark.parametrize("batch_norm", [False, True], ids=["plain", "bn"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_cpu_amp_train_step_logic(dtype, batch_norm):
    check_amp_train_step("cpu", dtype, batch_norm)


@cuda_test
@pytest.mark.parametrize("batch_norm", [False, True], ids=["plain", "bn"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_cuda_amp_train_step(dtype, batch_norm):
    check_amp_train_step("cuda", dtype, batch_norm)


# ----------------------------------------------------------------------- eval cache and moves
def check_eval_cache_moves(moves: list[tuple[Callable[[nn.Module], nn.Module], str, torch.dtype]]) -> None:
    """After each move the cached collapsed weights are dropped and rebuilt on the new device
    and dtype; the output agrees with a float64 CPU reference within :func:`tolerance`, and an
    in-place update of a factor on the new device is seen by the next eval forward."""
    model = tiny_op_net(batch_norm=True)
    for chain in model.modules():
        if isinstance(chain, OverparamChain):
            randomize_(chain)
    model.eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        model(x)
        chains = [m for m in model.modules() if isinstance(m, OverparamChain)]
        assert all(c._cache is not None for c in chains)
        for move, device, dtype in moves:
            model = move(model)
            assert all(c._cache is None for c in chains), "a move must drop the cached weights"
            out = model(x.to(device, dtype))
            for c in chains:
                weight = c._cache[1]
                assert (weight.device.type, weight.dtype) == (device, dtype)
            reference = copy.deepcopy(model).to("cpu", torch.float64)
            assert out.dtype == dtype and out.device.type == device
            assert relative_error(out.double().cpu(), reference(x.double())) < tolerance(dtype, **TINY)
        chains[0].factors[0].weight.mul_(2)
        out = model(x.to(device, dtype))
        reference = copy.deepcopy(model).to("cpu", torch.float64)
        assert relative_error(out.double().cpu(), reference(x.double())) < tolerance(dtype, **TINY)


def test_cpu_eval_cache_moves_logic():
    check_eval_cache_moves(
        [
            (lambda m: m.to("cpu"), "cpu", torch.float32),
            (lambda m: m.half(), "cpu", torch.float16),
            (lambda m: m.float(), "cpu", torch.float32),
            (lambda m: m.to(torch.float64), "cpu", torch.float64),
        ]
    )


@cuda_test
def test_cuda_eval_cache_after_to_cuda_half_and_back():
    check_eval_cache_moves(
        [
            (lambda m: m.to("cuda"), "cuda", torch.float32),
            (lambda m: m.half(), "cuda", torch.float16),
            (lambda m: m.cpu(), "cpu", torch.float16),
            (lambda m: m.cuda(), "cuda", torch.float16),
            (lambda m: m.float(), "cuda", torch.float32),
        ]
    )


# ----------------------------------------------------------------------- torch.compile
def check_compiled_train_and_eval(device: str, backend: str, batch_norm: bool, steps: int = 2) -> int:
    """Compiled (``fullgraph``) and eager copies trained side by side agree in loss, eval
    output and weights; returns the number of compiled graphs (train and eval: 2)."""
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    model = tiny_op_net(batch_norm).to(device)
    eager = copy.deepcopy(model)
    counter = CompileCounterWithBackend(backend)
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    eager_opt = torch.optim.SGD(eager.parameters(), lr=0.1)
    x, y = torch.randn(4, 3, 16, 16, device=device), torch.arange(4, device=device)
    # float32, reductions fused and reordered; each step adds a forward's and a backward's
    # rounding (the backward 4x, as in the AMP check) to the weights the next step starts from
    tol = 4 * steps * tolerance(torch.float32, **TINY)
    with no_tf32(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*lru_cache.*")
        for _ in range(steps):
            losses = []
            for net, optimizer in ((compiled, opt), (eager, eager_opt)):
                net.train()
                optimizer.zero_grad()
                loss = F.cross_entropy(net(x), y)
                loss.backward()
                optimizer.step()
                losses.append(float(loss))
            assert abs(losses[0] - losses[1]) < tol * losses[1]
            compiled.eval()
            eager.eval()
            with torch.no_grad():
                assert relative_error(compiled(x), eager(x)) < tol
    params = torch.cat([p.detach().flatten() for p in model.parameters()])
    eager_params = torch.cat([p.detach().flatten() for p in eager.parameters()])
    assert float((params - eager_params).norm() / eager_params.norm()) < tol
    return counter.frame_count


@pytest.mark.parametrize("batch_norm", [False, True], ids=["plain", "bn"])
def test_cpu_compile_logic_aot_eager(batch_norm):
    # the graphs and autograd of the CUDA test without inductor's code generation (fast)
    assert check_compiled_train_and_eval("cpu", "aot_eager", batch_norm) == 2


@pytest.mark.slow  # inductor compiles C++ for the CPU: ~1 min
@pytest.mark.parametrize("batch_norm", [False, True], ids=["plain", "bn"])
def test_cpu_compile_inductor_train_and_eval(batch_norm):
    assert check_compiled_train_and_eval("cpu", "inductor", batch_norm) == 2


@cuda_test
@pytest.mark.parametrize("batch_norm", [False, True], ids=["plain", "bn"])
def test_cuda_compile_inductor_train_and_eval(batch_norm):
    assert check_compiled_train_and_eval("cuda", "inductor", batch_norm) == 2


# ----------------------------------------------------------------------- expand, collapse, export
def check_expand_collapse_export(device: str, out_dir: Path) -> None:
    """From a model on ``device``: stock weights expanded into the factors, collapsed back,
    exported; the export holds CPU tensors equal to the collapse, and plain timm loads it."""
    stock = timm.create_model("resnet18", num_classes=7).eval()
    model = timm.create_model("resnet18_op_d2_bn", num_classes=7).to(device)
    errors = expand_pretrained(model, {k: v.to(device) for k, v in stock.state_dict().items()})
    # a float32 SVD split of a kernel with <= 512*9 columns: eps * sqrt(fan-in) ~ 1e-5
    assert max(errors.values()) < 1e-4
    model.eval()
    state = collapsed_state_dict(model)
    assert {v.device.type for v in state.values()} == {device}
    reference = stock.state_dict()
    assert state.keys() == reference.keys()
    worst = max(
        relative_error(state[k].double().cpu(), v.double()) for k, v in reference.items() if v.is_floating_point()
    )
    assert worst < 1e-4
    export_collapsed(model, out_dir)
    weights = load_file(str(out_dir / "model.safetensors"))
    assert {v.device.type for v in weights.values()} == {"cpu"}
    assert all(torch.equal(weights[k], v.cpu()) for k, v in state.items())
    loaded = timm.create_model(f"local-dir:{out_dir}", pretrained=True).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x.to(device)).cpu()
        # resnet18: 21 layers, fan-in up to 512*9, computed once on each side
        assert relative_error(loaded(x), expected) < tolerance(torch.float32, layers=21, depth=1, fan_in=512 * 9)


def test_cpu_expand_collapse_export_logic(tmp_path):
    check_expand_collapse_export("cpu", tmp_path / "out")


@cuda_test
def test_cuda_expand_collapse_export_from_gpu_model(tmp_path):
    with no_tf32():
        check_expand_collapse_export("cuda", tmp_path / "out")


# ----------------------------------------------------------------------- DDP with NCCL
WORKER = Path(__file__).with_name("ddp_worker.py")


@cuda_test
@pytest.mark.skipif(HAS_CUDA and torch.cuda.device_count() < 2, reason="DDP with NCCL needs 2 GPUs")
def test_cuda_ddp_nccl_matches_single_process(tmp_path):
    # the CPU run of the same worker (gloo) is tests/test_distributed.py
    out = tmp_path / "results.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", str(WORKER)]
    cmd += ["--modes", "ddp", "--steps", "3", "--device", "cuda", "--out", str(out)]
    proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    assert out.exists(), f"worker wrote no results (rc={proc.returncode}):\n{proc.stderr[-4000:]}"
    (result,) = json.loads(out.read_text())
    assert "error" not in result, result.get("traceback")
    assert result["device"].startswith("cuda") and result["world_size"] == 2 and result["ranks_equal"]
    # float64 on both sides, NCCL's sum of two halves vs one global batch: rounding only
    assert result["max_rel_state_err"] < 1e-10 and max(result["eval_rel_errs"]) < 1e-10


# ----------------------------------------------------------------------- measured path choice
def check_measured_path_choice(device: str) -> None:
    """``path_choice="measure"`` times both paths once per shape and keeps one; whichever it
    keeps, outputs and gradients equal both paths' (float64) and no ``.grad`` is left behind."""
    torch.manual_seed(0)
    layer = randomize_(OverparamConv2d(8, 8, 3, depth=3, padding=1, bias=True)).double().to(device).train()
    layer.path_choice = "measure"
    x = torch.randn(4, 8, 12, 12, dtype=torch.float64, device=device, requires_grad=True)
    out = layer(x)
    assert all(f.weight.grad is None for f in layer.factors), "timing must not accumulate gradients"
    (key, chosen), *others = layer._path_by_shape.items()
    assert not others and key[:2] == (tuple(x.shape), True) and isinstance(chosen, bool)
    upstream = torch.randn_like(out)
    grads_of = {}
    for name, forward in (
        ("measured", layer),
        ("composed", layer.composed_forward),
        ("expanded", layer.expanded_forward),
    ):
        result = forward(x)
        assert relative_error(result, out) < TOL64, name
        grads_of[name] = torch.autograd.grad(result, [x, *layer.parameters()], upstream)
    for name in ("composed", "expanded"):
        for g, ref in zip(grads_of["measured"], grads_of[name]):
            assert relative_error(g, ref) < TOL64, name
    layer(x)  # the second call of the same shape reuses the choice
    assert len(layer._path_by_shape) == 1
    with pytest.raises(ValueError, match="path_choice must be 'count' or 'measure'"):
        layer.path_choice = "fastest"
    bn = OverparamConv2d(8, 8, 3, padding=1, batch_norm=True).to(device).train()
    bn.path_choice = "measure"  # batch norm: expanded in training, nothing to time
    bn(x.float())
    assert list(bn._path_by_shape.values()) == [False]
    with pytest.raises(ValueError, match="single training path"):
        time_paths(bn, x.float())


def test_cpu_measured_path_choice_is_exact():
    check_measured_path_choice("cpu")


@cuda_test
def test_cuda_measured_path_choice_is_exact():
    check_measured_path_choice("cuda")
