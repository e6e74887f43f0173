"""LAMB with native fused steps (rule: ``rust/ferroptim/src/rules/lamb.rs``)."""

from __future__ import annotations

from typing import Any

import torch

from ferroptim import _core
from ferroptim._base import (
    NATIVE_NOTES,
    NativeStep,
    check_range,
    hyper,
    scalar_tensor,
    zeros_like,
)


class Lamb(NativeStep, torch.optim.Optimizer):
    __doc__ = (
        r"""LAMB (layer-wise adaptive moments) with a native step; the arguments, defaults and
    arithmetic of ``pytorch_optimizer.Lamb`` 4.1.0 (itself after cybertronai/pytorch-lamb),
    the tests' oracle, without its rectified, pre-norm and AdaNorm options.

    Algorithm: You et al., "Large Batch Optimization for Deep Learning: Training BERT in 76
    minutes" (ICLR 2020), Algorithm 2: per parameter tensor, an Adam direction ``r`` scaled by
    the trust ratio::

        m ← β₁m + (1 − β₁)g          v ← β₂v + (1 − β₂)g²
        θ ← θ(1 − lr·weight_decay)                          (weight_decouple=True)
        r = m / (√v + eps)  (+ weight_decay·θ when weight_decouple=False, the paper's form)
        θ ← θ − lr/(1 − β₁ᵗ) · min(‖θ‖, 10)/(‖r‖ + eps) · r

    Differences from the paper's algorithm, as in the oracle: ``v`` is not bias-corrected,
    ``eps`` is also added to ``‖r‖``, the ratio is 1 when ``‖θ‖`` or ``‖r‖`` is 0, and weight
    decay is decoupled by default. The norms are per-tensor reductions: ``step()`` reads each
    tensor once to sum ``‖θ‖²`` and ``‖r‖²`` (in float64, in a fixed order, so results do not
    depend on the thread count), then updates it in a second fused pass.

    Args:
        params (iterable): parameters or dicts defining parameter groups.
        lr (float or Tensor, optional): learning rate (default: 1e-3).
        betas (Tuple[float, float], optional): decays of the moments (default: (0.9, 0.999));
            each in [0, 1).
        weight_decay (float, optional): weight decay (default: 0).
        weight_decouple (bool, optional): decoupled weight decay (default: True).
        grad_averaging (bool, optional): weight the new gradient by ``1 − β₁`` in ``m``
            (default: True; False: by 1).
        adam (bool, optional): trust ratio 1, i.e. no layer-wise scaling (default: False).
        eps (float, optional): added to ``√v`` and ``‖r‖`` (default: 1e-6).
        foreach (bool, optional): accepted for compatibility; see "Native execution".
        maximize (bool, optional): maximize the objective (default: False).

    State (``optimizer.state[p]``, created on a parameter's first step with a gradient):
    ``step`` (float32 0-d CPU tensor; the oracle keeps one ``step`` per group), ``exp_avg``
    and ``exp_avg_sq`` (like ``p``). The oracle's logging entries ``weight_norm``,
    ``adam_norm`` and ``trust_ratio`` are not kept.

    Raises:
        ValueError: negative ``lr``, ``eps`` or ``weight_decay``; ``betas`` outside [0, 1);
            a parameter in two groups.
        RuntimeError: at ``step()``, a sparse gradient.
"""
        + NATIVE_NOTES
    )

    _native_step = staticmethod(_core.lamb_step)
    _native_plan = staticmethod(_core.lamb_plan)
    _aten_rule = "lamb"
    # The trust ratio needs whole-tensor norms: DTensor parameters step on full tensors.
    _dtensor_gather = True

    def __init__(
        self,
        params: Any,
        lr: float | torch.Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 0.0,
        weight_decouple: bool = True,
        grad_averaging: bool = True,
        adam: bool = False,
        eps: float = 1e-6,
        foreach: bool | None = None,
        *,
        maximize: bool = False,
    ) -> None:
        check_range("lr", lr, 0.0)
        check_range("eps", eps, 0.0)
        check_range("weight_decay", weight_decay, 0.0)
        for i, beta in enumerate(betas):
            check_range(f"betas[{i}]", beta, 0.0, 1.0, upper_open=True)
        defaults = {
            "lr": lr,
            "betas": betas,
            "weight_decay": weight_decay,
            "weight_decouple": weight_decouple,
            "grad_averaging": grad_averaging,
            "adam": adam,
            "eps": eps,
            "foreach": foreach,
            "maximize": maximize,
        }
        super().__init__(params, defaults)
        self._check_supported()

    def _hyper(self, group: dict[str, Any]) -> dict[str, Any]:
        return hyper(
            group,
            ("lr", "eps", "weight_decay"),
            ("weight_decouple", "grad_averaging", "adam", "maximize"),
        )

    def _state_names(self, group: dict[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return ("exp_avg", "exp_avg_sq"), ("step",)

    def _init_state(self, p: torch.Tensor, group: dict[str, Any]) -> dict[str, torch.Tensor]:
        return {"step": scalar_tensor(0.0), "exp_avg": zeros_like(p), "exp_avg_sq": zeros_like(p)}
