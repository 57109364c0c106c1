"""Training-step speed, memory, eval speed and collapse time of over-parameterized models.

Every number is a ratio against the stock model measured in the same process (stock and
over-parameterized runs interleaved, alternating which goes first), as the median over
repeats after warm-up. Prints one markdown table. See ``benchmarks/README.md``.

    python benchmarks/train_step.py                      # the default table (~10 min, 2 threads)
    python benchmarks/train_step.py --configs resnet18:2 --sizes 32x64 --repeats 5
    python benchmarks/train_step.py --configs resnet18:2 --sizes 32x64 --compile
    python benchmarks/train_step.py --device cuda --amp bf16 --channels-last \
        --configs resnet50:2 resnet50:2:bn --sizes 256x224 --path-check resnet50
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

DEFAULT_CONFIGS = ["resnet18:2", "resnet18:4", "resnet18:2:bn"]
DEFAULT_SIZES = ["32x64", "8x224"]
DEFAULT_COLLAPSE = ["tv:resnet50:4", "mobilenetv3_large_100:4", "vit_tiny_patch16_224:4"]
AMP_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


# ---------------------------------------------------------------------------- models
def create_stock(name: str) -> nn.Module:
    """``tv:NAME`` is a torchvision model, anything else a timm model (random init)."""
    if name.startswith("tv:"):
        import torchvision

        return torchvision.models.get_model(name[3:])
    import timm

    return timm.create_model(name)


def create_pair(name: str, depth: int, batch_norm: bool, seed: int = 0) -> tuple[nn.Module, nn.Module]:
    from overparam import overparameterize

    torch.manual_seed(seed)
    stock = create_stock(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        op = overparameterize(copy.deepcopy(stock), depth=depth, batch_norm=batch_norm)
    return stock, op


def parse_config(text: str) -> tuple[str, int, bool]:
    """``model:depth[:bn]``."""
    parts = text.split(":")
    if parts[0] == "tv":
        parts = ["tv:" + parts[1]] + parts[2:]
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "bn"):
        raise argparse.ArgumentTypeError(f"expected model:depth[:bn], got {text!r}")
    return parts[0], int(parts[1]), len(parts) == 3


def parse_size(text: str) -> tuple[int, int]:
    """``BATCHxRES`` (square RGB images)."""
    batch, res = text.lower().split("x")
    return int(batch), int(res)


# ---------------------------------------------------------------------------- timing
class Options:
    device: str = "cpu"
    amp: str | None = None  # "fp16" or "bf16"
    channels_last: bool = False
    compile: bool = False
    path_choice: str = "count"


def _autocast(opts: Options):
    return torch.autocast(opts.device, dtype=AMP_DTYPES[opts.amp]) if opts.amp else nullcontext()


def _sync(opts: Options) -> None:
    """Wait for the device: CUDA kernels run asynchronously, a timer must not stop before them."""
    if opts.device == "cuda":
        torch.cuda.synchronize()


def _prepare(model: nn.Module, opts: Options) -> nn.Module:
    """On the device, in channels_last if asked, with every chain's path choice set."""
    from overparam.chain import OverparamChain

    model.to(opts.device)
    if opts.channels_last:
        model.to(memory_format=torch.channels_last)
    for m in model.modules():
        if isinstance(m, OverparamChain) and m.composed_only is None:
            m.path_choice = opts.path_choice  # type: ignore[assignment]
    return model


def make_train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, opts: Options) -> Callable[[], None]:
    """One zero_grad + forward + cross-entropy + backward + SGD step; float16 autocast steps
    through a ``GradScaler``, as AMP training does."""
    _prepare(model, opts).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    scaler = torch.amp.GradScaler(opts.device, enabled=opts.amp == "fp16")
    forward = torch.compile(model) if opts.compile else model

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with _autocast(opts):
            loss = F.cross_entropy(forward(x), y)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    return step


def interleaved(
    a: Callable[[], None], b: Callable[[], None], repeats: int, warmup: int, opts: Options
) -> tuple[float, float]:
    """Median seconds of ``a`` and of ``b``, run alternately (which goes first alternates),
    each timed between device synchronisations."""
    for _ in range(warmup):
        a()
        b()
    times_a, times_b = [], []
    for r in range(repeats):
        order = ((a, times_a), (b, times_b)) if r % 2 == 0 else ((b, times_b), (a, times_a))
        for fn, out in order:
            _sync(opts)
            start = time.perf_counter()
            fn()
            _sync(opts)
            out.append(time.perf_counter() - start)
    return statistics.median(times_a), statistics.median(times_b)


def _input(batch: int, res: int, opts: Options) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(batch, 3, res, res, device=opts.device)
    if opts.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, torch.randint(0, 1000, (batch,), device=opts.device)


def train_ratio(name, depth, bn, batch, res, repeats, warmup, opts) -> tuple[float, float, float]:
    stock, op = create_pair(name, depth, bn)
    x, y = _input(batch, res, opts)
    t_stock, t_op = interleaved(
        make_train_step(stock, x, y, opts),
        make_train_step(op, x, y, opts),
        repeats,
        warmup + (2 if opts.compile else 0),
        opts,
    )
    return t_op / t_stock, t_stock, t_op


def saved_activation_bytes(model: nn.Module, x: torch.Tensor, y: torch.Tensor, opts: Options) -> int:
    """Bytes of the distinct storages autograd saves for backward in one training forward
    (parameters excluded): the activation memory held at the peak, between forward and backward."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    _prepare(model, opts).train()
    if opts.path_choice == "measure":
        with _autocast(opts):  # settle the choice first: its timing runs save tensors of their own
            F.cross_entropy(model(x), y)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), _autocast(opts):
        loss = F.cross_entropy(model(x), y)
    del loss
    return sum(seen.values())


def peak_rss_child(name: str, depth: int, bn: bool, batch: int, res: int, which: str, opts: Options) -> None:
    """In a fresh process: peak RSS growth (VmHWM) over two training steps, from after the
    model, optimizer and input exist. Includes activations, gradients, momentum, workspaces."""
    stock, op = create_pair(name, depth, bn)
    model = stock if which == "stock" else op
    del stock, op
    x, y = _input(batch, res, opts)
    step = make_train_step(model, x, y, opts)
    base = _proc_status("VmRSS")
    step()
    step()
    print(json.dumps({"base": base, "peak": _proc_status("VmHWM")}))


def _proc_status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_rss_ratio(name, depth, bn, batch, res, args) -> float:
    growth = {}
    for which in ("stock", "op"):
        cmd = [sys.executable, __file__, "--threads", str(args.threads), "--_rss-child", which]
        cmd += ["--configs", f"{name}:{depth}" + (":bn" if bn else ""), "--sizes", f"{batch}x{res}"]
        cmd += ["--channels-last"] * args.channels_last + (["--amp", args.amp] if args.amp else [])
        cmd += ["--path-choice", args.path_choice]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        result = json.loads(out)
        growth[which] = result["peak"] - result["base"]
    return growth["op"] / growth["stock"]


def peak_cuda_ratio(name: str, depth: int, bn: bool, batch: int, res: int, opts: Options) -> float:
    """Peak CUDA memory growth (``torch.cuda.max_memory_allocated``, reset per model) over two
    training steps, from the point where model, optimizer and input exist: activations,
    gradients, momentum buffers, workspaces."""
    growth = []
    for which in (0, 1):
        model = create_pair(name, depth, bn)[which]
        x, y = _input(batch, res, opts)
        step = make_train_step(model, x, y, opts)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        step()
        torch.cuda.synchronize()
        growth.append(torch.cuda.max_memory_allocated() - base)
        del model, step, x, y
        torch.cuda.empty_cache()
    return growth[1] / growth[0]


def eval_ratio(stock: nn.Module, op: nn.Module, batch: int, res: int, repeats: int, warmup: int, opts) -> float:
    _prepare(stock, opts).eval()
    _prepare(op, opts).eval()
    x, _ = _input(batch, res, opts)

    def run(model):
        def fn():
            with torch.no_grad(), _autocast(opts):
                model(x)

        return fn

    t_stock, t_op = interleaved(run(stock), run(op), repeats, warmup, opts)
    return t_op / t_stock


def collapse_seconds(op: nn.Module, opts: Options, repeats: int = 3) -> float:
    """Median time of ``collapsed_state_dict`` with every chain's eval cache cleared, on the
    device (float32)."""
    from overparam import collapsed_state_dict
    from overparam.chain import OverparamChain

    op.to(opts.device)
    chains = [m for m in op.modules() if isinstance(m, OverparamChain)]
    times = []
    for _ in range(repeats + 1):  # the first one pays one-time kernel set-up
        for chain in chains:
            chain._cache = None
        _sync(opts)
        start = time.perf_counter()
        collapsed_state_dict(op)
        _sync(opts)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


# ---------------------------------------------------------------------------- per-layer paths
def path_check(name: str, depth: int, batch: int, res: int, opts: Options, repeats: int) -> list[str]:
    """Time both training paths of every distinct chain shape of ``name`` (no BN) on the
    inputs one training forward gives them, against the counted-MAC rule's pick.

    Returns markdown lines: one row per distinct (layer, input) shape and a summary of how
    often, and at what cost, the counted rule picks the slower path.
    """
    from overparam.chain import OverparamChain
    from overparam.cost import prefer_composed
    from overparam.path_timing import time_paths

    _, op = create_pair(name, depth, False)
    _prepare(op, opts).train()
    seen: dict[tuple, dict] = {}

    def hook(path: str):
        def record(chain: OverparamChain, args: tuple[torch.Tensor, ...]) -> None:
            x = args[0]
            p = chain.plan
            key = (p.channels, p.kernels, p.stride, p.groups, tuple(x.shape), x.requires_grad)
            entry = seen.setdefault(key, {"chain": chain, "paths": [], "x": x, "dtype": x.dtype})
            entry["paths"].append(path)

        return record

    chains = [(p, m) for p, m in op.named_modules() if isinstance(m, OverparamChain) and m.composed_only is None]
    handles = [m.register_forward_pre_hook(hook(p)) for p, m in chains]
    x, y = _input(batch, res, opts)
    with _autocast(opts):
        F.cross_entropy(op(x), y).backward()
    for h in handles:
        h.remove()
    lines = [
        "| layers | channels | kernels | stride | input | counted pick | composed (ms) | expanded (ms) | rule slower? |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    slower = lost = total = 0.0
    for key, entry in seen.items():
        chain, inp = entry["chain"], entry["x"]
        probe = torch.randn_like(inp).requires_grad_(inp.requires_grad)
        with _autocast(opts):
            composed, expanded = time_paths(chain, probe, repeats=repeats)
        counted = prefer_composed(chain.plan, tuple(inp.shape), inp.requires_grad)
        picked, best = composed if counted else expanded, min(composed, expanded)
        n = len(entry["paths"])
        wrong = picked > best
        slower += n * wrong
        lost += n * (picked - best)
        total += n * min(composed, expanded)
        lines.append(
            f"| {n}: {entry['paths'][0]}{' ...' if n > 1 else ''} | {'-'.join(map(str, key[0]))} | "
            f"{'+'.join('x'.join(map(str, k)) for k in key[1]) if key[2] else 'linear'} | "
            f"{key[2][0] if key[2] else 1} | {'x'.join(map(str, key[4]))} | "
            f"{'composed' if counted else 'expanded'} | {composed * 1e3:.3f} | {expanded * 1e3:.3f} | "
            f"{'**yes**' if wrong else 'no'} |"
        )
    lines.append(
        f"\nCounted-MAC rule picks the slower path for {int(slower)} of {len(chains)} layers "
        f"({sum(1 for line in lines if '**yes**' in line)} of {len(seen)} distinct shapes); "
        f"time lost: {lost * 1e3:.2f} ms per step over {total * 1e3:.2f} ms of chain time with the faster paths "
        f"({lost / max(total, 1e-12):.1%})."
    )
    return lines


# ---------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--configs",
        nargs="*",
        default=DEFAULT_CONFIGS,
        help="model:depth[:bn]; model is a timm name or tv:NAME (default: %(default)s)",
    )
    parser.add_argument("--sizes", nargs="*", default=DEFAULT_SIZES, help="BATCHxRES inputs (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=9, help="timed train steps per model (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per model first (default: %(default)s)")
    parser.add_argument("--eval-batches", nargs="*", type=int, default=[1, 32], help="(default: %(default)s)")
    parser.add_argument("--eval-repeats", type=int, default=7, help="(default: %(default)s)")
    parser.add_argument(
        "--collapse", nargs="*", default=DEFAULT_COLLAPSE, help="extra model:depth rows, collapse time only"
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="(default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default: %(default)s)")
    parser.add_argument("--no-rss", action="store_true", help="skip the peak-memory column")
    parser.add_argument("--channels-last", action="store_true", help="models and inputs in channels_last")
    parser.add_argument(
        "--amp", choices=sorted(AMP_DTYPES), help="torch.autocast on the device (fp16 steps through a GradScaler)"
    )
    parser.add_argument("--bf16", action="store_true", help="the same as --amp bf16")
    parser.add_argument("--compile", action="store_true", help="train steps through torch.compile (both models)")
    parser.add_argument(
        "--path-choice",
        choices=["count", "measure"],
        default="count",
        help="how every chain picks composed or expanded per input shape (default: %(default)s)",
    )
    parser.add_argument(
        "--path-check",
        nargs="*",
        default=[],
        metavar="MODEL[:DEPTH]",
        help="time both paths of every layer shape of MODEL (depth 2 unless given) at the first --sizes entry",
    )
    parser.add_argument("--path-repeats", type=int, default=5, help="timed runs per path (default: %(default)s)")
    parser.add_argument("--_rss-child", choices=["stock", "op"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.bf16:
        if args.amp not in (None, "bf16"):
            parser.error(f"--bf16 contradicts --amp {args.amp}")
        args.amp = "bf16"
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch.cuda.is_available() is False on this machine")

    torch.set_num_threads(args.threads)
    opts = Options()
    opts.device, opts.amp, opts.channels_last = args.device, args.amp, args.channels_last
    opts.compile, opts.path_choice = args.compile, args.path_choice
    configs = [parse_config(c) for c in args.configs]
    sizes = [parse_size(s) for s in args.sizes]
    if args._rss_child:
        (name, depth, bn), (batch, res) = configs[0], sizes[0]
        peak_rss_child(name, depth, bn, batch, res, args._rss_child, opts)
        return

    on_cuda = args.device == "cuda"
    mode = ", ".join(
        [torch.cuda.get_device_name() if on_cuda else f"CPU, {args.threads} threads"]
        + ["channels_last"] * opts.channels_last
        + [f"{opts.amp} autocast"] * bool(opts.amp)
        + ["torch.compile"] * opts.compile
        + ["measured path choice"] * (opts.path_choice == "measure")
    )
    eval_cols = [f"eval b{b}" for b in args.eval_batches]
    memory = "peak CUDA mem" if on_cuda else "peak RSS"
    header = ["model", "depth", "BN", "input", "train step", "saved act.", memory, *eval_cols, "collapse (s)"]
    rows: list[list[str]] = []
    for name, depth, bn in configs:
        collapse = None
        for batch, res in sizes:
            ratio, t_stock, t_op = train_ratio(name, depth, bn, batch, res, args.repeats, args.warmup, opts)
            stock, op = create_pair(name, depth, bn)
            x, y = _input(batch, res, opts)
            act = saved_activation_bytes(op, x, y, opts) / saved_activation_bytes(stock, x, y, opts)
            if args.no_rss:
                mem = "—"
            elif on_cuda:
                mem = f"{peak_cuda_ratio(name, depth, bn, batch, res, opts):.2f}x"
            else:
                mem = f"{peak_rss_ratio(name, depth, bn, batch, res, args):.2f}x"
            evals = [f"{eval_ratio(stock, op, b, res, args.eval_repeats, 2, opts):.3f}x" for b in args.eval_batches]
            if collapse is None:
                collapse = collapse_seconds(op, opts)
            rows.append(
                [
                    name,
                    str(depth),
                    "yes" if bn else "no",
                    f"{batch}x3x{res}x{res}",
                    f"{ratio:.3f}x ({t_stock * 1e3:.0f} ms)",
                    f"{act:.2f}x",
                    mem,
                    *evals,
                    f"{collapse:.3f}",
                ]
            )
            print("  ", " | ".join(rows[-1]), file=sys.stderr, flush=True)
            del stock, op, x, y
            if on_cuda:
                torch.cuda.empty_cache()
    for text in args.collapse:
        name, depth, bn = parse_config(text)
        _, op = create_pair(name, depth, bn)
        seconds = collapse_seconds(op, opts)
        rows.append(
            [name, str(depth), "yes" if bn else "no", "—", "—", "—", "—", *["—"] * len(eval_cols), f"{seconds:.3f}"]
        )
        print("  ", " | ".join(rows[-1]), file=sys.stderr, flush=True)

    if rows:
        print(
            f"\nRatios over the stock model ({mode}; train step = forward + backward + SGD step; "
            f"stock train-step median in brackets)\n"
        )
        print("| " + " | ".join(header) + " |")
        print("|" + "|".join("---" for _ in header) + "|")
        for row in rows:
            print("| " + " | ".join(row) + " |")
    for text in args.path_check:
        name, _, depth = text.rpartition(":") if text.rpartition(":")[2].isdigit() else (text, "", "2")
        batch, res = sizes[0]
        print(f"\nPer-layer training paths of {name} d{depth} at {batch}x3x{res}x{res} ({mode}; fwd + bwd, median)\n")
        for line in path_check(name, int(depth), batch, res, opts, args.path_repeats):
            print(line)
        sys.stdout.flush()


if __name__ == "__main__":
    main()
