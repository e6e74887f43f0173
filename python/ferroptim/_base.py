"""Shared step plumbing of the native optimizer classes."""

from __future__ import annotations

import inspect
from typing import Any, Callable

import torch

#: Docstring fragment shared by every class: what the native path does and does not support.
NATIVE_NOTES = r"""
    Native execution:
        ``step()`` makes one call into Rust for all parameter groups, with the GIL released.
        Parameters of dtype float32, float64, bfloat16 or float16 are supported; half types are
        computed in float32 and rounded once when stored (as torch's fused kernels do).
        Contiguous CPU tensors are updated in place by the fused multi-threaded kernel (thread
        count: ``torch.get_num_threads()``; results do not depend on it). Non-contiguous tensors,
        tensors on other devices (e.g. CUDA) and state whose dtype differs from the parameter's
        take a slower *staged* path: copied to contiguous CPU float32 (float64 if any is float64),
        updated by the same kernel, and copied back.
        ``foreach``, ``fused`` and ``capturable`` are accepted for signature compatibility and
        recorded in ``param_groups``; they do not change how ferroptim computes.
        ``differentiable=True`` is not supported (RuntimeError). Sparse gradients raise
        RuntimeError. Any error is raised before a parameter or state tensor is modified.
"""


def same_signature(torch_cls: type) -> Callable[[type], type]:
    """Class decorator: the class's ``__init__`` (which forwards ``*args, **kwargs``) reports
    the signature of ``torch_cls.__init__``, so ``inspect.signature`` and IDEs show torch's."""

    def decorate(cls: type) -> type:
        cls.__init__.__signature__ = inspect.signature(torch_cls.__init__)  # type: ignore[misc]
        return cls

    return decorate


def scalar(value: float | torch.Tensor) -> float:
    """A hyperparameter as a Python float (tensors, e.g. a tensor ``lr``, hold one element)."""
    return float(value.item()) if isinstance(value, torch.Tensor) else float(value)


class NativeStep:
    """Mixin for a ``torch.optim`` subclass whose ``step`` runs natively.

    Subclasses define ``_native_step`` (the ``ferroptim._core`` function), ``_hyper(group)``
    (the group's hyperparameters as floats/bools) and ``_collect(group, created)`` (the
    group's tensors for the native call, see ``ferroptim/_core.pyi``).
    """

    _native_step: Callable[[list[dict[str, Any]]], None]

    def _check_supported(self) -> None:
        for group in self.param_groups:  # type: ignore[attr-defined]
            check_differentiable(self, group)
        # GradScaler must unscale gradients itself: the native step does not take
        # grad_scale/found_inf yet, whatever `fused` says.
        self._step_supports_amp_scaling = False

    def _hyper(self, group: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def _collect(
        self, group: dict[str, Any], created: list[tuple[torch.Tensor, dict[str, Any]]]
    ) -> dict[str, Any]:
        """The tensors of the group's parameters that have a gradient: ``params``, ``grads``,
        ``states`` (flat, the rule's order per parameter), ``steps`` and ``fresh``. State that
        does not exist yet is created (as torch.optim would) and appended to ``created``, to be
        inserted into ``self.state`` only once the step has succeeded."""
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Performs a single optimization step.

        Args:
            closure (Callable, optional): A closure that reevaluates the model and returns the
                loss; it is called with gradients enabled.

        Returns:
            The closure's loss, or None.

        Raises:
            RuntimeError: a gradient is sparse, or a tensor does not match its parameter
                (shape, device, dtype); nothing is modified in that case.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        calls = []
        created: list[tuple[torch.Tensor, dict[str, Any]]] = []
        for group in self.param_groups:  # type: ignore[attr-defined]
            check_differentiable(self, group)
            tensors = self._collect(group, created)
            if tensors["params"]:
                tensors.update(self._hyper(group))
                calls.append(tensors)
        if calls:
            type(self)._native_step(calls)
        for p, new in created:
            self.state[p].update(new)  # type: ignore[attr-defined]
        return loss


def check_differentiable(optimizer: object, group: dict[str, Any]) -> None:
    """``differentiable=True`` needs autograd through the update, which native code lacks."""
    if group.get("differentiable"):
        raise RuntimeError(
            f"{type(optimizer).__name__} does not support differentiable=True: "
            "its step runs in native code outside autograd"
        )
