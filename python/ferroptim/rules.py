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

The algorithm is yours; ferroptim runs it. Reproductions of AdamW, SGD with Nesterov momentum
and Lion with this API match the built-in classes bit for bit (``tests/python/test_rules.py``).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from . import _core
from ._base import NATIVE_NOTES, NativeStep, scalar, scalar_tensor, zeros_like

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
]


class _Trace:
    """Nodes of one graph being traced: ``(op, a, b, c, value)`` tuples, shared when equal."""

    def __init__(self, proxy: type) -> None:
        self.nodes: list[tuple[str, int, int, int, float]] = []
        self.index: dict[tuple[str, int, int, int, float], int] = {}
        self.proxy = proxy

    def add(self, op: str, a: int = 0, b: int = 0, c: int = 0, value: float = 0.0) -> Any:
        key = (op, a, b, c, float(value))
        if op == "const" and math.isnan(value):  # NaN never equals itself: no sharing
            self.nodes.append(key)
            return self.proxy(self, len(self.nodes) - 1)
        i = self.index.get(key)
        if i is None:
            i = self.index[key] = len(self.nodes)
            self.nodes.append(key)
        return self.proxy(self, i)


def _unsupported(what: str) -> TypeError:
    return TypeError(
        f"a ferroptim rule cannot use {what} on a traced value; supported: + - * / and unary "
        "-, abs, < <= > >=, and ferroptim.rules.sqrt/exp/log/sign/maximum/minimum/fma/"
        "where/lerp/eq"
    )


class _Value:
    """A traced value (element or scalar graph)."""

    __slots__ = ("trace", "id")
    _kind = ""

    def __init__(self, trace: _Trace, i: int) -> None:
        self.trace, self.id = trace, i

    def _lift(self, other: Any) -> _Value:
        if isinstance(other, _Value):
            if other.trace is not self.trace:
                raise _unsupported(f"a {other._kind} value in a {self._kind} graph")
            return other
        if isinstance(other, bool) or not isinstance(other, (int, float)):
            if isinstance(other, torch.Tensor) and other.numel() == 1:
                other = other.item()
            else:
                raise _unsupported(f"an operand of type {type(other).__name__}")
        return self.trace.add("const", value=float(other))

    def _op(self, op: str, *others: Any) -> _Value:
        ids = [self.id] + [self._lift(o).id for o in others]
        return self.trace.add(op, *ids)

    def __add__(self, o: Any) -> _Value:
        return self._op("add", o)

    def __radd__(self, o: Any) -> _Value:
        return self._lift(o)._op("add", self)

    def __sub__(self, o: Any) -> _Value:
        return self._op("sub", o)

    def __rsub__(self, o: Any) -> _Value:
        return self._lift(o)._op("sub", self)

    def __mul__(self, o: Any) -> _Value:
        return self._op("mul", o)

    def __rmul__(self, o: Any) -> _Value:
        return self._lift(o)._op("mul", self)

    def __truediv__(self, o: Any) -> _Value:
        return self._op("div", o)

    def __rtruediv__(self, o: Any) -> _Value:
        return self._lift(o)._op("div", self)

    def __neg__(self) -> _Value:
        return self._op("neg")

    def __pos__(self) -> _Value:
        return self

    def __abs__(self) -> _Value:
        return self._op("abs")

    def __lt__(self, o: Any) -> _Value:
        return self._op("lt", o)

    def __gt__(self, o: Any) -> _Value:
        return self._lift(o)._op("lt", self)

    def __le__(self, o: Any) -> _Value:
        if self._kind == "scalar":
            raise _unsupported("<= (use <)")
        return self._op("le", o)

    def __ge__(self, o: Any) -> _Value:
        if self._kind == "scalar":
            raise _unsupported(">= (use <)")
        return self._lift(o)._op("le", self)

    def __bool__(self) -> bool:
        raise _unsupported("Python `if`/`and`/`or`/`not` (branch with ferroptim.rules.where)")

    def __pow__(self, o: Any) -> _Value:
        if self._kind == "scalar":
            return self._op("pow", o)
        raise _unsupported("** (write products, sqrt, or exp/log)")

    def __rpow__(self, o: Any) -> _Value:
        if self._kind == "scalar":
            return self._lift(o)._op("pow", self)
        raise _unsupported("**")

    def __float__(self) -> float:
        raise _unsupported("float() (the value is only known at each step)")

    def __floordiv__(self, o: Any) -> Any:
        raise _unsupported("//")

    def __mod__(self, o: Any) -> Any:
        raise _unsupported("%")

    def __matmul__(self, o: Any) -> Any:
        raise _unsupported("@")

    def __getitem__(self, k: Any) -> Any:
        raise _unsupported("indexing")

    def __iter__(self) -> Any:
        raise _unsupported("iteration")

    def __len__(self) -> int:
        raise _unsupported("len()")

    __hash__ = object.__hash__

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        fn = _TORCH.get(func)
        if fn is None or kwargs:
            name = getattr(func, "__name__", repr(func))
            raise _unsupported(f"torch.{name}" + (" with keyword arguments" if kwargs else ""))
        return fn(*args)


class _Elem(_Value):
    __slots__ = ()
    _kind = "element"


class _Scalar(_Value):
    __slots__ = ()
    _kind = "scalar"


def _first(*xs: Any) -> _Value:
    for x in xs:
        if isinstance(x, _Value):
            return x
    raise TypeError("ferroptim.rules functions take traced values inside a rule")


def sqrt(x: Any) -> Any:
    """√x, correctly rounded."""
    if isinstance(x, (int, float)):
        return math.sqrt(x)
    return _first(x)._op("sqrt")


def exp(x: Any) -> Any:
    """eˣ (elements: computed in float64 and rounded)."""
    if isinstance(x, (int, float)):
        return math.exp(x)
    return _first(x)._op("exp")


def log(x: Any) -> Any:
    """ln x (elements: computed in float64 and rounded)."""
    if isinstance(x, (int, float)):
        return math.log(x)
    return _first(x)._op("log")


def sign(x: Any) -> Any:
    """``torch.sign`` on elements: 1, -1, or 0 (for ±0 and NaN, as ferroptim's Lion)."""
    v = _first(x)
    if v._kind != "element":
        raise _unsupported("sign on a scalar")
    return v._op("sign")


def maximum(a: Any, b: Any) -> Any:
    """``torch.maximum``: NaN if either is NaN."""
    v = _first(a, b)
    return v._lift(a)._op("maximum", b)


def minimum(a: Any, b: Any) -> Any:
    """``torch.minimum``: NaN if either is NaN."""
    v = _first(a, b)
    return v._lift(a)._op("minimum", b)


def fma(a: Any, b: Any, c: Any) -> Any:
    """``a * b + c`` with one rounding (elements only)."""
    v = _first(a, b, c)
    if v._kind != "element":
        raise _unsupported("fma on scalars")
    return v._lift(a)._op("fma", b, c)


def where(mask: Any, a: Any, b: Any) -> Any:
    """``a`` where ``mask`` (a comparison's result) holds, else ``b`` (both are computed)."""
    v = _first(mask, a, b)
    return v._lift(mask)._op("where", a, b)


def eq(a: Any, b: Any) -> Any:
    """The mask ``a == b`` (elements only; ``==`` itself keeps Python's meaning)."""
    v = _first(a, b)
    if v._kind != "element":
        raise _unsupported("eq on scalars")
    return v._lift(a)._op("eq", b)


def lerp(start: Any, end: Any, weight: Any) -> Any:
    """``torch.lerp(start, end, weight)`` as ATen's CPU kernel computes it: with ``d = end -
    start``, ``fma(weight, d, start)`` where ``|weight| < 0.5``, else ``fma(weight - 1, d,
    end)``."""
    diff = end - start
    return where(abs(weight) < 0.5, fma(weight, diff, start), fma(weight - 1.0, diff, end))


_TORCH: dict[Any, Callable[..., Any]] = {
    torch.sqrt: sqrt,
    torch.exp: exp,
    torch.log: log,
    torch.sign: sign,
    torch.abs: abs,
    torch.maximum: maximum,
    torch.minimum: minimum,
    torch.where: where,
    torch.lerp: lerp,
}

#: The name under which ``h`` gives the first-step flag (1.0 on a parameter's first step).
FRESH = "fresh"


class _Hypers:
    """``h`` of ``scalars(h, step)``: float hyperparameters as traced scalars, bools as bools."""

    def __init__(self, trace: _Trace, floats: list[str], flags: dict[str, Any]) -> None:
        self._trace, self._floats, self._flags = trace, floats, flags

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if name == FRESH:
            return self._trace.add("fresh")
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


def _trace(
    name: str,
    update: Callable[..., Any],
    scalars: Callable[..., Any] | None,
    state: tuple[str, ...],
    floats: list[str],
    flags: dict[str, Any],
) -> Any:
    """Traces ``scalars`` and ``update`` with the bool hyperparameters ``flags`` fixed; returns
    the native ``Graph``. Raises TypeError naming an unsupported operation."""
    st = _Trace(_Scalar)
    h = _Hypers(st, floats, flags)
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
    state_obj = _State(et, state)
    new_p = update(p, g, state_obj, s)
    if new_p is None:
        raise TypeError(f"rule {name}: update must return the new parameter value")
    new_p = p._lift(new_p)
    outs_ids = [p._lift(state_obj.__getattr__(n)).id for n in state]
    return _core.Graph(list(state), et.nodes, new_p.id, outs_ids, st.nodes, slots, len(floats))


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

    Raises:
        TypeError: the rule uses an unsupported operation (named in the message), found by
            tracing it with the defaults.
        ValueError: too many nodes, slots or state tensors (found by the native check).
    """
    state = tuple(state)
    floats, flag_names, float_keys = _float_names(defaults)
    graphs: dict[tuple[Any, ...], Any] = {}

    def graph_for(flags: dict[str, Any]) -> Any:
        key = tuple(flags[f] for f in flag_names)
        g = graphs.get(key)
        if g is None:
            g = graphs[key] = _trace(name, update, scalars, state, floats, flags)
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
