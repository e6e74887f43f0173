"""Adafactor with a native step (``rust/ferroptim/src/tensor_rules/adafactor.rs``)."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch.optim.optimizer import _get_scalar_dtype, _to_scalar

from ferroptim import _core, distributed
from ferroptim._base import NativeStep, amp_notes, call_closure, grad_scaler_args


class Adafactor(torch.optim.Adafactor):
    __doc__ = r"""Adafactor with a native step; a drop-in replacement for ``torch.optim.Adafactor``.

    Algorithm: Shazeer & Stern, "Adafactor: Adaptive Learning Rates with Sublinear Memory
    Cost" (ICML 2018), in torch's variant (``lr`` caps the relative step size and scales the
    decoupled weight decay; ``eps[0]`` floors the variance estimate). Each step runs ATen's
    operations in the order of ``torch.optim.Adafactor``'s for-loop implementation (torch
    2.11) in one native call for all groups, so results are bit-identical to torch's for
    every dtype and device.

    Args:
        params (iterable): parameters or dicts defining parameter groups.
        lr (float or Tensor, optional): maximum relative step size and weight-decay factor
            (default: 1e-2); a tensor must have one element.
        beta2_decay (float, optional): τ in ``β₂ₜ = 1 − t^τ`` (default: -0.8); must be ≤ 0.
        eps (Tuple[float | None, float], optional): ε₁, the floor of the variance estimate's
            square root (None: the parameter dtype's machine epsilon), and ε₂, the floor of a
            parameter's RMS in its step size (default: (None, 1e-3)).
        d (float, optional): clipping threshold of the update's RMS (default: 1.0); ≥ 1.
        weight_decay (float, optional): decoupled weight decay (default: 0.0).
        foreach (bool, optional): accepted for signature compatibility; ignored.
        maximize (bool, optional): maximize the objective (default: False).

    State (``optimizer.state[p]``, torch's keys, created on a parameter's first step with a
    gradient): ``step`` (float32 0-d CPU tensor); for a parameter of more than one dimension
    ``row_var`` (shape ``p.shape`` with the last dimension 1) and ``col_var`` (shape
    ``p.shape`` with the second-to-last dimension 1), else ``variance`` (like ``p``).

    Raises:
        ValueError: at construction, as torch (``lr`` < 0, ``beta2_decay`` > 0, an ε < 0,
            ``d`` < 1, ``weight_decay`` < 0).
        RuntimeError: at ``step()``, a complex parameter or a sparse gradient (torch's
            messages); a gradient or state tensor whose shape, dtype or device does not match.
            Nothing is modified in either case.

""" + amp_notes("torch.optim.Adafactor")

    # GradScaler hands over `grad_scale` and `found_inf` (see `grad_scaler_args`).
    _step_supports_amp_scaling = True

    # One native call for all groups, torch.optim's semantics (see ``native_zero_grad``).
    zero_grad = NativeStep.zero_grad

    # One native call of ATen operations that Dynamo cannot trace: inside a compiled region
    # the step runs eagerly (one graph break; torch.optim's own class takes as many or more).
    @torch.compiler.disable
    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Performs a single optimization step.

        Args:
            closure (Callable, optional): A closure that reevaluates the model and returns the
                loss; it is called with gradients enabled.

        Returns:
            The closure's loss, or None.
        """
        loss = call_closure(closure)
        skip, grad_scale = grad_scaler_args(self)
        if skip:
            return loss
        calls = []
        created: list[tuple[torch.Tensor, dict[str, Any]]] = []
        for group in self.param_groups:
            params, grads, steps, row_vars, col_vars, variances = [], [], [], [], [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                if torch.is_complex(p):
                    raise RuntimeError("Adafactor does not support complex parameters")
                if p.grad.is_sparse:
                    raise RuntimeError("Adafactor does not support sparse gradients")
                state = self.state.get(p)
                if not state:
                    state = _new_state(p.grad)
                    created.append((p, state))
                params.append(p)
                grads.append(p.grad)
                steps.append(state["step"])
                row_vars.append(state.get("row_var"))
                col_vars.append(state.get("col_var"))
                variances.append(state.get("variance"))
            if not params:
                continue
            eps1, eps2 = group["eps"]
            calls.append(
                {
                    "params": params,
                    "grads": grads,
                    "steps": steps,
                    "row_vars": row_vars,
                    "col_vars": col_vars,
                    "variances": variances,
                    "lr": _to_scalar(group["lr"]),  # a tensor lr stays one, as in torch
                    "beta2_decay": float(group["beta2_decay"]),
                    "eps1": None if eps1 is None else float(eps1),
                    "eps2": float(eps2),
                    "d": float(group["d"]),
                    "weight_decay": float(group["weight_decay"]),
                    "maximize": bool(group["maximize"]),
                }
            )
        if distributed.calls_are_sharded(calls):
            # Factored moments reduce over whole matrices: step gathered full tensors.
            distributed.native_step(
                _core.adafactor_step, calls, grad_scale, True, _PER_PARAM, _STATE_SHAPES
            )
        elif calls:
            _core.adafactor_step(calls, grad_scale)
        for p, new in created:
            self.state[p].update(new)
        return loss


#: The per-parameter lists of a native call, and the state among them with its global shape
#: (for DTensor parameters, see ``ferroptim.distributed``).
_PER_PARAM = ("params", "grads", "steps", "row_vars", "col_vars", "variances")
_STATE_SHAPES = {
    "row_vars": lambda shape: (*shape[:-1], 1),
    "col_vars": lambda shape: (*shape[:-2], 1, shape[-1]),
    "variances": tuple,
}


def _new_state(grad: torch.Tensor) -> dict[str, torch.Tensor]:
    """torch.optim.Adafactor's lazy state for a parameter with gradient ``grad``."""
    state = {"step": torch.tensor(0.0, dtype=_get_scalar_dtype())}
    if grad.dim() > 1:
        row_shape = list(grad.shape)
        row_shape[-1] = 1
        col_shape = list(grad.shape)
        col_shape[-2] = 1
        state["row_var"] = grad.new_zeros(row_shape)
        state["col_var"] = grad.new_zeros(col_shape)
    else:
        state["variance"] = torch.zeros_like(grad, memory_format=torch.preserve_format)
    return state
