"""Adadelta with native fused steps (rule: ``rust/ferroptim/src/rules/adadelta.rs``)."""

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


@native(torch.optim.Adadelta)
class Adadelta(NativeStep, torch.optim.Adadelta):
    __doc__ = (
        r"""Adadelta with a fused native step; a drop-in replacement for
    ``torch.optim.Adadelta``.

    Algorithm: Zeiler, "ADADELTA: An Adaptive Learning Rate Method" (2012). The arithmetic
    follows ``torch.optim.Adadelta``'s for-loop implementation (torch 2.11) step by step.

    Args:
        params (iterable): parameters or dicts defining parameter groups.
        lr (float or Tensor, optional): coefficient that scales the delta (default: 1.0).
        rho (float, optional): decay of the running averages, in [0, 1] (default: 0.9).
        eps (float, optional): term added inside both square roots (default: 1e-6).
        weight_decay (float, optional): L2 penalty added to the gradient (default: 0).
        maximize (bool, optional): maximize the objective (default: False).
        foreach, capturable, differentiable: see "Native execution".

    State (``optimizer.state[p]``, created on a parameter's first step with a gradient):
    ``step`` (float32 0-d CPU tensor), ``square_avg`` and ``acc_delta`` (like ``p``).

    Raises:
        ValueError: torch.optim.Adadelta's checks (negative ``lr``, ``eps`` or
            ``weight_decay``; ``rho`` outside [0, 1]).
        RuntimeError: ``differentiable=True``; at ``step()``, a sparse gradient.
"""
        + NATIVE_NOTES
    )

    _native_step = staticmethod(_core.adadelta_step)
    _native_plan = staticmethod(_core.adadelta_plan)
    _aten_rule = "adadelta"

    def _hyper(self, group: dict[str, Any]) -> dict[str, Any]:
        return hyper(group, ("lr", "rho", "eps", "weight_decay"), ("maximize",))

    def _state_names(self, group: dict[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return ("square_avg", "acc_delta"), ("step",)

    def _init_state(self, p: torch.Tensor, group: dict[str, Any]) -> dict[str, torch.Tensor]:
        return {"step": scalar_tensor(0.0), "square_avg": zeros_like(p), "acc_delta": zeros_like(p)}
