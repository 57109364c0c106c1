"""Training-step speed, memory, eval speed and collapse time of over-parameterized models.

Every number is a ratio against the stock model measured in the same process (stock and
over-parameterized runs interleaved, alternating which goes first), as the median over
repeats after warm-up. Prints one markdown table. See ``benchmarks/README.md``.

    python benchmarks/train_step.py                      # the default table (~10 min, 2 threads)
    python benchmarks/train_step.py --configs resnet18:2 --sizes 32x64 --repeats 5
    python benchmarks/train_step.py --configs resnet18:2 --sizes 32x64 --compile
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
    channels_last: bool = False
    bf16: bool = False
    compile: bool = False


def _autocast(opts: Options):
    return torch.autocast("cpu", dtype=torch.bfloat16) if opts.bf16 else nullcontext()


def make_train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, opts: Options) -> Callable[[], None]:
    model.train()
    if opts.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    forward = torch.compile(model) if opts.compile else model

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with _autocast(opts):
            loss = F.cross_entropy(forward(x), y)
        loss.backward()
        optimizer.step()

    return step


def interleaved(a: Callable[[], None], b: Callable[[], None], repeats: int, warmup: int) -> tuple[float, float]:
    """Median seconds of ``a`` and of ``b``, run alternately (which goes first alternates)."""
    for _ in range(warmup):
        a()
        b()
    times_a, times_b = [], []
    for r in range(repeats):
        order = ((a, times_a), (b, times_b)) if r % 2 == 0 else ((b, times_b), (a, times_a))
        for fn, out in order:
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return statistics.median(times_a), statistics.median(times_b)


def _input(batch: int, res: int, opts: Options) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(batch, 3, res, res)
    if opts.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, torch.randint(0, 1000, (batch,))


def train_ratio(name, depth, bn, batch, res, repeats, warmup, opts) -> tuple[float, float, float]:
    stock, op = create_pair(name, depth, bn)
    x, y = _input(batch, res, opts)
    t_stock, t_op = interleaved(
        make_train_step(stock, x, y, opts),
        make_train_step(op, x, y, opts),
        repeats,
        warmup + (2 if opts.compile else 0),
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

    model.train()
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
        cmd += ["--channels-last"] * args.channels_last + ["--bf16"] * args.bf16
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        result = json.loads(out)
        growth[which] = result["peak"] - result["base"]
    return growth["op"] / growth["stock"]


def eval_ratio(stock: nn.Module, op: nn.Module, batch: int, res: int, repeats: int, warmup: int, opts) -> float:
    stock.eval()
    op.eval()
    x, _ = _input(batch, res, opts)
    if opts.channels_last:
        stock.to(memory_format=torch.channels_last)
        op.to(memory_format=torch.channels_last)

    def run(model):
        def fn():
            with torch.no_grad(), _autocast(opts):
                model(x)

        return fn

    t_stock, t_op = interleaved(run(stock), run(op), repeats, warmup)
    return t_op / t_stock


def collapse_seconds(op: nn.Module, repeats: int = 3) -> float:
    """Median time of ``collapsed_state_dict`` with every chain's eval cache cleared."""
    from overparam import collapsed_state_dict
    from overparam.chain import OverparamChain

    chains = [m for m in op.modules() if isinstance(m, OverparamChain)]
    times = []
    for _ in range(repeats + 1):  # the first one pays one-time kernel set-up
        for chain in chains:
            chain._cache = None
        start = time.perf_counter()
        collapsed_state_dict(op)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


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
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default: %(default)s)")
    parser.add_argument("--no-rss", action="store_true", help="skip the peak-RSS subprocesses")
    parser.add_argument("--channels-last", action="store_true", help="models and inputs in channels_last")
    parser.add_argument("--bf16", action="store_true", help='under torch.autocast("cpu", dtype=torch.bfloat16)')
    parser.add_argument("--compile", action="store_true", help="train steps through torch.compile (both models)")
    parser.add_argument("--_rss-child", choices=["stock", "op"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    opts = Options()
    opts.channels_last, opts.bf16, opts.compile = args.channels_last, args.bf16, args.compile
    configs = [parse_config(c) for c in args.configs]
    sizes = [parse_size(s) for s in args.sizes]
    if args._rss_child:
        (name, depth, bn), (batch, res) = configs[0], sizes[0]
        peak_rss_child(name, depth, bn, batch, res, args._rss_child, opts)
        return

    mode = ", ".join(
        [f"{args.threads} threads"]
        + ["channels_last"] * opts.channels_last
        + ["bf16 autocast"] * opts.bf16
        + ["torch.compile"] * opts.compile
    )
    eval_cols = [f"eval b{b}" for b in args.eval_batches]
    header = ["model", "depth", "BN", "input", "train step", "saved act.", "peak RSS", *eval_cols, "collapse (s)"]
    rows: list[list[str]] = []
    for name, depth, bn in configs:
        collapse = None
        for batch, res in sizes:
            ratio, t_stock, t_op = train_ratio(name, depth, bn, batch, res, args.repeats, args.warmup, opts)
            stock, op = create_pair(name, depth, bn)
            x, y = _input(batch, res, opts)
            act = saved_activation_bytes(op, x, y, opts) / saved_activation_bytes(stock, x, y, opts)
            rss = "—" if args.no_rss else f"{peak_rss_ratio(name, depth, bn, batch, res, args):.2f}x"
            evals = [f"{eval_ratio(stock, op, b, res, args.eval_repeats, 2, opts):.3f}x" for b in args.eval_batches]
            if collapse is None:
                collapse = collapse_seconds(op)
            rows.append(
                [
                    name,
                    str(depth),
                    "yes" if bn else "no",
                    f"{batch}x3x{res}x{res}",
                    f"{ratio:.3f}x ({t_stock * 1e3:.0f} ms)",
                    f"{act:.2f}x",
                    rss,
                    *evals,
                    f"{collapse:.3f}",
                ]
            )
            print("  ", " | ".join(rows[-1]), file=sys.stderr, flush=True)
    for text in args.collapse:
        name, depth, bn = parse_config(text)
        _, op = create_pair(name, depth, bn)
        seconds = collapse_seconds(op)
        rows.append(
            [name, str(depth), "yes" if bn else "no", "—", "—", "—", "—", *["—"] * len(eval_cols), f"{seconds:.3f}"]
        )
        print("  ", " | ".join(rows[-1]), file=sys.stderr, flush=True)

    print(
        f"\nRatios over the stock model ({mode}; train step = forward + backward + SGD step; "
        f"stock train-step median in brackets)\n"
    )
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
