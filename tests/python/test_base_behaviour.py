"""Behaviour inherited from torch.optim.Optimizer: closures, hooks, zero_grad,
add_param_group, parameters without gradients."""

from __future__ import annotations

import inspect
import json

import pytest
import torch
from optim_testlib import (
    OURS,
    TOLERANCES,
    assert_snapshots_close,
    assert_snapshots_equal,
    make_data,
    make_mlp,
    make_opt,
    mlp_loss,
    run_mlp,
    snapshot,
    train,
)
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)

KWARGS = {
    "SGD": {"lr": 0.05, "momentum": 0.9, "nesterov": True},
    "Adam": {"lr": 0.01, "amsgrad": True},
    "AdamW": {"lr": 0.01, "weight_decay": 0.1},
}
NAMES = list(KWARGS)
RTOL, ATOL = TOLERANCES[torch.float32]


def test_classes_subclass_torch_optimizers():
    for name in NAMES:
        cls = getattr(OURS, name)
        assert issubclass(cls, getattr(torch.optim, name))
        assert issubclass(cls, torch.optim.Optimizer)


@pytest.mark.parametrize("name", NAMES)
def test_defaults_match_torch(name):
    p = [torch.zeros(3, requires_grad=True)]
    ours = getattr(OURS, name)(p)
    ref = getattr(torch.optim, name)(p)
    skip = ("foreach", "fused")
    assert {k: v for k, v in ours.defaults.items() if k not in skip} == {
        k: v for k, v in ref.defaults.items() if k not in skip
    }


@pytest.mark.parametrize("flags", [{"foreach": True}, {"fused": True}, {"foreach": False}])
@pytest.mark.parametrize("name", NAMES)
def test_implementation_flags_are_accepted_and_change_nothing(name, flags):
    """foreach / fused are accepted for signature compatibility, recorded in param_groups,
    and do not change ferroptim's arithmetic (bit-identical to the default)."""
    default = run_mlp("ours", name, KWARGS[name], steps=10)
    flagged = run_mlp("ours", name, {**KWARGS[name], **flags}, steps=10)
    assert_snapshots_equal(flagged, default)
    for key, value in flags.items():
        assert flagged.extra["groups"][0][key] == value


@pytest.mark.parametrize("name", NAMES)
def test_closure(name):
    model, data = make_mlp(), make_data()
    opt = make_opt("ours", name, model.parameters(), **KWARGS[name])
    seen = []

    def closure():
        seen.append(torch.is_grad_enabled())
        opt.zero_grad()
        loss = mlp_loss(model, data)
        loss.backward()
        return loss

    with torch.no_grad():  # the closure must still run with grad enabled
        returned = opt.step(closure)
    assert seen == [True]
    assert torch.is_tensor(returned) and returned.requires_grad
    torch.testing.assert_close(returned.detach(), mlp_loss(make_mlp(), data).detach())
    assert opt.step() is None  # no closure: returns None

    # a whole trajectory driven through closures matches torch's
    ours = run_mlp("ours", name, KWARGS[name], steps=20, use_closure=True)
    ref = run_mlp("forloop", name, KWARGS[name], steps=20, use_closure=True)
    assert_snapshots_close(ours, ref, RTOL, ATOL)


@pytest.mark.parametrize("name", NAMES)
def test_step_hooks(name):
    calls = []

    def run(impl):
        model, data = make_mlp(), make_data()
        opt = make_opt(impl, name, model.parameters(), **KWARGS[name])

        def pre(optimizer, args, kwargs):
            assert optimizer is opt
            calls.append((impl, "pre", len(optimizer.state)))
            for g in optimizer.param_groups:  # a pre-hook may edit the gradients
                for p in g["params"]:
                    if p.grad is not None:
                        p.grad.mul_(0.5)

        def post(optimizer, args, kwargs):
            assert optimizer is opt
            calls.append((impl, "post", len(optimizer.state)))

        h_pre = opt.register_step_pre_hook(pre)
        h_post = opt.register_step_post_hook(post)
        train(model, opt, data, 3)
        h_pre.remove()
        h_post.remove()
        train(model, opt, data, 2)  # removed hooks are not called
        return snapshot(model.parameters(), opt)

    ours = run("ours")
    ref = run("forloop")
    ours_calls = [c[1:] for c in calls if c[0] == "ours"]
    n_params = len(list(make_mlp().parameters()))
    # the pre-hook of the first step sees no state yet; the post-hook sees all of it
    assert ours_calls == [("pre", 0)] + [("post", n_params), ("pre", n_params)] * 2 + [
        ("post", n_params)
    ]
    assert ours_calls == [c[1:] for c in calls if c[0] == "forloop"]
    assert_snapshots_close(ours, ref, RTOL, ATOL)


@pytest.mark.parametrize("name", NAMES)
def test_global_step_hooks(name):
    calls = []
    pre = register_optimizer_step_pre_hook(
        lambda opt, args, kwargs: calls.append(("pre", type(opt).__name__))
    )
    post = register_optimizer_step_post_hook(
        lambda opt, args, kwargs: calls.append(("post", type(opt).__name__))
    )
    try:
        p = torch.ones(3, requires_grad=True)
        opt = getattr(OURS, name)([p], lr=0.1)
        p.grad = torch.ones(3)
        opt.step()
    finally:
        pre.remove()
        post.remove()
    assert calls == [("pre", name), ("post", name)]


@pytest.mark.parametrize("name", NAMES)
def test_pre_hooks_may_replace_the_arguments_or_must_return_none(name):
    # A pre-hook's (args, kwargs) replace step's arguments (here: a closure is added); any
    # other non-None result is a RuntimeError, as with torch's wrapper.
    results = {}
    for impl in (OURS, torch.optim):
        p = torch.ones(3, requires_grad=True)
        p.grad = torch.ones(3)
        opt = getattr(impl, name)([p], lr=0.1)
        handle = opt.register_step_pre_hook(lambda o, args, kwargs: ((o, lambda: 7.0), {}))
        results[impl] = (opt.step(), p.detach().clone())
        handle.remove()
        opt.register_step_pre_hook(lambda o, args, kwargs: "not a pair")
        with pytest.raises(RuntimeError, match="must return None or a tuple"):
            opt.step()
    assert results[OURS][0] == results[torch.optim][0] == 7.0
    torch.testing.assert_close(results[OURS][1], results[torch.optim][1])


@pytest.mark.parametrize("name", NAMES)
def test_profiler_shows_the_step_under_torchs_label(name):
    # The profiler region is entered only while a profiler runs: the plan's step and the
    # general path both show up in a trace, named as torch.optim's steps are.
    p = torch.ones(3, requires_grad=True)
    p.grad = torch.ones(3)
    opt = getattr(OURS, name)([p], lr=0.1)
    label = f"Optimizer.step#{name}.step"
    for _ in range(2):  # the general path, then the cached plan
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            opt.step()
        assert [e.name for e in prof.events()].count(label) == 1


def test_execution_trace_observer_sees_the_step(tmp_path):
    # Observers of libtorch's RecordFunction events other than the profiler count too.
    p = torch.ones(3, requires_grad=True)
    p.grad = torch.ones(3)
    opt = OURS.AdamW([p], lr=0.1)
    opt.step()
    path = tmp_path / "trace.json"
    observer = torch.profiler.ExecutionTraceObserver().register_callback(str(path))
    observer.start()
    try:
        opt.step()
    finally:
        observer.stop()
        observer.unregister_callback()
    names = [node["name"] for node in json.loads(path.read_text())["nodes"]]
    assert names.count("Optimizer.step#AdamW.step") == 1


@pytest.mark.parametrize("name", NAMES)
def test_no_record_function_region_when_nothing_observes(name, monkeypatch):
    # The point of ferroptim's step wrapper: with no observer, the region is not entered
    # (torch's own wrapper enters it at every step). Hooks still run.
    entered = []

    class Counting(torch.autograd.profiler.record_function):
        def __enter__(self):
            entered.append(self.name)
            return super().__enter__()

    monkeypatch.setattr(torch.autograd.profiler, "record_function", Counting)
    p = torch.ones(3, requires_grad=True)
    p.grad = torch.ones(3)
    calls = []
    opt = getattr(OURS, name)([p], lr=0.1)
    opt.register_step_post_hook(lambda *_: calls.append("post"))
    opt.step()
    opt.step()
    assert entered == []
    assert calls == ["post", "post"]
    ref = getattr(torch.optim, name)([p], lr=0.1)
    ref.step()
    assert entered == [f"Optimizer.step#{name}.step"]  # the counter does see torch's


@pytest.mark.parametrize("name", NAMES)
def test_zero_grad(name):
    model, data = make_mlp(), make_data()
    opt = make_opt("ours", name, model.parameters(), **KWARGS[name])
    mlp_loss(model, data).backward()
    opt.step()
    opt.zero_grad(set_to_none=False)
    for p in model.parameters():
        assert p.grad is not None and p.grad.shape == p.shape
        assert torch.count_nonzero(p.grad) == 0
    opt.zero_grad(set_to_none=True)
    assert all(p.grad is None for p in model.parameters())
    mlp_loss(model, data).backward()
    opt.zero_grad()  # torch's default: set_to_none=True
    assert all(p.grad is None for p in model.parameters())
    opt.step()  # no gradients at all: a no-op
    mlp_loss(model, data).backward()
    opt.step()


@pytest.mark.parametrize("name", NAMES)
def test_add_param_group(name):
    data = make_data()
    results = []
    for impl in ("ours", "forloop"):
        model = make_mlp()
        first = list(model[0].parameters())
        rest = [p for p in model.parameters() if all(p is not q for q in first)]
        opt = make_opt(impl, name, first, **KWARGS[name])
        train(model, opt, data, 5)
        extra = {"lr": 0.02, "weight_decay": 0.05}
        if name == "SGD":
            extra["momentum"] = 0.5
        else:
            extra["betas"] = (0.8, 0.95)
        opt.add_param_group({"params": rest, **extra})
        assert len(opt.param_groups) == 2
        train(model, opt, data, 15)
        results.append(snapshot(model.parameters(), opt))
    assert_snapshots_close(results[0], results[1], RTOL, ATOL)


@pytest.mark.parametrize("name", NAMES)
def test_params_without_grad_are_skipped(name):
    data = make_data()
    results = []
    for impl in ("ours", "forloop"):
        model = make_mlp()
        model[2].requires_grad_(False)  # frozen layer: never gets a grad
        unused = torch.nn.Parameter(torch.ones(4))  # in the optimizer, never in the loss
        params = [*model.parameters(), unused]
        opt = make_opt(impl, name, params, **KWARGS[name])
        frozen = [p.detach().clone() for p in model[2].parameters()]
        train(model, opt, data, 10)
        for p, before in zip(model[2].parameters(), frozen):
            assert torch.equal(p.detach(), before)
            assert p.grad is None and len(opt.state.get(p, {})) == 0
        assert torch.equal(unused.detach(), torch.ones(4)) and len(opt.state.get(unused, {})) == 0
        results.append(snapshot(params, opt))
    assert [len(s) for s in results[0].state] == [len(s) for s in results[1].state]
    assert_snapshots_close(results[0], results[1], RTOL, ATOL)


@pytest.mark.parametrize("name", NAMES)
def test_grad_appearing_later(name):
    """A param whose grad is None for a few steps gets its state on its first real step,
    with its own step count (like torch)."""
    g = torch.Generator().manual_seed(5)
    init = [torch.randn(5, generator=g), torch.randn(3, generator=g)]
    results = []
    for impl in ("ours", "forloop"):
        plist = [t.clone().requires_grad_() for t in init]
        opt = make_opt(impl, name, plist, **KWARGS[name])
        for k in range(6):
            plist[0].grad = plist[0].detach() * 0.3 + k
            plist[1].grad = None if k < 3 else plist[1].detach() - 0.1 * k
            opt.step()
        results.append(snapshot(plist, opt))
    assert_snapshots_close(results[0], results[1], RTOL, ATOL)
    if name != "SGD":
        assert results[0].state[1]["step"].item() == 3.0


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW"])
def test_constructor_signature_is_torchs(name):
    ours = inspect.signature(getattr(OURS, name))
    theirs = inspect.signature(getattr(torch.optim, name))
    assert ours == theirs
