"""Compute cost of one optimizer step per element, per instruction-set variant, in cache.

An optimizer step on a large tensor is bound by memory bandwidth or by instruction throughput,
whichever is slower. This script measures the second on its own: one thread updates a tensor
small enough to stay in the L2 cache (2^16 elements by default), and the time is the process's
CPU time (``time.process_time_ns``), so that other programs sharing the machine slow the wall
clock but not the figure. Each of ferroptim's kernel variants (``FERROPTIM_ISA``: baseline,
avx2, avx512, avx512bf16 — those the CPU supports) runs in its own subprocess, and torch's
``fused=True`` step (where torch has one) and, when ``import deepspeed`` works, DeepSpeed's
``DeepSpeedCPUAdam`` (Adam and AdamW; bfloat16 state for bfloat16 parameters,
``fp32_optimizer_states=False``) are timed in the first subprocess for reference.

Compare the figure with the per-thread budget of a memory-bound step: with ``T`` threads and a
read-modify-write bandwidth of ``B`` bytes/s, a step moving ``b`` bytes per element stays within
1.1x the bandwidth floor only if one thread's compute takes at most ``1.1 * b * T / B`` seconds per
element (e.g. bf16 AdamW, b = 14, T = 2, B = 46 GB/s: 0.67 ns per element).

Usage (from the repository root, with ferroptim importable):

    python benches/bench_isa.py
    python benches/bench_isa.py --optimizers AdamW --dtypes bfloat16 --numel 65536 --reps 200
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

OPTIMIZERS = {
    "SGD": dict(lr=1e-3, momentum=0.9),
    "Adam": dict(lr=1e-3),
    "AdamW": dict(lr=1e-3),
    "Lion": dict(lr=1e-4),
    "Adan": dict(lr=1e-3),
}
TORCH_FUSED = {"SGD", "Adam", "AdamW"}

CHILD = r"""
import json, sys, time, torch, ferroptim
cfg = json.loads(sys.argv[1])
torch.set_num_threads(1)
out = {}
def timed(opt, params, reps):
    for _ in range(5):
        opt.step()
    best = float("inf")
    for _ in range(reps):
        t = time.process_time_ns()
        opt.step()
        best = min(best, time.process_time_ns() - t)
    return best / params[0].numel()
for dtype_name in cfg["dtypes"]:
    dtype = getattr(torch, dtype_name)
    for name in cfg["optimizers"]:
        kw = cfg["kwargs"][name]
        torch.manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(cfg["numel"]).to(dtype))]
        for p in params:
            p.grad = torch.randn_like(p) * 1e-2
        out[f"{name} {dtype_name} ferroptim"] = timed(getattr(ferroptim, name)(params, **kw),
                                                       params, cfg["reps"])
        if cfg["torch"] and name in ("Adam", "AdamW"):
            try:
                from deepspeed.ops.adam import DeepSpeedCPUAdam
            except Exception:  # not installed, or its op does not build: no column
                DeepSpeedCPUAdam = None
            if DeepSpeedCPUAdam is not None:
                dparams = [torch.nn.Parameter(p.detach().clone()) for p in params]
                for p, q in zip(dparams, params):
                    p.grad = q.grad.clone()
                wd = 0.01 if name == "AdamW" else 0.0
                ds = DeepSpeedCPUAdam(dparams, lr=kw["lr"], weight_decay=wd,
                                      adamw_mode=name == "AdamW",
                                      fp32_optimizer_states=dtype == torch.float32)
                out[f"{name} {dtype_name} deepspeed"] = timed(ds, dparams, cfg["reps"])
        if cfg["torch"] and name in cfg["fused"]:
            tparams = [torch.nn.Parameter(p.detach().clone()) for p in params]
            for p, q in zip(tparams, params):
                p.grad = q.grad.clone()
            out[f"{name} {dtype_name} torch fused"] = timed(
                getattr(torch.optim, name)(tparams, fused=True, **kw), tparams, cfg["reps"])
print(json.dumps(out))
"""


def variants() -> list[str]:
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    out = ["baseline"]
    if {"avx2", "fma"} <= flags:
        out.append("avx2")
    if {"avx512f", "avx512bw", "avx512vl", "fma"} <= flags:
        out.append("avx512")
        if {"avx512dq", "avx512_bf16"} <= flags:
            out.append("avx512bf16")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--optimizers", nargs="+", choices=list(OPTIMIZERS), default=list(OPTIMIZERS)
    )
    parser.add_argument(
        "--dtypes",
        nargs="+",
        choices=["float32", "bfloat16", "float16"],
        default=["bfloat16", "float32"],
    )
    parser.add_argument("--numel", type=int, default=1 << 16)
    parser.add_argument("--reps", type=int, default=100, help="timed steps (the minimum is kept)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="run every variant this many times, alternating (the minimum is kept)",
    )
    parser.add_argument("--isas", nargs="+", help="default: every variant the CPU supports")
    parser.add_argument("--json", metavar="PATH", help="write the numbers to PATH")
    args = parser.parse_args(argv)
    isas = args.isas or variants()
    results: dict[str, dict[str, float]] = {}
    for _ in range(args.rounds):
        for i, isa in enumerate(isas):
            env = dict(os.environ, FERROPTIM_ISA=isa)
            env.pop("FERROPTIM_NO_SIMD", None)
            env.setdefault("DS_ACCELERATOR", "cpu")
            cfg = dict(
                optimizers=args.optimizers,
                dtypes=args.dtypes,
                numel=args.numel,
                reps=args.reps,
                kwargs=OPTIMIZERS,
                fused=sorted(TORCH_FUSED),
                torch=i == 0,
            )
            run = subprocess.run(
                [sys.executable, "-c", CHILD, json.dumps(cfg)],
                env=env,
                check=True,
                capture_output=True,
                text=True,
            )
            got = json.loads(run.stdout.strip().splitlines()[-1])
            best = results.setdefault(isa, {})
            for key, value in got.items():
                best[key] = min(value, best.get(key, float("inf")))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"ns per element per step, one thread, {args.numel} elements (CPU time, min of "
        f"{args.rounds} x {args.reps} steps); load average {load:.2f}"
    )
    cols = isas + ["torch fused", "deepspeed"]
    print(f"{'case':<22}" + "".join(f"{c:>13}" for c in cols))
    for dtype in args.dtypes:
        for name in args.optimizers:
            key = f"{name} {dtype}"
            row = [results[isa].get(f"{key} ferroptim") for isa in isas]
            row.append(results[isas[0]].get(f"{key} torch fused"))
            row.append(results[isas[0]].get(f"{key} deepspeed"))
            print(f"{key:<22}" + "".join(f"{v:>13.3f}" if v else f"{'n/a':>13}" for v in row))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(numel=args.numel, load=load, results=results), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
