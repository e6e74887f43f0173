"""The composition of :mod:`ferroptim.transforms` into one traced rule: :class:`Transform`
and :func:`chain` (see that module's docs)."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from . import rules as R
from ._base import NativeStep, call_closure, grad_scaler_args, scalar

_Frac = tuple[Any, Any]  # (numerator, denominator) of a scalar factor; None means 1


@dataclass(frozen=True)
class Transform:
    """One building block of :func:`chain` (made by the functions of :mod:`ferroptim.transforms`).

    Attributes:
        name: the transform's name, used in error messages.
        defaults: the hyperparameters it owns, with their defaults (torch names).
        requires: hyperparameters it reads that another transform of the chain owns.
        state: its state tensors' names (torch names where it reproduces a torch class).
        scalars: ``scalars(h, step) -> {name: value}``, its per-step float64 scalars.
        update: ``update(u, p, state, s) -> (num, den)``: the new update ``num / den``
            (``den`` None for none) from the incoming update ``u`` (element values, see
            :mod:`ferroptim.rules`); None for a transform that does not read ``u``.
        param: ``param(p, s) -> p``: a new parameter value (weight decay), or None; applied
            before ``update``, which then reads the new value.
        factor: ``factor(h, step) -> (num, den)``: a per-step scalar factor (float64) that
            multiplies the update — the transform's own output for an ``update`` transform
            (Adam's bias correction), the incoming update otherwise (``-lr``); or None.
        validate: called with the constructor's hyperparameters; raises ValueError.
        global_norm: the transform reads the global gradient norm (:func:`clip_by_global_norm`).
        norms: how many values ``norm_terms`` returns.
        norm_terms: ``norm_terms(u, p, s) -> (t0, …)``: element values (of the incoming update
            ``u`` and the current parameter) whose 2-norms over each tensor the transform
            reads (:func:`scale_by_trust_ratio`); None for none. Needs ``update``.
        tensor_factor: ``tensor_factor(h, norms, step)``: a per-tensor scalar factor computed
            from the 2-norms of ``norm_terms`` (float64), multiplying the transform's output;
            applied after the per-step factors are combined (``(-(lr/d))·trust``, the order of
            ferroptim's Lamb), where the next transform reads the update or at the end.
    """

    name: str
    defaults: Mapping[str, Any] = field(default_factory=dict)
    requires: tuple[str, ...] = ()
    state: tuple[str, ...] = ()
    scalars: Callable[..., dict[str, Any]] | None = None
    update: Callable[..., tuple[Any, Any]] | None = None
    param: Callable[..., Any] | None = None
    factor: Callable[..., _Frac] | None = None
    validate: Callable[[dict[str, Any]], None] | None = None
    global_norm: bool = False
    norms: int = 0
    norm_terms: Callable[..., tuple[Any, ...]] | None = None
    tensor_factor: Callable[..., Any] | None = None


def _clip_coefs(opt: Any) -> dict[int, float]:
    """Each group's ``min(1, max_norm / (‖g‖ + 1e-6))`` (torch's float32 arithmetic), keyed
    by the id of the group's ``params`` list (copies of a group share it), with ``‖g‖`` the
    global norm of all gradients."""
    grads = [p.grad for group in opt.param_groups for p in group["params"] if p.grad is not None]
    total = torch.nn.utils.get_total_norm(grads, 2.0)
    _, scale = grad_scaler_args(opt)
    if scale is not None:
        total = total / scale
    return {
        id(group["params"]): float(torch.clamp(scalar(group["max_norm"]) / (total + 1e-6), max=1.0))
        for group in opt.param_groups
    }


def _with_global_norm(cls: Any) -> Any:
    """Makes ``cls`` compute the clip coefficients before each step and pass them in
    ``max_norm``'s place."""
    rule_hyper = cls._hyper

    @torch.compiler.disable
    def step(self: Any, closure: Callable[[], float] | None = None) -> float | None:
        loss = call_closure(closure)  # the gradients are final only after the closure
        self.__dict__["_ferroptim_clip"] = _clip_coefs(self)
        try:
            NativeStep.step(self, None)
        finally:
            del self.__dict__["_ferroptim_clip"]
        return loss

    def _hyper(self: Any, group: dict[str, Any]) -> dict[str, Any]:
        coefs = self.__dict__.get("_ferroptim_clip") or _clip_coefs(self)
        return rule_hyper(self, {**group, "max_norm": coefs[id(group["params"])]})

    step.__doc__ = NativeStep.step.__doc__
    cls.step, cls._hyper = step, _hyper
    return cls


def _times(a: _Frac, b: _Frac) -> _Frac:
    def mul(x: Any, y: Any) -> Any:
        return y if x is None else x if y is None else x * y

    return mul(a[0], b[0]), mul(a[1], b[1])


def _value(f: _Frac) -> Any:
    num, den = f
    if den is None:
        return 1.0 if num is None else num
    return (1.0 if num is None else num) / den


def _coef(f: _Frac, tensor: list[Any]) -> Any:
    """The combined factor: the per-step fraction's value, times the per-tensor factors."""
    value = None if f == (None, None) else _value(f)
    for t in tensor:
        value = t if value is None else value * t
    return 1.0 if value is None else value


def _apply(num: Any, den: Any, coef: Any) -> Any:
    """The update ``(coef·num)/den`` as one element value (``coef``/``den`` may be None)."""
    if coef is not None:
        num = coef * num
    return num if den is None else num / den


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.shape == b.shape
            and bool(torch.equal(a, b))
        )
    return isinstance(a, bool) == isinstance(b, bool) and bool(a == b)


def _count(t: Transform) -> int:
    """How many norm terms ``t`` reads."""
    return t.norms if t.norm_terms is not None else 0


class _Scoped:
    """``s`` of one transform: its own scalars under its position's prefix, the chain's
    hyperparameters (shared) by name."""

    def __init__(self, s: Any, prefix: str, own: set[str]) -> None:
        self._s, self._prefix, self._own = s, prefix, own

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._s, self._prefix + name if name in self._own else name)


class _Renamed:
    """``state`` of one transform: its slot names mapped to the chain's."""

    def __init__(self, state: Any, names: dict[str, str]) -> None:
        object.__setattr__(self, "_state", state)
        object.__setattr__(self, "_names", names)

    def _name(self, name: str) -> str:
        names = self.__dict__["_names"]
        if name not in names:
            raise AttributeError(f"no state {name!r} (declared: {tuple(names)})")
        return names[name]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["_state"], self._name(name))

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.__dict__["_state"], self._name(name), value)


def chain(
    *transforms: Transform, name: str = "Chain", doc: str | None = None
) -> type[torch.optim.Optimizer]:
    r"""One optimizer from a sequence of transforms, fused into a single native rule (see the
    module docs; optax's ``chain``).

    Args:
        *transforms: the transforms, applied in order to the gradient (negated first when
            ``maximize``); the last update is added to the parameter.
        name: the class name (default ``"Chain"``).
        doc: the class docstring (default: the chain's transforms).

    Returns:
        A ``torch.optim.Optimizer`` subclass, constructed as ``Cls(params, **hyperparameters)``
        with the transforms' hyperparameters (and ``maximize``) as keyword arguments and
        defaults; parameters of any shape and of dtype float32, float64, bfloat16 or
        float16, on the CPU (as :func:`ferroptim.rules.rule_optimizer`).

    Raises:
        TypeError: an argument is not a :class:`Transform`.
        ValueError: no transforms; two transforms set one hyperparameter with different
            defaults; a transform reads a hyperparameter that none sets (e.g. decoupled
            weight decay without :func:`scale_by_lr`); no ``lr`` at all (every torch
            optimizer has one, LR schedulers need it); a state name clash.
    """
    if not transforms:
        raise ValueError("chain() needs at least one transform")
    for i, t in enumerate(transforms):
        if not isinstance(t, Transform):
            raise TypeError(
                f"chain() argument {i} must be a ferroptim.transforms.Transform, "
                f"got {type(t).__name__}"
            )
    ts = tuple(transforms)
    defaults: dict[str, Any] = {}
    owner: dict[str, str] = {}
    for t in ts:
        for key, value in t.defaults.items():
            if key == "maximize":
                raise ValueError(f"{t.name}: 'maximize' is the chain's own hyperparameter")
            if key in defaults and not _same(defaults[key], value):
                raise ValueError(
                    f"{owner[key]} and {t.name} both set hyperparameter {key!r}, with "
                    f"defaults {defaults[key]!r} and {value!r}; give them the same value"
                )
            defaults.setdefault(key, value)
            owner.setdefault(key, t.name)
    for t in ts:
        for key in t.requires:
            if key not in defaults:
                hint = " (add scale_by_lr)" if key == "lr" else ""
                raise ValueError(
                    f"{t.name} reads hyperparameter {key!r}, which no transform of the chain "
                    f"sets{hint}"
                )
    if "lr" not in defaults:
        raise ValueError(
            "chain() has no learning rate 'lr': add scale_by_lr (the update is added to the "
            "parameter, so without it the chain would ascend the gradient)"
        )
    defaults["maximize"] = False

    state: list[str] = []
    renames: list[dict[str, str]] = []
    for i, t in enumerate(ts):
        names = {}
        for slot in t.state:
            full = slot if slot not in state else f"{slot}_{i}"
            if full in state:
                raise ValueError(f"{t.name}: state name {full!r} is already taken in the chain")
            names[slot] = full
            state.append(full)
        renames.append(names)

    prefixes = [f"{i}.{t.name}." for i, t in enumerate(ts)]
    own: list[set[str]] = [set() for _ in ts]  # each transform's scalar names
    # Where a scalar factor is pending on the update: before transform i reads it (key i),
    # and at the end (key len(ts)). Static: it depends only on the transforms' kinds.
    pending: dict[int, bool] = {}
    carried = False
    for i, t in enumerate(ts):
        if t.update is not None:
            pending[i] = carried
            carried = t.factor is not None or t.tensor_factor is not None
        elif t.factor is not None:
            carried = True
    pending[len(ts)] = carried
    # Per-tensor norms: each norm-reading transform's first term's index in ``h.norms``.
    norm_at: dict[int, int] = {}
    for i, t in enumerate(ts):
        if t.norm_terms is not None:
            if t.update is None:
                raise ValueError(f"{t.name}: norm_terms needs an update")
            norm_at[i] = sum(_count(ts[j]) for j in norm_at)
    n_norms = sum(_count(ts[j]) for j in norm_at)
    if n_norms > R.MAX_NORMS:
        raise ValueError(
            f"chain() reads {n_norms} per-tensor norms (at most {R.MAX_NORMS}: one "
            "scale_by_trust_ratio)"
        )
    clips = [i for i, t in enumerate(ts) if t.global_norm]
    if len(clips) > 1:
        raise ValueError("chain() takes at most one clip_by_global_norm")
    for i in clips:
        before = [t.name for t in ts[:i] if t.update is not None or t.factor is not None]
        if before:
            raise ValueError(
                f"clip_by_global_norm reads the gradient, so it must come before {before[0]}"
            )

    def scalars(h: Any, step: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        coef: _Frac = (None, None)
        tensor: list[Any] = []  # pending per-tensor factors
        for i, t in enumerate(ts):
            if t.scalars is not None:
                mine = t.scalars(h, step)
                own[i].update(mine)  # names only; the tracing of update reads them
                out.update({prefixes[i] + k: v for k, v in mine.items()})
            if t.update is not None:
                if pending[i]:
                    out[f"{i}.coef"] = _coef(coef, tensor)
                coef = t.factor(h, step) if t.factor is not None else (None, None)
                tensor = []
                if t.tensor_factor is not None:
                    at = norm_at.get(i, 0)
                    mine_norms = h.norms[at : at + _count(t)] if i in norm_at else ()
                    tensor.append(t.tensor_factor(h, mine_norms, step))
            elif t.factor is not None:
                coef = _times(coef, t.factor(h, step))
        if pending[len(ts)]:
            out["coef"] = _coef(coef, tensor)
        return out

    def run(p: Any, g: Any, st: Any, s: Any, terms: list[Any] | None = None) -> Any:
        """The chain's update; with ``terms``, collects the norm terms and stops after the
        last transform that reads norms (for ``norms``)."""
        num, den = (-g if s.maximize else g), None
        for i, t in enumerate(ts):
            si = _Scoped(s, prefixes[i], own[i])
            if t.param is not None:
                p = t.param(p, si)
            if t.update is not None:
                u = _apply(num, den, getattr(s, f"{i}.coef") if pending[i] else None)
                if terms is not None and t.norm_terms is not None:
                    terms.extend(t.norm_terms(u, p, si))
                    if len(terms) == n_norms:
                        return None
                num, den = t.update(u, p, _Renamed(st, renames[i]), si)
        return p, num, den

    def norms(p: Any, g: Any, st: Any, s: Any) -> tuple[Any, ...]:
        terms: list[Any] = []
        # The transforms before the last norm reader assign state as in update: they run on
        # a scratch state of the same trace (nodes are shared with update's).
        run(p, g, R._State(p.trace, tuple(state)), s, terms)
        return tuple(terms)

    def update(p: Any, g: Any, st: Any, s: Any) -> Any:
        p, num, den = run(p, g, st, s)
        coef = s.coef if pending[len(ts)] else None
        if den is None and coef is not None:
            return R.fma(coef, num, p)  # θ + c·u with one rounding (torch's add(alpha=))
        return p + _apply(num, den, coef)

    def validate(h: dict[str, Any]) -> None:
        for t in ts:
            if t.validate is not None:
                t.validate(h)

    cls = R.rule_optimizer(
        name,
        update,
        scalars,
        state=tuple(state),
        defaults=defaults,
        validate=validate,
        doc=doc or f"{name}: ferroptim.chain(" + ", ".join(t.name for t in ts) + ").",
        norms=norms if n_norms else None,
    )
    # The caller's module, as collections.namedtuple does (the class is made here).
    cls.__module__ = sys._getframe(1).f_globals.get("__name__", cls.__module__)
    return _with_global_norm(cls) if clips else cls
