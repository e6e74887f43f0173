"""Validation split over threads: a step over many parameters reads their metadata on all of
torch's intra-op threads (64 parameters or more per thread), then checks what the fast path
refused on the caller's thread, in order. These tests run with 2 threads and enough
parameters for the split, with the odd cases placed in the second thread's half."""

from __future__ import annotations

import copy
import re

import ferroptim
import pytest
import torch
from optim_testlib import assert_snapshots_equal, snapshot

COUNT = 300  # two halves of 150: both above the 64-parameter minimum per thread


@pytest.fixture(autouse=True)
def _two_threads():
    torch.set_num_threads(2)


def make_params(count: int = COUNT, seed: int = 0) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(3 + i % 5, generator=gen)) for i in range(count)]


def set_grads(params, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)


def two_groups(params):
    return [{"params": params[:140]}, {"params": params[140:], "lr": 0.05, "weight_decay": 0.3}]


def run(threads: int, impl, steps: int = 3):
    torch.set_num_threads(threads)
    params = make_params()
    opt = impl.AdamW(two_groups(params), lr=0.01)
    for k in range(steps):
        set_grads(params, seed=10 + k)
        opt.step()
    return params, opt


def test_many_parameters_on_two_threads_match_one_thread_and_torch():
    params2, opt2 = run(2, ferroptim)
    params1, opt1 = run(1, ferroptim)
    assert_snapshots_equal(snapshot(params2, opt2), snapshot(params1, opt1), "2 vs 1 thread:")
    ref_params, _ = run(2, torch.optim)
    for ours, ref in zip(params2, ref_params):
        torch.testing.assert_close(ours.detach(), ref.detach(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("bad", [[250], [40, 250]])
def test_the_first_invalid_parameter_in_order_is_named_and_nothing_changes(bad):
    params, opt = run(2, ferroptim, steps=1)
    for i in bad:
        state = opt.state[params[i]]
        state["exp_avg_sq"] = torch.zeros(len(params[i]) + 1)
    set_grads(params, seed=99)
    before = snapshot(params, opt)
    # params[250] is the 111th parameter of the second group.
    first = bad[0]
    where = f"params[{first}] in group 0" if first < 140 else f"params[{first - 140}] in group 1"
    with pytest.raises(RuntimeError, match=rf"exp_avg_sq of {re.escape(where)}"):
        opt.step()
    assert_snapshots_equal(snapshot(params, opt), before, "after the failed step:")


@pytest.mark.skipif(not hasattr(torch, "_lazy_clone"), reason="torch without copy-on-write")
def test_copy_on_write_parameter_in_the_second_half_is_materialised_first():
    params, opt = run(2, ferroptim, steps=1)
    ref_params, ref_opt = run(2, torch.optim, steps=1)
    for p, r in zip(params, ref_params):
        r.data.copy_(p.data)
    ref_opt.load_state_dict(copy.deepcopy(opt.state_dict()))  # torch would share the tensors
    source = params[260].detach().clone()
    kept = source.clone()
    params[260].data = torch._lazy_clone(source)
    for ps in (params, ref_params):
        set_grads(ps, seed=7)
    opt.step()
    ref_opt.step()
    assert torch.equal(source, kept), "the copy-on-write source was written"
    for ours, ref in zip(params, ref_params):
        torch.testing.assert_close(ours.detach(), ref.detach(), rtol=1e-6, atol=1e-7)


def test_every_written_tensor_changes_version_in_both_halves():
    params, opt = run(2, ferroptim, steps=1)
    written = [t for p in params for t in (p, opt.state[p]["exp_avg"], opt.state[p]["exp_avg_sq"])]
    before = [t._version for t in written]
    set_grads(params, seed=5)
    grads = [p.grad._version for p in params]
    opt.step()
    assert all(t._version > v for t, v in zip(written, before))
    assert [p.grad._version for p in params] == grads


def test_inference_tensors_step_inside_inference_mode_as_torch_does():
    # Inference tensors have no version counter: the split bumps skip them on any thread.
    results = []
    for impl in (ferroptim, torch.optim):
        with torch.inference_mode():
            params = make_params()
            set_grads(params, seed=3)
            opt = impl.AdamW(two_groups(params), lr=0.01)
            for _ in range(2):
                opt.step()
        results.append(params)
    for ours, ref in zip(*results):
        torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-7)
