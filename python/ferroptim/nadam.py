"""NAdam with native fused steps (rule: ``rust/ferroptim/src/rules/nadam.rs``)."""

from __future__ import annotations

from typing import Any

import torch

from ferroptim import _core
from ferroptim._base import (
    NATIVE_NOTES,
    NativeStep,
    hyper,
    native,
    scalar_tensor,
    zeros_like,
)


@native(torch.optim.NAdam)
class NAdam(NativeStep, torch.optim.NAdam):
    __doc__ = (
        r"""NAdam with a fused native step; a drop-in replacement for ``torch.optim.NAdam``.

    Algorithm: Dozat, "Incorporating Nesterov Momentum into Adam" (ICLR 2016 workshop);
    ``decoupled_weight_decay`` as in Loshchilov & Hutter, "Decoupled Weight Decay
    Regularization" (ICLR 2019). The arithmetic follows ``torch.optim.NAdam``'s for-loop
    implementation (torch 2.11) step by step, including ``mu_product`` rounded to float32.

    Args:
        params (iterable): parameters or dicts defining parameter groups.
        lr (float or Tensor, optional): learning rate (default: 2e-3).
        betas (Tuple[float, float], optional): coefficients of the running averages
            (default: (0.9, 0.999)); each in [0, 1).
        eps (float, optional): term added to the denominator (default: 1e-8).
        weight_decay (float, optional): weight decay (default: 0).
        momentum_decay (float, optional): momentum decay ψ (default: 4e-3).
        decoupled_weight_decay (bool, optional): apply weight decay as AdamW does
            (default: False).
        maximize (bool, optional): maximize the objective (default: False).
        foreach, capturable, differentiable: see "Native execution".

    State (``optimizer.state[p]``, created on a parameter's first step with a gradient):
    ``step`` and ``mu_product`` (float32 0-d CPU tensors), ``exp_avg`` and ``exp_avg_sq``
    (like ``p``).

    Raises:
        ValueError: torch.optim.NAdam's checks (negative ``lr``, ``eps``, ``weight_decay``
            or ``momentum_decay``; ``betas`` outside [0, 1)).
        RuntimeError: ``differentiable=True``; at ``step()``, a sparse gradient.
"""
        + NATIVE_NOTES
    )

    _native_step = staticmethod(_core.nadam_step)
    _native_plan = staticmethod(_core.nadam_plan)
    _aten_rule = "nadam"

    def _hyper(self, group: dict[str, Any]) -> dict[str, Any]:
        return hyper(
            group,
            ("lr", "eps", "weight_decay", "momentum_decay"),
            ("decoupled_weight_decay", "maximize"),
        )

    def _state_names(self, group: dict[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return ("exp_avg", "exp_avg_sq"), ("step", "mu_product")

    def _init_state(self, p: torch.Tensor, group: dict[str, Any]) -> dict[str, torch.Tensor]:
        return {
            "step": scalar_tensor(0.0),
            "mu_product": scalar_tensor(1.0),
            "exp_avg": zeros_like(p),
            "exp_avg_sq": zeros_like(p),
        }
