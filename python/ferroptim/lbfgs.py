"""L-BFGS with a native step (``rust/ferroptim/src/tensor_rules/lbfgs.rs``)."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch.optim.optimizer import _to_scalar

from ferroptim import _core, distributed
from ferroptim._base import NativeStep


class LBFGS(torch.optim.LBFGS):
    r"""L-BFGS with a native step; a drop-in replacement for ``torch.optim.LBFGS``.

    Algorithm: Nocedal, "Updating Quasi-Newton Matrices with Limited Storage" (1980), with
    the two-loop recursion and, for ``line_search_fn="strong_wolfe"``, the strong-Wolfe line
    search of Nocedal & Wright, "Numerical Optimization" (2006), Algorithms 3.5/3.6 — as
    ``torch.optim.LBFGS`` (torch 2.11) implements them. The whole step (all iterations, the
    line search, the history) runs natively; the closure is called back from Rust. Every tensor
    and scalar operation follows torch's order and types (Python floats vs 0-d tensors), so
    iterates, history and evaluation counts are torch's bit for bit.

    Args:
        params (iterable): parameters to optimize (one group; real, dense, one device).
        lr (float or Tensor, optional): step length (default: 1).
        max_iter (int, optional): iterations per ``step`` (default: 20).
        max_eval (int, optional): closure evaluations per ``step`` (default:
            ``max_iter * 5 // 4``).
        tolerance_grad (float, optional): first-order optimality tolerance (default: 1e-7).
        tolerance_change (float, optional): tolerance on step and loss changes (default: 1e-9).
        history_size (int, optional): correction pairs kept (default: 100).
        line_search_fn (str, optional): ``"strong_wolfe"`` or None (default: None).

    State: torch's, all in ``optimizer.state[params[0]]``: ``func_evals``, ``n_iter`` (ints),
    ``d``, ``t``, ``old_dirs``, ``old_stps``, ``ro``, ``H_diag``, ``prev_flat_grad``,
    ``prev_loss`` and ``al``, with torch's types (Python numbers or 0-d tensors where torch
    has them), so state dicts move between the two.

    Raises:
        ValueError: at construction, as torch (negative ``lr``, more than one group).
        RuntimeError: at ``step()``, ``line_search_fn`` other than "strong_wolfe" or None
            (torch's message), complex parameters (torch supports them; ferroptim not yet).
            Errors raised by the closure propagate unchanged.

    ``torch.amp.GradScaler``: as with torch's LBFGS, no ``grad_scale``/``found_inf``
    hand-over (``_step_supports_amp_scaling`` is not set). The gradients L-BFGS uses come from
    its closure, evaluated inside the step, which GradScaler can neither scale nor unscale:
    ``scaler.step(optimizer, closure=…)`` raises torch's RuntimeError, and
    ``scaler.step(optimizer, closure)`` only unscales and checks the gradients present before
    the step (skipping it if they are not finite). Train L-BFGS without loss scaling.
    """

    # One native call for all groups, torch.optim's semantics (see ``native_zero_grad``).
    zero_grad = NativeStep.zero_grad

    # One native call of ATen operations that Dynamo cannot trace: inside a compiled region
    # the step runs eagerly (one graph break; torch.optim's own class takes as many or more).
    @torch.compiler.disable
    @torch.no_grad()
    def step(self, closure: Callable[[], Any]) -> Any:  # type: ignore[override]
        """Performs a single optimization step.

        Args:
            closure (Callable): A closure that reevaluates the model and returns the loss;
                it is called with gradients enabled.

        Returns:
            The loss the closure returned first.
        """
        if distributed.groups_are_sharded(self.param_groups):
            # DTensor parameters: torch.optim's own step (see ferroptim.distributed).
            return distributed.torch_step(self, torch.optim.LBFGS, closure)
        if len(self.param_groups) != 1:
            raise AssertionError(
                f"Expected exactly one param_group, but got {len(self.param_groups)}"
            )
        group = self.param_groups[0]
        line_search_fn = group["line_search_fn"]
        if line_search_fn is not None and line_search_fn != "strong_wolfe":
            raise RuntimeError("only 'strong_wolfe' is supported")
        params = self._params
        if any(torch.is_complex(p) for p in params):
            raise RuntimeError("ferroptim's LBFGS does not support complex parameters yet")
        closure = torch.enable_grad()(closure)
        first: list[Any] = []

        def evaluate() -> tuple[float, list[torch.Tensor | None]]:
            loss = closure()
            if not first:
                first.append(loss)
            return float(loss), [p.grad for p in params]

        state = self.state[params[0]]
        hyper = {
            "lr": _to_scalar(group["lr"]),
            "max_iter": group["max_iter"],
            "max_eval": group["max_eval"],
            "tolerance_grad": float(group["tolerance_grad"]),
            "tolerance_change": float(group["tolerance_change"]),
            "history_size": group["history_size"],
            "strong_wolfe": line_search_fn == "strong_wolfe",
        }
        state.update(_core.lbfgs_step(params, evaluate, state, hyper))
        return first[0]
