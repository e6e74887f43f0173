"""Adam and AdamW with native fused steps (rule: ``rust/ferroptim/src/rules/adam.rs``)."""

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

_ADAM_DOC = r"""
    Algorithm: Kingma & Ba, "Adam: A Method for Stochastic Optimization" (ICLR 2015); AMSGrad
    (``amsgrad=True``): Reddi et al., "On the Convergence of Adam and Beyond" (ICLR 2018);
    decoupled weight decay (AdamW): Loshchilov & Hutter, "Decoupled Weight Decay
    Regularization" (ICLR 2019). The arithmetic follows ``torch.optim.Adam``'s for-loop
    implementation (torch 2.11) step by step, so trajectories match it to float rounding.

    Args:
        params (iterable): parameters or dicts defining parameter groups.
        lr (float or Tensor, optional): learning rate (default: {lr}); a tensor must have one
            element.
        betas (Tuple[float, float], optional): coefficients of the running averages of the
            gradient and its square (default: (0.9, 0.999)); each in [0, 1).
        eps (float, optional): term added to the denominator (default: 1e-8).
        weight_decay (float, optional): weight decay coefficient (default: {weight_decay}).
        amsgrad (bool, optional): use the AMSGrad variant (default: False).
        maximize (bool, optional): maximize the objective (default: False).
        foreach, capturable, differentiable, fused: see "Native execution".{extra}

    State (``optimizer.state[p]``, created on the first step a parameter has a gradient, same
    keys/dtypes/devices as torch): ``step`` (float32 0-d CPU tensor; float64 when that is the
    default dtype), ``exp_avg`` and
    ``exp_avg_sq`` (like ``p``), and ``max_exp_avg_sq`` (like ``p``) when ``amsgrad``.

    Raises:
        ValueError: negative ``lr``, ``eps`` or ``weight_decay``; ``betas`` outside [0, 1);
            a tensor ``lr`` with more than one element; a parameter in two groups.
        RuntimeError: ``differentiable=True``; at ``step()``, a sparse gradient.
"""


class _NativeAdam(NativeStep):
    _native_step = staticmethod(_core.adam_step)
    _native_plan = staticmethod(_core.adam_plan)
    _aten_rule = "adam"
    _aten_fused = None

    def _hyper(self, group: dict[str, Any]) -> dict[str, Any]:
        return hyper(
            group, ("lr", "eps", "weight_decay"), ("amsgrad", "maximize", "decoupled_weight_decay")
        )

    def _state_names(self, group: dict[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
        if group["amsgrad"]:
            return ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"), ("step",)
        return ("exp_avg", "exp_avg_sq"), ("step",)

    def _init_state(self, p: torch.Tensor, group: dict[str, Any]) -> dict[str, torch.Tensor]:
        """torch.optim.Adam._init_group's lazy state for ``p`` (same keys, dtypes, devices)."""
        state = {"step": scalar_tensor(0.0), "exp_avg": zeros_like(p), "exp_avg_sq": zeros_like(p)}
        if group["amsgrad"]:
            state["max_exp_avg_sq"] = zeros_like(p)
        return state


@native(torch.optim.Adam)
class Adam(_NativeAdam, torch.optim.Adam):
    __doc__ = (
        "Adam with a fused native step; a drop-in replacement for ``torch.optim.Adam``.\n"
        + _ADAM_DOC.format(
            lr="1e-3",
            weight_decay="0",
            extra="\n        decoupled_weight_decay (bool, optional): apply weight decay as AdamW "
            "does\n            (default: False).",
        )
        + NATIVE_NOTES
    )


@native(torch.optim.AdamW)
class AdamW(_NativeAdam, torch.optim.AdamW):
    __doc__ = (
        "AdamW with a fused native step; a drop-in replacement for ``torch.optim.AdamW``.\n"
        + _ADAM_DOC.format(lr="1e-3", weight_decay="1e-2", extra="")
        + NATIVE_NOTES
    )
