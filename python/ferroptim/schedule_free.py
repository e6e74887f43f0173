"""Schedule-Free AdamW with native fused steps (rule:
``rust/ferroptim/src/rules/schedule_free.rs``)."""

from __future__ import annotations

from typing import Any, Callable

import torch

from ferroptim import _core
from ferroptim._base import (
    NATIVE_NOTES,
    NativeStep,
    call_closure,
    check_range,
    hyper,
    scalar,
    zeros_like,
)


class ScheduleFreeAdamW(NativeStep, torch.optim.Optimizer):
    __doc__ = (
        r"""Schedule-Free AdamW with a fused native step; same arguments, defaults, state and
    ``train()``/``eval()`` switching as the authors' reference implementation
    (github.com/facebookresearch/schedule_free, ``schedulefree.AdamWScheduleFree``).

    Algorithm: Defazio et al., "The Road Less Scheduled" (NeurIPS 2024), Algorithm 1. The
    gradient is taken at ``y = (1 − β₁)z + β₁x``, the base sequence ``z`` takes AdamW-like
    steps, and ``x`` is a weighted running average of ``z``::

        v ← β₂v + (1 − β₂)g²      ĝ = g / (√(v/(1 − β₂ᵗ)) + eps) + weight_decay·y
        y ← (1 − c)y + c·z + lr·(β₁(1 − c) − 1)·ĝ      z ← z − lr·ĝ

    with ``c = wₜ / Σ w``, ``wₜ = tʳ · lr_maxᵖ`` (``p = weight_lr_power``; ``lr_max`` the
    largest learning rate so far) and ``lr`` warmed up linearly over ``warmup_steps``. No
    learning-rate scheduler is needed.

    The parameters hold ``y`` while training. Call ``optimizer.eval()`` before evaluating or
    saving a checkpoint (parameters become ``x``) and ``optimizer.train()`` before training
    again (back to ``y``); ``step()`` in eval mode raises RuntimeError. Unlike the current
    reference, a new optimizer starts in train mode (as the reference's first releases and
    ``pytorch_optimizer.ScheduleFreeAdamW`` do), so calling ``train()`` first is optional.
    The reference divides ``p.grad`` in place by the denominator; ferroptim leaves gradients
    alone. The tests' oracle is ``pytorch_optimizer.ScheduleFreeAdamW`` 4.1.0 without the
    ``1e-15`` it adds under the square root (the reference has none).

    Args:
        params (iterable): parameters or dicts defining parameter groups.
        lr (float or Tensor, optional): learning rate (default: 0.0025).
        betas (Tuple[float, float], optional): β₁ (the interpolation, in (0, 1)) and β₂ (the
            second moment's decay, in [0, 1)) (default: (0.9, 0.999)).
        eps (float, optional): added to the denominator (default: 1e-8).
        weight_decay (float, optional): weight decay, applied at ``y`` (default: 0).
        warmup_steps (int, optional): steps of linear learning-rate warmup (default: 0).
        r (float, optional): polynomial weighting power of the average (default: 0).
        weight_lr_power (float, optional): power of ``lr_max`` in the average's weights
            (default: 2).
        foreach (bool, optional): accepted for compatibility; see "Native execution".
        maximize (bool, optional): maximize the objective (default: False).

    State: per parameter (created on its first step with a gradient) ``z`` (a copy of ``p``)
    and ``exp_avg_sq`` (like ``p``); per group, as the reference: ``k`` (steps taken),
    ``train_mode``, ``weight_sum``, ``lr_max`` and ``scheduled_lr`` (the last warmed-up lr).

    Raises:
        ValueError: negative ``lr``, ``eps``, ``weight_decay`` or ``warmup_steps``; β₁ outside
            (0, 1) or β₂ outside [0, 1); a parameter in two groups.
        RuntimeError: ``step()`` in eval mode; at ``step()``, a sparse gradient.
"""
        + NATIVE_NOTES
    )

    _native_step = staticmethod(_core.schedule_free_adamw_step)
    _native_plan = staticmethod(_core.schedule_free_adamw_plan)
    _aten_rule = "schedule_free_adamw"
    _aten_tensor_lr = False

    def __init__(
        self,
        params: Any,
        lr: float | torch.Tensor = 0.0025,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        r: float = 0.0,
        weight_lr_power: float = 2.0,
        foreach: bool | None = None,
        *,
        maximize: bool = False,
    ) -> None:
        check_range("lr", lr, 0.0)
        check_range("eps", eps, 0.0)
        check_range("weight_decay", weight_decay, 0.0)
        check_range("warmup_steps", warmup_steps, 0.0)
        check_range("betas[0]", betas[0], 0.0, 1.0, upper_open=True)
        if not betas[0] > 0.0:
            raise ValueError(f"Invalid betas[0] value: {betas[0]}")
        check_range("betas[1]", betas[1], 0.0, 1.0, upper_open=True)
        defaults = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "r": r,
            "k": 0,
            "warmup_steps": warmup_steps,
            "train_mode": True,
            "weight_sum": 0.0,
            "lr_max": -1.0,
            "scheduled_lr": 0.0,
            "weight_lr_power": weight_lr_power,
            "weight_decay": weight_decay,
            "foreach": foreach,
            "maximize": maximize,
        }
        super().__init__(params, defaults)
        self._pending: dict[int, dict[str, float]] = {}
        self._check_supported()

    @torch.no_grad()
    def eval(self) -> None:
        """Switch the parameters to the average ``x`` (for evaluation and checkpoints)."""
        self._switch(train=False)

    @torch.no_grad()
    def train(self) -> None:
        """Switch the parameters back to ``y``, where gradients are taken."""
        self._switch(train=True)

    def _switch(self, train: bool) -> None:
        for group in self.param_groups:
            if bool(group["train_mode"]) == train:
                continue
            beta1 = scalar(group["betas"][0])
            # y = lerp(x, z, 1 − β₁)  ⇔  x = lerp(y, z, 1 − 1/β₁)
            weight = 1.0 - beta1 if train else 1.0 - 1.0 / beta1
            for p in group["params"]:
                state = self.state.get(p)
                if state and "z" in state:
                    p.lerp_(state["z"].to(p.device), weight=weight)
            group["train_mode"] = train

    @staticmethod
    def _schedule(group: dict[str, Any]) -> dict[str, float]:
        """This step's warmed-up lr, the average's weight ``c`` and the group entries to
        store once the step has succeeded (the reference's arithmetic)."""
        k = int(group["k"])
        warmup = group["warmup_steps"]
        sched = (k + 1) / warmup if k < warmup else 1.0
        lr = scalar(group["lr"]) * sched
        lr_max = max(lr, group["lr_max"])
        weight = ((k + 1) ** group["r"]) * (lr_max ** group["weight_lr_power"])
        weight_sum = group["weight_sum"] + weight
        ckp1 = weight / weight_sum if weight_sum != 0 else 0.0
        return {
            "lr": lr,
            "ckp1": ckp1,
            "step": float(k + 1),
            "k": k + 1,
            "lr_max": lr_max,
            "weight_sum": weight_sum,
        }

    # The schedule is Python arithmetic on group entries that change at every step (``k``,
    # ``lr_max``, ``weight_sum``): traced by torch.compile, each step would recompile. Inside a
    # compiled region the step therefore runs eagerly (one graph break, no recompilation).
    @torch.compiler.disable
    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Performs a single optimization step (in train mode).

        Args:
            closure (Callable, optional): A closure that reevaluates the model and returns the
                loss; it is called with gradients enabled.

        Returns:
            The closure's loss, or None.

        Raises:
            RuntimeError: the optimizer is in eval mode; a gradient is sparse, a tensor does
                not match its parameter, or a tensor to update is an inference tensor outside
                ``torch.inference_mode``; nothing is modified in that case.
        """
        if not all(group["train_mode"] for group in self.param_groups):
            raise RuntimeError(
                "ScheduleFreeAdamW.step() called in eval mode: call optimizer.train() before "
                "training (and optimizer.eval() before evaluating)"
            )
        loss = call_closure(closure)
        found_inf = getattr(self, "found_inf", None)
        if found_inf is not None and scalar(found_inf) != 0.0:
            return loss  # GradScaler skips this step: nothing changes, k included
        pending = {id(group): self._schedule(group) for group in self.param_groups}
        self._pending = pending
        try:
            NativeStep.step(self)
        finally:
            self._pending = {}
        for group in self.param_groups:
            new = pending[id(group)]
            group["k"] = new["k"]
            group["scheduled_lr"] = new["lr"]
            group["lr_max"] = new["lr_max"]
            group["weight_sum"] = new["weight_sum"]
        return loss

    def _hyper(self, group: dict[str, Any]) -> dict[str, Any]:
        new = self._pending[id(group)]
        return {
            **hyper(group, ("eps", "weight_decay"), ("maximize",)),
            "lr": new["lr"],
            "ckp1": new["ckp1"],
            "step": new["step"],
        }

    def _state_names(self, group: dict[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return ("z", "exp_avg_sq"), ()

    def _init_state(self, p: torch.Tensor, group: dict[str, Any]) -> dict[str, torch.Tensor]:
        return {
            "z": p.detach().clone(memory_format=torch.preserve_format),
            "exp_avg_sq": zeros_like(p),
        }
