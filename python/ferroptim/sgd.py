"""SGD with native fused steps (rule: ``rust/ferroptim/src/rules/sgd.rs``)."""

from __future__ import annotations

from typing import Any

import torch

from ferroptim import _core
from ferroptim._base import NATIVE_NOTES, NativeStep, hyper, native, zeros_like


@native(torch.optim.SGD)
class SGD(NativeStep, torch.optim.SGD):
    __doc__ = (
        r"""SGD (optionally with momentum) with a fused native step; a drop-in replacement for
    ``torch.optim.SGD``.

    Algorithm: stochastic gradient descent; momentum and Nesterov momentum as in Sutskever et
    al., "On the importance of initialization and momentum in deep learning" (ICML 2013), in
    torch's formulation (the first step initialises ``momentum_buffer`` with the gradient,
    dampening applies from the second step). The arithmetic follows ``torch.optim.SGD``'s
    for-loop implementation (torch 2.11).

    Args:
        params (iterable): parameters or dicts defining parameter groups.
        lr (float or Tensor, optional): learning rate (default: 1e-3).
        momentum (float, optional): momentum factor (default: 0).
        dampening (float, optional): dampening for momentum (default: 0).
        weight_decay (float, optional): weight decay (L2 penalty) (default: 0).
        nesterov (bool, optional): Nesterov momentum; needs momentum > 0 and zero dampening
            (default: False).
        maximize (bool, optional): maximize the objective (default: False).
        foreach, differentiable, fused: see "Native execution".

    State (``optimizer.state[p]``): ``momentum_buffer`` (like ``p``) when ``momentum != 0``.

    Raises:
        ValueError: negative ``lr``, ``momentum`` or ``weight_decay``; ``nesterov`` without
            momentum or with dampening; a parameter in two groups.
        RuntimeError: ``differentiable=True``; at ``step()``, a sparse gradient (unlike
            torch.optim.SGD, sparse gradients are not supported).
"""
        + NATIVE_NOTES
    )

    _native_step = staticmethod(_core.sgd_step)
    _native_plan = staticmethod(_core.sgd_plan)
    _aten_rule = "sgd"
    _aten_fused = None

    def _hyper(self, group: dict[str, Any]) -> dict[str, Any]:
        return hyper(
            group, ("lr", "momentum", "dampening", "weight_decay"), ("nesterov", "maximize")
        )

    def _state_names(self, group: dict[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return (("momentum_buffer",) if group["momentum"] != 0 else ()), ()

    def _init_state(self, p: torch.Tensor, group: dict[str, Any]) -> dict[str, torch.Tensor]:
        # torch clones the gradient into a new buffer on the first step; the native rule
        # does the same into this one (fresh=True).
        return {"momentum_buffer": zeros_like(p)}
