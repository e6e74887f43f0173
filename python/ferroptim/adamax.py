"""Adamax with native fused steps (rule: ``rust/ferroptim/src/rules/adamax.rs``)."""

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


@native(torch.optim.Adamax)
class Adamax(NativeStep, torch.optim.Adamax):
    __doc__ = (
        r"""Adamax with a fused native step; a drop-in replacement for ``torch.optim.Adamax``.

    Algorithm: Kingma & Ba, "Adam: A Method for Stochastic Optimization" (ICLR 2015), section
    7.1 (Adam with the infinity norm). The arithmetic follows ``torch.optim.Adamax``'s for-loop
    implementation (torch 2.11) step by step.

    Args:
        params (iterable): parameters or dicts defining parameter groups.
        lr (float or Tensor, optional): learning rate (default: 2e-3).
        betas (Tuple[float, float], optional): decay of ``exp_avg`` and ``exp_inf``
            (default: (0.9, 0.999)); each in [0, 1).
        eps (float, optional): term added to ``|g|`` (default: 1e-8).
        weight_decay (float, optional): L2 penalty added to the gradient (default: 0).
        maximize (bool, optional): maximize the objective (default: False).
        foreach, capturable, differentiable: see "Native execution".

    State (``optimizer.state[p]``, created on a parameter's first step with a gradient):
    ``step`` (float32 0-d CPU tensor), ``exp_avg`` and ``exp_inf`` (like ``p``).

    Raises:
        ValueError: torch.optim.Adamax's checks (negative ``lr``, ``eps`` or
            ``weight_decay``; ``betas`` outside [0, 1)).
        RuntimeError: ``differentiable=True``; at ``step()``, a sparse gradient.
"""
        + NATIVE_NOTES
    )

    _native_step = staticmethod(_core.adamax_step)
    _native_plan = staticmethod(_core.adamax_plan)
    _aten_rule = "adamax"

    def _hyper(self, group: dict[str, Any]) -> dict[str, Any]:
        return hyper(group, ("lr", "eps", "weight_decay"), ("maximize",))

    def _state_names(self, group: dict[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return ("exp_avg", "exp_inf"), ("step",)

    def _init_state(self, p: torch.Tensor, group: dict[str, Any]) -> dict[str, torch.Tensor]:
        return {"step": scalar_tensor(0.0), "exp_avg": zeros_like(p), "exp_inf": zeros_like(p)}
