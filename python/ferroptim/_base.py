"""Shared step plumbing of the native optimizer classes."""

from __future__ import annotations

import inspect
import operator
from typing import Any, Callable

import torch
from torch.optim.optimizer import _get_scalar_dtype, _global_optimizer_post_hooks

from . import _core, _device, _ops, distributed
from ._step_hooks import profile_hook_step

#: Docstring fragment shared by every class: what the native path does and does not support.
NATIVE_NOTES = r"""
    Native execution:
        ``step()`` makes one call into Rust for all parameter groups, with the GIL released.
        Parameters of dtype float32, float64, bfloat16 or float16 are supported; half types are
        computed in float32 and rounded once when stored (as torch's fused kernels do).
        Contiguous CPU tensors are updated in place by the fused multi-threaded kernel (thread
        count: ``torch.get_num_threads()``; results do not depend on it). Non-contiguous CPU
        tensors and state whose dtype differs from the parameter's take a slower *staged*
        path: copied to contiguous CPU float32 (float64 if any is float64), updated by the same
        kernel, and copied back. Tensors on other devices (e.g. CUDA) take the ATen device path
        (SGD, Adam, AdamW, Adagrad, Adamax, RMSprop, Rprop, Adadelta, NAdam, RAdam, ASGD:
        torch's ``fused=True`` kernels, else its ``foreach=True`` composition, bit for bit;
        Lion, ADOPT, Adan, AdEMAMix, ScheduleFreeAdamW, Lamb, LARS: ``_foreach_*``
        compositions of ferroptim's rule, equal to the CPU step to rounding; untested on a
        GPU so far; ``ferroptim.force_device_path()`` forces it for CPU tensors).
        ``foreach``, ``fused`` and ``capturable`` are accepted for signature compatibility and
        recorded in ``param_groups``; they do not change how ferroptim computes.
        ``differentiable=True`` is not supported (RuntimeError). Sparse gradients raise
        RuntimeError. Any error is raised before a parameter or state tensor is modified.
        ``torch.amp.GradScaler`` is supported as by torch's fused optimizers
        (``_step_supports_amp_scaling``): gradients are unscaled inside the fused pass (and
        the unscaled values written back to ``p.grad``), and a step whose gradients are not
        finite (``found_inf``) changes nothing: parameters, gradients and state.
"""


def native(torch_cls: type) -> Callable[[type], type]:
    """Class decorator for a ``NativeStep`` subclass of ``torch_cls``: gives it an ``__init__``
    that runs torch's (validation, defaults, ``param_groups``) and then
    ``NativeStep._check_supported``, and whose signature (``inspect.signature``, IDEs) is
    ``torch_cls.__init__``'s."""

    def decorate(cls: type) -> type:
        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            super(cls, self).__init__(*args, **kwargs)
            self._check_supported()

        __init__.__signature__ = inspect.signature(torch_cls.__init__)  # type: ignore[attr-defined]
        __init__.__doc__ = torch_cls.__init__.__doc__
        __init__.__qualname__ = f"{cls.__qualname__}.__init__"
        cls.__init__ = __init__  # type: ignore[misc]
        return cls

    return decorate


def scalar(value: float | torch.Tensor) -> float:
    """A hyperparameter as a Python float (tensors, e.g. a tensor ``lr``, hold one element).

    Inside a region that ``torch.compile`` traces, a tensor is returned as it is (typed
    ``float`` for the eager callers): the compiled step hands it to its custom op, which
    reads it when it runs, so a scheduler changing a tensor ``lr`` causes no recompilation.
    """
    if isinstance(value, torch.Tensor):
        if torch.compiler.is_compiling():
            return value  # type: ignore[return-value]
        return float(value.item())
    return float(value)


def hyper(
    group: dict[str, Any], floats: tuple[str, ...] = (), flags: tuple[str, ...] = ()
) -> dict[str, Any]:
    """A group's hyperparameters for the native rule: ``floats`` as Python floats, ``flags`` as
    bools (missing flags are False, e.g. in groups of a state_dict from another
    implementation), and ``betas`` (if the group has them) split into ``beta1``/``beta2``
    (and ``beta3`` when there are three)."""
    out: dict[str, Any] = {name: scalar(group[name]) for name in floats}
    out.update({name: bool(group.get(name, False)) for name in flags})
    if "betas" in group:
        for i, beta in enumerate(group["betas"]):
            out[f"beta{i + 1}"] = scalar(beta)
    return out


def scalar_tensor(value: float, device: torch.device | None = None) -> torch.Tensor:
    """A 0-d scalar state tensor (``step``, …) as torch.optim creates it: float32 (float64 when
    that is torch's default dtype), on the CPU unless ``device`` is given."""
    return torch.tensor(value, dtype=_get_scalar_dtype(), device=device)


def zeros_like(p: torch.Tensor) -> torch.Tensor:
    """A state tensor like ``p`` (shape, dtype, device, memory format), filled with zeros."""
    return torch.zeros_like(p, memory_format=torch.preserve_format)


def _getter(names: tuple[str, ...]) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
    """``state -> (state[n] for n in names)`` as one C call."""
    if len(names) == 1:
        (name,) = names
        return lambda state: (state[name],)
    return operator.itemgetter(*names) if names else lambda state: ()


def amp_notes(torch_name: str, unscaled: str = "them in place") -> str:
    """The GradScaler paragraph of the docstring of a class whose step is a sequence of ATen
    operations (Adafactor, Muon, SparseAdam): ``torch_name`` is torch's class, ``unscaled``
    says what is unscaled."""
    return f"""
    ``torch.amp.GradScaler`` hands over ``grad_scale``/``found_inf``
    (``_step_supports_amp_scaling``) instead of unscaling the gradients itself: the native step
    unscales {unscaled} with GradScaler's own operation and rounding
    (``torch._amp_foreach_non_finite_check_and_unscale_`` by ``float32(1 / scale)``), then
    updates, so parameters, state and the unscaled gradients left in ``p.grad`` are bit-identical
    to ``{torch_name}`` under the same scaler. A step whose gradients are not finite
    (``found_inf``) changes nothing (parameters, gradients, state, step counts), as with torch's
    fused optimizers; GradScaler's own path would have unscaled ``p.grad`` before skipping.
"""


class NativeStep:
    """Mixin for a ``torch.optim`` subclass whose ``step`` runs natively (see :func:`native`).

    Subclasses define ``_native_step`` (the ``ferroptim._core`` function) and optionally
    ``_native_plan`` (its cached-plan constructor), ``_hyper(group)``
    (the rule's hyperparameters as floats/bools, keyed by the Rust rule's field names),
    ``_state_names(group)`` (the names of the state tensors and of the scalar state tensors, in
    the rule's order) and ``_init_state(p, group)`` (a parameter's new state, as torch.optim
    creates it lazily).
    """

    _native_step: Callable[..., None]
    #: ``ferroptim._core.<rule>_plan``, or None: no cached plans, every step takes the
    #: general path.
    _native_plan: Callable[..., Any] | None = None
    #: True for rules that reduce over whole tensors (LAMB, LARS): DTensor parameters are
    #: stepped on their gathered full tensors, not on their local shards (``distributed``).
    _dtensor_gather = False

    #: The ATen device path's rule name (``_core.aten_step``), or None: no device path.
    _aten_rule: str | None = None
    #: Device types on which that path uses an ATen fused kernel (None: every device).
    _aten_fused: tuple[str, ...] | None = ()
    #: Whether ``force_device_path(foreach=True)`` swaps the fused kernel for a foreach one.
    _aten_foreach_too: bool = False
    #: Whether the foreach composition keeps scalar state on the parameter's device (ASGD, as
    #: torch's ``capturable=False`` ASGD does) rather than on the CPU.
    _aten_scalar_state_on_device: bool = False
    #: Whether a tensor ``lr`` goes to the device path as a tensor (``lr_tensor``); False: the
    #: class computes its step's learning rate itself (ScheduleFreeAdamW's warmup) in ``_hyper``.
    _aten_tensor_lr: bool = True

    #: torch.optim's step wrapper (hooks, profiler label), entering the profiler's
    #: ``record_function`` only while something observes it (see ``_step_hooks``).
    profile_hook_step = staticmethod(profile_hook_step)

    #: The name of ``_native_step`` in ``ferroptim._core`` (e.g. ``"adam_step"``), set for each
    #: subclass that defines ``_native_step``: the custom op of a compiled step calls it by name.
    _native_name: str = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        native = cls.__dict__.get("_native_step")
        if native is not None:
            cls._native_name = getattr(native, "__func__", native).__name__

    def _check_supported(self) -> None:
        for group in self.param_groups:  # type: ignore[attr-defined]
            check_differentiable(self, group)

    @property
    def _step_supports_amp_scaling(self) -> bool:
        """Whether GradScaler hands over ``grad_scale`` and ``found_inf`` instead of
        unscaling the gradients itself: the native step unscales in its fused pass (as torch's
        fused kernels do), except where a parameter takes a foreach composition of the device
        path (as torch's foreach optimizers, those leave it to GradScaler)."""
        return _device.supports_amp_scaling(self)

    @_step_supports_amp_scaling.setter
    def _step_supports_amp_scaling(self, value: bool) -> None:
        # torch's constructors set it for fused=True; ferroptim decides by itself.
        pass

    def step_and_zero_grad(
        self, closure: Callable[[], float] | None = None, set_to_none: bool = True
    ) -> float | None:
        """``step(closure)`` then ``zero_grad(set_to_none)``, with the same effect, hooks
        and profiler labels, but in one native call where it can: each gradient is reset
        right after the step read it, without a second walk over the parameters.

        The two stay separate calls (the result is the same) for a step that takes the
        general path (the first step, or after parameters or state changed), on DTensor or
        device parameters, while a step post-hook is registered (it must see the gradients)
        or while the profiler records (it sees both labels). With ``torch.amp.GradScaler``
        call ``scaler.step(optimizer)`` and ``zero_grad()`` as usual instead.

        Args:
            closure (Callable, optional): as for :meth:`step`.
            set_to_none (bool, optional): as for :meth:`zero_grad`. Default: ``True``.

        Returns:
            The closure's loss, or None.

        Raises:
            As :meth:`step`; the gradients are not reset then.
        """
        if torch.compiler.is_compiling():
            loss = self.step(closure)
            self.zero_grad(set_to_none)
            return loss
        self._ferroptim_zero_after = set_to_none
        try:
            loss = self.step(closure)
        finally:
            pending = self.__dict__.pop("_ferroptim_zero_after", None)
        if pending is not None:
            self.zero_grad(set_to_none)
        return loss

    def _fused_zero_grad(self) -> bool | None:
        """The ``set_to_none`` of a ``zero_grad`` that the planned step may do in its native
        call (asked by :meth:`step_and_zero_grad`), or None: not asked, or step post-hooks
        or the profiler must see the step and the reset apart."""
        zero = self.__dict__.get("_ferroptim_zero_after")
        if zero is None or (
            self._optimizer_step_post_hooks  # type: ignore[attr-defined]
            or _global_optimizer_post_hooks
            or _core.record_function_observed()
        ):
            return None
        return zero

    @torch._disable_dynamo
    def zero_grad(self, set_to_none: bool = True) -> None:
        """Resets the gradients of all optimized tensors, as ``torch.optim.Optimizer.zero_grad``
        does, in one native call for all groups (see :func:`native_zero_grad`).

        Args:
            set_to_none (bool, optional): set the gradients to None instead of zeroing them.
                Default: ``True``.
        """
        native_zero_grad(self, set_to_none)

    def _hyper(self, group: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def _state_names(self, group: dict[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
        raise NotImplementedError

    def _init_state(self, p: torch.Tensor, group: dict[str, Any]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _native_calls(
        self, group: dict[str, Any], tensors: dict[str, Any], hyper: dict[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        """The native step's group dicts for one parameter group (its tensors, see `_collect`,
        with hyperparameters: ``hyper``, by default `_hyper(group)`; the device path passes
        its own): one, unless a class splits the group (e.g. LARS, whose rule treats
        one-dimensional parameters differently)."""
        return [{**tensors, **(self._hyper(group) if hyper is None else hyper)}]

    def _collect(
        self, group: dict[str, Any], created: list[tuple[torch.Tensor, dict[str, Any]]]
    ) -> dict[str, Any]:
        """The tensors of the group's parameters that have a gradient: ``params``, ``grads``,
        ``states`` and ``scalar_states`` (flat, the rule's order per parameter) and ``fresh``.
        State that does not exist yet is created (as torch.optim would) and appended to
        ``created``, to be inserted into ``self.state`` only once the step has succeeded."""
        names, scalar_names = self._state_names(group)
        stateful = bool(names or scalar_names)
        first = (names or scalar_names or ("",))[0]
        tensors_of, scalars_of = _getter(names), _getter(scalar_names)
        state_of = self.state.get  # type: ignore[attr-defined]
        params, grads, states, scalars, fresh = [], [], [], [], []
        for p in group["params"]:
            grad = p.grad
            if grad is None:
                continue
            params.append(p)
            grads.append(grad)
            if not stateful:
                fresh.append(False)
                continue
            state = state_of(p)
            if state and state.get(first) is not None:
                fresh.append(False)
            else:
                new = self._init_state(p, group)
                created.append((p, new))
                state = {**state, **new} if state else new
                fresh.append(True)
            states.extend(tensors_of(state))
            scalars.extend(scalars_of(state))
        return {
            "params": params,
            "grads": grads,
            "states": states,
            "scalar_states": scalars,
            "fresh": fresh,
        }

    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Performs a single optimization step.

        Args:
            closure (Callable, optional): A closure that reevaluates the model and returns the
                loss; it is called with gradients enabled.

        Returns:
            The closure's loss, or None.

        Raises:
            RuntimeError: a gradient is sparse, a tensor does not match its parameter
                (shape, device, dtype), or a tensor to update is an inference tensor outside
                ``torch.inference_mode``; nothing is modified in that case.
        """
        if torch.compiler.is_compiling():
            return self._compiled_step(closure)
        loss = call_closure(closure)
        groups = self.param_groups  # type: ignore[attr-defined]
        mode = _device.forced()
        plan = self.__dict__.get("_ferroptim_plan")
        if plan is None or mode is not None:
            # The general path: parameters on a device (or all, when forced) take the ATen
            # device path, which reads no device value (found_inf) on the host.
            if _device.has_path(self, groups) and (
                mode is not None or _device.has_device_params(groups)
            ):
                with torch.no_grad():
                    _device.device_step(self, groups, mode)
                return loss
            if self._aten_rule is None and _device.has_device_params(groups):
                _device.warn_staged(self)
        skip, scale = grad_scaler_args(self)
        if skip:
            return loss
        hypers, names = [], []
        for group in groups:
            check_differentiable(self, group)
            hypers.append(self._hyper(group))
            names.append(self._state_names(group))
        # The cached plan steps without any per-parameter work here; it declines (changing
        # nothing) if parameters or state changed since it was made. Its native call records
        # nothing for autograd, so unlike the general path it needs no `no_grad` region
        # (entering one costs ~50 µs when the caches are cold). A plan is only made by a step
        # whose parameters were all on the CPU.
        state = self.state  # type: ignore[attr-defined]
        if plan is not None and plan[1] == names:
            zero = self._fused_zero_grad()
            done = plan[0].step(state, groups, hypers, scale, zero)
            if done:
                if done == 1 and zero is not None:
                    del self.__dict__["_ferroptim_zero_after"]
                return loss
        with torch.no_grad():
            self._general_step(groups, names, scale)
        return loss

    def _general_step(self, groups: list, names: list, scale: float | None) -> None:
        """Collects every parameter's tensors (creating missing state), steps them in one
        native call, stores the new state and caches a plan of the step."""
        calls = []
        created: list[tuple[torch.Tensor, dict[str, Any]]] = []
        for group in groups:
            tensors = self._collect(group, created)
            if tensors["params"]:
                calls.extend(self._native_calls(group, tensors))
        sharded = distributed.calls_are_sharded(calls)
        if sharded:
            distributed.native_step(type(self)._native_step, calls, scale, self._dtensor_gather)
        elif calls:
            type(self)._native_step(calls, scale)
        for p, new in created:
            self.state[p].update(new)  # type: ignore[attr-defined]
        make_plan = type(self)._native_plan
        if sharded:
            # Plans step the tensors they hold, not local shards: DTensor steps take this path.
            self.__dict__.pop("_ferroptim_plan", None)
        elif make_plan is not None:
            self._ferroptim_plan = (make_plan(self.state, groups, names), names)  # type: ignore[attr-defined]

    def _compiled_step(self, closure: Callable[[], float] | None) -> float | None:
        """``step()`` inside a region that ``torch.compile`` traces: the tensors collected by
        ``_init_group`` (which Dynamo runs eagerly, at trace time) and one ``ferroptim::step``
        custom op for all groups (see ``_ops``), so the step stays in the graph.

        DTensor parameters (FSDP2, tensor parallel) step eagerly instead (the op has no
        sharding rule, and their step runs on local shards, ``distributed``), and so do
        parameters on other devices and steps under ``force_device_path()`` (the ATen device
        path, ``_device``)."""
        groups = self.param_groups  # type: ignore[attr-defined]
        if (
            distributed.groups_are_sharded(groups)
            or _device.forced() is not None
            or _device.has_device_params(groups)
        ):
            return _eager_step(self, closure)
        loss = call_closure(closure)
        calls = []
        for group in self.param_groups:  # type: ignore[attr-defined]
            check_differentiable(self, group)
            params: list[torch.Tensor] = []
            grads: list[torch.Tensor] = []
            states: list[torch.Tensor] = []
            scalar_states: list[torch.Tensor] = []
            fresh: list[torch.Tensor] = []
            self._init_group(group, params, grads, states, scalar_states, fresh)
            if params:
                tensors = {
                    "params": params,
                    "grads": grads,
                    "states": states,
                    "scalar_states": scalar_states,
                    "fresh": fresh,
                }
                calls.extend(self._native_calls(group, tensors))
        if calls:
            args = _ops.pack(self._native_name, calls)
            grad_scale = getattr(self, "grad_scale", None)
            found_inf = getattr(self, "found_inf", None)
            with torch.no_grad():
                _ops.step(*args, grad_scale, found_inf)
        return loss

    def _init_group(
        self,
        group: dict[str, Any],
        params: list[torch.Tensor],
        grads: list[torch.Tensor],
        states: list[torch.Tensor],
        scalar_states: list[torch.Tensor],
        fresh: list[torch.Tensor],
    ) -> bool:
        """torch.optim's ``_init_group`` protocol, for ``_compiled_step``: appends the group's
        parameters that have a gradient, their gradients, state tensors and scalar state
        tensors (the rule's order) and one 0-d bool *fresh* flag tensor per parameter (set when
        its state is created here; the custom op clears it after stepping). State that does
        not exist yet is created, as torch.optim creates it. Dynamo runs this eagerly when it
        traces a step and takes the result as a constant (always False: torch's classes return
        whether a gradient is sparse, and the step refuses sparse gradients)."""
        created: list[tuple[torch.Tensor, dict[str, Any]]] = []
        tensors = self._collect(group, created)
        for p, new in created:
            self.state[p].update(new)  # type: ignore[attr-defined]
        flags = self.__dict__.setdefault("_ferroptim_fresh", {})
        for p, is_fresh in zip(tensors["params"], tensors["fresh"]):
            flag = flags.get(p)
            if flag is None:
                flag = flags[p] = torch.zeros((), dtype=torch.bool)
            if is_fresh:
                flag.fill_(True)
            fresh.append(flag)
        params.extend(tensors["params"])
        grads.extend(tensors["grads"])
        states.extend(tensors["states"])
        scalar_states.extend(tensors["scalar_states"])
        return False

    def __setstate__(self, state: dict[str, Any]) -> None:
        # `load_state_dict` replaces the state through here: drop the plan, which holds the
        # old state tensors, so they are freed now rather than at the next step.
        self.__dict__.pop("_ferroptim_plan", None)
        super().__setstate__(state)  # type: ignore[misc]


def _eager_step(optimizer: NativeStep, closure: Callable[[], float] | None) -> float | None:
    """``NativeStep.step`` outside any compiled region (a graph break where it is called)."""
    return run_eagerly(NativeStep.step, optimizer, closure)


@torch.compiler.disable
def run_eagerly(step: Callable[..., Any], optimizer: Any, *args: Any) -> Any:
    """``step(optimizer, *args)``, an optimizer's step function without torch's hook wrapper
    (the hooks already ran), outside any compiled region: one graph break where it is called
    from a region that ``torch.compile`` traces."""
    step = getattr(step, "__wrapped__", step) if getattr(step, "hooked", False) else step
    return step(optimizer, *args)


def native_zero_grad(optimizer: Any, set_to_none: bool = True) -> None:
    """``torch.optim.Optimizer.zero_grad(optimizer, set_to_none)`` as one native call
    (``_core.zero_grad``) for all groups: with ``set_to_none`` every gradient becomes None;
    otherwise each is detached in place if it has a ``grad_fn`` (else made not to require
    grad) and zeroed in place, dense or sparse. The profiler sees torch's label
    ``Optimizer.zero_grad#<class>.zero_grad`` while anything observes it (as ``step``). If a
    parameter is not a leaf tensor, nothing is done natively and torch's own method runs
    (with its warning about ``.grad`` of non-leaf tensors)."""
    if not hasattr(optimizer, "_zero_grad_profile_name"):
        optimizer._patch_step_function()
    if _core.record_function_observed():
        with torch.autograd.profiler.record_function(optimizer._zero_grad_profile_name):
            done = _zero_grads(optimizer, set_to_none)
    else:
        done = _zero_grads(optimizer, set_to_none)
    if not done:
        torch.optim.Optimizer.zero_grad(optimizer, set_to_none)


def _zero_grads(optimizer: Any, set_to_none: bool) -> bool:
    """The native reset: through the cached plan of the step where it still fits the
    parameters (it holds their tensors: no walk over the Python objects), else over
    ``param_groups``. False if a parameter is not a leaf tensor (nothing done)."""
    groups = optimizer.param_groups
    plan = optimizer.__dict__.get("_ferroptim_plan")
    if plan is not None and plan[0].zero_grad(groups, set_to_none):
        return True
    return _core.zero_grad(groups, set_to_none)


def grad_scaler_args(optimizer: object) -> tuple[bool, float | None]:
    """What ``torch.amp.GradScaler.step`` handed over to an optimizer with
    ``_step_supports_amp_scaling`` (the attributes ``grad_scale`` and ``found_inf``, present
    during that call only): whether to skip the whole step (``found_inf`` nonzero: non-finite
    gradients; parameters, gradients, state and step counts are then left unchanged, as
    torch's fused kernels do) and the loss scale to unscale the gradients by (None: they are
    not scaled, e.g. after an explicit ``scaler.unscale_(optimizer)``)."""
    found_inf = getattr(optimizer, "found_inf", None)
    if found_inf is not None and scalar(found_inf) != 0.0:
        return True, None
    grad_scale = getattr(optimizer, "grad_scale", None)
    return False, None if grad_scale is None else scalar(grad_scale)


def call_closure(closure: Callable[[], float] | None) -> float | None:
    """``step(closure)``'s first move in torch.optim: the closure's loss, computed with
    gradients enabled (whatever the caller's grad mode), or None without a closure."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def check_range(
    name: str,
    value: float | torch.Tensor,
    low: float,
    high: float | None = None,
    upper_open: bool = False,
) -> None:
    """torch.optim-style validation: ValueError naming the argument and the value unless
    ``low <= value`` (and ``value <= high``, or ``< high`` when ``upper_open``). A tensor
    must hold one element."""
    if isinstance(value, torch.Tensor) and value.numel() != 1:
        raise ValueError(f"Tensor {name} must be 1-element")
    v = scalar(value)
    above = high is not None and (v >= high if upper_open else v > high)
    if not v >= low or above:
        raise ValueError(f"Invalid {name} value: {value}")


def check_differentiable(optimizer: object, group: dict[str, Any]) -> None:
    """``differentiable=True`` needs autograd through the update, which native code lacks."""
    if group.get("differentiable"):
        raise RuntimeError(
            f"{type(optimizer).__name__} does not support differentiable=True: "
            "its step runs in native code outside autograd"
        )
