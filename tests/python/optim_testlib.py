"""Shared helpers for the ferroptim Python test suite.

Everything here compares ``ferroptim.{SGD,Adam,AdamW}`` ("ours") with torch.optim: the
reference is torch's default CPU implementation, the single-tensor for-loop
(``foreach=False, fused=False``), and for half precision torch's fused CPU kernel and a
float32 emulation (:class:`Fp32Reference`).
"""

from __future__ import annotations

import copy
import inspect
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import ferroptim
import torch
from torch import nn
from torch.testing._internal.common_optimizers import optim_db

#: The seed switch: ``FERROPTIM_TEST_SEED=N`` (default 0) moves every seed the helpers below
#: use (the MLP's initialisation, its data, the synthetic gradients) to another draw, so that a
#: sweep (tests/sweep.sh) can check that no assertion depends on one lucky random problem.
SEED_OFFSET = int(os.environ.get("FERROPTIM_TEST_SEED", "0"))


def seeded(seed: int) -> int:
    """``seed`` moved by the seed switch (:data:`SEED_OFFSET`); unchanged when it is 0."""
    return seed + 7919 * SEED_OFFSET


# (rtol, atol) for "ours vs torch for-loop" on full-precision trajectories.
TOLERANCES = {
    torch.float32: (1e-5, 1e-6),
    torch.float64: (1e-10, 1e-12),
}


# ----------------------------------------------------------------------------------------
# The implementation under test
# ----------------------------------------------------------------------------------------

OURS = ferroptim


def describe_implementation() -> str:
    return f"ferroptim {getattr(OURS, '__version__', '?')} from {OURS.__file__}"


def reference_class(name: str) -> type:
    """The reference implementation of ``name``: torch.optim's class, or for the algorithms
    torch lacks, the authors' reference implementation (PyPI ``lion-pytorch``, ``torch-adopt``)
    or ``pytorch_optimizer`` (:func:`pytorch_optimizer_reference`); all installed by
    .ci/requirements.txt."""
    if name == "Lion":
        import lion_pytorch

        return lion_pytorch.Lion
    if name == "ADOPT":
        import adopt

        if not hasattr(adopt.ADOPT, "_cuda_graph_capture_health_check"):
            # torch-adopt 0.1.0 calls this torch.optim.Optimizer helper, which torch 2.11 no
            # longer has; on the CPU it only checked CUDA-graph capture: a no-op here.
            adopt.ADOPT._cuda_graph_capture_health_check = lambda self: None
        return adopt.ADOPT
    if name in PYTORCH_OPTIMIZER:
        return pytorch_optimizer_reference(name)
    return getattr(torch.optim, name)


# ----------------------------------------------------------------------------------------
# pytorch_optimizer 4.1.0 as the oracle of Adan, AdEMAMix, ScheduleFreeAdamW, Lamb, LARS
# ----------------------------------------------------------------------------------------

#: name -> (pytorch_optimizer class, {our state key: theirs}, theirs keeps `step` per group)
PYTORCH_OPTIMIZER = {
    "Adan": ("Adan", {"neg_pre_grad": "previous_grad"}, True),
    "AdEMAMix": ("AdEMAMix", {"exp_avg_fast": "exp_avg"}, True),
    "ScheduleFreeAdamW": ("ScheduleFreeAdamW", {}, False),
    "Lamb": ("Lamb", {}, True),
    "LARS": ("LARS", {}, False),
}
# pytorch_optimizer.Lamb's logging entries, which ferroptim does not keep.
LAMB_LOG_KEYS = ("weight_norm", "adam_norm", "trust_ratio")


def _ademamix_alpha(t_warmup: float | None, step: int, alpha: float) -> float:
    """The α warmup of the paper's reference code (apple/ml-ademamix), written from the
    paper: linear from 0."""
    if t_warmup is None or step >= t_warmup:
        return alpha
    a = step / float(t_warmup)
    return (1.0 - a) * 0.0 + a * alpha


def _ademamix_beta3(t_warmup: float | None, step: int, beta1: float, beta3: float) -> float:
    """The β₃ warmup of the paper's reference code: the half-life ln ½ / ln(β + 1e-8) − 1
    interpolated linearly from β₁'s to β₃'s."""
    if t_warmup is None or step >= t_warmup:
        return beta3
    import math

    def half_life(beta: float) -> float:
        return math.log(0.5) / math.log(beta + 1e-8) - 1

    a = step / float(t_warmup)
    return math.pow(0.5, 1 / ((1.0 - a) * half_life(beta1) + a * half_life(beta3) + 1))


def pytorch_optimizer_reference(name: str) -> type:
    """``pytorch_optimizer``'s class for ``name``, adapted to take ferroptim's arguments and to
    keep ferroptim's state layout between steps (so that snapshots and state_dicts compare):
    per-parameter state keys renamed, the per-group ``step`` kept as a per-parameter float32
    ``step`` (Adan, AdEMAMix, Lamb) or as the group's ``k`` (ScheduleFreeAdamW, as the
    authors' reference names it), Lamb's logging entries dropped. The arithmetic is
    pytorch_optimizer's, except where it departs from the paper's reference code, replaced
    here by the reference's formulas: AdEMAMix's warmup schedules, and no ``1e-15`` under
    ScheduleFreeAdamW's square root."""
    import pytorch_optimizer

    cls_name, keys, per_param_step = PYTORCH_OPTIMIZER[name]
    base = getattr(pytorch_optimizer, cls_name)

    class Reference(base):  # type: ignore[misc, valid-type]
        def __init__(self, params: Any, **kwargs: Any) -> None:
            ours = dict(kwargs)
            kwargs["foreach"] = False  # the for-loop implementation is the oracle
            if name == "Adan":
                kwargs["weight_decouple"] = kwargs.pop("no_prox", False)
            elif name == "AdEMAMix":
                warmups = {kwargs.pop("alpha_warmup", None), kwargs.pop("beta3_warmup", None)}
                assert len(warmups) == 1, "the oracle has one warmup for alpha and beta3"
                kwargs.update(weight_decouple=True, t_alpha_beta3=warmups.pop())
                kwargs.setdefault("alpha", 2.0)
            super().__init__(params, **kwargs)
            for group in self.param_groups:  # ferroptim's group entries, for hand-overs
                for key, value in ours.items():
                    group.setdefault(key, value)
                if name == "ScheduleFreeAdamW":
                    group.setdefault("k", 0)

        @staticmethod
        def schedule_alpha(t: float | None, step: int, alpha: float) -> float:
            return _ademamix_alpha(t, step, alpha)

        @staticmethod
        def schedule_beta3(t: float | None, step: int, beta1: float, beta3: float) -> float:
            return _ademamix_beta3(t, step, beta1, beta3)

        @staticmethod
        def apply_ams_bound(ams_bound, exp_avg_sq, max_exp_avg_sq, eps, exp_avg_sq_eps=0.0):
            return base.apply_ams_bound(ams_bound, exp_avg_sq, max_exp_avg_sq, eps, 0.0)

        @torch.no_grad()
        def step(self, closure: Any = None) -> Any:
            for group in self.param_groups:
                group["foreach"] = False  # also in groups loaded from ferroptim's state_dict
                if name == "Adan":
                    group["weight_decouple"] = group.get("no_prox", False)
                elif name == "AdEMAMix":
                    group.update(weight_decouple=True, fixed_decay=False)
                    group["t_alpha_beta3"] = group.get("alpha_warmup")
                elif name == "Lamb":
                    group.setdefault("rectify", False)
                    group.setdefault("fixed_decay", False)
                elif name == "ScheduleFreeAdamW":
                    group["step"] = group["k"]
                    group.setdefault("decoupling_c", 0)
                    group.setdefault("ams_bound", False)
                for p in group["params"]:
                    state = self.state.get(p)
                    if not state:
                        continue
                    if per_param_step and "step" in state:
                        group["step"] = int(state.pop("step").item())
                    for ours, theirs in keys.items():
                        if ours in state:
                            state[theirs] = state.pop(ours)
            loss = super().step(closure)
            for group in self.param_groups:
                if name == "ScheduleFreeAdamW":
                    group["k"] = group["step"]
                for p in group["params"]:
                    state = self.state.get(p)
                    if not state:
                        continue
                    for ours, theirs in keys.items():
                        if theirs in state:
                            state[ours] = state.pop(theirs)
                    for key in LAMB_LOG_KEYS if name == "Lamb" else ():
                        state.pop(key, None)
                    if per_param_step:
                        state["step"] = torch.tensor(float(group["step"]))
            return loss

    Reference.__name__ = Reference.__qualname__ = f"Reference{cls_name}"
    return Reference


# Classes written with ATen operations rather than the fused driver (``tensor_rules/``): torch's
# numbers bit for bit; their GradScaler hand-over is tested in test_amp_tensor_rules.py.
TENSOR_RULES = ("Adafactor", "LBFGS", "Muon", "SparseAdam")
# What torch's optim_db says these classes need of a problem: sparse gradients, or (Muon,
# which rejects other parameters in its constructor) only 2-D parameters.
SPARSE_GRAD_CLASSES = frozenset(
    info.optim_cls.__name__ for info in optim_db if info.only_supports_sparse_grads
)
MATRIX_ONLY_CLASSES = frozenset({"Muon"})
CLOSURE_CLASSES = frozenset(
    info.optim_cls.__name__ for info in optim_db if info.step_requires_closure
)


def adapt_params(name: str, params: Any) -> Any:
    """``params`` (tensors or group dicts) restricted to what class ``name`` accepts: only
    the 2-D parameters for the Muon family; unchanged otherwise."""
    if name not in MATRIX_ONLY_CLASSES:
        return params
    out = []
    for item in params:
        if isinstance(item, dict):
            out.append({**item, "params": [p for p in item["params"] if p.ndim == 2]})
        elif item.ndim == 2:
            out.append(item)
    return out


def sparsify_grads(params: Any, step: int) -> None:
    """Replace each gradient by a sparse COO tensor holding about two thirds of its rows
    (which rows changes with ``step``), as SparseAdam needs: the dropped rows exercise its
    masking."""
    for p in params:
        if p.grad is None:
            continue
        g = p.grad
        rows = torch.arange(g.shape[0]) if g.dim() else torch.zeros(())
        keep = ((rows + step) % 3 != 0).reshape(-1, *([1] * max(g.dim() - 1, 0)))
        p.grad = torch.where(keep, g, torch.zeros_like(g)).to_sparse()


def make_opt(impl: str, name: str, params: Any, **kwargs: Any) -> torch.optim.Optimizer:
    """Build optimizer ``name`` from ``impl``: 'ours' (ferroptim), 'forloop' / 'fused'
    (torch.optim's for-loop / fused CPU implementation) or 'fp32ref' (:class:`Fp32Reference`).
    Parameters the class does not accept are left out (:func:`adapt_params`).
    """
    kwargs = copy.deepcopy(kwargs)  # tensor hyperparameters must not be shared
    params = adapt_params(name, params)
    if impl == "ours":
        return getattr(OURS, name)(params, **kwargs)
    cls = reference_class(name)
    if impl == "forloop":
        accepted = inspect.signature(cls.__init__).parameters
        flags = {k: False for k in ("foreach", "fused") if k in accepted}
        return cls(params, **flags, **kwargs)
    if impl == "fused":
        return cls(params, fused=True, **kwargs)
    if impl == "fp32ref":
        return Fp32Reference(name, params, **kwargs)
    raise ValueError(impl)


# ----------------------------------------------------------------------------------------
# Problem: a small MLP on fixed random data
# ----------------------------------------------------------------------------------------


def make_mlp(dtype: torch.dtype = torch.float32, seed: int = 0) -> nn.Sequential:
    with torch.random.fork_rng():
        torch.manual_seed(seeded(seed))
        model = nn.Sequential(
            nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3)
        )
    return model.to(dtype)


def make_data(dtype: torch.dtype = torch.float32, seed: int = 1) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seeded(seed))
    x = torch.randn(32, 6, generator=g, dtype=torch.float64)
    y = torch.randn(32, 3, generator=g, dtype=torch.float64)
    return x.to(dtype), y.to(dtype)


def mlp_loss(model: nn.Module, data: tuple[torch.Tensor, ...]) -> torch.Tensor:
    x, y = data
    return ((model(x) - y) ** 2).mean()


def split_groups(model: nn.Sequential, overrides: Sequence[dict] | None) -> Any:
    """``None``: all parameters; else one group per override dict: the first Linear, then
    the rest of the model."""
    if overrides is None:
        return list(model.parameters())
    first = list(model[0].parameters())
    rest = [p for p in model.parameters() if all(p is not q for q in first)]
    assert len(overrides) == 2
    return [{"params": first, **overrides[0]}, {"params": rest, **overrides[1]}]


def train(
    model: nn.Module,
    opt: Any,
    data: tuple[torch.Tensor, ...],
    steps: int,
    scheduler: Any = None,
    use_closure: bool = False,
    loss_sign: float = 1.0,
) -> list[list[float]]:
    """Run ``steps`` optimizer steps on ``loss_sign * mlp_loss``; returns the lr of every
    group before each step. Optimizers that take only sparse gradients get them
    (:func:`sparsify_grads`); those whose step needs a closure (LBFGS) get one."""
    lrs = []
    names = {c.__name__ for c in type(opt).__mro__}
    sparse = bool(names & SPARSE_GRAD_CLASSES)
    use_closure = use_closure or bool(names & CLOSURE_CLASSES)
    for k in range(steps):
        lrs.append([float(g["lr"]) for g in opt.param_groups])
        if use_closure:

            def closure(k: int = k) -> torch.Tensor:
                opt.zero_grad(set_to_none=True)
                loss = loss_sign * mlp_loss(model, data)
                loss.backward()
                if sparse:
                    sparsify_grads(model.parameters(), k)
                return loss

            opt.step(closure)
        else:
            opt.zero_grad(set_to_none=True)
            (loss_sign * mlp_loss(model, data)).backward()
            if sparse:
                sparsify_grads(model.parameters(), k)
            opt.step()
        if scheduler is not None:
            scheduler.step()
    return lrs


# ----------------------------------------------------------------------------------------
# Snapshots of parameters + optimizer state, and comparisons
# ----------------------------------------------------------------------------------------


@dataclass
class Snapshot:
    params: list[torch.Tensor]
    state: list[dict[str, torch.Tensor]]  # per parameter, {} when it has none
    extra: dict[str, Any] = field(default_factory=dict)


def snapshot(params: Any, opt: Any) -> Snapshot:
    params = list(params)
    states = []
    for p in params:
        st = opt.state.get(p, {})  # .get: do not create entries in torch's defaultdict
        states.append({k: (v.detach().clone() if torch.is_tensor(v) else v) for k, v in st.items()})
    return Snapshot([p.detach().clone() for p in params], states)


def _check_step_format(key: str, value: Any, where: str) -> None:
    if key == "step" and not isinstance(value, int):  # SparseAdam counts in a Python int
        assert torch.is_tensor(value), f"{where}: state['step'] is {type(value)}, not a tensor"
        assert value.dtype == torch.float32 and value.dim() == 0 and value.device.type == "cpu", (
            f"{where}: state['step'] must be a float32 0-d CPU tensor, got "
            f"{value.dtype} shape={tuple(value.shape)} device={value.device}"
        )


def assert_snapshots_close(
    actual: Snapshot, expected: Snapshot, rtol: float, atol: float, what: str = ""
) -> None:
    assert len(actual.params) == len(expected.params)
    for i, (a, e) in enumerate(zip(actual.params, expected.params)):
        torch.testing.assert_close(
            a, e, rtol=rtol, atol=atol, msg=lambda m, i=i: f"{what} param {i}: {m}"
        )
    for i, (sa, se) in enumerate(zip(actual.state, expected.state)):
        assert sorted(sa) == sorted(se), f"{what} param {i}: state keys {sorted(sa)}, {sorted(se)}"
        for key in se:
            _check_step_format(key, sa[key], f"{what} param {i}")
            _assert_value_close(sa[key], se[key], rtol, atol, f"{what} param {i} state[{key!r}]")


def _assert_value_close(a: Any, e: Any, rtol: float, atol: float, where: str) -> None:
    """Tensors close; Python numbers of the same type and close; lists (LBFGS's history)
    element by element; None only as None."""
    if isinstance(e, (list, tuple)):
        assert type(a) is type(e) and len(a) == len(e), f"{where}: {type(a)} vs {type(e)}"
        for k, (x, y) in enumerate(zip(a, e)):
            _assert_value_close(x, y, rtol, atol, f"{where}[{k}]")
        return
    if e is None or not torch.is_tensor(e):
        assert type(a) is type(e), f"{where}: {type(a).__name__} vs {type(e).__name__}"
        if e is not None:
            torch.testing.assert_close(a, e, rtol=rtol, atol=atol, msg=lambda m: f"{where}: {m}")
        return
    torch.testing.assert_close(a, e, rtol=rtol, atol=atol, msg=lambda m: f"{where}: {m}")


def _assert_value_equal(a: Any, e: Any, where: str) -> None:
    """As :func:`_assert_value_close`, bit for bit (dtype included)."""
    if isinstance(e, (list, tuple)):
        assert type(a) is type(e) and len(a) == len(e), f"{where}: {type(a)} vs {type(e)}"
        for k, (x, y) in enumerate(zip(a, e)):
            _assert_value_equal(x, y, f"{where}[{k}]")
        return
    if not torch.is_tensor(e):
        assert type(a) is type(e) and a == e, f"{where}: {a!r} vs {e!r}"
        return
    assert torch.is_tensor(a) and a.dtype == e.dtype, f"{where}: {a!r} vs dtype {e.dtype}"
    assert torch.equal(a, e), f"{where} differs: max abs diff {max_abs_diff(a, e)}"


def assert_snapshots_equal(actual: Snapshot, expected: Snapshot, what: str = "") -> None:
    """Bit-identical parameters and state (dtype included)."""
    assert len(actual.params) == len(expected.params)
    for i, (a, e) in enumerate(zip(actual.params, expected.params)):
        assert a.dtype == e.dtype, f"{what} param {i}: dtype {a.dtype} != {e.dtype}"
        assert torch.equal(a, e), f"{what} param {i} differs: max abs diff {max_abs_diff(a, e)}"
    for i, (sa, se) in enumerate(zip(actual.state, expected.state)):
        assert sorted(sa) == sorted(se), f"{what} param {i}: state keys {sorted(sa)}, {sorted(se)}"
        for key in se:
            _assert_value_equal(sa[key], se[key], f"{what} param {i} state[{key!r}]")


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.numel() == 0:
        return 0.0
    return (a.double() - b.double()).abs().max().item()


def snapshot_max_diff(a: Snapshot, b: Snapshot) -> float:
    """Largest absolute difference over parameters and floating-point state tensors."""
    diffs = [max_abs_diff(x, y) for x, y in zip(a.params, b.params)]
    for sa, sb in zip(a.state, b.state):
        for k in sb:
            x, y = sa[k], sb[k]
            pairs = zip(x, y) if isinstance(y, (list, tuple)) else [(x, y)]
            diffs += [
                max_abs_diff(u, v)
                for u, v in pairs
                if k != "step"
                and torch.is_tensor(u)
                and torch.is_tensor(v)
                and u.is_floating_point()
            ]
    return max(diffs, default=0.0)


def assert_within_ulps(
    actual: Snapshot, expected: Snapshot, dtype: torch.dtype, what: str = "", max_fraction=0.02
) -> None:
    """Two implementations that both compute in float32 and round once differ only where an
    intermediate lands next to a rounding boundary: rare 1-ulp flips, which the MLP then
    propagates a little. Require every element within 2 ulps (relative; values far below the
    tensor's largest magnitude get an absolute floor of 1% of an ulp of that magnitude) and
    at most ``max_fraction`` of all ``dtype`` elements not bit-identical. (torch's half-precision
    for-loop, which rounds every intermediate, fails this by a wide margin.) ``dtype`` sets
    the ulp for every tensor; the 'step' counters must be equal."""
    pairs = [(f"param {i}", a, e) for i, (a, e) in enumerate(zip(actual.params, expected.params))]
    for i, (sa, se) in enumerate(zip(actual.state, expected.state)):
        assert sorted(sa) == sorted(se), f"{what} param {i}: state keys {sorted(sa)}, {sorted(se)}"
        pairs += [(f"param {i} state[{k!r}]", sa[k], se[k]) for k in se if k != "step"]
        if "step" in se:
            _check_step_format("step", sa["step"], f"{what} param {i}")
            assert torch.equal(sa["step"], se["step"]), f"{what} param {i} step"
    eps = torch.finfo(dtype).eps
    total = differing = 0
    for label, a, e in pairs:
        scale = e.detach().abs().max().item() if e.numel() else 0.0
        torch.testing.assert_close(
            a,
            e,
            rtol=2 * eps,
            atol=0.01 * eps * scale,
            msg=lambda m, label=label: f"{what} {label}: {m}",
        )
        if e.dtype == dtype:  # wider (e.g. float32 state) tensors differ in low bits anyway
            total += e.numel()
            differing += int((a != e).sum())
    assert differing <= max_fraction * total, f"{what} {differing} of {total} elements differ"


# ----------------------------------------------------------------------------------------
# Trajectories
# ----------------------------------------------------------------------------------------


def run_mlp(
    impl: str,
    name: str,
    kwargs: dict,
    *,
    steps: int = 50,
    dtype: torch.dtype = torch.float32,
    groups: Sequence[dict] | None = None,
    scheduler: Callable[[Any], Any] | None = None,
    use_closure: bool = False,
) -> Snapshot:
    """Train the seeded MLP for ``steps`` steps with optimizer ``name`` from ``impl``.

    With ``maximize=True`` the objective is the negated loss, so maximizing it is as well
    behaved as minimizing the loss (gradient ascent on the MSE itself blows up, and then
    1-ulp differences between implementations grow without bound)."""
    model = make_mlp(dtype)
    data = make_data(dtype)
    opt = make_opt(impl, name, split_groups(model, groups), **kwargs)
    sched = scheduler(opt) if scheduler is not None else None
    sign = -1.0 if kwargs.get("maximize") else 1.0
    lrs = train(model, opt, data, steps, scheduler=sched, use_closure=use_closure, loss_sign=sign)
    snap = snapshot(model.parameters(), opt)
    snap.extra["lrs"] = lrs
    snap.extra["groups"] = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
    return snap


# ----------------------------------------------------------------------------------------
# Manually driven tensors (edge cases): gradient = 0.5 * param + fixed noise
# ----------------------------------------------------------------------------------------


def with_layout(value: torch.Tensor, layout: str) -> torch.Tensor:
    """A copy of ``value`` with memory layout 'contiguous', 'transposed' (2-d: stored as the
    transpose of a contiguous tensor) or 'strided' (every other element of a buffer)."""
    if layout == "contiguous":
        return value.clone(memory_format=torch.contiguous_format)
    if layout == "transposed":
        assert value.dim() == 2
        out = torch.empty(value.shape[1], value.shape[0], dtype=value.dtype).t()
    elif layout == "strided":
        assert value.dim() >= 1
        buf = torch.empty(*value.shape[:-1], value.shape[-1] * 2, dtype=value.dtype)
        out = buf[..., ::2]
    else:
        raise ValueError(layout)
    out.copy_(value)
    if value.numel() > 1:
        assert not out.is_contiguous()
    return out


def leaf_like(t: torch.Tensor) -> torch.Tensor:
    """A leaf copy of ``t`` with exactly its sizes and strides (gaps included)."""
    out = torch.empty_strided(t.size(), t.stride(), dtype=t.dtype, device=t.device)
    with torch.no_grad():
        out.copy_(t)
    return out.requires_grad_(True)


def make_noise(params: Sequence[torch.Tensor], steps: int, seed: int = 3) -> list:
    g = torch.Generator().manual_seed(seeded(seed))
    return [
        [torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype) for p in params]
        for _ in range(steps)
    ]


def run_manual(
    impl: str,
    name: str,
    kwargs: dict,
    init: Sequence[torch.Tensor],
    steps: int,
    grad_layouts: Sequence[str] | None = None,
    noise: list | None = None,
) -> Snapshot:
    """Optimize leaf copies of ``init`` (layouts preserved) with synthetic gradients
    ``0.5 * p + noise[step]`` given the layouts in ``grad_layouts``; checks that every
    parameter keeps its storage, sizes and strides (updated in place)."""
    params = [leaf_like(t) for t in init]
    noise = noise if noise is not None else make_noise(params, steps)
    grad_layouts = grad_layouts or ["contiguous"] * len(params)
    opt = make_opt(impl, name, params, **kwargs)
    layout_before = [(p.data_ptr(), p.size(), p.stride()) for p in params]
    for k in range(steps):
        for p, n, layout in zip(params, noise[k], grad_layouts):
            p.grad = with_layout(p.detach() * 0.5 + n, layout)
        opt.step()
    layout_after = [(p.data_ptr(), p.size(), p.stride()) for p in params]
    assert layout_after == layout_before, f"{impl}: parameters must be updated in place"
    return snapshot(params, opt)


# ----------------------------------------------------------------------------------------
# Float32 emulation: "compute in float32, round once when stored"
# ----------------------------------------------------------------------------------------


# Per-parameter scalar state (0-d tensors of their own dtype, never the parameter's).
SCALAR_STATE = ("step", "mu_product", "eta", "mu")


class Fp32Reference:
    """Reference for half-precision (and mixed-dtype state) steps: each step upcasts the
    parameter, gradient and state to float32, runs torch's for-loop optimizer on those
    copies and stores every result back, rounded once, in the dtype it is stored in (the
    parameter's dtype for new state). Single parameter group; ``state`` keyed by parameter
    like a torch optimizer's, so tests may replace state tensors (e.g. float32 state for a
    bfloat16 parameter). ``compute_dtype=torch.float64`` gives an equally legitimate variant
    (used to calibrate the half-precision tolerances)."""

    def __init__(
        self, name: str, params: Any, compute_dtype: torch.dtype = torch.float32, **hyper: Any
    ) -> None:
        self.name = name
        self.compute_dtype = compute_dtype
        self.hyper = hyper
        params = list(params)
        assert all(torch.is_tensor(p) for p in params), "Fp32Reference takes one group"
        self.param_groups = [{"params": params, **hyper}]
        self.state: dict[torch.Tensor, dict[str, torch.Tensor]] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.param_groups[0]["params"]:
            p.grad = None

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        assert closure is None
        live = [p for p in self.param_groups[0]["params"] if p.grad is not None]
        if not live:
            return
        shadows = []
        for p in live:
            s = p.detach().to(self.compute_dtype, copy=True).requires_grad_(True)
            s.grad = p.grad.to(self.compute_dtype, copy=True)
            shadows.append(s)
        inner = getattr(torch.optim, self.name)(shadows, foreach=False, **self.hyper)
        for p, s in zip(live, shadows):
            if p in self.state:
                inner.state[s] = {
                    k: v.clone() if k in SCALAR_STATE else v.to(self.compute_dtype, copy=True)
                    for k, v in self.state[p].items()
                }
        inner.step()
        for p, s in zip(live, shadows):
            p.copy_(s)
            stored = self.state.setdefault(p, {})
            for k, v in inner.state[s].items():
                if k in SCALAR_STATE:
                    stored[k] = v.clone()
                elif k in stored:
                    stored[k].copy_(v)
                else:
                    stored[k] = v.to(p.dtype, copy=True)


# ----------------------------------------------------------------------------------------
# Step by step along a reference trajectory ("synced" steps)
# ----------------------------------------------------------------------------------------
#
# A 50-step trajectory of the MLP can be unstable: ADOPT with weight decay on some seeds grows
# a 1e-16 difference by ~2.5x per step, float32 RMSprop amplifies one rounding difference by
# 10-100x, and which rounding differences there are depends on the CPU's BLAS and on ATen's
# instruction set (e.g. MKL rounds a matmul differently on Intel and on AMD). Comparing two
# free-running trajectories then compares two draws of that amplification, not two
# implementations. Synced steps remove the amplification: the reference (torch's for-loop in
# float64) runs its trajectory, and at every step each implementation under test is given the
# reference's parameters, gradients and state as they are before that step, takes one step,
# and is compared with the reference's step from the same inputs. Every step of a real
# trajectory is checked (state growing, bias corrections, warmups, step counts), but an
# error can no longer compound: a bound per step holds on every CPU.


@dataclass
class SyncedStep:
    """One step of :func:`synced_steps`: the inputs every implementation was given (float64
    copies of the rounded values) and each implementation's result."""

    before: Snapshot
    after: dict[str, Snapshot]


def _rounded(snap: Snapshot, dtype: torch.dtype | None) -> Snapshot:
    """``snap`` with parameters and floating state rounded to ``dtype`` (scalar state such
    as ``step`` kept as it is); unchanged for ``None``."""
    if dtype is None:
        return snap

    def r(key: str, v: Any) -> Any:
        if torch.is_tensor(v) and v.is_floating_point() and key not in SCALAR_STATE:
            return v.to(dtype)
        return v

    return Snapshot(
        [p.to(dtype) for p in snap.params],
        [{k: r(k, v) for k, v in st.items()} for st in snap.state],
    )


@torch.no_grad()
def load_snapshot(
    params: Sequence[torch.Tensor], opt: Any, snap: Snapshot, grads: Sequence | None = None
) -> None:
    """Copy ``snap`` into ``params`` and ``opt.state`` in place (the tensors keep their
    identity, so ferroptim's cached plan stays valid), and set the gradients if given."""
    for i, (p, value, st) in enumerate(zip(params, snap.params, snap.state)):
        p.copy_(value)
        if grads is not None:
            p.grad = grads[i].to(p.dtype)
        if not st:
            continue
        mine = opt.state[p]
        assert sorted(mine) == sorted(st), f"state keys {sorted(mine)} vs {sorted(st)}"
        for key, v in st.items():
            if torch.is_tensor(v):
                mine[key].copy_(v)
            else:
                mine[key] = v


def _round_hyperparameters(opt: Any, dtype: torch.dtype) -> None:
    """Round every float hyperparameter of ``opt``'s groups (``betas`` included) to ``dtype``,
    as torch's vectorised float32 kernels do when they cast a scalar to the tensor's type."""

    def r(v: Any) -> Any:
        if isinstance(v, float):
            return float(torch.tensor(v, dtype=dtype))
        if isinstance(v, tuple) and all(isinstance(x, float) for x in v):
            return tuple(r(x) for x in v)
        return v

    for group in opt.param_groups:
        for key, value in list(group.items()):
            if key != "params":
                group[key] = r(value)


def synced_steps(
    name: str,
    kwargs: dict,
    impls: dict[str, tuple[str, torch.dtype]],
    *,
    steps: int = 50,
    input_dtype: torch.dtype | None = None,
    groups: Sequence[dict] | None = None,
    scheduler: Callable[[Any], Any] | None = None,
) -> list[SyncedStep]:
    """Run the reference (torch's for-loop, or the oracle of :func:`reference_class`) on the
    seeded MLP in float64 for ``steps`` steps; before each of its steps, give every
    implementation ``label -> (impl, dtype)`` of ``impls`` (see :func:`make_opt`; impl
    ``"forloop-f32-hyper"``: the reference with its float hyperparameters rounded to float32)
    the reference's parameters, state and gradients, rounded to ``input_dtype`` when given, and
    let it take one step. Each implementation keeps one optimizer for the whole run (its state
    tensors are overwritten in place, so ferroptim's cached plan is used) and, with
    ``scheduler``, its own LR scheduler, whose learning rates must equal the reference's at
    every step. The reference's own step is recorded under ``"reference"``."""
    model = make_mlp(torch.float64)
    data = make_data(torch.float64)
    driver = make_opt("forloop", name, split_groups(model, groups), **kwargs)
    schedulers = [scheduler(driver)] if scheduler is not None else []
    peers = {}
    for label, (impl, dtype) in impls.items():
        leaves = make_mlp(dtype)
        kind = "forloop" if impl == "forloop-f32-hyper" else impl
        opt = make_opt(kind, name, split_groups(leaves, groups), **kwargs)
        if impl == "forloop-f32-hyper":
            _round_hyperparameters(opt, torch.float32)
        peers[label] = (list(leaves.parameters()), opt)
        if scheduler is not None:
            schedulers.append(scheduler(opt))
    sign = -1.0 if kwargs.get("maximize") else 1.0
    checked = {k for k, (impl, _) in impls.items() if impl != "forloop-f32-hyper"}
    return synced_run(
        model, data, driver, peers, steps, input_dtype, sign, schedulers, lr_checked=checked
    )


def synced_run(
    model: nn.Module,
    data: tuple[torch.Tensor, ...],
    driver: Any,
    peers: dict[str, tuple[list[torch.Tensor], Any]],
    steps: int,
    input_dtype: torch.dtype | None = None,
    sign: float = 1.0,
    schedulers: Sequence[Any] = (),
    lr_checked: Any = (),
) -> list[SyncedStep]:
    """The loop of :func:`synced_steps`, for optimizers built by the caller: ``driver`` steps
    ``model`` on ``sign * mlp_loss``; before each of its steps every peer ``label ->
    (params, optimizer)`` is loaded with the driver's parameters, state and gradients
    (rounded to ``input_dtype``) and takes one step; the labels in ``lr_checked`` must have
    the driver's learning rates. ``schedulers`` are stepped after every step."""
    out = []
    for k in range(steps):
        driver.zero_grad(set_to_none=True)
        (sign * mlp_loss(model, data)).backward()
        before = _rounded(snapshot(model.parameters(), driver), input_dtype)
        grads = [p.grad.detach().to(input_dtype or p.dtype) for p in model.parameters()]
        lrs = [float(g["lr"]) for g in driver.param_groups]
        after = {}
        for label, (params, opt) in peers.items():
            if label in lr_checked:
                mine = [float(g["lr"]) for g in opt.param_groups]
                assert mine == lrs, f"{label} step {k}: lr {mine}, the reference's {lrs}"
            load_snapshot(params, opt, before, grads)
            opt.step()
            after[label] = snapshot(params, opt)
        driver.step()
        for sched in schedulers:
            sched.step()
        after["reference"] = snapshot(model.parameters(), driver)
        out.append(SyncedStep(_rounded(before, torch.float64), after))
    return out


def _slots(before: Snapshot, after: Snapshot) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(label, value before, value after) for every parameter and floating state tensor."""
    slots = [(f"param {i}", b, a) for i, (b, a) in enumerate(zip(before.params, after.params))]
    for i, (sb, sa) in enumerate(zip(before.state, after.state)):
        for key, v in sorted(sa.items()):
            if torch.is_tensor(v) and v.is_floating_point() and key not in SCALAR_STATE:
                prior = sb.get(key)
                slots.append((f"param {i} state[{key!r}]", prior, v))
    return slots


def assert_synced_steps_close(
    record: list[SyncedStep], label: str, rtol: float, atol: float, what: str = ""
) -> None:
    """At every step, ``label``'s change of each parameter and state tensor equals the
    reference's change from the same inputs to ``rtol`` (relative to the reference's change)
    plus ``atol``, plus 2 ulps of the stored value (the rounding of ``before + change``);
    scalar state (``step``, …) and the state keys must be equal. Comparing changes, not
    values, keeps the bound as tight for a 1e-6 update of a parameter of size 1 as for a
    large one."""
    for k, rec in enumerate(record):
        ours, ref = rec.after[label], rec.after["reference"]
        for i, (so, sr) in enumerate(zip(ours.state, ref.state)):
            assert sorted(so) == sorted(sr), f"{what} step {k} param {i}: state keys"
            for key in SCALAR_STATE:
                if key in sr:
                    _assert_value_close(so[key], sr[key], 1e-12, 0, f"{what} step {k} {key}")
        for (where, b, o), (_, _, r) in zip(_slots(rec.before, ours), _slots(rec.before, ref)):
            base = b.double() if b is not None else torch.zeros_like(r, dtype=torch.float64)
            d_ours, d_ref = o.double() - base, r.double() - base
            eps = torch.finfo(r.dtype).eps
            allowed = rtol * d_ref.abs() + atol + 2 * eps * r.double().abs()
            excess = (d_ours - d_ref).abs() - allowed
            if excess.numel() and excess.max() > 0:
                j = int(excess.argmax())
                raise AssertionError(
                    f"{what} step {k} {where}: change {d_ours.view(-1)[j].item():.17g} vs the "
                    f"reference's {d_ref.view(-1)[j].item():.17g} at flat index {j} "
                    f"({int((excess > 0).sum())} of {excess.numel()} elements outside "
                    f"rtol {rtol:g} / atol {atol:g})"
                )


def synced_step_errors(
    record: list[SyncedStep],
    label: str,
    exact: Sequence[str] = ("exact",),
    units: torch.dtype | None = None,
) -> dict[str, float]:
    """The largest error of ``label``'s steps against the exact ones (the same inputs stepped
    in float64; with several labels in ``exact``, e.g. with the hyperparameters as given and
    rounded to float32, each element's error against the nearest of them), per parameter /
    state slot over all steps, in rounding units of ``label``'s dtype:
    ``|y − y_exact| / (eps · (|y_exact| + |Δy_exact|))`` with ``Δy`` the step's change (which
    covers a result that cancels, ``θ − γu`` near 0). A step computed with a few correctly
    rounded operations is within a few units; where the step itself cancels (a gradient
    nearly cancelled by its weight decay) every float32 implementation is further off.
    ``units``: the dtype whose rounding unit is the unit (default: ``label``'s dtype)."""
    worst: dict[str, float] = {}
    tiny = torch.finfo(torch.float64).tiny
    for rec in record:
        mine = _slots(rec.before, rec.after[label])
        refs = [_slots(rec.before, rec.after[x]) for x in exact]
        for j, (where, b, o) in enumerate(mine):
            eps = torch.finfo(units or o.dtype).eps
            err = None
            for ref in refs:
                e = ref[j][2].double()
                base = b.double() if b is not None else torch.zeros_like(e)
                scale = (eps * (e.abs() + (e - base).abs())).clamp_min(tiny)
                this = torch.where(o.double() == e, 0.0, (o.double() - e).abs() / scale)
                err = this if err is None else torch.minimum(err, this)
            assert err is not None
            worst[where] = max(worst.get(where, 0.0), float(err.max()) if err.numel() else 0.0)
    return worst


#: The float32 step bound, per parameter / state slot: ferroptim's error
#: (:func:`synced_step_errors`) at most ``2 x`` the reference's own on the same inputs
#: ``+ FLOAT32_STEP_UNITS + 2 x`` the slot's sensitivity (see :func:`check_float32_steps`).
FLOAT32_STEP_UNITS = 4.0


def check_float32_steps(name: str, kwargs: dict, **options: Any) -> dict[str, tuple]:
    """Synced float32 steps (:func:`synced_steps`) of ferroptim and of the reference in float32,
    each against the exact (float64) step from the same float32 inputs, with the
    hyperparameters as given or rounded to float32 (either is a faithful float32 step: torch's
    vectorised kernels round them, its scalar ``ATEN_CPU_CAPABILITY=default`` kernels partly
    not). Asserts, for every parameter / state slot,
    ``ours <= 2 x reference's + FLOAT32_STEP_UNITS + 2 x sensitivity``, where the sensitivity
    is how far the two exact steps are apart (in the same units): what half an ulp in the
    hyperparameters does to the slot. It is below a unit for well-conditioned steps and large
    where the step cancels (a gradient nearly cancelled by its weight decay), and there two
    float32 implementations that round in other places (with and without FMA) differ by that
    much. Returns ``slot -> (ours, reference's, sensitivity)``."""
    impls = {
        "ours": ("ours", torch.float32),
        "torch": ("forloop", torch.float32),
        "exact": ("forloop", torch.float64),
        "exact_f32_hyper": ("forloop-f32-hyper", torch.float64),
    }
    record = synced_steps(name, kwargs, impls, input_dtype=torch.float32, **options)
    exact = ("exact", "exact_f32_hyper")
    ours = synced_step_errors(record, "ours", exact)
    ref = synced_step_errors(record, "torch", exact)
    sensitivity = synced_step_errors(record, "exact_f32_hyper", ("exact",), units=torch.float32)
    out = {k: (ours[k], ref[k], sensitivity[k]) for k in ours}
    bad = {k: v for k, v in out.items() if v[0] > 2 * v[1] + FLOAT32_STEP_UNITS + 2 * v[2]}
    assert not bad, (
        f"{name} {kwargs}: float32 step errors (ours, reference's, sensitivity) in units {bad}"
    )
    return out


def check_float64_steps(name: str, kwargs: dict, rtol: float, atol: float, **options: Any) -> None:
    """Synced float64 steps of ferroptim against the reference's
    (:func:`assert_synced_steps_close`)."""
    record = synced_steps(name, kwargs, {"ours": ("ours", torch.float64)}, **options)
    assert_synced_steps_close(record, "ours", rtol, atol, what=f"{name} {kwargs}")
