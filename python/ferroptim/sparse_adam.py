"""SparseAdam with a native step (``rust/ferroptim/src/tensor_rules/sparse_adam.rs``)."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch.optim.optimizer import _to_scalar

from ferroptim import _core, distributed
from ferroptim._base import NativeStep, amp_notes, call_closure, grad_scaler_args


class SparseAdam(torch.optim.SparseAdam):
    __doc__ = r"""SparseAdam with a native step; a drop-in replacement for
    ``torch.optim.SparseAdam``.

    Algorithm: Adam (Kingma & Ba, ICLR 2015) masked to the entries of a sparse gradient, as
    ``torch.optim.SparseAdam``: for dense parameters whose gradients are sparse COO tensors
    (e.g. ``nn.Embedding(sparse=True)``), only the entries present in the coalesced gradient
    have their moments and values updated. Each step runs ATen's operations in the order of
    torch's implementation (torch 2.11) in one native call for all groups, so results are
    bit-identical to torch's for every dtype and device.

    Args:
        params (iterable): dense parameters or dicts defining parameter groups.
        lr (float or Tensor, optional): learning rate (default: 1e-3); > 0.
        betas (Tuple[float, float], optional): coefficients of the running averages of the
            gradient and its square (default: (0.9, 0.999)); each in [0, 1).
        eps (float, optional): term added to the denominator (default: 1e-8); > 0.
        maximize (bool, optional): maximize the objective (default: False).

    State (``optimizer.state[p]``, torch's keys and types): ``step`` (a Python int, counted
    on every step the parameter has a gradient, even one without entries), ``exp_avg`` and
    ``exp_avg_sq`` (dense, like ``p``).

    Raises:
        ValueError: at construction, as torch (invalid ``lr``, ``eps`` or ``betas``; sparse
            or complex parameters).
        RuntimeError: at ``step()``, a dense gradient (torch's message); a gradient or state
            tensor whose shape, dtype or device does not match. Nothing is modified.

""" + amp_notes(
        "torch.optim.SparseAdam",
        "the values of each sparse gradient in place (as given: GradScaler has already"
        " coalesced float16 ones)",
    )

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
        if distributed.groups_are_sharded(self.param_groups):
            # DTensor parameters: torch.optim's own step (see ferroptim.distributed).
            return distributed.torch_step(self, torch.optim.SparseAdam, closure)
        loss = call_closure(closure)
        skip, grad_scale = grad_scaler_args(self)
        if skip:
            return loss
        calls = []
        created: list[tuple[torch.Tensor, dict[str, Any]]] = []
        counted: list[tuple[dict[str, Any], Any]] = []
        for group in self.param_groups:
            params, grads, exp_avgs, exp_avg_sqs, steps = [], [], [], [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                if not p.grad.is_sparse:
                    raise RuntimeError(
                        "SparseAdam does not support dense gradients, please consider Adam instead"
                    )
                state = self.state.get(p)
                if not state:
                    state = {
                        "step": 0,
                        "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                        "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
                    }
                    created.append((p, state))
                new_step = state["step"] + 1
                counted.append((state, new_step))
                params.append(p)
                grads.append(p.grad)
                exp_avgs.append(state["exp_avg"])
                exp_avg_sqs.append(state["exp_avg_sq"])
                steps.append(int(new_step))
            if not params:
                continue
            beta1, beta2 = group["betas"]
            calls.append(
                {
                    "params": params,
                    "grads": grads,
                    "exp_avgs": exp_avgs,
                    "exp_avg_sqs": exp_avg_sqs,
                    "steps": steps,
                    "lr": _to_scalar(group["lr"]),  # a tensor lr stays one, as in torch
                    "beta1": float(beta1),
                    "beta2": float(beta2),
                    "eps": float(group["eps"]),
                    "maximize": bool(group.get("maximize", False)),
                }
            )
        if calls:
            _core.sparse_adam_step(calls, grad_scale)
        for state, new_step in counted:
            state["step"] = new_step
        for p, new in created:
            self.state[p].update(new)
        return loss
