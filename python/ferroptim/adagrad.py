"""Adagrad with native fused steps (rule: ``rust/ferroptim/src/rules/adagrad.rs``)."""

from __future__ import annotations

from typing import Any

import torch

from ferroptim import _core
from ferroptim._base import NATIVE_NOTES, NativeStep, hyper, native, scalar_tensor


@native(torch.optim.Adagrad)
class Adagrad(NativeStep, torch.optim.Adagrad):
    __doc__ = (
        r"""Adagrad with a fused native step; a drop-in replacement for ``torch.optim.Adagrad``.

    Algorithm: Duchi, Hazan & Singer, "Adaptive Subgradient Methods for Online Learning and
    Stochastic Optimization" (JMLR 2011). The arithmetic follows ``torch.optim.Adagrad``'s
    for-loop implementation (torch 2.11) step by step.

    Args:
        params (iterable): parameters or dicts defining parameter groups.
        lr (float or Tensor, optional): learning rate (default: 1e-2).
        lr_decay (float, optional): step ``t`` uses ``lr / (1 + (t - 1) * lr_decay)``
            (default: 0).
        weight_decay (float, optional): L2 penalty added to the gradient (default: 0).
        initial_accumulator_value (float, optional): initial value of ``sum`` (default: 0).
        eps (float, optional): term added to the denominator (default: 1e-10).
        maximize (bool, optional): maximize the objective (default: False).
        foreach, differentiable, fused: see "Native execution".

    State (created by the constructor, as torch does): ``step`` (float32 0-d CPU tensor) and
    ``sum`` (like ``p``, filled with ``initial_accumulator_value``).

    Raises:
        ValueError: torch.optim.Adagrad's checks (negative ``lr``, ``lr_decay``,
            ``weight_decay``, ``initial_accumulator_value`` or ``eps``).
        RuntimeError: ``differentiable=True``; at ``step()``, a sparse gradient (unlike
            torch.optim.Adagrad, sparse gradients are not supported).
"""
        + NATIVE_NOTES
    )

    _native_step = staticmethod(_core.adagrad_step)
    _native_plan = staticmethod(_core.adagrad_plan)
    _aten_rule = "adagrad"
    _aten_fused = ("cpu",)
    _aten_foreach_too = True

    def _hyper(self, group: dict[str, Any]) -> dict[str, Any]:
        return hyper(
            group,
            ("lr", "lr_decay", "weight_decay", "eps", "initial_accumulator_value"),
            ("maximize",),
        )

    def _state_names(self, group: dict[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return ("sum",), ("step",)

    def _init_state(self, p: torch.Tensor, group: dict[str, Any]) -> dict[str, torch.Tensor]:
        init = group["initial_accumulator_value"]
        return {
            "step": scalar_tensor(0.0),
            "sum": torch.full_like(p, init, memory_format=torch.preserve_format),
        }
