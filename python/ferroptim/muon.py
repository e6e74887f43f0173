"""Muon with a native step (``rust/ferroptim/src/tensor_rules/muon.rs``)."""

from __future__ import annotations

from typing import Callable

import torch
from torch.optim.optimizer import _to_scalar

from ferroptim import _core, distributed
from ferroptim._base import NativeStep, amp_notes, call_closure, grad_scaler_args, run_eagerly


class Muon(torch.optim.Muon):
    __doc__ = r"""Muon with a native step; a drop-in replacement for ``torch.optim.Muon``.

    Algorithm: Jordan et al., "Muon: An optimizer for hidden layers in neural networks"
    (2024); ``adjust_lr_fn="match_rms_adamw"``: Liu et al., "Muon is Scalable for LLM
    Training" (arXiv:2502.16982). Momentum (Nesterov by default) is orthogonalized by
    ``ns_steps`` quintic Newton–Schulz iterations computed in bfloat16, then applied with
    decoupled weight decay and a shape-adjusted learning rate. Each step runs ATen's
    operations in the order of ``torch.optim.Muon``'s implementation (torch 2.11) in one native
    call for all groups, so results are bit-identical to torch's for every dtype and device
    (including torch's in-place normalization of a bfloat16 parameter's momentum buffer when
    ``nesterov=False``).

    Args:
        params (iterable): 2-D parameters or dicts defining parameter groups (biases,
            embeddings and other parameters belong to another optimizer, e.g. AdamW).
        lr (float or Tensor, optional): learning rate (default: 1e-3).
        weight_decay (float, optional): decoupled weight decay (default: 0.1).
        momentum (float, optional): momentum factor (default: 0.95).
        nesterov (bool, optional): Nesterov momentum (default: True).
        ns_coefficients (Tuple[float, float, float], optional): Newton–Schulz coefficients
            (a, b, c) (default: (3.4445, -4.7750, 2.0315)).
        eps (float, optional): floor of the norm the iteration's input is divided by
            (default: 1e-7).
        ns_steps (int, optional): Newton–Schulz iterations, fewer than 100 (default: 5).
        adjust_lr_fn (str, optional): ``"original"`` (``lr·√max(1, A/B)`` for an A×B
            parameter; also for None) or ``"match_rms_adamw"`` (``0.2·lr·√max(A, B)``)
            (default: None).

    State (``optimizer.state[p]``, torch's key): ``momentum_buffer`` (like ``p``), created on
    a parameter's first step with a gradient.

    Raises:
        ValueError: at construction, as torch (negative ``lr``, ``momentum`` or
            ``weight_decay``; an unknown ``adjust_lr_fn``; a parameter that is not 2-D); at
            ``step()``, as torch, a gradient that is not 2-D, ``ns_steps`` ≥ 100 or
            ``ns_coefficients`` not of length 3.
        RuntimeError: at ``step()``, a complex parameter or a sparse gradient (torch's
            messages); a gradient or buffer whose shape, dtype or device does not match.
            Nothing is modified in any of these cases.

""" + amp_notes("torch.optim.Muon")

    # GradScaler hands over `grad_scale` and `found_inf` (see `grad_scaler_args`).
    _step_supports_amp_scaling = True

    # One native call for all groups, torch.optim's semantics (see ``native_zero_grad``).
    zero_grad = NativeStep.zero_grad

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Performs a single optimization step.

        Inside a region that ``torch.compile`` traces, torch.optim.Muon's own step is traced
        instead (the same ATen operations, so no graph break), except with DTensor parameters
        or GradScaler's hand-over, where this step runs eagerly (one graph break).

        Args:
            closure (Callable, optional): A closure that reevaluates the model and returns the
                loss; it is called with gradients enabled.

        Returns:
            The closure's loss, or None.
        """
        if torch.compiler.is_compiling():
            handed_over = getattr(self, "grad_scale", None) is not None or (
                getattr(self, "found_inf", None) is not None
            )
            if handed_over or distributed.groups_are_sharded(self.param_groups):
                return run_eagerly(Muon.step, self, closure)
            return distributed.torch_step(self, torch.optim.Muon, closure)
        loss = call_closure(closure)
        skip, grad_scale = grad_scaler_args(self)
        if skip:
            return loss
        calls = []
        created: list[tuple[torch.Tensor, torch.Tensor]] = []
        for group in self.param_groups:
            params, grads, bufs = [], [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                if torch.is_complex(p):
                    raise RuntimeError("Muon does not support complex parameters")
                if p.grad.is_sparse:
                    raise RuntimeError("Muon does not support sparse gradients")
                buf = self.state[p].get("momentum_buffer") if p in self.state else None
                if buf is None:
                    buf = torch.zeros_like(p.grad, memory_format=torch.preserve_format)
                    created.append((p, buf))
                params.append(p)
                grads.append(p.grad)
                bufs.append(buf)
            if not params:
                continue
            _check_step_args(group, grads)
            calls.append(
                {
                    "params": params,
                    "grads": grads,
                    "momentum_buffers": bufs,
                    "lr": _to_scalar(group["lr"]),  # a tensor lr stays one, as in torch
                    "weight_decay": float(group["weight_decay"]),
                    "momentum": float(group["momentum"]),
                    "nesterov": bool(group["nesterov"]),
                    "ns_coefficients": tuple(float(c) for c in group["ns_coefficients"]),
                    "eps": float(group["eps"]),
                    "ns_steps": int(group["ns_steps"]),
                    "adjust_lr_fn": group["adjust_lr_fn"],
                }
            )
        if distributed.calls_are_sharded(calls):
            # Newton–Schulz orthogonalises whole matrices: step gathered full tensors.
            distributed.native_step(
                _core.muon_step,
                calls,
                grad_scale,
                True,
                ("params", "grads", "momentum_buffers"),
                {"momentum_buffers": tuple},
            )
        elif calls:
            _core.muon_step(calls, grad_scale)
        for p, buf in created:
            self.state[p]["momentum_buffer"] = buf
        return loss


def _check_step_args(group: dict, grads: list[torch.Tensor]) -> None:
    """The ValueErrors torch's Muon raises while stepping a group's first parameter (before
    anything is modified here)."""
    if grads[0].ndim != 2:
        raise ValueError("Param gradient must be a 2D matrix")
    if group["ns_steps"] >= 100:
        raise ValueError("Number of steps must be less than 100 for computational efficiency")
    if len(group["ns_coefficients"]) != 3:
        raise ValueError("Coefficients must be a tuple of exactly 3 values")
    for g in grads:
        if g.ndim != 2:
            raise ValueError("Param gradient must be a 2D matrix")
