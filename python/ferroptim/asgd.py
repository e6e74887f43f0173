"""ASGD with native fused steps (rule: ``rust/ferroptim/src/rules/asgd.rs``)."""

from __future__ import annotations

from typing import Any

import torch

from ferroptim import _core
from ferroptim._base import (
    NATIVE_NOTES,
    NativeStep,
    hyper,
    native,
    scalar,
    scalar_tensor,
    zeros_like,
)


@native(torch.optim.ASGD)
class ASGD(NativeStep, torch.optim.ASGD):
    __doc__ = (
        r"""Averaged SGD with a fused native step; a drop-in replacement for ``torch.optim.ASGD``.

    Algorithm: Polyak & Juditsky, "Acceleration of Stochastic Approximation by Averaging"
    (SIAM J. Control Optim. 1992), with the step-size schedule of Bottou, "Large-Scale Machine
    Learning with Stochastic Gradient Descent" (2010). The arithmetic follows
    ``torch.optim.ASGD``'s for-loop implementation (torch 2.11) step by step: each step uses
    the ``eta`` and ``mu`` that the previous step stored.

    Args:
        params (iterable): parameters or dicts defining parameter groups.
        lr (float or Tensor, optional): learning rate (default: 1e-2).
        lambd (float, optional): decay term (default: 1e-4).
        alpha (float, optional): power of the ``eta`` schedule (default: 0.75).
        t0 (float, optional): step at which averaging starts (default: 1e6).
        weight_decay (float, optional): L2 penalty added to the gradient (default: 0).
        maximize (bool, optional): maximize the objective (default: False).
        foreach, capturable, differentiable: see "Native execution".

    State (``optimizer.state[p]``, created on a parameter's first step with a gradient):
    ``step``, ``eta`` (initially ``lr``) and ``mu`` (initially 1), float32 0-d tensors on
    ``p``'s device (as torch places them), and ``ax`` (like ``p``), the averaged parameter.

    Raises:
        ValueError: torch.optim.ASGD's checks (negative ``lr`` or ``weight_decay``).
        RuntimeError: ``differentiable=True``; at ``step()``, a sparse gradient.
"""
        + NATIVE_NOTES
    )

    _native_step = staticmethod(_core.asgd_step)
    _native_plan = staticmethod(_core.asgd_plan)
    _aten_rule = "asgd"
    _aten_scalar_state_on_device = True

    def _hyper(self, group: dict[str, Any]) -> dict[str, Any]:
        return hyper(group, ("lr", "lambd", "alpha", "t0", "weight_decay"), ("maximize",))

    def _state_names(self, group: dict[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return ("ax",), ("step", "eta", "mu")

    def _init_state(self, p: torch.Tensor, group: dict[str, Any]) -> dict[str, torch.Tensor]:
        return {
            "step": scalar_tensor(0.0, p.device),
            "eta": scalar_tensor(scalar(group["lr"]), p.device),
            "mu": scalar_tensor(1.0, p.device),
            "ax": zeros_like(p),
        }
