"""RMSprop with native fused steps (rule: ``rust/ferroptim/src/rules/rmsprop.rs``)."""

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


@native(torch.optim.RMSprop)
class RMSprop(NativeStep, torch.optim.RMSprop):
    __doc__ = (
        r"""RMSprop with a fused native step; a drop-in replacement for ``torch.optim.RMSprop``.

    Algorithm: Hinton, "Neural Networks for Machine Learning", lecture 6e (2012); the centered
    variant as in Graves, "Generating Sequences With Recurrent Neural Networks" (2013). The
    arithmetic follows ``torch.optim.RMSprop``'s for-loop implementation (torch 2.11) step by
    step.

    Args:
        params (iterable): parameters or dicts defining parameter groups.
        lr (float or Tensor, optional): learning rate (default: 1e-2).
        alpha (float, optional): smoothing constant of ``square_avg`` (default: 0.99).
        eps (float, optional): term added to the denominator (default: 1e-8).
        weight_decay (float, optional): L2 penalty added to the gradient (default: 0).
        momentum (float, optional): momentum factor (default: 0).
        centered (bool, optional): normalise by the estimated variance of the gradient
            (default: False).
        maximize (bool, optional): maximize the objective (default: False).
        foreach, capturable, differentiable: see "Native execution".

    State (``optimizer.state[p]``, created on a parameter's first step with a gradient):
    ``step`` (float32 0-d CPU tensor), ``square_avg``, ``momentum_buffer`` (when
    ``momentum > 0``) and ``grad_avg`` (when ``centered``), all like ``p``.

    Raises:
        ValueError: torch.optim.RMSprop's checks (negative ``lr``, ``eps``, ``momentum``,
            ``weight_decay`` or ``alpha``).
        RuntimeError: ``differentiable=True``; at ``step()``, a sparse gradient.
"""
        + NATIVE_NOTES
    )

    _native_step = staticmethod(_core.rmsprop_step)
    _native_plan = staticmethod(_core.rmsprop_plan)
    _aten_rule = "rmsprop"

    def _hyper(self, group: dict[str, Any]) -> dict[str, Any]:
        return hyper(
            group, ("lr", "alpha", "eps", "weight_decay", "momentum"), ("centered", "maximize")
        )

    def _state_names(self, group: dict[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
        names = ("square_avg",)
        if group["momentum"] > 0:
            names += ("momentum_buffer",)
        if group["centered"]:
            names += ("grad_avg",)
        return names, ("step",)

    def _init_state(self, p: torch.Tensor, group: dict[str, Any]) -> dict[str, torch.Tensor]:
        state = {"step": scalar_tensor(0.0), "square_avg": zeros_like(p)}
        if group["momentum"] > 0:
            state["momentum_buffer"] = zeros_like(p)
        if group["centered"]:
            state["grad_avg"] = zeros_like(p)
        return state
