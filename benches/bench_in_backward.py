r"""Optimizer in backward: one optimizer per parameter, stepped from its gradient hook.

PyTorch's recipe for "fusing the optimizer step into the backward pass"
(``Tensor.register_post_accumulate_grad_hook``, as in torch's tutorial) builds one optimizer
per parameter and calls its ``step()`` and ``zero_grad()`` from the parameter's hook, so each
gradient is freed right after use. Every call then pays the optimizer's fixed cost once per
*parameter*. For each implementation, interleaved, medians over repetitions of

- ``call``: one hook's work (``step()`` + ``zero_grad()``) of a single-parameter optimizer
  on a ``--numel``-element parameter (µs),
- ``backward``: a whole backward pass of an MLP of ``--layers`` Linear layers (weights and
  biases, ``--width`` wide) with the step inside the hooks (ms).

``torch`` is torch.optim's default for a single CPU tensor (for-loop) and ``torch-fused``
its fused CPU kernel.

    python benches/bench_in_backward.py [--optimizer AdamW] [--layers 16] [--width 256]
"""

from __future__ import annotations

import argparse
import statistics
import time

import ferroptim
import torch

IMPLS = ("ferroptim", "torch", "torch-fused")


def make_opt(impl: str, name: str, params: list[torch.Tensor]) -> torch.optim.Optimizer:
    kwargs = {"lr": 1e-3}
    if impl == "ferroptim":
        return getattr(ferroptim, name)(params, **kwargs)
    if impl == "torch-fused":
        return getattr(torch.optim, name)(params, fused=True, **kwargs)
    return getattr(torch.optim, name)(params, **kwargs)


def hooked_model(impl: str, name: str, layers: int, width: int) -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        *[m for _ in range(layers) for m in (torch.nn.Linear(width, width), torch.nn.Tanh())]
    )
    optimizers = {p: make_opt(impl, name, [p]) for p in model.parameters()}

    def hook(p: torch.Tensor) -> None:
        optimizers[p].step()
        optimizers[p].zero_grad()

    for p in model.parameters():
        p.register_post_accumulate_grad_hook(hook)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--optimizer", default="AdamW")
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--numel", type=int, default=256)
    parser.add_argument("--reps", type=int, default=200)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    name = args.optimizer

    singles = {}
    for impl in IMPLS:
        p = torch.nn.Parameter(torch.randn(args.numel))
        singles[impl] = (p, make_opt(impl, name, [p]))
    models = {impl: hooked_model(impl, name, args.layers, args.width) for impl in IMPLS}
    x = torch.randn(64, args.width)
    grad = torch.randn(args.numel) * 1e-3
    calls: dict[str, list[float]] = {impl: [] for impl in IMPLS}
    backward: dict[str, list[float]] = {impl: [] for impl in IMPLS}
    for rep in range(args.reps + 5):
        for impl in IMPLS:
            p, opt = singles[impl]
            p.grad = grad.clone()
            start = time.perf_counter()
            opt.step()
            opt.zero_grad()
            elapsed = time.perf_counter() - start
            loss = models[impl](x).pow(2).mean()
            start_b = time.perf_counter()
            loss.backward()
            elapsed_b = time.perf_counter() - start_b
            if rep >= 5:
                calls[impl].append(elapsed)
                backward[impl].append(elapsed_b)

    print(
        f"{name}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"call: one parameter of {args.numel} elements; backward: {args.layers} x "
        f"Linear({args.width}, {args.width}) + Tanh, batch 64, {2 * args.layers} hooked "
        f"optimizers; medians of {args.reps}"
    )
    print("| implementation | call (µs) | backward with steps (ms) |")
    print("|---|---|---|")
    for impl in IMPLS:
        c = statistics.median(calls[impl]) * 1e6
        b = statistics.median(backward[impl]) * 1e3
        print(f"| {impl} | {c:.1f} | {b:.2f} |")


if __name__ == "__main__":
    main()
