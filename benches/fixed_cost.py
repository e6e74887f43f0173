r"""Fixed cost of a step: many small tensors, where the work per element is negligible.

For each optimizer and layout, the median over interleaved repetitions of
- ``step``: ferroptim's whole ``optimizer.step()`` (torch's step wrapper and hooks included),
- ``native``: the native call alone (the cached plan's ``step``, as ``step()`` makes it),
- torch's best implementation's ``step()`` (fused where torch has it, else foreach, else for-loop),
and the issue-3 target for the native call, 20 µs + 0.1 µs per tensor.

    python benches/fixed_cost.py [--optimizers AdamW SGD] [--layouts 200x256 1000x1] [--reps 400]
    python benches/fixed_cost.py --zero-grad --layouts 500x64 2000x64 200x256

``--zero-grad`` times ``zero_grad()`` instead, and a whole iteration's optimizer work
(``step()`` + ``zero_grad()``, and ferroptim's ``step_and_zero_grad()``), against torch.optim's
for-loop, foreach and fused classes.

``--baseline MODULE`` adds, interleaved with the others, the whole ``step()`` of another
build of ferroptim importable as ``MODULE``, to compare two commits in one process. To make
one from commit ``REV`` (its own target directory, so the main build is not touched)::

    git worktree add /tmp/wt-base REV && cd /tmp/wt-base
    CARGO_TARGET_DIR=/tmp/target-base maturin build --release -o /tmp/wheel-base
    pip install --no-deps --target /tmp/site-base /tmp/wheel-base/ferroptim-*.whl
    mv /tmp/site-base/ferroptim /tmp/site-base/ferroptim_base
    sed -i 's/from ferroptim\b/from ferroptim_base/' /tmp/site-base/ferroptim_base/*.py
    PYTHONPATH=/tmp/site-base python benches/fixed_cost.py --baseline ferroptim_base
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import time

import ferroptim
import torch

LAYOUTS = {
    "500x64": (500, 64),
    "2000x64": (2000, 64),
    "200x256": (200, 256),
    "1000x1": (1000, 1),
    "200x1": (200, 1),
    "2000x16": (2000, 16),
    "500x4096": (500, 4096),
}
KWARGS = {"SGD": {"lr": 0.01, "momentum": 0.9}, "Adam": {"lr": 1e-3}, "AdamW": {"lr": 1e-3}}


def make(impl, name: str, count: int, numel: int) -> tuple[torch.optim.Optimizer, list]:
    """``impl``: "ferroptim", "torch", or another ferroptim build's module."""
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(numel, generator=gen)) for _ in range(count)]
    for p in params:
        p.grad = torch.randn(numel, generator=gen) * 1e-3
    kwargs = dict(KWARGS.get(name, {"lr": 1e-3}))
    if impl == "ferroptim":
        return getattr(ferroptim, name)(params, **kwargs), params
    if impl != "torch":
        return getattr(impl, name)(params, **kwargs), params
    cls = getattr(torch.optim, name)
    for flag in ("fused", "foreach"):
        try:
            return cls(params, **kwargs, **{flag: True}), params
        except (RuntimeError, TypeError, ValueError):
            continue
    return cls(params, **kwargs, foreach=False), params


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--optimizers", nargs="+", default=["AdamW", "SGD", "Adam"])
    parser.add_argument("--layouts", nargs="+", default=["200x256", "1000x1"], choices=LAYOUTS)
    parser.add_argument("--reps", type=int, default=400)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--baseline", metavar="MODULE", help="another ferroptim build to compare")
    parser.add_argument(
        "--zero-grad", action="store_true", help="only the zero_grad and step+zero_grad table"
    )
    args = parser.parse_args()
    if args.zero_grad:
        if args.threads:
            torch.set_num_threads(args.threads)
        zero_grad_table(args)
        return
    base = importlib.import_module(args.baseline) if args.baseline else None
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"ferroptim {ferroptim.__version__}; medians of {args.reps} interleaved steps (µs)"
    )
    extra = f" {args.baseline} step | baseline/ours |" if base else ""
    print(
        "| optimizer | layout | ferroptim step | native call | target | torch best | torch/ours |"
        + extra
    )
    print("|---|---|---:|---:|---:|---:|---:|" + ("---:|---:|" if base else ""))
    for name in args.optimizers:
        for layout in args.layouts:
            count, numel = LAYOUTS[layout]
            ours, _ = make("ferroptim", name, count, numel)
            ref, _ = make("torch", name, count, numel)
            other = make(base, name, count, numel)[0] if base else None
            for _ in range(5):
                ours.step()
                ref.step()
                if other is not None:
                    other.step()
            # made by the steps above (absent in builds before cached plans)
            plan = ours.__dict__.get("_ferroptim_plan", (None,))[0]
            hypers = [ours._hyper(g) for g in ours.param_groups]

            def native(plan=plan, ours=ours, hypers=hypers) -> None:
                if plan is not None and not plan.step(ours.state, ours.param_groups, hypers):
                    raise RuntimeError("the cached plan declined")

            samples: dict[str, list[float]] = {"step": [], "native": [], "torch": [], "base": []}
            # Each of the three follows a torch step, so all see equally cold caches (as after
            # a forward/backward pass): the difference of `step` and `native` is then the
            # Python side of ferroptim's step.
            for _ in range(args.reps):
                samples["torch"].append(timed(ref.step))
                samples["step"].append(timed(ours.step))
                ref.step()
                samples["native"].append(timed(native))
                if other is not None:
                    ref.step()
                    samples["base"].append(timed(other.step))
            med = {k: statistics.median(v) * 1e6 for k, v in samples.items() if v}
            target = 20 + 0.1 * count
            native_us = "n/a"
            if plan is not None:
                native_us = f"{med['native']:.1f} ({med['native'] / count * 1e3:.0f} ns/tensor)"
            print(
                f"| {name} | {layout} | {med['step']:.1f} | {native_us} | {target:.0f} | "
                f"{med['torch']:.1f} | {med['torch'] / med['step']:.2f} |"
                + (f" {med['base']:.1f} | {med['base'] / med['step']:.2f} |" if base else "")
            )


def backward(params: list[torch.Tensor], weight: torch.Tensor) -> None:
    """Gives every parameter the gradient ``weight`` through autograd (one backward pass over
    ``sum((p * weight).sum())``), as a training step's backward does: each new gradient is
    a tensor that only autograd's accumulator holds, or is added into the existing one."""
    torch.stack([(p * weight).sum() for p in params]).sum().backward()


def zero_grad_table(args: argparse.Namespace) -> None:
    """``--zero-grad``: medians (µs) of ``zero_grad()`` (set_to_none=True and False) of
    ferroptim and torch.optim (for-loop and foreach defaults), and of a whole iteration's
    optimizer work (``step()`` then ``zero_grad()``) against torch's for-loop, foreach and
    fused AdamW. Before every timed call (untimed) a backward pass gives each parameter its
    gradient, as in training: with ``set_to_none`` a fresh tensor that ``zero_grad`` frees, so
    the C++ allocator's ``free`` is part of what is timed (``LD_PRELOAD`` another allocator to
    see its effect); without, the gradients are accumulated into in place."""
    print(
        f"\nzero_grad: torch {torch.__version__}, {torch.get_num_threads()} threads; medians "
        f"of {args.reps} interleaved calls (µs)"
    )
    print(
        "| optimizer | layout | set_to_none | ferroptim zero_grad | torch zero_grad "
        "(for-loop / foreach) | torch/ours | ferroptim step+zero_grad | ferroptim "
        "step_and_zero_grad | torch step+zero_grad (for-loop / foreach / fused) | "
        "best torch/ours (fused call) |"
    )
    print("|---|---|---|---:|---|---:|---:|---:|---|---:|")
    for name in args.optimizers:
        for layout in args.layouts:
            count, numel = LAYOUTS[layout]
            impls = {}
            for impl, flags in (
                ("ferroptim", {}),
                ("for-loop", {"foreach": False}),
                ("foreach", {"foreach": True}),
                ("fused", {"fused": True}),
            ):
                gen = torch.Generator().manual_seed(0)
                params = [
                    torch.nn.Parameter(torch.randn(numel, generator=gen)) for _ in range(count)
                ]
                weight = torch.randn(numel, generator=gen) * 1e-3
                kwargs = dict(KWARGS.get(name, {"lr": 1e-3}))
                cls = getattr(ferroptim if impl == "ferroptim" else torch.optim, name)
                try:
                    opt = cls(params, **kwargs, **flags)
                except (RuntimeError, TypeError, ValueError):
                    continue
                impls[impl] = (opt, params, weight)
            for set_to_none in (True, False):
                zero: dict[str, list[float]] = {k: [] for k in impls}
                both: dict[str, list[float]] = {k: [] for k in impls}
                fused: list[float] = []
                for _ in range(args.reps):
                    for impl, (opt, params, weight) in impls.items():
                        backward(params, weight)
                        zero[impl].append(timed(lambda: opt.zero_grad(set_to_none)))  # noqa: B023
                        backward(params, weight)

                        def iteration(opt=opt, set_to_none=set_to_none) -> None:
                            opt.step()
                            opt.zero_grad(set_to_none)

                        both[impl].append(timed(iteration))
                        if impl != "ferroptim":
                            continue
                        backward(params, weight)
                        fused.append(
                            timed(lambda: opt.step_and_zero_grad(set_to_none=set_to_none))  # noqa: B023
                        )
                z = {k: statistics.median(v) * 1e6 for k, v in zero.items()}
                b = {k: statistics.median(v) * 1e6 for k, v in both.items()}
                torch_impls = [k for k in ("for-loop", "foreach", "fused") if k in b]
                best = min(b[k] for k in torch_impls)
                print(
                    f"| {name} | {layout} | {set_to_none} | {z['ferroptim']:.1f} | "
                    f"{z['for-loop']:.1f} / {z['foreach']:.1f} | "
                    f"{min(z['for-loop'], z['foreach']) / z['ferroptim']:.2f} | "
                    f"{b['ferroptim']:.1f} | {statistics.median(fused) * 1e6:.1f} | "
                    + " / ".join(f"{b[k]:.1f}" for k in torch_impls)
                    + f" | {best / b['ferroptim']:.2f} "
                    + f"({best / (statistics.median(fused) * 1e6):.2f}) |"
                )


if __name__ == "__main__":
    main()
