"""Worker for ``tests/test_distributed.py``; run it under ``torchrun`` (``torch.distributed.run``).

Each rank trains an over-parameterized timm ResNet-18 on its half of a fixed global batch,
wrapped in DDP (``--modes ddp``) or sharded with FSDP2 ``fully_shard`` (``--modes fsdp2``), and
also trains an unwrapped copy on the whole global batch in the same process. With the loss a
mean over each rank's equal share, both must end with the same weights. The model has no
batch norm (timm's ``norm_layer="groupnorm"``, chains without BN): SyncBatchNorm does not run
on CPU, and per-rank batch statistics would differ from the global batch's.

Rank 0 writes a JSON list, one summary per mode, to ``--out``. ``--device cuda`` runs the same
check on one GPU per rank with NCCL (``tests/test_cuda.py``); the default is CPU with gloo.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import traceback

import timm
import torch
import torch.distributed as dist
import torch.nn.functional as F

from overparam import overparameterize


def build_model(dtype: torch.dtype) -> torch.nn.Module:
    torch.manual_seed(0)
    base = timm.create_model("resnet18", num_classes=10, norm_layer="groupnorm")
    return overparameterize(base, depth=2).to(dtype)


def wrap(model: torch.nn.Module, mode: str) -> torch.nn.Module:
    if mode == "ddp":
        return torch.nn.parallel.DistributedDataParallel(model)
    from torch.distributed.fsdp import fully_shard

    for block in [*model.layer1, *model.layer2, *model.layer3, *model.layer4]:
        fully_shard(block)
    return fully_shard(model)


def full_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded state dict (FSDP2 parameters are DTensors)."""
    out = {}
    for key, value in model.state_dict().items():
        if hasattr(value, "full_tensor"):
            value = value.full_tensor()
        out[key.removeprefix("module.")] = value.detach().clone()
    return out


def run(mode: str, steps: int, dtype: torch.dtype, device: torch.device) -> dict:
    rank, world = dist.get_rank(), dist.get_world_size()
    model = build_model(dtype).to(device)
    reference = copy.deepcopy(model)
    wrapped = wrap(model, mode)

    g = torch.Generator().manual_seed(1234)
    global_batch = 4 * world
    x = torch.randn(steps, global_batch, 3, 32, 32, generator=g, dtype=dtype).to(device)
    y = torch.randint(0, 10, (steps, global_batch), generator=g).to(device)
    share = slice(rank * 4, (rank + 1) * 4)

    # fraction of the parameters this rank holds (1.0 for DDP, ~1/world for FSDP2)
    local = sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in wrapped.parameters())
    held_fraction = local / sum(p.numel() for p in reference.parameters())

    opt = torch.optim.SGD(wrapped.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    probe = x[0, :2]
    losses, eval_errs = [], []
    for step in range(steps):
        wrapped.train()
        opt.zero_grad()
        loss = F.cross_entropy(wrapped(x[step, share]), y[step, share])
        loss.backward()
        opt.step()

        reference.train()
        ref_opt.zero_grad()
        ref_loss = F.cross_entropy(reference(x[step]), y[step])
        ref_loss.backward()
        ref_opt.step()
        losses.append(float(ref_loss.detach()))

        # eval after every step: the chains' cached collapsed weights must follow the updates
        wrapped.eval()
        reference.eval()
        with torch.no_grad():
            out, ref_out = wrapped(probe), reference(probe)
        eval_errs.append(float((out - ref_out).abs().max() / ref_out.abs().max()))

    state, ref_state = full_state(wrapped), full_state(reference)
    max_rel = max(float((state[k] - v).abs().max() / v.abs().max().clamp_min(1e-30)) for k, v in ref_state.items())

    # every rank must hold the same weights: compare a fingerprint across ranks
    flat = torch.cat([v.flatten().double() for v in state.values()])
    fingerprint = torch.stack(
        [flat.sum(), (flat * torch.arange(flat.numel(), dtype=flat.dtype, device=flat.device)).sum()]
    )
    gathered = [torch.empty_like(fingerprint) for _ in range(world)]
    dist.all_gather(gathered, fingerprint)
    ranks_equal = all(torch.equal(gathered[0], f) for f in gathered)

    return {
        "mode": mode,
        "world_size": world,
        "dtype": str(dtype),
        "device": str(device),
        "steps": steps,
        "held_fraction": held_fraction,
        "losses": losses,
        "max_rel_state_err": max_rel,
        "eval_rel_errs": eval_errs,
        "ranks_equal": ranks_equal,
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--modes", nargs="+", choices=["ddp", "fsdp2"], default=["ddp"])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.device == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo")
    rank = dist.get_rank()
    results = []
    for mode in args.modes:
        try:
            results.append(run(mode, args.steps, getattr(torch, args.dtype), device))
        except Exception as err:  # reported to the test, with the traceback
            results.append({"mode": mode, "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()})
        dist.barrier()
    if rank == 0:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
        for result in results:
            print(json.dumps({k: v for k, v in result.items() if k != "traceback"}), flush=True)
    dist.destroy_process_group()
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
