"""Traced values of :mod:`ferroptim.rules`: the element and scalar values a rule's functions
compute with, and the operations on them (re-exported by :mod:`ferroptim.rules`)."""

from __future__ import annotations

import math
from typing import Any, Callable

import torch


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
    """The mask ``a == b`` on elements or scalars (``==`` itself keeps Python's meaning)."""
    v = _first(a, b)
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
