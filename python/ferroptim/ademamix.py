"""AdEMAMix with native fused steps (rule: ``rust/ferroptim/src/rules/ademamix.rs``)."""

from __future__ import annotations

from typing import Any

import torch

from ferroptim import _core
from ferroptim._base import (
    NATIVE_NOTES,
    NativeStep,
    check_range,
    hyper,
    scalar,
    scalar_tensor,
    zeros_like,
)


class AdEMAMix(NativeStep, torch.optim.Optimizer):
    __doc__ = (
        r"""AdEMAMix with a fused native step; same arguments, defaults and state names as the
    authors' reference implementation (github.com/apple/ml-ademamix, ``pytorch/ademamix.py``).

    Algorithm: Pagliardini, Ablin & Grangier, "The AdEMAMix Optimizer: Better, Faster, Older"
    (arXiv:2409.03113, 2024), Algorithm 1: Adam whose numerator mixes a fast and a slow EMA of
    the gradient, with decoupled weight decay::

        m₁ ← β₁m₁ + (1 − β₁)g      m₂ ← β₃(t)m₂ + (1 − β₃(t))g      ν ← β₂ν + (1 − β₂)g²
        θ ← θ(1 − lr·weight_decay) − lr·(m₁/(1 − β₁ᵗ) + α(t)·m₂) / (√ν/√(1 − β₂ᵗ) + eps)

    With ``alpha_warmup=T`` α rises linearly, ``α(t) = α·t/T`` for ``t < T``; with
    ``beta3_warmup=T`` β₃ rises from β₁ so that the EMA's half-life ``ln ½/ln β − 1`` grows
    linearly (the reference's schedulers; the paper uses one ``T_{α,β₃}`` for both). The
    elementwise arithmetic follows ``pytorch_optimizer.AdEMAMix`` 4.1.0 (the tests' oracle)
    with ``weight_decouple=True``; that package's defaults differ (``alpha=5``, L2 weight decay
    added to the gradient, one ``t_alpha_beta3`` and a β₃ schedule without the reference's
    ``ln(β + 10⁻⁸)``).

    Args:
        params (iterable): parameters or dicts defining parameter groups.
        lr (float or Tensor, optional): learning rate (default: 1e-3).
        betas (Tuple[float, float, float], optional): β₁ (fast EMA), β₂ (second moment), β₃
            (slow EMA) (default: (0.9, 0.999, 0.9999)); each in [0, 1).
        alpha (float, optional): weight α of the slow EMA (default: 2).
        beta3_warmup (int, optional): steps of the β₃ warmup (default: None, no warmup).
        alpha_warmup (int, optional): steps of the α warmup (default: None, no warmup).
        eps (float, optional): added to the denominator (default: 1e-8).
        weight_decay (float, optional): decoupled weight decay (default: 0).
        maximize (bool, optional): maximize the objective (default: False).

    State (``optimizer.state[p]``, created on a parameter's first step with a gradient):
    ``step`` (float32 0-d CPU tensor), ``exp_avg_fast``, ``exp_avg_slow`` and ``exp_avg_sq``
    (like ``p``; the reference skips ``exp_avg_fast`` when β₁ = 0, ferroptim keeps it).

    Raises:
        ValueError: negative ``lr``, ``eps``, ``weight_decay`` or ``alpha``; ``betas`` outside
            [0, 1) or not three values; a warmup that is not positive; a parameter in two
            groups.
        RuntimeError: at ``step()``, a sparse gradient.
"""
        + NATIVE_NOTES
    )

    _native_step = staticmethod(_core.ademamix_step)
    _native_plan = staticmethod(_core.ademamix_plan)
    _aten_rule = "ademamix"

    def __init__(
        self,
        params: Any,
        lr: float | torch.Tensor = 1e-3,
        betas: tuple[float, float, float] = (0.9, 0.999, 0.9999),
        alpha: float = 2.0,
        beta3_warmup: int | None = None,
        alpha_warmup: int | None = None,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        maximize: bool = False,
    ) -> None:
        check_range("lr", lr, 0.0)
        check_range("eps", eps, 0.0)
        check_range("weight_decay", weight_decay, 0.0)
        check_range("alpha", alpha, 0.0)
        if len(betas) != 3:
            raise ValueError(f"Invalid betas value: {betas}; AdEMAMix takes three betas")
        for i, beta in enumerate(betas):
            check_range(f"betas[{i}]", beta, 0.0, 1.0, upper_open=True)
        for name, warmup in (("beta3_warmup", beta3_warmup), ("alpha_warmup", alpha_warmup)):
            if warmup is not None and not warmup > 0:
                raise ValueError(f"Invalid {name} value: {warmup}")
        defaults = {
            "lr": lr,
            "betas": betas,
            "alpha": alpha,
            "beta3_warmup": beta3_warmup,
            "alpha_warmup": alpha_warmup,
            "eps": eps,
            "weight_decay": weight_decay,
            "maximize": maximize,
        }
        super().__init__(params, defaults)
        self._check_supported()

    def _hyper(self, group: dict[str, Any]) -> dict[str, Any]:
        warmups = {
            name: None if group.get(name) is None else scalar(group[name])
            for name in ("beta3_warmup", "alpha_warmup")
        }
        return {
            **hyper(group, ("lr", "alpha", "eps", "weight_decay"), ("maximize",)),
            **warmups,
        }

    def _state_names(self, group: dict[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return ("exp_avg_fast", "exp_avg_slow", "exp_avg_sq"), ("step",)

    def _init_state(self, p: torch.Tensor, group: dict[str, Any]) -> dict[str, torch.Tensor]:
        return {
            "step": scalar_tensor(0.0),
            "exp_avg_fast": zeros_like(p),
            "exp_avg_slow": zeros_like(p),
            "exp_avg_sq": zeros_like(p),
        }
