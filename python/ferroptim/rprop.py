"""Rprop with native fused steps (rule: ``rust/ferroptim/src/rules/rprop.rs``)."""

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


@native(torch.optim.Rprop)
class Rprop(NativeStep, torch.optim.Rprop):
    __doc__ = (
        r"""Rprop with a fused native step; a drop-in replacement for ``torch.optim.Rprop``.

    Algorithm: Riedmiller & Braun, "A Direct Adaptive Method for Faster Backpropagation
    Learning: The RPROP Algorithm" (ICNN 1993), in torch's variant (where the gradient's sign
    flipped, the step is skipped and the gradient forgotten). The arithmetic follows
    ``torch.optim.Rprop``'s for-loop implementation (torch 2.11) step by step.

    Args:
        params (iterable): parameters or dicts defining parameter groups.
        lr (float or Tensor, optional): initial step size (default: 1e-2); it only sets the
            ``step_size`` state when that is created.
        etas (Tuple[float, float], optional): (etaminus, etaplus), the step-size factors after
            a sign change and while the sign holds (default: (0.5, 1.2)).
        step_sizes (Tuple[float, float], optional): smallest and largest step size
            (default: (1e-6, 50)).
        maximize (bool, optional): maximize the objective (default: False).
        foreach, capturable, differentiable: see "Native execution".

    State (``optimizer.state[p]``, created on a parameter's first step with a gradient):
    ``step`` (float32 0-d CPU tensor), ``prev`` (like ``p``, zeros) and ``step_size`` (like
    ``p``, filled with ``lr``).

    Raises:
        ValueError: torch.optim.Rprop's checks (negative ``lr``; ``etas`` not satisfying
            0 < etaminus < 1 < etaplus).
        RuntimeError: ``differentiable=True``; at ``step()``, a sparse gradient.
"""
        + NATIVE_NOTES
    )

    _native_step = staticmethod(_core.rprop_step)
    _native_plan = staticmethod(_core.rprop_plan)
    _aten_rule = "rprop"

    def _hyper(self, group: dict[str, Any]) -> dict[str, Any]:
        etaminus, etaplus = group["etas"]
        step_size_min, step_size_max = group["step_sizes"]
        return {
            **hyper(group, ("lr",), ("maximize",)),
            "etaminus": scalar(etaminus),
            "etaplus": scalar(etaplus),
            "step_size_min": scalar(step_size_min),
            "step_size_max": scalar(step_size_max),
        }

    def _state_names(self, group: dict[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return ("prev", "step_size"), ("step",)

    def _init_state(self, p: torch.Tensor, group: dict[str, Any]) -> dict[str, torch.Tensor]:
        lr = scalar(group["lr"])
        return {
            "step": scalar_tensor(0.0),
            "prev": zeros_like(p),
            "step_size": torch.full_like(p, lr, memory_format=torch.preserve_format),
        }
