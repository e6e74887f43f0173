"""DTensor parameters (FSDP2 ``fully_shard``, HSDP, tensor parallel): native steps on shards.

A parameter that is a ``torch.distributed.tensor.DTensor`` has its gradient and its state
tensors as DTensors too: state is created from the parameter (``zeros_like(p)``, …) as
torch.optim creates it, so with the parameter's mesh and placements, and ``state_dict()``,
``torch.distributed.checkpoint`` and ``get/set_optimizer_state_dict`` see what they see with
torch.optim. Scalar state (``step``, ASGD's ``eta``/``mu``) stays a plain 0-d tensor, as in
torch. The native step never sees a DTensor:

* elementwise rules (every ``NativeStep`` class but LAMB and LARS) run on the local shards
  (``DTensor._local_tensor`` of parameter, gradient and state) in one native call for all
  groups, with no communication; uneven and empty shards are ordinary local tensors, so the
  result is the unsharded step's, bit for bit. A gradient whose placements differ from its
  parameter's (Replicate, Partial) is first redistributed to the parameter's placements, as
  DTensor's in-place operations do in torch.optim's step;
* rules that reduce over whole tensors — LAMB's and LARS's trust ratios, Adafactor's
  factored moments, Muon's Newton–Schulz iteration — run on full tensors gathered one
  parameter at a time (``DTensor.full_tensor``), every rank computing the same unsharded
  step, then each rank copies its own shards back (a redistribution from Replicate, a local
  split): the unsharded step's result, bit for bit, for one parameter's full tensors of
  extra memory at a time. So are parameters whose state's placements differ from their own
  (e.g. state loaded from another sharding). torch.optim's Adafactor fails on sharded
  matrices (DTensor refuses its in-place ``square_`` of a norm), and its Muon's
  Newton–Schulz on sharded bfloat16 matrices rounds differently from the unsharded step;
* LBFGS and SparseAdam run torch.optim's own step on the DTensors (:func:`torch_step`), so
  they behave exactly as torch.optim's classes do: LBFGS works when every parameter is
  evenly sharded and raises DTensor's RuntimeError ("Attempted to flatten unevenly sharded
  dimension…") otherwise; SparseAdam refuses the dense gradients of FSDP and tensor
  parallelism ("SparseAdam does not support dense gradients…").

Before anything is modified, RuntimeError is raised for: a parameter with a Partial
placement (a sum of per-rank values, which no elementwise state can follow: torch.optim's
Adam-family steps raise DTensor's RuntimeError on them; ferroptim refuses them for every
class, even SGD, whose linear update torch's DTensor operations accept); a DTensor
parameter whose gradient or state is not a DTensor on the same mesh with the expected
global shape, or whose state has a Partial placement; a torch.Tensor parameter with a
DTensor gradient or state; and on the gathered path, which makes one native call per
parameter, whatever a native call would refuse there (inference tensors outside
``torch.inference_mode``, sparse gradients, mismatched shapes). Sharded steps do not use
cached plans (``NativeStep._general_step``).
"""

from __future__ import annotations

from typing import Any, Callable

import torch

try:  # torch built without distributed support has no DTensor: nothing is ever sharded.
    from torch.distributed.tensor import DTensor, Partial, Replicate
except ImportError:  # pragma: no cover - every Linux/macOS wheel of torch 2.11 has it
    DTensor = None  # type: ignore[assignment,misc]

#: A state tensor's global shape as a function of its parameter's (``tuple``: the same).
ShapeFn = Callable[[torch.Size], tuple]

#: ``NativeStep``'s per-parameter entries of a native call (each list holds the same number
#: of entries per parameter), and among them the state tensors shaped like the parameter.
NATIVE_PER_PARAM = ("params", "grads", "states", "scalar_states", "fresh")
NATIVE_STATES: dict[str, ShapeFn] = {"states": tuple}


def any_dtensor(tensors: list[Any]) -> bool:
    """True if one of ``tensors`` (None entries allowed) is a DTensor."""
    return DTensor is not None and any(isinstance(t, DTensor) for t in tensors)


def calls_are_sharded(calls: list[dict[str, Any]]) -> bool:
    """True if a native step's calls (dicts with a ``params`` list) hold a DTensor parameter."""
    return DTensor is not None and any(any_dtensor(c["params"]) for c in calls)


def groups_are_sharded(groups: list[dict[str, Any]]) -> bool:
    """True if a parameter of ``groups`` (an optimizer's ``param_groups``) is a DTensor."""
    return DTensor is not None and any(any_dtensor(g["params"]) for g in groups)


def _describe(t: Any) -> str:
    if isinstance(t, DTensor):
        return (
            f"a DTensor of shape {tuple(t.shape)} with placements {tuple(t.placements)} "
            f"on {t.device_mesh}"
        )
    if isinstance(t, torch.Tensor):
        return f"a torch.Tensor of shape {tuple(t.shape)}"
    return type(t).__name__


def _refuse(where: str, p: Any, what: str, t: Any, need: str) -> None:
    raise RuntimeError(
        f"{where}: the parameter is {_describe(p)}, but its {what} is {_describe(t)}; "
        f"DTensor parameters need {need}"
    )


def _check_peer(where: str, p: Any, t: Any, what: str, shape: tuple) -> None:
    """RuntimeError unless ``t`` (the gradient or a state tensor of DTensor ``p``) is a DTensor
    on ``p``'s mesh of global shape ``shape``, and, if state, without a Partial placement."""
    if not (isinstance(t, DTensor) and t.device_mesh == p.device_mesh):
        _refuse(where, p, what, t, "DTensor gradients and state on the same mesh")
    if tuple(t.shape) != shape:
        _refuse(where, p, what, t, f"a {what} of global shape {shape}")
    if what != "gradient" and any(isinstance(pl, Partial) for pl in t.placements):
        _refuse(where, p, what, t, "state placements that are Shard or Replicate")


def _per_param(call: dict[str, Any], key: str, i: int) -> list[Any]:
    """Parameter ``i``'s entries of ``call[key]`` (a flat list, the same count per parameter)."""
    values, n = call[key], len(call["params"])
    k = len(values) // n if n else 0
    return values[i * k : (i + 1) * k]


def check_calls(calls: list[dict[str, Any]], states: dict[str, ShapeFn]) -> bool:
    """Checks the DTensors of a native step's calls before anything is modified.

    Args:
        calls: the native step's group dicts, with ``params`` and ``grads`` lists.
        states: the keys of the per-parameter state lists to check (None entries are
            skipped), each with the global shape its tensors must have given the parameter's.

    Returns:
        Whether every DTensor state tensor has its parameter's placements (else the step
        must take the gathered path).

    Raises:
        RuntimeError: see the module doc.
    """
    same_placements = True
    for c, call in enumerate(calls):
        for i, p in enumerate(call["params"]):
            where = f"params[{i}] of native group {c}"
            grad = call["grads"][i]
            peers = {key: [t for t in _per_param(call, key, i) if t is not None] for key in states}
            if not isinstance(p, DTensor):
                if isinstance(grad, DTensor) or any(any_dtensor(ts) for ts in peers.values()):
                    raise RuntimeError(
                        f"{where} is a torch.Tensor but its gradient or state is a DTensor; "
                        "a parameter and its gradient and state must all be DTensors or all not"
                    )
                continue
            if any(isinstance(pl, Partial) for pl in p.placements):
                raise RuntimeError(
                    f"{where} has a Partial placement {tuple(p.placements)}: an optimizer step "
                    "updates parameters whose placements are Shard or Replicate"
                )
            _check_peer(where, p, grad, "gradient", tuple(p.shape))
            for key, shape_of in states.items():
                for j, t in enumerate(peers[key]):
                    _check_peer(where, p, t, f"state tensor {key}[{j}]", shape_of(p.shape))
                    same_placements &= tuple(t.placements) == tuple(p.placements)
    return same_placements


def _check_gathered(
    calls: list[dict[str, Any]], per_param: tuple[str, ...], states: dict[str, ShapeFn]
) -> None:
    """The gathered path makes one native call per parameter: what a native call would refuse
    (and the copies it steps would not show) is refused here, before anything is modified:
    inference tensors outside ``torch.inference_mode``, sparse gradients, and the gradient
    and state shapes of the torch.Tensor parameters (``check_calls`` checks the DTensors)."""
    inference_ok = torch.is_inference_mode_enabled()
    for c, call in enumerate(calls):
        for key in per_param:
            for t in call[key]:
                if not inference_ok and isinstance(t, torch.Tensor) and _local(t).is_inference():
                    raise RuntimeError(
                        f"native group {c}: {key} holds an inference tensor, which cannot be "
                        "updated outside torch.inference_mode"
                    )
        for i, (p, grad) in enumerate(zip(call["params"], call["grads"])):
            if grad.is_sparse:
                raise RuntimeError(f"params[{i}] of native group {c} has a sparse gradient")
            if isinstance(p, DTensor):
                continue
            expected = [("gradient", grad, tuple(p.shape))]
            for key, shape_of in states.items():
                ts = [t for t in _per_param(call, key, i) if t is not None]
                expected += [
                    (f"state tensor {key}[{j}]", t, shape_of(p.shape)) for j, t in enumerate(ts)
                ]
            for what, t, shape in expected:
                if tuple(t.shape) != shape:
                    raise RuntimeError(
                        f"params[{i}] of native group {c} has shape {tuple(p.shape)}, but its "
                        f"{what} has shape {tuple(t.shape)}, not {shape}"
                    )


def _local(t: Any) -> Any:
    return t._local_tensor if isinstance(t, DTensor) else t


def _local_grad(p: Any, g: Any) -> Any:
    """The local shard of gradient ``g`` laid out as parameter ``p``'s (redistributed first if
    its placements differ, e.g. a Partial gradient, as DTensor's own in-place ops would)."""
    if isinstance(p, DTensor) and tuple(g.placements) != tuple(p.placements):
        g = g.redistribute(p.device_mesh, p.placements)
    return _local(g)


def _localized(call: dict[str, Any], per_param: tuple[str, ...]) -> dict[str, Any]:
    out = dict(call)
    for key in per_param:
        if key == "grads":
            out[key] = [_local_grad(p, g) for p, g in zip(call["params"], call["grads"])]
        elif key != "fresh":
            out[key] = [_local(t) for t in call[key]]
    return out


def _write_back(dst: Any, full: torch.Tensor) -> None:
    """Copies ``dst``'s own shards of the full tensor ``full`` into ``dst``'s local tensor."""
    mesh = dst.device_mesh
    replicated = DTensor.from_local(full, mesh, [Replicate()] * mesh.ndim, run_check=False)
    local = replicated.redistribute(mesh, dst.placements)._local_tensor
    if local.data_ptr() != dst._local_tensor.data_ptr():  # else stepped in place (Replicate)
        dst._local_tensor.copy_(local)


def _gathered(
    native: Callable[..., None],
    call: dict[str, Any],
    i: int,
    scale: Any,
    per_param: tuple[str, ...],
) -> None:
    """Parameter ``i`` of ``call`` stepped alone on its full tensors, written back to its
    shards (the gradient too when ``scale`` is set: GradScaler expects it unscaled)."""
    one = {key: _per_param(call, key, i) for key in per_param}
    if not isinstance(one["params"][0], DTensor):
        native([{**call, **one}], scale)
        return
    full: list[tuple[Any, torch.Tensor]] = []

    def gather(key: str, t: Any) -> Any:
        if not isinstance(t, DTensor):
            return t
        f = t.full_tensor()
        no_partial = not any(isinstance(pl, Partial) for pl in t.placements)
        if key != "grads" or (scale is not None and no_partial):
            full.append((t, f))
        return f

    native([{**call, **{key: [gather(key, t) for t in one[key]] for key in per_param}}], scale)
    for dst, f in full:
        _write_back(dst, f)


def native_step(
    native: Callable[..., None],
    calls: list[dict[str, Any]],
    scale: Any,
    gather: bool,
    per_param: tuple[str, ...] = NATIVE_PER_PARAM,
    states: dict[str, ShapeFn] | None = None,
) -> None:
    """Runs the native step ``native(calls, scale)`` on calls that hold DTensors.

    Args:
        native: a ``ferroptim._core.<rule>_step`` function.
        calls: its group dicts (for ``NativeStep``: ``params``, ``grads``, ``states``,
            ``scalar_states``, ``fresh`` and hyperparameters).
        scale: GradScaler's loss scale, or None.
        gather: the rule reduces over whole tensors (LAMB, LARS, Adafactor, Muon): each
            parameter is stepped alone on its gathered full tensors. Otherwise one native call
            on the local shards, unless a state tensor's placements differ from its
            parameter's (e.g. state loaded from another sharding): then gathered too.
        per_param: the keys of ``calls``' per-parameter lists (flat, the same number of
            entries per parameter; entries may be None).
        states: the state lists among them to check, each with its tensors' global shape as
            a function of the parameter's (default: ``NATIVE_STATES``).

    Raises:
        RuntimeError: see the module doc; raised before anything is modified.
    """
    states = NATIVE_STATES if states is None else states
    same_placements = check_calls(calls, states)
    if not gather and same_placements:
        native([_localized(call, per_param) for call in calls], scale)
        return
    _check_gathered(calls, per_param, states)
    for call in calls:
        for i in range(len(call["params"])):
            _gathered(native, call, i, scale, per_param)


def torch_step(optimizer: Any, torch_cls: type, closure: Callable[[], Any] | None) -> Any:
    """``torch_cls.step(optimizer, closure)``: torch.optim's own step, without its hook
    wrapper (the hooks already ran around this step). Used on DTensor parameters for the
    classes whose ferroptim step cannot take shards (LBFGS, SparseAdam), and by ``Muon``
    inside a region that ``torch.compile`` traces (torch's step is traceable; the same ATen
    operations as the native one).

    GradScaler: LBFGS does not take over unscaling (GradScaler unscales its gradients
    itself). SparseAdam does (``_step_supports_amp_scaling``), but its step on DTensors only
    ever refuses their dense gradients, before anything changes; a step that GradScaler
    skips (``found_inf``) only calls the closure, as SparseAdam's native step does.
    """
    found_inf = getattr(optimizer, "found_inf", None)
    if found_inf is not None and float(found_inf.item()) != 0.0:
        if closure is None:
            return None
        with torch.enable_grad():
            return closure()
    step = torch_cls.step
    # The hooks already ran around this step: take torch's step without its hook wrapper.
    if getattr(step, "hooked", False):
        step = step.__wrapped__
    return step(optimizer, closure)
