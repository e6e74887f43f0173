"""Median ``step()`` time of ferroptim's 8-bit AdamW against its fp32 AdamW, torch's fused
AdamW and (optional) torchao's ``AdamW8bit``, interleaved in one process.

Cases: one tensor of 25M elements (``1x25M``) and 500 tensors of 4096 elements
(``500x4096``), float32 parameters. Each implementation gets its own parameters (same
values), gradients (random, set once) and state, and takes warm-up steps first; every
repetition round-robins over the implementations (the start rotating) so that machine noise
hits them alike. Ratios are against ferroptim's fp32 ``AdamW`` and torchao's ``AdamW8bit``.

torchao is optional (not in .ci/requirements.txt): ``pip install torchao`` into the venv; the
column is skipped with a message when ``import torchao`` fails.

``--memory`` instead reports, per implementation in a fresh subprocess, the bytes of its state
tensors and the growth of peak RSS over the parameters and gradients on the first step (1x25M).

Usage (repository root, ``PYTHONPATH`` holding the ferroptim package):

    python benches/bench_8bit.py --reps 20
    python benches/bench_8bit.py --memory
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any, Callable

import ferroptim
import torch

CASES = {"1x25M": [25_000_000], "500x4096": [4096] * 500}


def _torchao_adamw8bit() -> Callable[..., Any] | None:
    try:
        from torchao.optim import AdamW8bit  # type: ignore[import-not-found]
    except Exception as e:  # noqa: BLE001 - any import failure skips the column
        print(f"torchao AdamW8bit column skipped: {type(e).__name__}: {e}", file=sys.stderr)
        return None
    return AdamW8bit


def implementations() -> dict[str, Callable[..., Any]]:
    impls: dict[str, Callable[..., Any]] = {
        "torch fused AdamW": lambda ps: torch.optim.AdamW(ps, fused=True),
        "ferroptim AdamW": lambda ps: ferroptim.AdamW(ps),
        "ferroptim AdamW8bit": lambda ps: ferroptim.AdamW8bit(ps),
    }
    ao = _torchao_adamw8bit()
    if ao is not None:
        impls["torchao AdamW8bit"] = lambda ps: ao(ps)
    return impls


def bench_case(sizes: list[int], reps: int) -> dict[str, float]:
    torch.manual_seed(0)
    base = [torch.randn(n) for n in sizes]
    grads = [torch.randn(n) * 1e-2 for n in sizes]
    runs = {}
    for name, make in implementations().items():
        ps = [b.clone().requires_grad_(True) for b in base]
        for p, g in zip(ps, grads):
            p.grad = g.clone()
        opt = make(ps)
        for _ in range(3):
            opt.step()
        runs[name] = opt
    times: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for r in range(reps):
        for k in range(len(names)):
            name = names[(r + k) % len(names)]
            t0 = time.perf_counter()
            runs[name].step()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def memory_child(name: str) -> None:
    sizes = CASES["1x25M"]
    ps = [torch.randn(n).requires_grad_(True) for n in sizes]
    for p in ps:
        p.grad = torch.randn_like(p)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    opt = implementations()[name](ps)
    opt.step()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    state = sum(
        v.numel() * v.element_size()
        for s in opt.state.values()
        for v in s.values()
        if isinstance(v, torch.Tensor) and v.dim() > 0
    )
    print(f"{state} {(after - before) * 1024}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--cases", nargs="*", default=list(CASES))
    ap.add_argument("--memory", action="store_true")
    ap.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        memory_child(args.memory_child)
        return
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    if args.memory:
        print("| implementation (1x25M float32) | state bytes | vs fp32 state | peak RSS growth |")
        print("|---|---:|---:|---:|")
        rows = {}
        for name in implementations():
            out = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--memory-child", name],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.split()
            rows[name] = (int(out[0]), int(out[1]))
        fp32 = rows["ferroptim AdamW"][0]
        for name, (state, rss) in rows.items():
            print(
                f"| {name} | {state / 2**20:.1f} MiB | {state / fp32:.3f} | {rss / 2**20:.1f} MiB |"
            )
        return
    for case in args.cases:
        med = bench_case(CASES[case], args.reps)
        fp32 = med["ferroptim AdamW"]
        ao = med.get("torchao AdamW8bit")
        print(f"\n{case} (median of {args.reps}, ms)")
        print("| implementation | ms | vs ferroptim AdamW | torchao AdamW8bit / this |")
        print("|---|---:|---:|---:|")
        for name, t in med.items():
            speed = f"{ao / t:.1f}x" if ao else "-"
            print(f"| {name} | {t * 1e3:.2f} | {t / fp32:.2f} | {speed} |")


if __name__ == "__main__":
    main()
