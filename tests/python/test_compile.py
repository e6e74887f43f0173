"""torch.compile: the native step is the ``ferroptim::step`` custom op (``ferroptim._ops``).

A compiled ``step()`` must give the eager step's numbers bit for bit (it makes the same
native call), cause no graph break of its own (a whole compiled training step breaks no more
often than with torch.optim's class), keep a tensor ``lr`` changed by a scheduler out of the
graph's constants (no recompilation), honour GradScaler's hand-over and SGD's first momentum
step, and pass ``torch.library.opcheck``.
"""

from __future__ import annotations

import copy

import ferroptim
import pytest
import torch
import torch._dynamo
from ferroptim import _ops
from optim_testlib import make_data, make_mlp, mlp_loss
from torch._dynamo.utils import counters

# (class, kwargs): every class whose step is the fused native rule, with options that reach
# the rule's branches (momentum + dampening: SGD's fresh momentum buffer; amsgrad; weight decay).
CASES = [
    ("SGD", {"lr": 0.05, "momentum": 0.9, "dampening": 0.3, "weight_decay": 0.01}),
    ("SGD", {"lr": 0.05, "momentum": 0.9, "nesterov": True}),
    ("Adam", {"lr": 0.01, "amsgrad": True, "weight_decay": 0.1}),
    ("AdamW", {"lr": 0.01, "maximize": True}),
    ("Adagrad", {"lr": 0.1, "lr_decay": 0.01, "initial_accumulator_value": 0.1}),
    ("Adamax", {"lr": 0.01, "weight_decay": 0.1}),
    ("Adadelta", {"lr": 0.5, "weight_decay": 0.1}),
    ("ASGD", {"lr": 0.01, "t0": 1.0}),
    ("NAdam", {"lr": 0.01, "decoupled_weight_decay": True, "weight_decay": 0.1}),
    ("RAdam", {"lr": 0.01}),
    ("RMSprop", {"lr": 0.01, "momentum": 0.5, "centered": True}),
    ("Rprop", {"lr": 0.01}),
    ("Lion", {"lr": 1e-3, "weight_decay": 0.1}),
    ("ADOPT", {"lr": 0.01}),
    ("Adan", {"lr": 0.01, "weight_decay": 0.02}),
    ("AdEMAMix", {"lr": 0.01}),
    ("Lamb", {"lr": 0.01, "weight_decay": 0.01}),
    ("LARS", {"lr": 0.01, "momentum": 0.9}),
    ("ScheduleFreeAdamW", {"lr": 0.01, "warmup_steps": 2}),
]


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def _pair(name: str, kwargs: dict, dtype=torch.float64):
    model = make_mlp(dtype)
    twin = copy.deepcopy(model)
    eager = getattr(ferroptim, name)(model.parameters(), **copy.deepcopy(kwargs))
    compiled = getattr(ferroptim, name)(twin.parameters(), **copy.deepcopy(kwargs))
    return model, eager, twin, compiled


def _assert_same(model, eager, twin, compiled, where: str) -> None:
    for i, (p, q) in enumerate(zip(model.parameters(), twin.parameters())):
        assert torch.equal(p, q), f"{where}: parameter {i} differs"
        for key, value in eager.state[p].items():
            other = compiled.state[q][key]
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, other), f"{where}: state {key!r} of parameter {i}"
            else:
                assert value == other, f"{where}: state {key!r} of parameter {i}"
    for g, h in zip(eager.param_groups, compiled.param_groups):
        assert {k: v for k, v in g.items() if k != "params"} == {
            k: v for k, v in h.items() if k != "params"
        }


@pytest.mark.parametrize(
    ("name", "kwargs"), CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)]
)
def test_compiled_step_equals_eager_step(name, kwargs):
    model, eager, twin, compiled = _pair(name, kwargs)
    data = make_data(torch.float64)
    step = torch.compile(compiled.step, backend="aot_eager")
    for k in range(4):
        for m, opt in ((model, eager), (twin, compiled)):
            opt.zero_grad()
            mlp_loss(m, data).backward()
        eager.step()
        step()
        _assert_same(model, eager, twin, compiled, f"step {k + 1}")
    if name != "ScheduleFreeAdamW":  # its step runs eagerly under compile (see the class)
        assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])


def _training_step_breaks(cls: type, **kwargs) -> tuple[int, list[torch.Tensor]]:
    torch._dynamo.reset()
    counters.clear()
    model = make_mlp(torch.float32)
    opt = cls(model.parameters(), **kwargs)
    data = make_data(torch.float32)

    @torch.compile
    def train_step():
        opt.zero_grad()
        mlp_loss(model, data).backward()
        opt.step()

    for _ in range(3):
        train_step()
    return sum(counters["graph_break"].values()), [p.detach().clone() for p in model.parameters()]


def test_whole_training_step_breaks_no_more_than_torch_optim():
    """Inductor: forward, backward and AdamW step compiled as one function. torch.optim's
    own step has two graph breaks (around its no_grad region), plus the two every such
    training step has (zero_grad is skipped, backward is not traced)."""
    ours, ours_params = _training_step_breaks(ferroptim.AdamW, lr=0.01, weight_decay=0.1)
    theirs, _ = _training_step_breaks(torch.optim.AdamW, lr=0.01, weight_decay=0.1)
    assert ours <= theirs, (ours, theirs)
    assert ours == 2, dict(counters["graph_break"])
    # The same training eagerly gives the same parameters bit for bit.
    model = make_mlp(torch.float32)
    opt = ferroptim.AdamW(model.parameters(), lr=0.01, weight_decay=0.1)
    data = make_data(torch.float32)
    for _ in range(3):
        opt.zero_grad()
        mlp_loss(model, data).backward()
        opt.step()
    for p, q in zip(model.parameters(), ours_params):
        torch.testing.assert_close(p.detach(), q, rtol=1e-6, atol=1e-7)


def _closure_step_breaks(cls: type, **kwargs) -> tuple[dict[str, int], list[torch.Tensor]]:
    """Graph breaks of a compiled training step (aot_eager) of a bias-free MLP (Muon takes
    only matrices), the step given a closure for LBFGS."""
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(6, 16, bias=False), torch.nn.Tanh(), torch.nn.Linear(16, 3, bias=False)
    )
    opt = cls(model.parameters(), **kwargs)
    x = torch.randn(8, 6)

    def closure():
        opt.zero_grad()
        loss = model(x).pow(2).mean()
        loss.backward()
        return loss

    @torch.compile(backend="aot_eager")
    def train_step():
        if cls.__name__ == "LBFGS":
            opt.step(closure)
        else:
            closure()
            opt.step()

    for _ in range(3):
        train_step()
    breaks = {reason.split("\n")[0]: n for reason, n in counters["graph_break"].items()}
    return breaks, [p.detach().clone() for p in model.parameters()]


#: The graph breaks of a call to a ``torch.compiler.disable``d function.
DISABLED = {
    "Skip inlining `torch.compiler.disable()`d function",
    "Skip calling `torch.compiler.disable()`d function",
}


@pytest.mark.parametrize("name", ["SGD", "Adagrad", "Adafactor", "Muon", "LBFGS"])
def test_compiled_training_step_breaks_no_more_than_torch_optim(name):
    """Classes whose step is not the fused rule: Adafactor, SparseAdam and LBFGS step eagerly
    inside a compiled region (as torch's LBFGS does), Muon traces torch's own step."""
    ours, ours_params = _closure_step_breaks(getattr(ferroptim, name), lr=0.01)
    theirs, their_params = _closure_step_breaks(getattr(torch.optim, name), lr=0.01)
    if name == "LBFGS":
        # torch disables Dynamo on its LBFGS step, as ferroptim does: only those breaks. (How
        # many Dynamo counts for one disabled call, 1 or 2, depends on what ran before.)
        assert set(ours) <= DISABLED and set(theirs) <= DISABLED, (ours, theirs)
    else:
        assert sum(ours.values()) <= sum(theirs.values()), (ours, theirs)
    if name in ("Adafactor", "Muon", "LBFGS"):  # torch's ATen operations, in torch's order
        for p, q in zip(ours_params, their_params):
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_tensor_lr_changed_by_a_scheduler_does_not_recompile():
    kwargs = {"lr": torch.tensor(0.01), "betas": (0.9, 0.99), "weight_decay": 0.1}
    model, eager, twin, compiled = _pair("AdamW", kwargs)
    sched_e = torch.optim.lr_scheduler.StepLR(eager, step_size=1, gamma=0.5)
    sched_c = torch.optim.lr_scheduler.StepLR(compiled, step_size=1, gamma=0.5)
    data = make_data(torch.float64)
    step = torch.compile(compiled.step, backend="aot_eager")
    for k in range(5):
        for m, opt in ((model, eager), (twin, compiled)):
            opt.zero_grad()
            mlp_loss(m, data).backward()
        eager.step()
        step()
        sched_e.step()
        sched_c.step()
        _assert_same(model, eager, twin, compiled, f"step {k + 1}")
    assert float(compiled.param_groups[0]["lr"]) == pytest.approx(0.01 * 0.5**5, rel=1e-6)
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])


def test_sgd_first_momentum_step_is_taken_once():
    """SGD copies the gradient into a new momentum buffer on the first step only: the
    compiled graph, traced when the state was new, must not repeat it at later steps."""
    kwargs = {"lr": 0.1, "momentum": 0.9, "dampening": 0.5}
    model, eager, twin, compiled = _pair("SGD", kwargs)
    data = make_data(torch.float64)
    step = torch.compile(compiled.step, backend="aot_eager")
    for k in range(3):
        for m, opt in ((model, eager), (twin, compiled)):
            opt.zero_grad()
            mlp_loss(m, data).backward()
        eager.step()
        step()
        _assert_same(model, eager, twin, compiled, f"step {k + 1}")
    flags = compiled.__dict__["_ferroptim_fresh"]
    assert flags and not any(bool(f) for f in flags.values())


@pytest.mark.parametrize("found_inf", [0.0, 1.0])
def test_grad_scaler_hand_over_in_a_compiled_step(found_inf):
    """GradScaler sets ``grad_scale``/``found_inf`` on the optimizer for the step: the
    compiled step unscales the gradients by the scale (and writes them back), or, with
    ``found_inf``, changes nothing, as the eager step does."""
    model, eager, twin, compiled = _pair("Adam", {"lr": 0.01})
    data = make_data(torch.float64)
    step = torch.compile(compiled.step, backend="aot_eager")
    for m, opt in ((model, eager), (twin, compiled)):
        opt.zero_grad()
        (mlp_loss(m, data) * 1024.0).backward()
        opt.grad_scale = torch.tensor(1024.0)
        opt.found_inf = torch.tensor(found_inf)
    before = [p.detach().clone() for p in twin.parameters()]
    eager.step()
    step()
    _assert_same(model, eager, twin, compiled, "scaled step")
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p.grad, q.grad)
    changed = any(not torch.equal(b, p) for b, p in zip(before, twin.parameters()))
    assert changed == (found_inf == 0.0)


def test_opcheck():
    """torch.library.opcheck: schema (declared mutations), fake tensor, AOT dispatch."""
    model = make_mlp(torch.float64)
    opt = ferroptim.Adam(model.parameters(), lr=0.01, amsgrad=True)
    mlp_loss(model, make_data(torch.float64)).backward()
    opt.step()  # creates the state eagerly
    params, grads, states, scalars, fresh = [], [], [], [], []
    opt._init_group(opt.param_groups[0], params, grads, states, scalars, fresh)
    calls = [
        {
            "params": [p.detach() for p in params],
            "grads": grads,
            "states": states,
            "scalar_states": scalars,
            "fresh": fresh,
            **opt._hyper(opt.param_groups[0]),
            "lr": torch.tensor(0.01),
        }
    ]
    args = (*_ops.pack(opt._native_name, calls), torch.tensor(4.0), None)
    torch.library.opcheck(_ops.step, args)


def test_pack_and_unpack_round_trip():
    a, b = torch.zeros(3), torch.zeros(2)
    flag = torch.tensor(True)
    calls = [
        {
            "params": [a, b],
            "grads": [a + 1, b + 1],
            "states": [a + 2, a + 3, b + 2, b + 3],
            "scalar_states": [torch.tensor(1.0), torch.tensor(2.0)],
            "fresh": [flag, torch.tensor(False)],
            "lr": torch.tensor(0.25),
            "eps": float("inf"),
            "maximize": True,
            "t_warmup": None,
            "k": 3,
        },
        {
            "params": [b],
            "grads": [b],
            "states": [],
            "scalar_states": [],
            "fresh": [flag],
            "lr": 1e-3,
            "trust": False,
        },
    ]
    args = _ops.pack("adam_step", calls)
    assert args[0] == "adam_step"
    out = _ops.unpack(*args[1:])
    assert len(out) == 2
    first, second = out
    assert first["lr"] == 0.25 and first["eps"] == float("inf") and first["maximize"] is True
    assert first["t_warmup"] is None and first["k"] == 3 and first["fresh"] == [True, False]
    assert [t is u for t, u in zip(first["states"], calls[0]["states"])] == [True] * 4
    assert first["scalar_states"][1] is calls[0]["scalar_states"][1]
    assert second["params"][0] is b and second["states"] == [] and second["lr"] == 1e-3
    assert second["trust"] is False and second["fresh"] == [True]


def test_dtensor_parameters_step_eagerly_inside_a_compiled_region(tmp_path):
    """The custom op has no DTensor sharding rule: a compiled step of DTensor parameters
    (FSDP2, tensor parallel) runs the eager sharded step instead (one graph break), with the
    numbers of the unsharded step."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        gen = torch.Generator().manual_seed(0)
        values = [torch.randn(6, 4, generator=gen, dtype=torch.float64) for _ in range(2)]
        grads = [
            [torch.randn(6, 4, generator=gen, dtype=torch.float64) for _ in values]
            for _ in range(3)
        ]
        plain = [torch.nn.Parameter(v.clone()) for v in values]
        sharded = [
            torch.nn.Parameter(distribute_tensor(v.clone(), mesh, [Shard(0)])) for v in values
        ]
        eager = ferroptim.AdamW(plain, lr=0.01, weight_decay=0.1)
        compiled = ferroptim.AdamW(sharded, lr=0.01, weight_decay=0.1)
        step = torch.compile(compiled.step, backend="aot_eager")
        for k in range(3):
            for p, q, g in zip(plain, sharded, grads[k]):
                p.grad = g.clone()
                q.grad = distribute_tensor(g.clone(), mesh, [Shard(0)])
            eager.step()
            step()
            for p, q in zip(plain, sharded):
                assert torch.equal(p.detach(), q.detach().full_tensor()), f"step {k + 1}"
                exp_avg = compiled.state[q]["exp_avg"]
                assert type(exp_avg).__name__ == "DTensor"
                assert torch.equal(eager.state[p]["exp_avg"], exp_avg.full_tensor())
    finally:
        dist.destroy_process_group()
