"""Resident memory of optimizer steps: ferroptim against torch.optim, side by side.

The claim to check: after the first step has created the optimizer state, a ferroptim step
allocates nothing, so the process's peak resident set size (RSS) does not grow while it
steps, and the first step grows RSS by about the size of the state alone.

For every optimizer (AdamW, Adam, SGD with momentum 0.9), parameter layout (one float32
tensor of 25M elements; ``--cases 1x25M 500x4096`` adds 500 tensors of 4096 elements) and
implementation (ferroptim; torch.optim ``fused=True``; ``--impls`` can add torch's
``forloop``, ``foreach=False``, which allocates tensor-sized temporaries every step), a fresh
Python process (so that earlier measurements do not leave memory behind)

1. takes one step of the same implementation on a small tensor (2^18 elements), which loads
   the code and starts the threads that steps use, then creates the parameters and their
   gradients and reads its RSS (``VmRSS`` in ``/proc/self/status``);
2. resets the peak RSS (writing ``5`` to ``/proc/self/clear_refs`` sets ``VmHWM`` back to
   the current RSS), builds the optimizer and takes the first step (which creates the state),
   then reads RSS and the peak;
3. resets the peak again, takes ``--steps`` more steps (100 by default) and reads the peak.

Reported, in MB (10^6 bytes): bytes of parameters + gradients and of the optimizer state,
computed from the tensors; RSS before the first step; growth of RSS and of the peak RSS over
the first step; growth of the peak RSS over the next steps (above the RSS before them),
which is 0 (to a few pages) for a step that allocates nothing. Linux only.

Usage (from the repository root, in the venv where ferroptim is installed):

    python benches/memory_check.py                     # AdamW, Adam, SGD on 1 x 25M, ~30 s
    python benches/memory_check.py --cases 1x25M 500x4096 --impls ferroptim fused forloop
    python benches/memory_check.py --markdown --threads 1
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys

import torch

OPTIMIZERS = {
    "AdamW": {"lr": 1e-3},
    "Adam": {"lr": 1e-3},
    "SGD": {"lr": 1e-3, "momentum": 0.9},
}
CASES = {"1x25M": (1, 25_000_000), "500x4096": (500, 4096)}
TORCH_IMPLS = {
    "fused": {"fused": True},
    "foreach": {"foreach": True},
    "forloop": {"foreach": False},
}
IMPLS = ["ferroptim", *TORCH_IMPLS]
DEFAULT_IMPLS = ["ferroptim", "fused"]
DEFAULT_STEPS = 100
WARMUP_NUMEL = 2**18
MB = 1e6


# --------------------------------------------------------------------------- one measurement


def status_bytes(field: str) -> int:
    """A ``kB`` field of /proc/self/status (``VmRSS``, ``VmHWM``), in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak_rss() -> None:
    """Set the peak RSS (``VmHWM``) back to the current RSS."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def make_params(case: str):
    count, numel = CASES[case]
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(numel, generator=gen).requires_grad_() for _ in range(count)]
    for p in params:
        p.grad = torch.randn(numel, generator=gen)
    return params


def make_optimizer(impl: str, name: str, params):
    if impl == "ferroptim":
        import ferroptim

        return getattr(ferroptim, name)(params, **OPTIMIZERS[name])
    return getattr(torch.optim, name)(params, **OPTIMIZERS[name], **TORCH_IMPLS[impl])


def state_bytes(opt) -> int:
    return sum(
        v.nbytes for s in opt.state.values() for v in s.values() if isinstance(v, torch.Tensor)
    )


def warm_up(name: str, impl: str) -> None:
    """One step on a small tensor: pages in the code and starts the threads the step uses,
    one-off costs (about 120 MB of RSS with torch 2.11) that are not the state's."""
    p = torch.zeros(WARMUP_NUMEL, requires_grad=True)
    p.grad = torch.ones_like(p)
    make_optimizer(impl, name, [p]).step()


def measure(name: str, impl: str, case: str, steps: int) -> dict:
    """RSS figures, in bytes, of one implementation in this process (see the module doc)."""
    warm_up(name, impl)
    params = make_params(case)
    gc.collect()
    rss_before = status_bytes("VmRSS")
    reset_peak_rss()
    opt = make_optimizer(impl, name, params)
    opt.step()
    rss_first, peak_first = status_bytes("VmRSS"), status_bytes("VmHWM")
    reset_peak_rss()
    rss_steps = status_bytes("VmRSS")
    for _ in range(steps):
        opt.step()
    return {
        "optimizer": name,
        "impl": impl,
        "case": case,
        "steps": steps,
        "threads": torch.get_num_threads(),
        "params_grads_bytes": sum(p.nbytes + p.grad.nbytes for p in params),
        "state_bytes": state_bytes(opt),
        "rss_before": rss_before,
        "first_step_rss_growth": rss_first - rss_before,
        "first_step_peak_growth": peak_first - rss_before,
        "steps_peak_growth": status_bytes("VmHWM") - rss_steps,
        "steps_rss_growth": status_bytes("VmRSS") - rss_steps,
    }


def run_isolated(name: str, impl: str, case: str, steps: int, threads) -> dict:
    """:func:`measure` in a fresh Python process."""
    cmd = [sys.executable, __file__, "--worker", name, impl, case, "--steps", str(steps)]
    if threads:
        cmd += ["--threads", str(threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


# --------------------------------------------------------------------------- output

COLUMNS = [
    ("params+grads MB", "params_grads_bytes"),
    ("state MB", "state_bytes"),
    ("RSS before MB", "rss_before"),
    ("1st step: RSS +MB", "first_step_rss_growth"),
    ("1st step: peak +MB", "first_step_peak_growth"),
    ("next steps: peak +MB", "steps_peak_growth"),
]


def row_cells(r: dict) -> list[str]:
    return [r["optimizer"], r["case"], r["impl"], *(f"{r[key] / MB:.1f}" for _, key in COLUMNS)]


def print_table(results: list[dict]) -> None:
    head = ["optimizer", "case", "impl", *(title for title, _ in COLUMNS)]
    widths = [max(len(h), 9) for h in head]
    print("  ".join(h.rjust(w) for h, w in zip(head, widths)))
    for r in results:
        print("  ".join(c.rjust(w) for c, w in zip(row_cells(r), widths)))


def markdown_table(results: list[dict]) -> str:
    head = ["optimizer", "case", "impl", *(title for title, _ in COLUMNS)]
    lines = ["| " + " | ".join(head) + " |", "|---|---|---|" + "---:|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row_cells(r)) + " |" for r in results]
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--optimizers", nargs="+", choices=list(OPTIMIZERS), default=list(OPTIMIZERS)
    )
    parser.add_argument(
        "--cases",
        nargs="+",
        choices=list(CASES),
        default=["1x25M"],
        help="parameter layouts (default 1x25M)",
    )
    parser.add_argument(
        "--impls",
        nargs="+",
        choices=IMPLS,
        default=DEFAULT_IMPLS,
        help=f"implementations (default: {' '.join(DEFAULT_IMPLS)})",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=DEFAULT_STEPS,
        help=f"steps after the first one (default {DEFAULT_STEPS})",
    )
    parser.add_argument(
        "--threads", type=int, help="torch.set_num_threads (default: torch's own default)"
    )
    parser.add_argument("--json", metavar="PATH", help="write every number to PATH")
    parser.add_argument("--markdown", action="store_true", help="also print a Markdown table")
    parser.add_argument(
        "--worker",
        nargs=3,
        metavar=("OPTIMIZER", "IMPL", "CASE"),
        help="internal: measure one combination in this process and print it as JSON",
    )
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        if args.threads:
            torch.set_num_threads(args.threads)
        print(json.dumps(measure(*args.worker, args.steps)))
        return 0
    threads = args.threads or torch.get_num_threads()
    print(f"torch {torch.__version__}, {threads} threads, {args.steps} steps after the first")
    results = []
    for name in args.optimizers:
        for case in args.cases:
            for impl in args.impls:
                results.append(run_isolated(name, impl, case, args.steps, args.threads))
    print_table(results)
    if args.markdown:
        print()
        print(markdown_table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
