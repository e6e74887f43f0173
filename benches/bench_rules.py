r"""A rule written in Python (``ferroptim.rules``) against the built-in class and torch.

AdamW re-expressed with the rule API (the rule of ``tests/python/test_rules.py``, which gives
the built-in class's results bit for bit), timed interleaved in one process with ferroptim's
built-in ``AdamW`` and torch's foreach and fused AdamW, medians of ``--reps`` steps, plus the
time to define the rule (tracing both functions and building the native graph)::

    python benches/bench_rules.py [--cases 1x25M 500x4096] [--reps 9] [--threads 2]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path

import ferroptim
import torch

CASES = {"1x25M": (1, 25_000_000), "500x4096": (500, 4096), "200x256": (200, 256)}


def load_rule_module():
    """The rules of ``tests/python/test_rules.py`` (one definition for tests and benchmark)."""
    path = Path(__file__).resolve().parent.parent / "tests" / "python" / "test_rules.py"
    spec = importlib.util.spec_from_file_location("rules_under_test", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", default=["1x25M", "500x4096"], choices=CASES)
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rules = load_rule_module()
    start = time.perf_counter()
    fresh = ferroptim.rules.rule_optimizer(
        "Fresh",
        rules.adamw_update,
        rules.adamw_scalars,
        state=("exp_avg", "exp_avg_sq"),
        defaults={
            "lr": 1e-3,
            "betas": (0.9, 0.999),
            "eps": 1e-8,
            "weight_decay": 0.01,
            "maximize": False,
        },
    )
    define_ms = (time.perf_counter() - start) * 1e3
    # The first step compiles the graph's kernel (cached for the process); the second reuses it.
    p = torch.nn.Parameter(torch.randn(64))
    p.grad = torch.randn(64)
    opt = fresh([p])
    steps_ms = []
    for _ in range(2):
        start = time.perf_counter()
        opt.step()
        steps_ms.append((time.perf_counter() - start) * 1e3)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; defining the AdamW rule "
        f"(trace + native graph): {define_ms:.1f} ms; its first step (compiles the kernel): "
        f"{steps_ms[0]:.1f} ms, the second: {steps_ms[1]:.2f} ms"
    )
    print(
        "| case | rule AdamW (ms) | built-in AdamW | torch foreach | torch fused | "
        "rule / built-in | foreach / rule |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    impls = {
        "rule": lambda ps: rules.RuleAdamW(ps),
        "builtin": lambda ps: ferroptim.AdamW(ps, weight_decay=0.01),
        "foreach": lambda ps: torch.optim.AdamW(ps, weight_decay=0.01, foreach=True),
        "fused": lambda ps: torch.optim.AdamW(ps, weight_decay=0.01, fused=True),
    }
    for case in args.cases:
        count, numel = CASES[case]
        opts = {}
        for name, make in impls.items():
            gen = torch.Generator().manual_seed(0)
            ps = [torch.nn.Parameter(torch.randn(numel, generator=gen)) for _ in range(count)]
            for p in ps:
                p.grad = torch.randn(numel, generator=gen) * 1e-3
            opts[name] = make(ps)
            opts[name].step()  # state created, plan made
        times: dict[str, list[float]] = {k: [] for k in opts}
        for _ in range(args.reps):
            for name, opt in opts.items():
                t0 = time.perf_counter()
                opt.step()
                times[name].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        print(
            f"| {case} | {med['rule']:.2f} | {med['builtin']:.2f} | {med['foreach']:.2f} | "
            f"{med['fused']:.2f} | {med['rule'] / med['builtin']:.2f} | "
            f"{med['foreach'] / med['rule']:.1f} |"
        )
        del opts


if __name__ == "__main__":
    main()
