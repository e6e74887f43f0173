r"""Your own optimizer, written in Python, stepped by ferroptim's fused native driver.

Write the update of **one element** as a Python function, and the **per-step scalars** (bias
corrections, step sizes…) as another; :func:`rule_optimizer` traces both once into expression
graphs (``rust/ferroptim/src/expr/``) and returns a ``torch.optim.Optimizer`` subclass whose
``step()`` is one native call: every parameter updated in a single pass over memory, on all
threads, with bf16/fp16 parameters computed in float32 and rounded once, GradScaler's
``grad_scale``/``found_inf`` handled in the pass, and cached step plans, as for the built-in
classes. The state lives in ``optimizer.state[p]`` under the names you give (plus ``step``).

Example (AdamW, written exactly as ferroptim's built-in rule computes it, so that it gives the
built-in class's results bit for bit)::

    from ferroptim import rules as R

    def scalars(h, step):            # f64, once per step and group: h.<hyperparameter>
        return {
            "decay": 1 - h.lr * h.weight_decay,
            "lerp_weight": 1 - h.beta1,
            "one_minus_beta2": 1 - h.beta2,
            "neg_step_size": -(h.lr / (1 - h.beta1**step)),
            "bc2_sqrt": (1 - h.beta2**step) ** 0.5,
        }

    def update(p, g, state, s):      # one element: s.<scalar or float hyperparameter>
        p = p * s.decay
        m = R.lerp(state.exp_avg, g, s.lerp_weight)
        v = R.fma(s.one_minus_beta2 * g, g, state.exp_avg_sq * s.beta2)
        state.exp_avg, state.exp_avg_sq = m, v
        return p + s.neg_step_size * m / (R.sqrt(v) / s.bc2_sqrt + s.eps)

    MyAdamW = R.rule_optimizer(
        "MyAdamW", update, scalars, state=("exp_avg", "exp_avg_sq"),
        defaults={"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 1e-2},
    )
    opt = MyAdamW(model.parameters(), lr=3e-4)

**What a rule may do.** Element values (``p``, ``g``, the state slots, ``s.<name>``) support
``+ - * /``, unary ``-``, ``abs()``, ``<  <=  >  >=`` (giving masks for :func:`where`), and the
functions of this module: :func:`sqrt`, :func:`exp`, :func:`log`, :func:`sign`,
:func:`maximum`, :func:`minimum` (NaN-propagating, as torch's), :func:`fma` (one rounding),
:func:`where`, :func:`lerp` (torch's formula), :func:`eq`; the matching ``torch`` functions
(``torch.sqrt``, ``torch.where``…) work too. Each operation is one IEEE operation in the
element's compute type (float32, or float64 for float64 tensors), rounded once; nothing is
fused unless you write :func:`fma`. Python ``if`` on an element value, ``**``, indexing or
any other function raise ``TypeError`` naming the operation when the rule is defined. Boolean
hyperparameters (``maximize``, ``nesterov``…) are plain Python bools in both functions, so
``if s.maximize:`` is fine: the rule is traced once per combination of them. Scalars are
computed in float64 with Python's float semantics (``**`` is C's ``pow``), from the float
hyperparameters (``h.<name>``; a tuple hyperparameter such as ``betas`` gives a tuple), the
step count ``step`` (after this step's increment: 1 on the first step) and :data:`FRESH`
(``h.fresh``: 1.0 on a parameter's first step, when its state was just created, else 0.0).

**Per-tensor norms** (LAMB's and LARS's trust ratios). ``norms(p, g, state, s)`` returns up
to :data:`MAX_NORMS` element values; before the update, the driver sums their squares over
each whole tensor (float64, fixed order: the same bits for any thread count) and ``scalars``
reads the 2-norms as ``h.norms``. A scalar computed from them is one value per tensor in
``update``. LAMB (You et al., "Large Batch Optimization for Deep Learning: Training BERT in 76
minutes", ICLR 2020), as ferroptim's :class:`~ferroptim.Lamb` computes it::

    def direction(p, g, state, s):   # shared by norms and update (traced nodes are shared)
        m = R.fma(s.one_minus_beta1, g, state.exp_avg * s.beta1)
        v = R.fma(s.one_minus_beta2 * g, g, state.exp_avg_sq * s.beta2)
        return p * s.decay, m, v, m / (R.sqrt(v) + s.eps)

    def norms(p, g, state, s):       # ‖θ‖ and ‖r‖ of each tensor
        p, _, _, r = direction(p, g, state, s)
        return p, r

    def scalars(h, step):
        beta1, beta2 = h.betas
        weight, dir_norm = h.norms
        weight = R.where(weight < 10.0, weight, 10.0)                 # φ(‖θ‖) = min(‖θ‖, 10)
        trust = R.where(R.eq(weight, 0.0), 1.0,
                        R.where(R.eq(dir_norm, 0.0), 1.0, weight / (dir_norm + h.eps)))
        return {"beta1": beta1, "one_minus_beta1": 1 - beta1, "beta2": beta2,
                "one_minus_beta2": 1 - beta2, "decay": 1 - h.weight_decay * h.lr,
                "alpha": -(h.lr / (1 - beta1**step)) * trust}

    def update(p, g, state, s):
        p, state.exp_avg, state.exp_avg_sq, r = direction(p, g, state, s)
        return R.fma(s.alpha, r, p)

    MyLamb = R.rule_optimizer("MyLamb", update, scalars, norms=norms,
                              state=("exp_avg", "exp_avg_sq"),
                              defaults={"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-6,
                                        "weight_decay": 0.0})

The algorithm is yours; ferroptim runs it. Reproductions of AdamW, SGD with Nesterov momentum,
Lion and LAMB with this API match the built-in classes bit for bit
(``tests/python/test_rules.py``).
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from . import _core
from ._base import NATIVE_NOTES, NativeStep, scalar, scalar_tensor, zeros_like
from ._tracing import (
    FRESH,
    _Elem,
    _Scalar,
    _Trace,
    _unsupported,
    _Value,
    eq,
    exp,
    fma,
    lerp,
    log,
    maximum,
    minimum,
    sign,
    sqrt,
    where,
)

__all__ = [
    "rule_optimizer",
    "sqrt",
    "exp",
    "log",
    "sign",
    "maximum",
    "minimum",
    "fma",
    "where",
    "lerp",
    "eq",
    "MAX_NORMS",
]


#: Largest number of per-tensor norm terms a rule may declare (``MAX_NORMS`` of the native rule).
MAX_NORMS = 2


class _Hypers:
    """``h`` of ``scalars(h, step)``: float hyperparameters as traced scalars, bools as bools,
    ``h.norms`` the per-tensor norms (None: the rule declares no norm terms)."""

    def __init__(
        self, trace: _Trace, floats: list[str], flags: dict[str, Any], n_norms: int | None
    ) -> None:
        self._trace, self._floats, self._flags, self._n_norms = trace, floats, flags, n_norms

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if name == FRESH:
            return self._trace.add("fresh")
        if name == "norms" and "norms" not in self._floats and "norms" not in self._flags:
            if self._n_norms is None:
                raise TypeError(
                    "h.norms: this rule declares no per-tensor norm terms (pass norms= to "
                    "rule_optimizer)"
                )
            return tuple(sqrt(self._trace.add("norm_sq", k)) for k in range(self._n_norms))
        if name in self._flags:
            return self._flags[name]
        tuple_items = [f for f in self._floats if f.startswith(name + "[")]
        if tuple_items:
            return tuple(self._trace.add("hyper", self._floats.index(f)) for f in tuple_items)
        if name in self._floats:
            return self._trace.add("hyper", self._floats.index(name))
        raise AttributeError(
            f"no hyperparameter {name!r} (have: {self._floats + list(self._flags)})"
        )


class _Slots:
    """``s`` of ``update(p, g, state, s)``: the scalars (element-graph slots), float
    hyperparameters (slots made on first use) and bool hyperparameters (bools)."""

    def __init__(
        self,
        trace: _Trace,
        names: dict[str, int],
        hyper_slot: Callable[[str], int],
        flags: dict[str, Any],
    ) -> None:
        self._trace, self._names, self._hyper_slot, self._flags = trace, names, hyper_slot, flags

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if name in self._flags:
            return self._flags[name]
        if name not in self._names:
            self._names[name] = self._hyper_slot(name)
        return self._trace.add("slot", self._names[name])


class _State:
    """``state`` of ``update``: read the slots' old values, assign their new ones."""

    def __init__(self, trace: _Trace, names: tuple[str, ...]) -> None:
        object.__setattr__(self, "_names", names)
        object.__setattr__(self, "_old", {n: trace.add("state", i) for i, n in enumerate(names)})
        object.__setattr__(self, "_new", {})

    def __getattr__(self, name: str) -> Any:
        new, old = self.__dict__["_new"], self.__dict__["_old"]
        if name in new:
            return new[name]
        if name in old:
            return old[name]
        raise AttributeError(f"no state {name!r} (declared: {self.__dict__['_names']})")

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in self.__dict__["_old"]:
            raise AttributeError(f"no state {name!r} (declared: {self.__dict__['_names']})")
        self.__dict__["_new"][name] = value


class _ReadState(_State):
    """``state`` of ``norms``: the old values, read only."""

    def __setattr__(self, name: str, value: Any) -> None:
        raise TypeError(
            f"norms() cannot assign state.{name}: norm terms are computed from the state "
            "before the update, which update() writes"
        )


def _norm_terms(rule: str, out: Any) -> list[Any]:
    """The value returned by ``norms``: a sequence of at most MAX_NORMS values."""
    terms = list(out) if isinstance(out, (tuple, list)) else [out]
    if len(terms) > MAX_NORMS:
        raise ValueError(
            f"rule {rule}: norms() returns {len(terms)} terms (at most {MAX_NORMS} per-tensor "
            "norms)"
        )
    return terms


def _count_norms(
    rule: str, norms: Callable[..., Any], state: tuple[str, ...], flags: dict[str, Any]
) -> int:
    """How many terms ``norms`` returns, from a scratch trace (``h.norms`` needs the count
    before the real trace, which needs the scalars' names)."""
    et = _Trace(_Elem)
    s = _Slots(et, {}, lambda _name: 0, flags)
    return len(_norm_terms(rule, norms(et.add("param"), et.add("grad"), _ReadState(et, state), s)))


def _check_norm_slots(
    rule: str, et: _Trace, st: _Trace, terms: list[int], slots: list[int], names: dict[str, int]
) -> None:
    """Raises TypeError if a norm term reads a scalar computed from ``h.norms``."""
    late = [False] * len(st.nodes)
    for i, (op, a, b, c, _) in enumerate(st.nodes):
        n = _ARITY.get(op, 0)
        late[i] = op == "norm_sq" or any(late[x] for x in (a, b, c)[:n])
    read = [False] * len(et.nodes)
    for t in terms:
        read[t] = True
    slot_name = {k: name for name, k in names.items()}
    for i in range(len(et.nodes) - 1, -1, -1):
        if not read[i]:
            continue
        op, a, b, c, _ = et.nodes[i]
        if op == "slot" and late[slots[a]]:
            raise TypeError(
                f"rule {rule}: norms() reads s.{slot_name.get(a, a)}, which scalars() computes "
                "from h.norms (norm terms are summed before the norms are known)"
            )
        for x in (a, b, c)[: _ARITY.get(op, 0)]:
            read[x] = True


# Operand counts of the traced operations (inputs and constants: none).
_ARITY = {
    **dict.fromkeys(("neg", "abs", "sqrt", "exp", "log", "sign"), 1),
    **dict.fromkeys(("add", "sub", "mul", "div", "pow", "maximum", "minimum", "lt", "le", "eq"), 2),
    **dict.fromkeys(("fma", "where"), 3),
}


def _trace(
    name: str,
    update: Callable[..., Any],
    scalars: Callable[..., Any] | None,
    state: tuple[str, ...],
    floats: list[str],
    flags: dict[str, Any],
    norms: Callable[..., Any] | None = None,
) -> Any:
    """Traces ``scalars``, ``norms`` and ``update`` with the bool hyperparameters ``flags``
    fixed; returns the native ``Graph``. Raises TypeError naming an unsupported operation."""
    n_norms = None if norms is None else _count_norms(name, norms, state, flags)
    st = _Trace(_Scalar)
    h = _Hypers(st, floats, flags, n_norms)
    outs: dict[str, Any] = dict(scalars(h, st.add("step")) if scalars is not None else {})
    slots: list[int] = []  # scalar node of each slot
    slot_of: dict[str, int] = {}

    def scalar_node(value: Any) -> int:
        if isinstance(value, _Value):
            if value.trace is not st:
                raise _unsupported("an element value as a scalar")
            return value.id
        return st.add("const", value=float(value)).id

    for key, value in outs.items():
        slot_of[key] = len(slots)
        slots.append(scalar_node(value))

    def hyper_slot(hname: str) -> int:
        value = getattr(h, hname)  # AttributeError for unknown names
        if isinstance(value, tuple) or isinstance(value, bool):
            raise TypeError(f"rule {name}: s.{hname} is not a float hyperparameter or scalar")
        slots.append(scalar_node(value))
        return len(slots) - 1

    et = _Trace(_Elem)
    p, g = et.add("param"), et.add("grad")
    s = _Slots(et, slot_of, hyper_slot, flags)
    terms: list[int] = []
    if norms is not None:
        out = _norm_terms(name, norms(p, g, _ReadState(et, state), s))
        terms = [p._lift(t).id for t in out]
    state_obj = _State(et, state)
    new_p = update(p, g, state_obj, s)
    if new_p is None:
        raise TypeError(f"rule {name}: update must return the new parameter value")
    new_p = p._lift(new_p)
    outs_ids = [p._lift(state_obj.__getattr__(n)).id for n in state]
    _check_norm_slots(name, et, st, terms, slots, s._names)
    return _core.Graph(
        list(state), et.nodes, new_p.id, outs_ids, st.nodes, slots, len(floats), terms
    )


def _float_names(defaults: dict[str, Any]) -> tuple[list[str], list[str], list[str]]:
    """Float hyperparameter names (``betas`` → ``betas[0]``, ``betas[1]``), bool names, and the
    keys the float names come from, in order."""
    floats, flags, keys = [], [], []
    for key, value in defaults.items():
        if isinstance(value, bool):
            flags.append(key)
        elif isinstance(value, (tuple, list)):
            floats.extend(f"{key}[{i}]" for i in range(len(value)))
            keys.append(key)
        elif isinstance(value, (int, float, torch.Tensor)):
            floats.append(key)
            keys.append(key)
        else:
            raise TypeError(
                f"hyperparameter {key!r}: expected a float, a tuple of floats or a bool, "
                f"got {type(value).__name__}"
            )
    return floats, flags, keys


def rule_optimizer(
    name: str,
    update: Callable[..., Any],
    scalars: Callable[..., Any] | None = None,
    *,
    state: tuple[str, ...] = (),
    defaults: dict[str, Any],
    validate: Callable[[dict[str, Any]], None] | None = None,
    doc: str | None = None,
    norms: Callable[..., Any] | None = None,
) -> type[torch.optim.Optimizer]:
    """A ``torch.optim.Optimizer`` subclass named ``name`` whose step is the rule ``update``
    (one element: ``update(p, g, state, s) -> new p``, assigning ``state.<name>``) with the
    per-step scalars ``scalars(h, step) -> {name: value}``, run natively (see the module docs).

    Args:
        name: the class name.
        update: the per-element update.
        scalars: the per-step scalars, or None (``s`` then gives the hyperparameters only).
        state: the state tensors' names, each created as zeros like the parameter (float32
            ``step`` is kept as well).
        defaults: hyperparameters and their defaults (floats or 0-d tensors, tuples of floats,
            bools); the constructor accepts each as a keyword argument.
        validate: called with the constructor's hyperparameters; raise ValueError to refuse.
            Default: torch's checks of ``lr``, ``eps``, ``weight_decay`` and ``betas`` where
            the rule has them.
        doc: the class docstring.
        norms: per-tensor norm terms, or None (the default: a purely elementwise rule).
            ``norms(p, g, state, s) -> (t0, t1)`` returns up to :data:`MAX_NORMS` element
            values computed from the parameter, the gradient and the state *before* the
            update (``state`` is read only here); before each step's update the squares of
            each are summed over the whole tensor in float64, in a fixed order (bit-identical
            for any thread count, as the built-in ``Lamb`` and ``LARS``), and
            ``scalars`` reads the 2-norms as ``h.norms`` (a tuple, ``h.norms[k] = √Σ t_k²``).
            Scalars computed from them (a trust ratio) are one value per tensor for
            ``update``; ``norms`` itself must not read them. Each step then reads every tensor
            twice (the norms, then the update).

    Raises:
        TypeError: the rule uses an unsupported operation (named in the message), found by
            tracing it with the defaults; ``norms`` assigns state or reads a scalar computed
            from ``h.norms``; ``scalars`` reads ``h.norms`` without ``norms``.
        ValueError: too many nodes, slots, state tensors or norm terms (found by the native
            check).
    """
    state = tuple(state)
    floats, flag_names, float_keys = _float_names(defaults)
    graphs: dict[tuple[Any, ...], Any] = {}

    def graph_for(flags: dict[str, Any]) -> Any:
        key = tuple(flags[f] for f in flag_names)
        g = graphs.get(key)
        if g is None:
            g = graphs[key] = _trace(name, update, scalars, state, floats, flags, norms)
        return g

    graph_for({f: bool(defaults[f]) for f in flag_names})  # errors at definition time
    check = validate or _torch_checks

    def __init__(self: Any, params: Any, **kwargs: Any) -> None:
        unknown = set(kwargs) - set(defaults)
        if unknown:
            raise TypeError(f"{name}.__init__() got unexpected keyword arguments {sorted(unknown)}")
        hypers = {**defaults, **kwargs}
        check(hypers)
        torch.optim.Optimizer.__init__(self, params, hypers)
        self._check_supported()

    def _hyper(self: Any, group: dict[str, Any]) -> dict[str, Any]:
        flags = {f: bool(group.get(f, False)) for f in flag_names}
        values = []
        for key in float_keys:
            v = group[key]
            if isinstance(v, (tuple, list)):
                values.extend(scalar(x) for x in v)
            else:
                values.append(scalar(v))
        return {"graph": graph_for(flags), "hypers": values}

    def _state_names(self: Any, group: dict[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return state, ("step",)

    def _init_state(self: Any, p: torch.Tensor, group: dict[str, Any]) -> dict[str, torch.Tensor]:
        new = {"step": scalar_tensor(0.0)}
        new.update({n: zeros_like(p) for n in state})
        return new

    @torch.compiler.disable
    def step(self: Any, closure: Callable[[], float] | None = None) -> float | None:
        return NativeStep.step(self, closure)

    step.__doc__ = NativeStep.step.__doc__
    namespace = {
        "__init__": __init__,
        "__doc__": (doc or f"{name}: an optimizer defined with ferroptim.rules.") + NATIVE_NOTES,
        "__module__": update.__module__,
        "_native_step": staticmethod(_core.graph_step),
        "_native_plan": staticmethod(_core.graph_plan),
        "_hyper": _hyper,
        "_state_names": _state_names,
        "_init_state": _init_state,
        "step": step,
    }
    return type(name, (NativeStep, torch.optim.Optimizer), namespace)


def _torch_checks(h: dict[str, Any]) -> None:
    """torch.optim's constructor checks for the hyperparameters a rule has."""
    if "lr" in h and not scalar(h["lr"]) >= 0.0:
        raise ValueError(f"Invalid learning rate: {h['lr']}")
    if "eps" in h and not scalar(h["eps"]) >= 0.0:
        raise ValueError(f"Invalid epsilon value: {h['eps']}")
    if "weight_decay" in h and not scalar(h["weight_decay"]) >= 0.0:
        raise ValueError(f"Invalid weight_decay value: {h['weight_decay']}")
    for i, beta in enumerate(h.get("betas", ())):
        if not 0.0 <= scalar(beta) < 1.0:
            raise ValueError(f"Invalid beta parameter at index {i}: {beta}")
    for key in ("beta1", "beta2"):
        if key in h and not 0.0 <= scalar(h[key]) < 1.0:
            raise ValueError(f"Invalid {key} value: {h[key]}")
