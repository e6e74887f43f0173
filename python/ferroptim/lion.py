"""Lion with native fused steps (rule: ``rust/ferroptim/src/rules/lion.rs``)."""

from __future__ import annotations

from typing import Any

import torch

from ferroptim import _core
from ferroptim._base import NATIVE_NOTES, NativeStep, check_range, hyper, zeros_like


class Lion(NativeStep, torch.optim.Optimizer):
    __doc__ = (
        r"""Lion (EvoLved Sign Momentum) with a fused native step.

    Algorithm: Chen et al., "Symbolic Discovery of Optimization Algorithms" (NeurIPS 2023),
    Algorithm 2: ``θ ← θ(1 − lr·λ) − lr·sign(β₁m + (1 − β₁)g)``, then
    ``m ← β₂m + (1 − β₂)g``. The arithmetic follows the reference implementation
    ``lion-pytorch`` 0.2.5 (its ``decoupled_weight_decay=False`` behaviour), which the tests
    use as the oracle.

    Args:
        params (iterable): parameters or dicts defining parameter groups.
        lr (float or Tensor, optional): learning rate (default: 1e-4; the paper uses 3-10x
            smaller learning rates than AdamW's).
        betas (Tuple[float, float], optional): β₁ (the sign's interpolation) and β₂ (the
            momentum's decay) (default: (0.9, 0.99)); each in [0, 1].
        weight_decay (float, optional): decoupled weight decay λ (default: 0).
        maximize (bool, optional): maximize the objective (default: False).

    State (``optimizer.state[p]``, created on a parameter's first step with a gradient):
    ``exp_avg`` (like ``p``). No step counter.

    Raises:
        ValueError: negative ``lr`` or ``weight_decay``; ``betas`` outside [0, 1]; a tensor
            ``lr`` with more than one element; a parameter in two groups.
        RuntimeError: at ``step()``, a sparse gradient.
"""
        + NATIVE_NOTES
    )

    _native_step = staticmethod(_core.lion_step)
    _native_plan = staticmethod(_core.lion_plan)
    _aten_rule = "lion"

    def __init__(
        self,
        params: Any,
        lr: float | torch.Tensor = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        *,
        maximize: bool = False,
    ) -> None:
        check_range("lr", lr, 0.0)
        check_range("weight_decay", weight_decay, 0.0)
        for i, beta in enumerate(betas):
            check_range(f"betas[{i}]", beta, 0.0, 1.0)
        defaults = {"lr": lr, "betas": betas, "weight_decay": weight_decay, "maximize": maximize}
        super().__init__(params, defaults)
        self._check_supported()

    def _hyper(self, group: dict[str, Any]) -> dict[str, Any]:
        return hyper(group, ("lr", "weight_decay"), ("maximize",))

    def _state_names(self, group: dict[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return ("exp_avg",), ()

    def _init_state(self, p: torch.Tensor, group: dict[str, Any]) -> dict[str, torch.Tensor]:
        return {"exp_avg": zeros_like(p)}
