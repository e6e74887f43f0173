"""8-bit optimizer state (core: ``rust/ferroptim/src/quant/``).

Dettmers, Lewis, Shleifer & Zettlemoyer, "8-bit Optimizers via Block-wise Quantization"
(ICLR 2022): every state tensor of an elementwise rule (``exp_avg``, ``exp_avg_sq``,
``momentum_buffer``, ...) is kept as one ``uint8`` code per element and one ``float32`` scale
(the block's absmax) per block of ``block_size`` consecutive elements. Codes index a dynamic
quantization map: signed for first moments and momentum, unsigned for non-negative state
(``exp_avg_sq``, ``max_exp_avg_sq``, ``square_avg``, ``sum``, ``acc_delta``). Each ``step()``
decodes a block's state, applies the fp32 class's own update rule to every element and
re-encodes the block, in one fused multi-threaded pass.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from ferroptim import _core
from ferroptim._base import call_closure, check_differentiable, grad_scaler_args
from ferroptim.adagrad import Adagrad
from ferroptim.adam import Adam, AdamW
from ferroptim.adan import Adan
from ferroptim.ademamix import AdEMAMix
from ferroptim.lion import Lion
from ferroptim.rmsprop import RMSprop
from ferroptim.sgd import SGD

#: Default elements per block (one absmax each).
BLOCK_SIZE = 256
#: bitsandbytes' small-tensor rule: parameters with fewer elements keep fp32 state.
MIN_8BIT_SIZE = 4096

_EIGHT_BIT_DOC = r"""
    8-bit state (Dettmers et al., "8-bit Optimizers via Block-wise Quantization", ICLR 2022):
    the same algorithm, arguments and defaults as ``{base}``, plus:

    Args:
        block_size (int, optional): elements per quantization block, each with its own
            float32 scale (default: 256); a power of two from 16 to 65536.
        min_8bit_size (int, optional): parameters with fewer elements keep fp32 state, as
            in ``{base}`` (default: 4096, bitsandbytes' rule).
        bf16_stochastic_round (bool, optional): round updated bfloat16 parameters (on the
            CPU) to bfloat16 stochastically instead of to nearest (default: False; torchao's
            name): unbiased, ``E[round(x)] = x``. The random bits come from Philox4x32-10
            keyed by one seed drawn from torch's default generator per step (reproducible
            from ``torch.manual_seed``) and counted by parameter and element, so they do not
            depend on the thread count. Parameters of other dtypes round as usual.

    All three are also per-group entries of ``param_groups``.

    State (``optimizer.state[p]``): for parameters with at least ``min_8bit_size`` elements
    on the CPU, each state tensor of ``{base}`` (e.g. ``exp_avg``) holds the ``uint8`` codes
    (``p``'s shape, CPU) and ``<name>_absmax`` the ``float32`` absmax of each block of
    ``block_size`` elements of ``p`` flattened (shape ``[ceil(p.numel() / block_size)]``,
    CPU); value = ``map[code] * absmax``, with the signed map for first moments and momentum
    and the unsigned map for ``exp_avg_sq``, ``max_exp_avg_sq``, ``square_avg``, ``sum``,
    ``acc_delta`` (maps: ``rust/ferroptim/src/quant/map.rs``). Other parameters (smaller,
    or not on the CPU) keep ``{base}``'s fp32 state. ``step`` and other scalar state are as
    in ``{base}``.

    ``state_dict()`` holds these tensors as they are, so saving and loading resumes bit for
    bit. ``load_state_dict`` converts each parameter's state to this optimizer's choice:
    fp32 state of a large parameter (e.g. from ``{base}`` or ``torch.optim``) is quantized,
    8-bit state of a parameter that keeps fp32 state is dequantized, and state quantized
    with another ``block_size`` is re-quantized. :func:`dequantize_state_dict` turns an
    8-bit state dict into an fp32 one for any ``torch.optim`` optimizer.

    Each ``step()`` is one native call (for the 8-bit parameters a fused pass that decodes,
    updates with ``{base}``'s rule and re-encodes each block; bit-identical for any thread
    count), which validates every parameter before it modifies any.
    ``torch.amp.GradScaler`` is supported as by ``{base}``. Not supported here:
    ``torch.compile`` tracing the step (it runs eagerly), the ATen device path and cached
    step plans (each step rebuilds its argument lists in Python).

    Raises:
        ValueError: as ``{base}``; a ``block_size`` that is not a power of two in
            [16, 65536]; a negative ``min_8bit_size``.
"""


def _check_sizes(block_size: Any, min_8bit_size: Any) -> None:
    if (
        not isinstance(block_size, int)
        or block_size < 16
        or block_size > 65536
        or block_size & (block_size - 1)
    ):
        raise ValueError(f"Invalid block_size value: {block_size}")
    if not isinstance(min_8bit_size, int) or min_8bit_size < 0:
        raise ValueError(f"Invalid min_8bit_size value: {min_8bit_size}")


def _is_8bit(p: torch.Tensor, group: dict[str, Any]) -> bool:
    """Whether ``p`` gets 8-bit state in ``group``: at least ``min_8bit_size`` elements, on
    the CPU."""
    return p.numel() >= group["min_8bit_size"] and p.device.type == "cpu"


def _quantize(t: torch.Tensor, name: str, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    codes, absmax = _core.quantize_8bit(t.detach(), name, block_size)
    return codes, absmax


def _dequantize(
    codes: torch.Tensor, absmax: torch.Tensor, name: str, block_size: int, like: torch.Tensor
) -> torch.Tensor:
    values = _core.dequantize_8bit(codes, absmax, name, block_size)
    return values.to(dtype=like.dtype, device=like.device)


class _EightBit:
    """Mixin before an fp32 ferroptim class: 8-bit state for its large CPU parameters."""

    #: The core rule's name for ``_core.step_8bit``.
    _rule8: str = ""

    def __init__(
        self,
        params: Any,
        *args: Any,
        block_size: int = BLOCK_SIZE,
        min_8bit_size: int = MIN_8BIT_SIZE,
        bf16_stochastic_round: bool = False,
        **kwargs: Any,
    ) -> None:
        _check_sizes(block_size, min_8bit_size)
        self._eight_bit_defaults = {
            "block_size": block_size,
            "min_8bit_size": min_8bit_size,
            "bf16_stochastic_round": bool(bf16_stochastic_round),
        }
        super().__init__(params, *args, **kwargs)  # type: ignore[call-arg]
        self.defaults.update(self._eight_bit_defaults)  # type: ignore[attr-defined]
        # State that the fp32 class creates eagerly (Adagrad's `sum`): quantized now.
        for group in self.param_groups:  # type: ignore[attr-defined]
            names, _ = self._state_names(group)  # type: ignore[attr-defined]
            for p in group["params"]:
                state = self.state.get(p)  # type: ignore[attr-defined]
                if state:
                    _convert(state, names, p, group, group["block_size"])

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        for key, value in self.__dict__["_eight_bit_defaults"].items():
            param_group.setdefault(key, value)
        _check_sizes(param_group["block_size"], param_group["min_8bit_size"])
        super().add_param_group(param_group)  # type: ignore[misc]

    def _init_state8(self, p: torch.Tensor, group: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The fp32 class's new state for ``p``, quantized if ``p`` gets 8-bit state.

        The fp32 classes create each state tensor filled with one value (zeros,
        Adagrad's ``initial_accumulator_value``). For 8-bit state that value is read from
        the state of a one-element stand-in for ``p``, and the codes and scales of a tensor
        filled with it are built directly: the same as quantizing the full fp32 tensor (every
        block holds the one value), without allocating it."""
        if not _is_8bit(p, group):
            return self._init_state(p, group)  # type: ignore[attr-defined]
        state = self._init_state(p.new_zeros(1), group)  # type: ignore[attr-defined]
        names, _ = self._state_names(group)  # type: ignore[attr-defined]
        block = group["block_size"]
        blocks = -(-p.numel() // block)
        for name in names:
            codes, absmax = _quantize(state[name], name, block)
            state[name] = torch.full(p.shape, int(codes.item()), dtype=torch.uint8)
            state[name + "_absmax"] = torch.full((blocks,), absmax.item(), dtype=torch.float32)
        return state

    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Performs a single optimization step (see the class documentation).

        Args:
            closure (Callable, optional): A closure that reevaluates the model and returns the
                loss; it is called with gradients enabled.

        Returns:
            The closure's loss, or None.

        Raises:
            RuntimeError: a gradient is sparse, a tensor does not match its parameter, or
                state does not match its parameter; every parameter (8-bit state or not) is
                checked before any is modified, so nothing has changed.
        """
        loss = call_closure(closure)
        skip, scale = grad_scaler_args(self)
        if skip:
            return loss
        state_of = self.state  # type: ignore[attr-defined]
        full_calls, q_calls = [], []
        seed = None
        created: list[tuple[torch.Tensor, dict[str, torch.Tensor]]] = []
        for group in self.param_groups:  # type: ignore[attr-defined]
            check_differentiable(self, group)
            names, scalar_names = self._state_names(group)  # type: ignore[attr-defined]
            # A rule without state this step (SGD without momentum) keeps none, as torch.
            stateful = bool(names or scalar_names)
            first = (names or scalar_names or ("",))[0]
            full: dict[str, list[Any]] = {
                k: [] for k in ("params", "grads", "states", "scalar_states", "fresh")
            }
            q: dict[str, list[Any]] = {
                k: [] for k in ("params", "grads", "codes", "absmax", "scalar_states", "fresh")
            }
            # bfloat16 CPU parameters with unquantized state, rounded stochastically.
            sr = {k: [] for k in ("params", "grads", "states", "scalar_states", "fresh")}
            rounds = bool(group.get("bf16_stochastic_round"))
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = state_of.get(p) or {}
                fresh = stateful and state.get(first) is None
                if fresh:
                    new = self._init_state8(p, group)
                    created.append((p, new))
                    state = {**state, **new} if state else new
                eight = bool(names) and state[names[0]].dtype == torch.uint8
                plain_sr = (
                    rounds and not eight and p.dtype == torch.bfloat16 and p.device.type == "cpu"
                )
                out = q if eight else sr if plain_sr else full
                out["params"].append(p)
                out["grads"].append(p.grad)
                out["fresh"].append(fresh)
                out["scalar_states"].extend(state[n] for n in scalar_names)
                if eight:
                    out["codes"].extend(state[n] for n in names)
                    out["absmax"].extend(state[n + "_absmax"] for n in names)
                else:
                    out["states"].extend(state[n] for n in names)
            hyper = self._hyper(group)  # type: ignore[attr-defined]
            if rounds and seed is None and (q["params"] or sr["params"]):
                # One draw from torch's default generator per step: reproducible from
                # torch.manual_seed, and the same whatever the thread count.
                seed = int(torch.randint(0, 2**63 - 1, (1,)).item())
            extra = {
                "block_size": group["block_size"],
                "bf16_stochastic_round": seed if rounds else None,
            }
            if q["params"]:
                q_calls.append({**q, **hyper, **extra})
            if sr["params"]:
                q_calls.append({**sr, "codes": [], "absmax": [], **hyper, **extra})
            if full["params"]:
                full_calls.append({**full, **hyper})
        with torch.no_grad():
            if q_calls:
                # One call: the fp32-state parameters are validated with the 8-bit ones, before
                # either set is modified.
                _core.step_8bit(self._rule8, q_calls, scale, full_calls)
            elif full_calls:
                type(self)._native_step(full_calls, scale)  # type: ignore[attr-defined]
        for p, new in created:
            state_of[p].update(new)
        return loss

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """``torch.optim.Optimizer.load_state_dict``, keeping 8-bit codes and scales as they
        are (torch would cast them to the parameter's dtype), then converting each
        parameter's state to this optimizer's choice (see the class documentation)."""
        saved_groups = state_dict["param_groups"]
        kept: dict[Any, dict[str, torch.Tensor]] = {}
        plain: dict[Any, Any] = {}
        for pid, s in state_dict["state"].items():
            eight = {
                k: v
                for k, v in s.items()
                if isinstance(v, torch.Tensor) and (v.dtype == torch.uint8 or k.endswith("_absmax"))
            }
            kept[pid] = eight
            plain[pid] = {k: v for k, v in s.items() if k not in eight}
        super().load_state_dict({**state_dict, "state": plain})  # type: ignore[misc]
        ids = [pid for g in saved_groups for pid in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]  # type: ignore[attr-defined]
        by_id = dict(zip(ids, params))
        saved_block = {pid: g.get("block_size") for g in saved_groups for pid in g["params"]}
        for pid, eight in kept.items():
            if eight and pid in by_id:
                self.state[by_id[pid]].update({k: v.clone() for k, v in eight.items()})  # type: ignore[attr-defined]
        for group in self.param_groups:  # type: ignore[attr-defined]
            for key, value in self._eight_bit_defaults.items():
                group.setdefault(key, value)
        pid_of = {id(p): pid for pid, p in by_id.items()}
        for group in self.param_groups:  # type: ignore[attr-defined]
            names, _ = self._state_names(group)  # type: ignore[attr-defined]
            for p in group["params"]:
                state = self.state.get(p)  # type: ignore[attr-defined]
                if state:
                    block = saved_block.get(pid_of.get(id(p))) or group["block_size"]
                    _convert(state, names, p, group, block)

    # The ATen device path and compiled steps are not wired for 8-bit state.
    _aten_rule = None
    _native_plan = None


def _convert(
    state: dict[str, Any],
    names: tuple[str, ...],
    p: torch.Tensor,
    group: dict[str, Any],
    block: int,
) -> None:
    """Converts ``state`` in place to 8-bit (with ``group``'s block size) or fp32, as
    ``group`` wants for ``p``; ``block`` is the block size 8-bit state was saved with."""
    want8 = _is_8bit(p, group)
    for name in names:
        t = state.get(name)
        if t is None:
            continue
        absmax_key = name + "_absmax"
        if t.dtype == torch.uint8:
            if want8 and block == group["block_size"]:
                continue
            values = _dequantize(t, state.pop(absmax_key), name, block, p)
        else:
            values = t
            if not want8:
                continue
        if want8:
            state[name], state[absmax_key] = _quantize(values, name, group["block_size"])
        else:
            state[name] = values


def dequantize_state_dict(state_dict: dict[str, Any]) -> dict[str, Any]:
    """An fp32 copy of an 8-bit optimizer's ``state_dict()``: every 8-bit state tensor
    (``uint8`` codes with its ``<name>_absmax``) replaced by its float32 values (the shape of
    the codes), the ``block_size``/``min_8bit_size`` group entries dropped; loadable by the
    fp32 class and by ``torch.optim``."""
    block_of = {
        pid: g.get("block_size", BLOCK_SIZE)
        for g in state_dict["param_groups"]
        for pid in g["params"]
    }
    state = {}
    for pid, s in state_dict["state"].items():
        s = dict(s)
        for name in [
            k for k, v in s.items() if isinstance(v, torch.Tensor) and v.dtype == torch.uint8
        ]:
            absmax = s.pop(name + "_absmax")
            s[name] = _core.dequantize_8bit(s[name], absmax, name, block_of[pid])
        state[pid] = s
    dropped = ("block_size", "min_8bit_size", "bf16_stochastic_round")
    groups = [{k: v for k, v in g.items() if k not in dropped} for g in state_dict["param_groups"]]
    return {"state": state, "param_groups": groups}


class Adam8bit(_EightBit, Adam):
    _rule8 = "adam"
    __doc__ = "Adam with 8-bit state.\n" + _EIGHT_BIT_DOC.format(base="ferroptim.Adam")


class AdamW8bit(_EightBit, AdamW):
    _rule8 = "adam"
    __doc__ = "AdamW with 8-bit state.\n" + _EIGHT_BIT_DOC.format(base="ferroptim.AdamW")


class Lion8bit(_EightBit, Lion):
    _rule8 = "lion"
    __doc__ = "Lion with 8-bit state.\n" + _EIGHT_BIT_DOC.format(base="ferroptim.Lion")


class SGD8bit(_EightBit, SGD):
    _rule8 = "sgd"
    __doc__ = (
        "SGD with an 8-bit momentum buffer (without momentum SGD keeps no state).\n"
        + _EIGHT_BIT_DOC.format(base="ferroptim.SGD")
    )


class RMSprop8bit(_EightBit, RMSprop):
    _rule8 = "rmsprop"
    __doc__ = "RMSprop with 8-bit state.\n" + _EIGHT_BIT_DOC.format(base="ferroptim.RMSprop")


class Adagrad8bit(_EightBit, Adagrad):
    _rule8 = "adagrad"
    __doc__ = "Adagrad with 8-bit state.\n" + _EIGHT_BIT_DOC.format(base="ferroptim.Adagrad")


class Adan8bit(_EightBit, Adan):
    _rule8 = "adan"
    __doc__ = "Adan with 8-bit state.\n" + _EIGHT_BIT_DOC.format(base="ferroptim.Adan")


class AdEMAMix8bit(_EightBit, AdEMAMix):
    _rule8 = "ademamix"
    __doc__ = "AdEMAMix with 8-bit state.\n" + _EIGHT_BIT_DOC.format(base="ferroptim.AdEMAMix")
