"""Step time on CUDA: ferroptim (ATen device path, and its own NVRTC kernels: ``nvrtc``,
opt-in, ``ferroptim.use_cuda_kernels``) vs torch.optim fused / foreach / for-loop.

Shapes: one 100M-element tensor (bandwidth), 1000 x 65536 and 10000 x 1024 (overhead);
float32 and bfloat16 (parameters, gradients and state of the same dtype); AdamW and SGD with
momentum. Reports the median step time (CUDA events, after warm-up) and the achieved GB/s
(bytes an ideal single pass moves: AdamW 28 B/param in float32, SGD-momentum 20 B/param;
half in bfloat16) next to the copy bandwidth measured in the same process (``a.mul_(1.0001)``
on 64 Mi float32 elements, 8 B/element). Written for benches/gpu_check.sh (not run yet on a
GPU when written). NAdam and Adamax (no fused kernel in torch) are timed for the NVRTC kernels
against torch's foreach. Usage:
``python benches/bench_cuda.py [--out results.json] [--quick] [--only aten|nvrtc]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import ferroptim
import torch

SHAPES = {"1x100M": (1, 100_000_000), "1000x65536": (1000, 65536), "10000x1024": (10000, 1024)}
BYTES = {"AdamW": 28, "SGD": 20, "NAdam": 28, "Adamax": 28}  # float32 B/param, one ideal pass
KWARGS = {
    "AdamW": {"lr": 1e-3},
    "SGD": {"lr": 1e-3, "momentum": 0.9},
    "NAdam": {"lr": 1e-3},
    "Adamax": {"lr": 1e-3},
}
#: (optimizers, implementations) of each part.
PARTS = {
    "aten": (("AdamW", "SGD"), ("ferroptim", "fused", "foreach", "forloop")),
    "nvrtc": (("AdamW", "SGD", "NAdam", "Adamax"), ("nvrtc", "ferroptim", "fused", "foreach")),
}


def cuda_time(fn, iters: int, warmup: int = 3) -> float:
    """Median seconds of ``fn()`` over ``iters`` runs, timed with CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def copy_bandwidth() -> float:
    a = torch.ones(64 * 2**20, device="cuda")
    t = cuda_time(lambda: a.mul_(1.0001), 20)
    return 8 * a.numel() / t / 1e9


def make(impl: str, name: str, params):
    kwargs = KWARGS[name]
    if impl in ("ferroptim", "nvrtc"):
        return getattr(ferroptim, name)(params, **kwargs)
    flags = {"fused": {"fused": True}, "foreach": {"foreach": True}, "forloop": {"foreach": False}}
    return getattr(torch.optim, name)(params, **flags[impl], **kwargs)


def bench(name: str, shape: str, dtype: torch.dtype, impl: str, iters: int) -> dict:
    count, numel = SHAPES[shape]
    params = [
        torch.nn.Parameter(torch.randn(numel, device="cuda", dtype=dtype)) for _ in range(count)
    ]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    ferroptim.use_cuda_kernels(impl == "nvrtc")
    opt = make(impl, name, params)
    n = iters if not (impl == "forloop" and count > 1000) else max(3, iters // 4)
    t = cuda_time(opt.step, n)
    total = count * numel
    per_param = BYTES[name] * (0.5 if dtype == torch.bfloat16 else 1.0)
    del opt, params
    torch.cuda.empty_cache()
    return {"seconds": t, "gbps": per_param * total / t / 1e9}


def summarize(results: dict) -> None:
    """NVRTC kernels against torch's best implementation and the copy bandwidth, per row."""
    by = {}
    for r in results["runs"]:
        if "seconds" in r:
            by[(r["optimizer"], r["shape"], r["dtype"], r["impl"])] = r
    print("\nNVRTC kernels: speed-up over torch's best (fused, else foreach/for-loop) and /copy")
    for (name, shape, dtype, impl), r in by.items():
        if impl != "nvrtc":
            continue
        torch_runs = [by.get((name, shape, dtype, i)) for i in ("fused", "foreach", "forloop")]
        best = min((t["seconds"] for t in torch_runs if t), default=None)
        aten = by.get((name, shape, dtype, "ferroptim"))
        line = f"{name:8} {shape:12} {dtype[6:]:9} /copy {r['gbps'] / results['copy_gbps']:5.2f}"
        if best:
            line += f"  vs torch best {best / r['seconds']:5.2f}x"
        if aten:
            line += f"  vs ferroptim ATen path {aten['seconds'] / r['seconds']:5.2f}x"
        print(line)
        r["speedup_vs_torch_best"] = best / r["seconds"] if best else None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--quick", action="store_true", help="fewer iterations")
    ap.add_argument("--only", choices=sorted(PARTS), default=None, help="one part (default both)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to benchmark")
        return
    iters = 5 if args.quick else 15
    began = time.time()
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "runs": []}
    results["copy_gbps"] = copy_bandwidth()
    print(f"{results['device']}, torch {results['torch']}, copy {results['copy_gbps']:.0f} GB/s")
    head = ("optimizer", "shape", "dtype", "impl", "ms", "GB/s", "/copy")
    print("{:8} {:12} {:9} {:10} {:>9} {:>7} {:>6}".format(*head))
    jobs = []
    for part in [args.only] if args.only else ["aten", "nvrtc"]:
        names, impls = PARTS[part]
        for name in names:
            for dtype in (torch.float32, torch.bfloat16):
                for shape in SHAPES:
                    for impl in impls:
                        if name in ("NAdam", "Adamax") and impl == "fused":
                            continue  # torch has no fused kernel for them
                        if (name, shape, dtype, impl) not in jobs:
                            jobs.append((name, shape, dtype, impl))
    for name, shape, dtype, impl in jobs:
        try:
            r = bench(name, shape, dtype, impl, iters)
        except Exception as e:  # noqa: BLE001 (report and go on)
            r = {"error": f"{type(e).__name__}: {e}"}
        r.update(optimizer=name, shape=shape, dtype=str(dtype), impl=impl)
        results["runs"].append(r)
        if "error" in r:
            print(f"{name:8} {shape:12} {str(dtype)[6:]:9} {impl:10} {r['error']}")
        else:
            ratio = r["gbps"] / results["copy_gbps"]
            print(
                f"{name:8} {shape:12} {str(dtype)[6:]:9} {impl:10} "
                f"{r['seconds'] * 1e3:9.3f} {r['gbps']:7.0f} {ratio:6.2f}"
            )
        sys.stdout.flush()
    ferroptim.use_cuda_kernels(False)
    summarize(results)
    results["wall_s"] = time.time() - began
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
