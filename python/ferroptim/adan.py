"""Adan with native fused steps (rule: ``rust/ferroptim/src/rules/adan.rs``)."""

from __future__ import annotations

from typing import Any

import torch

from ferroptim import _core
from ferroptim._base import (
    NATIVE_NOTES,
    NativeStep,
    check_range,
    hyper,
    scalar_tensor,
    zeros_like,
)


class Adan(NativeStep, torch.optim.Optimizer):
    __doc__ = (
        r"""Adan (adaptive Nesterov momentum) with a fused native step; same arguments, defaults
    and per-parameter state names as the authors' implementation (github.com/sail-sg/Adan,
    ``adan.Adan``).

    Algorithm: Xie et al., "Adan: Adaptive Nesterov Momentum Algorithm for Faster Optimizing
    Deep Models" (IEEE TPAMI 2024, arXiv:2208.06677), Algorithm 1. With ``Δₜ = gₜ − gₜ₋₁``
    (zero at the first step)::

        m ← β₁m + (1 − β₁)g          d ← β₂d + (1 − β₂)Δ
        n ← β₃n + (1 − β₃)(g + β₂Δ)²
        θ ← θ − lr·(m/(1 − β₁ᵗ) + β₂·d/(1 − β₂ᵗ)) / (√n/√(1 − β₃ᵗ) + eps)
        θ ← θ / (1 + lr·weight_decay)                  (no_prox=False, the paper's proximal step)

    (``betas`` are the decays, the authors' convention: the paper's βs are one minus these).
    With ``no_prox=True`` the decay is ``θ ← θ(1 − lr·weight_decay)`` before the step. The
    arithmetic follows ``pytorch_optimizer.Adan`` 4.1.0 (whose ``weight_decouple`` is
    ``no_prox``), the tests' oracle.

    Args:
        params (iterable): parameters or dicts defining parameter groups.
        lr (float or Tensor, optional): learning rate (default: 1e-3).
        betas (Tuple[float, float, float], optional): decays of the gradient momentum, of the
            gradient-difference momentum and of the second moment (default: (0.98, 0.92, 0.99));
            each in [0, 1).
        eps (float, optional): added to the denominator (default: 1e-8).
        weight_decay (float, optional): weight decay (default: 0).
        max_grad_norm (float, optional): the reference's global gradient-norm clipping; only
            0 (off, the default) is supported: clip with ``torch.nn.utils.clip_grad_norm_``.
        no_prox (bool, optional): decay the weights before the step instead of the paper's
            proximal division after it (default: False).
        foreach (bool, optional): accepted for compatibility; see "Native execution".
        maximize (bool, optional): maximize the objective (default: False).

    State (``optimizer.state[p]``, created on a parameter's first step with a gradient):
    ``step`` (float32 0-d CPU tensor; the reference keeps one ``step`` per group),
    ``exp_avg``, ``exp_avg_sq``, ``exp_avg_diff`` and ``neg_pre_grad`` (−g of the last step),
    all like ``p``.

    Raises:
        ValueError: negative ``lr``, ``eps`` or ``weight_decay``; ``betas`` outside [0, 1) or
            not three values; ``max_grad_norm`` other than 0; a parameter in two groups.
        RuntimeError: at ``step()``, a sparse gradient.
"""
        + NATIVE_NOTES
    )

    _native_step = staticmethod(_core.adan_step)
    _native_plan = staticmethod(_core.adan_plan)
    _aten_rule = "adan"

    def __init__(
        self,
        params: Any,
        lr: float | torch.Tensor = 1e-3,
        betas: tuple[float, float, float] = (0.98, 0.92, 0.99),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        max_grad_norm: float = 0.0,
        no_prox: bool = False,
        foreach: bool | None = None,
        *,
        maximize: bool = False,
    ) -> None:
        check_range("lr", lr, 0.0)
        check_range("eps", eps, 0.0)
        check_range("weight_decay", weight_decay, 0.0)
        if len(betas) != 3:
            raise ValueError(f"Invalid betas value: {betas}; Adan takes three betas")
        for i, beta in enumerate(betas):
            check_range(f"betas[{i}]", beta, 0.0, 1.0, upper_open=True)
        if max_grad_norm != 0.0:
            raise ValueError(
                f"Invalid max_grad_norm value: {max_grad_norm}; ferroptim.Adan does not clip "
                "(use torch.nn.utils.clip_grad_norm_ before step())"
            )
        defaults = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "max_grad_norm": max_grad_norm,
            "no_prox": no_prox,
            "foreach": foreach,
            "maximize": maximize,
        }
        super().__init__(params, defaults)
        self._check_supported()

    def _hyper(self, group: dict[str, Any]) -> dict[str, Any]:
        return hyper(group, ("lr", "eps", "weight_decay"), ("no_prox", "maximize"))

    def _state_names(self, group: dict[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return ("exp_avg", "exp_avg_sq", "exp_avg_diff", "neg_pre_grad"), ("step",)

    def _init_state(self, p: torch.Tensor, group: dict[str, Any]) -> dict[str, torch.Tensor]:
        return {
            "step": scalar_tensor(0.0),
            "exp_avg": zeros_like(p),
            "exp_avg_sq": zeros_like(p),
            "exp_avg_diff": zeros_like(p),
            "neg_pre_grad": zeros_like(p),
        }
