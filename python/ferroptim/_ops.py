"""``torch.compile`` support: the native step as a ``torch.library`` custom op.

Inside a region that ``torch.compile`` traces, :meth:`NativeStep.step` does not call
``ferroptim._core`` directly (an opaque extension call that Dynamo cannot trace: a graph
break). It collects the step's tensors with ``_init_group`` instead, which Dynamo runs
eagerly once, at trace time, as it does for torch.optim's classes (creating the lazy state
there and installing guards on it), and then calls one custom op, ``ferroptim::step``, for all
groups. The op declares which of its arguments it writes in place (parameters, gradients,
state, the per-parameter ``fresh`` flags) and has a fake implementation that does nothing, so
AOTAutograd and Inductor keep it in the graph as one extern call; at run time the op's
implementation makes the same native call as the eager step.

What stays out of the graph's constants:

* a *tensor* hyperparameter (e.g. ``lr=torch.tensor(1e-3)`` changed by an LR scheduler) is an
  input of the op, read when the op runs: changing it causes no recompilation. Float
  hyperparameters are constants of the graph, guarded by Dynamo, as with torch.optim (a
  scheduler changing a float ``lr`` recompiles, as it does for torch.optim);
* GradScaler's ``grad_scale`` and ``found_inf`` are inputs, read when the op runs;
* whether a parameter's state is new (SGD's first momentum step copies the gradient) is a
  0-d bool tensor per parameter, kept by the optimizer, set when ``_init_group`` creates the
  state and cleared by the op after the step.
"""

from __future__ import annotations

import ast
from typing import Any, Optional

import torch

from . import _core

#: Keys of a native call (see ``NativeStep._collect``) that hold tensors.
_TENSOR_KEYS = ("params", "grads", "states", "scalar_states", "fresh")
#: Markers in the op's spec: the hyperparameter is the next of ``hyper_floats`` /
#: ``hyper_tensors``.
_FLOAT, _TENSOR = "<float>", "<tensor>"


@torch.library.custom_op(
    "ferroptim::step",
    mutates_args=("params", "grads", "states", "scalar_states", "fresh"),
)
def step(
    native: str,
    spec: str,
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    states: list[torch.Tensor],
    scalar_states: list[torch.Tensor],
    fresh: list[torch.Tensor],
    hyper_floats: list[float],
    hyper_tensors: list[torch.Tensor],
    grad_scale: Optional[torch.Tensor],  # noqa: UP045 (torch.library parses Optional)
    found_inf: Optional[torch.Tensor],  # noqa: UP045
) -> None:
    """One native optimizer step over every native call of a ``step()``.

    Args:
        native: the name of the ``ferroptim._core`` step function (e.g. ``"adam_step"``).
        spec: ``repr`` of a list, one entry per native call: ``[n, k, s, hyper]`` with ``n``
            parameters, ``k`` state tensors and ``s`` scalar state tensors per parameter,
            and ``hyper`` the call's hyperparameters as ``(name, value)`` pairs, where a
            value ``"<float>"`` (``"<tensor>"``) is the next of ``hyper_floats``
            (``hyper_tensors``), and other values (bool, int, None) are given.
        params, grads: the calls' parameters and gradients, concatenated (CPU, any dtype
            the native step takes); ``grads`` are written only when unscaled (``grad_scale``).
        states, scalar_states: the calls' state tensors, ``k`` (``s``) per parameter, in the
            rule's order; updated in place.
        fresh: one 0-d bool tensor per parameter: its state was just created (read, then
            cleared).
        hyper_floats: the float hyperparameters.
        hyper_tensors: the tensor hyperparameters (one element each), read as floats when
            the op runs.
        grad_scale, found_inf: GradScaler's hand-over (see ``grad_scaler_args``), or None.

    Raises:
        RuntimeError: as the eager ``step()``; nothing is modified in that case.
    """
    if found_inf is not None and float(found_inf.item()) != 0.0:
        return
    scale = None if grad_scale is None else float(grad_scale.item())
    calls = unpack(spec, params, grads, states, scalar_states, fresh, hyper_floats, hyper_tensors)
    getattr(_core, native)(calls, scale)
    for flag in fresh:
        flag.fill_(False)


@step.register_fake
def _step_fake(*args: Any, **kwargs: Any) -> None:
    """Shape propagation (the op's arguments, as :func:`step`): it writes its arguments in
    place and returns nothing."""
    return None


def pack(native: str, calls: list[dict[str, Any]]) -> tuple[Any, ...]:
    """The op's arguments ``(native, spec, params, grads, states, scalar_states, fresh,
    hyper_floats, hyper_tensors)`` for the native calls ``calls`` (dicts as
    ``NativeStep._native_calls`` builds them, with ``fresh`` holding the flag tensors).

    Traceable by Dynamo (the spec is the ``repr`` of constants: JSON's C encoder is not)."""
    entries: list[list[Any]] = []
    lists: dict[str, list[Any]] = {key: [] for key in _TENSOR_KEYS}
    floats: list[float] = []
    tensors: list[torch.Tensor] = []
    for call in calls:
        n = len(call["params"])
        k = len(call["states"]) // n if n else 0
        s = len(call["scalar_states"]) // n if n else 0
        for key in _TENSOR_KEYS:
            lists[key].extend(call[key])
        hyper = []
        for name, value in call.items():
            if name in _TENSOR_KEYS:
                continue
            if isinstance(value, torch.Tensor):
                hyper.append((name, _TENSOR))
                tensors.append(value)
            elif isinstance(value, float):
                hyper.append((name, _FLOAT))
                floats.append(value)
            else:  # bool, int, None: exact in their repr
                hyper.append((name, value))
        entries.append([n, k, s, hyper])
    spec = repr(entries)
    return (native, spec, *(lists[key] for key in _TENSOR_KEYS), floats, tensors)


def unpack(
    spec: str,
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    states: list[torch.Tensor],
    scalar_states: list[torch.Tensor],
    fresh: list[torch.Tensor],
    hyper_floats: list[float],
    hyper_tensors: list[torch.Tensor],
) -> list[dict[str, Any]]:
    """The native calls (``_core.<rule>_step``'s group dicts) that :func:`pack` packed."""
    calls = []
    floats, tensors = iter(hyper_floats), iter(hyper_tensors)
    p = st = sc = 0  # offsets into params (grads, fresh), states, scalar_states
    for n, k, s, hyper in ast.literal_eval(spec):
        call: dict[str, Any] = {
            "params": params[p : p + n],
            "grads": grads[p : p + n],
            "states": states[st : st + n * k],
            "scalar_states": scalar_states[sc : sc + n * s],
            "fresh": [bool(flag.item()) for flag in fresh[p : p + n]],
        }
        for name, value in hyper:
            if value == _FLOAT:
                value = next(floats)
            elif value == _TENSOR:
                value = float(next(tensors).item())
            call[name] = value
        calls.append(call)
        p, st, sc = p + n, st + n * k, sc + n * s
    return calls
