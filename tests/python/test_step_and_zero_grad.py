"""``step_and_zero_grad()`` (the step and the reset of the gradients in one native call) and
``zero_grad()`` through the cached plan: the same parameters, state and gradients (None, or
the same tensor zeroed in place with the same version counter bumps) as ``step()`` followed by
torch.optim's own ``zero_grad``, over training loops whose parameters change between steps
(the plan declines and the general path runs), with hooks, the profiler and errors."""

from __future__ import annotations

import ferroptim
import pytest
import torch

# Classes whose step makes a cached plan (the others reset through `zero_grad` after a step).
PLANNED = ["SGD", "Adam", "AdamW", "Adagrad", "RMSprop", "Lion", "Lamb", "LARS", "Adan", "NAdam"]


def _params(seed: int = 0) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    shapes = [(3, 4), (4,), (2, 2), (5,), (6, 3)]
    return [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]


def _make(name: str, params: list[torch.Tensor]) -> torch.optim.Optimizer:
    kwargs = {"momentum": 0.9} if name == "SGD" else {}
    return getattr(ferroptim, name)([{"params": params[:3]}, {"params": params[3:]}], **kwargs)


def _backward(params: list[torch.Tensor], k: int) -> None:
    # Some steps leave parameters without a gradient (with set_to_none), so plans decline.
    used = params if k % 3 != 1 else params[:2] + params[3:4]
    sum(((p - 0.1 * k) ** 2 * (k + 1)).sum() for p in used).backward()


def _check_same(ps, qs, grads_before, versions_before, their_grads, their_versions):
    for i, (p, q) in enumerate(zip(ps, qs)):
        assert torch.equal(p, q), i
        assert (p.grad is None) == (q.grad is None), i
        if p.grad is not None:
            # The same tensor as before the call, zeroed in place, versions bumped alike.
            assert p.grad is grads_before[i] and q.grad is their_grads[i], i
            assert torch.count_nonzero(p.grad) == 0 and torch.equal(p.grad, q.grad), i
            assert p.grad._version - versions_before[i] == q.grad._version - their_versions[i]


def _snapshot(ps):
    grads = [p.grad for p in ps]
    return grads, [None if g is None else g._version for g in grads]


@pytest.mark.parametrize("set_to_none", [True, False])
@pytest.mark.parametrize("name", PLANNED)
def test_matches_step_then_torch_zero_grad(name, set_to_none):
    params, twin = _params(), _params()
    opt, ref = _make(name, params), _make(name, twin)
    for k in range(8):
        if k == 5:  # a new group: the plan no longer fits, the general path takes over
            extra, extra_twin = _params(1)[:1], _params(1)[:1]
            opt.add_param_group({"params": extra})
            ref.add_param_group({"params": extra_twin})
            params, twin = params + extra, twin + extra_twin
        _backward(params, k)
        _backward(twin, k)
        grads, versions = _snapshot(params)
        their_grads, their_versions = _snapshot(twin)
        opt.step_and_zero_grad(set_to_none=set_to_none)
        ref.step()
        torch.optim.Optimizer.zero_grad(ref, set_to_none)
        _check_same(params, twin, grads, versions, their_grads, their_versions)
    for p, q in zip(params, twin):
        for key, value in opt.state[p].items():
            assert torch.equal(value, ref.state[q][key]), key


@pytest.mark.parametrize("set_to_none", [True, False])
def test_zero_grad_through_the_plan_matches_torch(set_to_none):
    """After a step (which makes the plan), ``zero_grad`` resets through the plan's tensors;
    a parameter appended to a group's list since makes the plan decline, and it is still
    reset."""
    params, twin = _params(), _params()
    opt, ref = _make("AdamW", params), _make("AdamW", twin)
    for k in range(4):
        if k == 2:
            extra, extra_twin = _params(2)[:1], _params(2)[:1]
            opt.param_groups[1]["params"].append(extra[0])
            ref.param_groups[1]["params"].append(extra_twin[0])
            params, twin = params + extra, twin + extra_twin
        _backward(params, k)
        _backward(twin, k)
        opt.step()
        ref.step()
        grads, versions = _snapshot(params)
        their_grads, their_versions = _snapshot(twin)
        opt.zero_grad(set_to_none)
        torch.optim.Optimizer.zero_grad(ref, set_to_none)
        _check_same(params, twin, grads, versions, their_grads, their_versions)


def test_in_place_zeroing_of_views_and_odd_layouts():
    """Gradients that are views into one flat buffer (DDP's ``gradient_as_bucket_view``), a
    transposed (non-contiguous) gradient and a lazily negated one are zeroed exactly where
    torch zeroes them, with the same version counter bumps (views share their base's)."""
    params = [torch.nn.Parameter(torch.randn(3, 4)) for _ in range(3)]
    opt = ferroptim.SGD(params, lr=0.1)
    for p in params:
        p.grad = torch.ones(3, 4)
    opt.step()  # makes the plan
    flat = torch.arange(1.0, 31.0)
    params[0].grad = flat[2:14].view(3, 4)
    params[1].grad = torch.randn(4, 3).t()
    params[2].grad = torch.randn(3, 4)._neg_view()
    assert not params[1].grad.is_contiguous() and params[2].grad.is_neg()
    grads, versions = _snapshot(params)
    base_version = flat._version
    opt.zero_grad(set_to_none=False)
    assert all(p.grad is g for p, g in zip(params, grads))
    assert all(torch.count_nonzero(p.grad) == 0 for p in params)
    assert not torch.signbit(params[2].grad).any()  # +0, as zero_() writes
    expected = torch.arange(1.0, 31.0)
    expected[2:14] = 0
    assert torch.equal(flat, expected)  # only the view's elements
    assert [p.grad._version - v for p, v in zip(params, versions)] == [1, 1, 1]
    assert flat._version == base_version + 1


def test_post_hooks_see_the_gradients():
    params = _params()
    opt = _make("AdamW", params)
    seen = []
    opt.register_step_post_hook(lambda o, a, kw: seen.append([p.grad is None for p in params]))
    for _ in range(3):
        _backward(params, 0)
        opt.step_and_zero_grad()
        assert all(p.grad is None for p in params)
    assert seen == [[False] * len(params)] * 3


def test_profiler_sees_both_labels():
    params = _params()
    opt = _make("AdamW", params)
    for _ in range(2):  # the second step is planned
        _backward(params, 0)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            opt.step_and_zero_grad()
        names = {e.name for e in prof.events()}
        assert "Optimizer.step#AdamW.step" in names
        assert "Optimizer.zero_grad#AdamW.zero_grad" in names
        assert all(p.grad is None for p in params)


def test_closure_loss_and_a_failed_step_keeps_the_gradients():
    params = _params()
    opt = _make("SGD", params)

    def closure():
        opt.zero_grad()
        loss = sum((p * p).sum() for p in params)
        loss.backward()
        return loss

    for _ in range(2):
        loss = opt.step_and_zero_grad(closure)
        assert isinstance(loss, torch.Tensor) and all(p.grad is None for p in params)
    _backward(params, 0)
    params[0].grad = torch.ones(3, 4).to_sparse()  # refused: the step raises, changes nothing
    before = [p.detach().clone() for p in params]
    with pytest.raises(RuntimeError):
        opt.step_and_zero_grad()
    assert all(torch.equal(p, b) for p, b in zip(params, before))
    assert all(p.grad is not None for p in params)


def test_schedulers_count_the_step():
    params = _params()
    opt = _make("AdamW", params)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    for _ in range(4):
        _backward(params, 0)
        opt.step_and_zero_grad()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.25)


@pytest.mark.parametrize("set_to_none", [True, False])
def test_planned_steps_reset_in_the_step_call(set_to_none):
    """Only the first step (the general path, which makes the plan) needs a separate
    ``zero_grad`` call; planned steps reset the gradients in their own native call."""
    params = _params()
    opt = _make("AdamW", params)
    calls = []

    def counted(set_to_none: bool = True) -> None:
        calls.append(set_to_none)
        type(opt).zero_grad(opt, set_to_none)

    opt.zero_grad = counted
    for _ in range(4):
        _backward(params, 0)
        opt.step_and_zero_grad(set_to_none=set_to_none)
        assert all((p.grad is None) if set_to_none else p.grad.count_nonzero() == 0 for p in params)
    assert calls == [set_to_none]
