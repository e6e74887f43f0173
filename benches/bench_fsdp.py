"""Median ``step()`` time of ferroptim.AdamW against torch.optim.AdamW on FSDP2 shards.

Spawns ``--world-size`` processes (gloo, CPU) that shard one float32 model of ``--layers``
× ``Linear(--dim, --dim)`` with FSDP2 ``fully_shard`` (every layer and the root), run one
forward/backward pass to give every shard a gradient, and then time ``optimizer.step()`` of

* ``ferroptim.AdamW`` (elementwise: one native call on the local shards, no communication);
* ``torch.optim.AdamW`` with its CPU default, the per-tensor for-loop (``foreach=False``);
* ``torch.optim.AdamW(foreach=True)``;
* ``torch.optim.AdamW(fused=True)``, where DTensor runs it (else the row says why not),

all on the same sharded parameters and gradients, each with its own state. After two
warm-up steps each (the first creates the state), every round steps each optimizer once,
the starting optimizer rotating from round to round, with a barrier before each timed step;
a step's time is the slowest rank's. The table gives the medians over ``--rounds`` rounds.

Usage (from the repository root, in the venv where ferroptim is installed):

    python benches/bench_fsdp.py                       # 2 processes, 4 x Linear(2048, 2048)
    python benches/bench_fsdp.py --threads 2 --rounds 50
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn


def make_optimizers(params: list[torch.Tensor]) -> dict[str, Any]:
    import ferroptim

    optimizers: dict[str, Any] = {
        "ferroptim.AdamW": ferroptim.AdamW(params),
        "torch AdamW (for-loop, CPU default)": torch.optim.AdamW(params),
        "torch AdamW (foreach=True)": torch.optim.AdamW(params, foreach=True),
    }
    try:
        optimizers["torch AdamW (fused=True)"] = torch.optim.AdamW(params, fused=True)
    except (RuntimeError, ValueError) as e:
        optimizers["torch AdamW (fused=True)"] = f"not run: {e}"
    return optimizers


def worker(rank: int, args: argparse.Namespace, store_path: str, out: Any) -> None:
    torch.set_num_threads(args.threads)
    store = dist.FileStore(store_path, args.world_size)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=args.world_size)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (args.world_size,))
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(args.dim, args.dim) for _ in range(args.layers)])
    for layer in model:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    model(torch.randn(8, args.dim)).square().mean().backward()
    params = list(model.parameters())
    local = sum(p._local_tensor.numel() for p in params)

    optimizers = make_optimizers(params)
    runnable = {}
    for name, opt in optimizers.items():
        if isinstance(opt, str):
            continue
        try:
            for _ in range(2):
                opt.step()
            runnable[name] = opt
        except Exception as e:  # e.g. no DTensor sharding rule for a fused kernel
            optimizers[name] = f"not run: {type(e).__name__}: {str(e).splitlines()[0][:80]}"
    names = list(runnable)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(args.rounds):
        for k in range(len(names)):
            name = names[(r + k) % len(names)]
            dist.barrier()
            start = time.perf_counter()
            runnable[name].step()
            elapsed = torch.tensor(time.perf_counter() - start, dtype=torch.float64)
            dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
            times[name].append(float(elapsed))
    if rank == 0:
        medians = {name: statistics.median(t) for name, t in times.items()}
        skipped = {name: msg for name, msg in optimizers.items() if isinstance(msg, str)}
        out.put((local, medians, skipped))
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world-size", type=int, default=2)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads per process")
    args = parser.parse_args()

    ctx = mp.get_context("spawn")
    out = ctx.SimpleQueue()
    with tempfile.TemporaryDirectory() as tmp:
        procs = [
            ctx.Process(target=worker, args=(rank, args, os.path.join(tmp, "store"), out))
            for rank in range(args.world_size)
        ]
        for proc in procs:
            proc.start()
        local, medians, skipped = out.get()
        for proc in procs:
            proc.join()
    total = args.layers * (args.dim * args.dim + args.dim)
    print(
        f"FSDP2, {args.world_size} processes x {args.threads} thread(s), {args.layers} x "
        f"Linear({args.dim}, {args.dim}) float32: {total / 1e6:.1f}M parameters, "
        f"{local / 1e6:.1f}M on rank 0; torch {torch.__version__}; median of {args.rounds} "
        "rounds, slowest rank per step\n"
    )
    base = medians["ferroptim.AdamW"]
    print("| optimizer | median step (ms) | time / ferroptim |")
    print("|---|---:|---:|")
    for name, t in medians.items():
        print(f"| {name} | {t * 1e3:.2f} | {t / base:.2f} |")
    for name, msg in skipped.items():
        print(f"| {name} | {msg} | |")


if __name__ == "__main__":
    main()
