"""bf16_stochastic_round=True (ferroptim.lowbit classes): unbiased, reproducible, and closer to
fp32 training than round-to-nearest."""

from __future__ import annotations

import math

import ferroptim
import torch

ULP_BELOW_1 = 2.0**-8  # bfloat16 spacing in [0.5, 1)


def _lion_step(n: int, lr: float, seed: int, threads: int = 2, rounds: bool = True) -> torch.Tensor:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(seed)
        p = torch.ones(n, dtype=torch.bfloat16, requires_grad=True)
        opt = ferroptim.Lion8bit([p], lr=lr, weight_decay=0.0, bf16_stochastic_round=rounds)
        p.grad = torch.ones(n, dtype=torch.bfloat16)
        opt.step()  # Lion: p - lr * sign(...) = 1 - lr exactly, before rounding
        return p.detach().clone()
    finally:
        torch.set_num_threads(before)


def test_rounding_is_unbiased() -> None:
    n = 200_000
    frac = 0.3
    lr = frac * ULP_BELOW_1  # 1 - lr lies 0.3 of an ulp below 1
    p = _lion_step(n, lr, seed=0).double()
    low, high = 1.0 - ULP_BELOW_1, 1.0
    assert bool(((p == low) | (p == high)).all())
    # P(low) = 0.3; the mean of n Bernoulli draws has standard error ulp * sqrt(0.21 / n)
    # (2.6e-6 here): 5 standard errors (a false failure has probability below 1e-6).
    bound = 5 * ULP_BELOW_1 * math.sqrt(frac * (1 - frac) / n)
    assert abs(p.mean().item() - (1.0 - lr)) < bound
    # Round-to-nearest leaves every element at 1 (biased by 0.3 ulp).
    assert bool((_lion_step(n, lr, seed=0, rounds=False) == 1.0).all())


def test_reproducible_from_the_seed_and_the_same_for_any_thread_count() -> None:
    lr = 0.5 * ULP_BELOW_1
    a = _lion_step(50_000, lr, seed=3, threads=1)
    assert torch.equal(a, _lion_step(50_000, lr, seed=3, threads=2))
    assert torch.equal(a, _lion_step(50_000, lr, seed=3, threads=3))
    assert not torch.equal(a, _lion_step(50_000, lr, seed=4))


def _train(dtype: torch.dtype, rounds: bool, steps: int = 300) -> torch.Tensor:
    """Linear regression whose updates are below half a bfloat16 ulp of the weights late in
    training; returns the weights (float32)."""
    torch.manual_seed(0)
    x = torch.randn(512, 64)
    w_true = torch.randn(64, 1)
    y = x @ w_true
    w = (w_true + 0.5 * torch.randn(64, 1)).to(dtype).requires_grad_(True)
    big = torch.zeros(4096, dtype=dtype, requires_grad=True)  # an 8-bit-state tensor too
    opt = ferroptim.AdamW8bit([w, big], lr=2e-4, weight_decay=0.0, bf16_stochastic_round=rounds)
    torch.manual_seed(1)
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(x.to(dtype) @ w, y.to(dtype)).float()
        (loss + big.float().square().sum() * 0).backward()
        big.grad = torch.randn(4096, dtype=dtype) * 1e-3
        opt.step()
    return w.detach().float()


def test_bf16_training_tracks_fp32_closer_than_round_to_nearest() -> None:
    fp32 = _train(torch.float32, rounds=False)
    nearest = _train(torch.bfloat16, rounds=False)
    stochastic = _train(torch.bfloat16, rounds=True)
    d_nearest = (nearest - fp32).norm().item()
    d_stochastic = (stochastic - fp32).norm().item()
    assert d_stochastic < 0.5 * d_nearest, (d_stochastic, d_nearest)
