"""LARS with native fused steps (rule: ``rust/ferroptim/src/rules/lars.rs``)."""

from __future__ import annotations

from typing import Any

import torch

from ferroptim import _core
from ferroptim._base import NATIVE_NOTES, NativeStep, check_range, hyper, zeros_like


class LARS(NativeStep, torch.optim.Optimizer):
    __doc__ = (
        r"""LARS (layer-wise adaptive rate scaling) with a native step; the arguments, defaults
    and arithmetic of ``pytorch_optimizer.LARS`` 4.1.0, the tests' oracle.

    Algorithm: You, Gitman & Ginsburg, "Large Batch Training of Convolutional Networks"
    (arXiv:1708.03888, 2017), Algorithm 1, per parameter tensor of two or more dimensions::

        trust = trust_coefficient·‖θ‖ / (‖g‖ + weight_decay·‖θ‖)     (1 if ‖θ‖ or that is 0)
        g ← (g + weight_decay·θ)·trust
        b ← momentum·b + (1 − dampening)·g;   g ← g + momentum·b (nesterov) or b
        θ ← θ − lr·g

    Tensors of one dimension or fewer (biases, normalisation weights) take the same momentum
    step without weight decay or trust ratio, as in the oracle (and the common LARS
    implementations of Barlow Twins / VICReg). Unlike the paper, ``lr`` multiplies the buffer's
    output (as ``torch.optim.SGD``) rather than entering the buffer. The norms are per-tensor
    reductions: ``step()`` reads each tensor once to sum ``‖θ‖²`` and ``‖g‖²`` (in float64, in
    a fixed order, so results do not depend on the thread count), then updates it in a second
    fused pass.

    Args:
        params (iterable): parameters or dicts defining parameter groups.
        lr (float or Tensor, optional): learning rate (default: 1e-3).
        weight_decay (float, optional): weight decay (default: 0).
        momentum (float, optional): momentum factor in [0, 1) (default: 0.9).
        dampening (float, optional): dampening in [0, 1) (default: 0).
        trust_coefficient (float, optional): η of the trust ratio (default: 1e-3).
        nesterov (bool, optional): Nesterov momentum (default: False).
        foreach (bool, optional): accepted for compatibility; see "Native execution".
        maximize (bool, optional): maximize the objective (default: False).

    State (``optimizer.state[p]``, created on a parameter's first step with a gradient):
    ``momentum_buffer`` (like ``p``, starting at zero) when ``momentum > 0``; no step counter.

    Raises:
        ValueError: negative ``lr``, ``weight_decay`` or ``trust_coefficient``; ``momentum`` or
            ``dampening`` outside [0, 1); a parameter in two groups.
        RuntimeError: at ``step()``, a sparse gradient.
"""
        + NATIVE_NOTES
    )

    _native_step = staticmethod(_core.lars_step)
    # The plan splits each group as `_native_calls` does (by dimension), and checks the split
    # again at every step.
    _native_plan = staticmethod(_core.lars_plan)
    _aten_rule = "lars"
    # The trust ratio needs whole-tensor norms: DTensor parameters step on full tensors.
    _dtensor_gather = True

    def __init__(
        self,
        params: Any,
        lr: float | torch.Tensor = 1e-3,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        dampening: float = 0.0,
        trust_coefficient: float = 1e-3,
        nesterov: bool = False,
        foreach: bool | None = None,
        *,
        maximize: bool = False,
    ) -> None:
        check_range("lr", lr, 0.0)
        check_range("weight_decay", weight_decay, 0.0)
        check_range("momentum", momentum, 0.0, 1.0, upper_open=True)
        check_range("dampening", dampening, 0.0, 1.0, upper_open=True)
        check_range("trust_coefficient", trust_coefficient, 0.0)
        defaults = {
            "lr": lr,
            "weight_decay": weight_decay,
            "momentum": momentum,
            "dampening": dampening,
            "trust_coefficient": trust_coefficient,
            "nesterov": nesterov,
            "foreach": foreach,
            "maximize": maximize,
        }
        super().__init__(params, defaults)
        self._check_supported()

    def _hyper(self, group: dict[str, Any]) -> dict[str, Any]:
        # `trust`: the group's rule; tensors of one dimension or fewer take it without.
        return {
            **hyper(
                group,
                ("lr", "weight_decay", "momentum", "dampening", "trust_coefficient"),
                ("nesterov", "maximize"),
            ),
            "trust": True,
        }

    def _native_calls(
        self, group: dict[str, Any], tensors: dict[str, Any], hyper: dict[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        # Two native groups: tensors of 2+ dimensions with the trust ratio, the others without.
        k = len(self._state_names(group)[0])
        calls = []
        for trust in (True, False):
            idx = [i for i, p in enumerate(tensors["params"]) if (p.dim() > 1) == trust]
            if not idx:
                continue
            calls.append(
                {
                    "params": [tensors["params"][i] for i in idx],
                    "grads": [tensors["grads"][i] for i in idx],
                    "states": [tensors["states"][i * k + j] for i in idx for j in range(k)],
                    "scalar_states": [],
                    "fresh": [tensors["fresh"][i] for i in idx],
                    **(self._hyper(group) if hyper is None else hyper),
                    "trust": trust,
                }
            )
        return calls

    def _state_names(self, group: dict[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return (("momentum_buffer",) if group["momentum"] > 0 else ()), ()

    def _init_state(self, p: torch.Tensor, group: dict[str, Any]) -> dict[str, torch.Tensor]:
        return {"momentum_buffer": zeros_like(p)} if group["momentum"] > 0 else {}
