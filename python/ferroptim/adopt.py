"""ADOPT with native fused steps (rule: ``rust/ferroptim/src/rules/adopt.rs``)."""

from __future__ import annotations

from typing import Any, Callable

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


def default_clip_lambda(step: float) -> float:
    """ADOPT's default clipping schedule, ``step ** 0.25``."""
    return step**0.25


class ADOPT(NativeStep, torch.optim.Optimizer):
    __doc__ = (
        r"""ADOPT with a fused native step; same arguments and state as the authors'
    ``adopt.ADOPT`` (PyPI ``torch-adopt`` 0.1.0).

    Algorithm: Taniguchi et al., "ADOPT: Modified Adam Can Converge with Any β₂ with the
    Optimal Rate" (NeurIPS 2024), with the clipped momentum update of the authors' revised
    version: the first step only sets ``exp_avg_sq = g²``; later steps normalise ``g`` by
    ``max(√exp_avg_sq, eps)`` of the *previous* step, clip it to ``±clip_lambda(step)``, update
    ``exp_avg`` with it, step ``θ ← θ − lr·exp_avg``, and only then update ``exp_avg_sq``. The
    arithmetic follows ``torch-adopt``'s for-loop implementation, the tests' oracle.

    Args:
        params (iterable): parameters or dicts defining parameter groups.
        lr (float or Tensor, optional): learning rate (default: 1e-3).
        betas (Tuple[float, float], optional): coefficients of the running averages
            (default: (0.9, 0.9999)); each in [0, 1).
        eps (float, optional): lower bound of the normaliser (default: 1e-6).
        clip_lambda (Callable or None, optional): the clipping schedule; only the default
            ``step ** 0.25`` (:func:`default_clip_lambda`) and ``None`` (no clipping, the
            original algorithm) run natively.
        weight_decay (float, optional): weight decay (default: 0).
        decouple (bool, optional): apply weight decay as AdamW does (default: False).
        maximize (bool, optional): maximize the objective (default: False).
        foreach, capturable, differentiable, fused: see "Native execution".

    State (``optimizer.state[p]``, created on a parameter's first step with a gradient):
    ``step`` (float32 0-d CPU tensor), ``exp_avg`` and ``exp_avg_sq`` (like ``p``).

    Raises:
        ValueError: negative ``lr``, ``eps`` or ``weight_decay``; ``betas`` outside [0, 1);
            a ``clip_lambda`` other than the default or None; a parameter in two groups.
        RuntimeError: ``differentiable=True``; at ``step()``, a sparse gradient.
"""
        + NATIVE_NOTES
    )

    _native_step = staticmethod(_core.adopt_step)
    _native_plan = staticmethod(_core.adopt_plan)
    _aten_rule = "adopt"

    def __init__(
        self,
        params: Any,
        lr: float | torch.Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.9999),
        eps: float = 1e-6,
        clip_lambda: Callable[[float], float] | None = default_clip_lambda,
        weight_decay: float = 0.0,
        decouple: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:
        check_range("lr", lr, 0.0)
        check_range("eps", eps, 0.0)
        check_range("weight_decay", weight_decay, 0.0)
        for i, beta in enumerate(betas):
            check_range(f"betas[{i}]", beta, 0.0, 1.0, upper_open=True)
        if clip_lambda is not None and clip_lambda is not default_clip_lambda:
            raise ValueError(
                f"Invalid clip_lambda value: {clip_lambda!r}; ferroptim.ADOPT computes the "
                "default step ** 0.25 schedule (or none, clip_lambda=None) natively"
            )
        defaults = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "decouple": decouple,
            "foreach": foreach,
            "maximize": maximize,
            "capturable": capturable,
            "differentiable": differentiable,
            "fused": fused,
        }
        super().__init__(params, defaults)
        self.clip_lambda = clip_lambda
        self._check_supported()

    def _hyper(self, group: dict[str, Any]) -> dict[str, Any]:
        clip_exponent = None if self.clip_lambda is None else 0.25
        return {
            **hyper(group, ("lr", "eps", "weight_decay"), ("decouple", "maximize")),
            "clip_exponent": clip_exponent,
        }

    def _state_names(self, group: dict[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return ("exp_avg", "exp_avg_sq"), ("step",)

    def _init_state(self, p: torch.Tensor, group: dict[str, Any]) -> dict[str, torch.Tensor]:
        return {"step": scalar_tensor(0.0), "exp_avg": zeros_like(p), "exp_avg_sq": zeros_like(p)}
