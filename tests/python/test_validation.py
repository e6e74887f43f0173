"""Bad input: constructor validation (inherited from torch.optim), sparse gradients, and the
guarantee that a failed step leaves parameters and optimizer state exactly unchanged."""

from __future__ import annotations

import copy
import re

import pytest
import torch
from optim_testlib import OURS, assert_snapshots_equal, snapshot


def params(n=2):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(4, 3, generator=g).requires_grad_() for _ in range(n)]


BAD_HYPERPARAMETERS = [
    pytest.param("SGD", {"lr": -0.1}, "-0.1", id="SGD-negative_lr"),
    pytest.param("SGD", {"lr": 0.1, "momentum": -0.5}, "-0.5", id="SGD-negative_momentum"),
    pytest.param("SGD", {"lr": 0.1, "weight_decay": -0.25}, "-0.25", id="SGD-negative_wd"),
    pytest.param("SGD", {"lr": 0.1, "nesterov": True}, "Nesterov", id="SGD-nesterov_no_momentum"),
    pytest.param(
        "SGD",
        {"lr": 0.1, "momentum": 0.9, "dampening": 0.1, "nesterov": True},
        "Nesterov",
        id="SGD-nesterov_dampening",
    ),
    pytest.param("Adam", {"lr": -0.001}, "-0.001", id="Adam-negative_lr"),
    pytest.param("Adam", {"eps": -1e-8}, "-1e-08", id="Adam-negative_eps"),
    pytest.param("Adam", {"weight_decay": -0.5}, "-0.5", id="Adam-negative_wd"),
    pytest.param("Adam", {"betas": (1.0, 0.999)}, "1.0", id="Adam-beta1_one"),
    pytest.param("Adam", {"betas": (-0.1, 0.999)}, "-0.1", id="Adam-beta1_negative"),
    pytest.param("Adam", {"betas": (0.9, 1.5)}, "1.5", id="Adam-beta2_above_one"),
    pytest.param("Adam", {"betas": (0.9, -0.75)}, "-0.75", id="Adam-beta2_negative"),
    pytest.param("AdamW", {"lr": -0.01}, "-0.01", id="AdamW-negative_lr"),
    pytest.param("AdamW", {"eps": -0.125}, "-0.125", id="AdamW-negative_eps"),
    pytest.param("AdamW", {"weight_decay": -0.01}, "-0.01", id="AdamW-negative_wd"),
    pytest.param("AdamW", {"betas": (0.9, 1.0)}, "1.0", id="AdamW-beta2_one"),
]


@pytest.mark.parametrize(("name", "kwargs", "text"), BAD_HYPERPARAMETERS)
def test_bad_hyperparameter_raises_value_error(name, kwargs, text):
    with pytest.raises(ValueError, match=re.escape(text)):
        getattr(OURS, name)(params(), **kwargs)


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW"])
def test_parameter_in_two_groups_raises(name):
    p = params()
    with pytest.raises(ValueError, match="more than one parameter group"):
        getattr(OURS, name)([{"params": p}, {"params": [p[0]]}], lr=0.1)
    opt = getattr(OURS, name)([{"params": p}], lr=0.1)
    with pytest.raises(ValueError, match="more than one parameter group"):
        opt.add_param_group({"params": [p[1]]})


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW"])
def test_empty_parameter_list_raises(name):
    with pytest.raises(ValueError, match="empty parameter list"):
        getattr(OURS, name)([], lr=0.1)


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW"])
def test_differentiable_is_refused(name):
    with pytest.raises((RuntimeError, ValueError), match="(?i)differentiable"):
        getattr(OURS, name)(params(), lr=0.1, differentiable=True)


# ----------------------------------------------------------------------------------------
# A failed step mutates nothing
# ----------------------------------------------------------------------------------------

FAIL_KWARGS = {
    "SGD": {"lr": 0.1, "momentum": 0.9},
    "SGD-no_momentum": {"lr": 0.1},
    "Adam": {"lr": 0.01, "amsgrad": True, "weight_decay": 0.1},
    "AdamW": {"lr": 0.01},
}


def sparse_grad_like(p):
    dense = torch.zeros_like(p)
    dense[1] = 1.5
    return dense.to_sparse()


def full_snapshot(plist, opt):
    snap = snapshot(plist, opt)
    snap.extra["present"] = [p in opt.state for p in plist]
    snap.extra["groups"] = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
    return snap


@pytest.mark.parametrize("layout", ["one_group", "two_groups"])
@pytest.mark.parametrize("good_steps", [0, 3], ids=["first_step", "after_3_steps"])
@pytest.mark.parametrize("variant", list(FAIL_KWARGS))
def test_sparse_gradient_raises_and_mutates_nothing(variant, good_steps, layout):
    name = variant.split("-")[0]
    plist = params(3)
    if layout == "one_group":
        groups = [{"params": plist}]
    else:
        groups = [{"params": plist[:1]}, {"params": plist[1:], "lr": 0.05}]
    opt = getattr(OURS, name)(groups, **FAIL_KWARGS[variant])
    for k in range(good_steps):
        for i, p in enumerate(plist):
            p.grad = torch.full_like(p, 0.1 * (k + i + 1))
        opt.step()

    # dense grads for the first and last params, a sparse one in between
    for p in plist:
        p.grad = torch.full_like(p, 0.7)
    plist[1].grad = sparse_grad_like(plist[1])
    before = full_snapshot(plist, opt)
    with pytest.raises(RuntimeError, match="(?i)sparse"):
        opt.step()
    after = full_snapshot(plist, opt)
    assert_snapshots_equal(after, before, "after the failed step:")
    assert after.extra["present"] == before.extra["present"], "state entries were created"
    if good_steps == 0:
        assert not any(len(opt.state.get(p, {})) for p in plist), "lazy state was inserted"
    assert after.extra["groups"] == before.extra["groups"]

    # the optimizer is still usable and, fed the same dense grads, behaves like a twin that
    # never saw the failure
    twin_groups = [
        {**g, "params": [q.detach().clone().requires_grad_() for q in g["params"]]}
        for g in opt.param_groups
    ]
    twin = getattr(OURS, name)(twin_groups)
    twin.load_state_dict(copy.deepcopy(opt.state_dict()))
    twin_params = [q for g in twin.param_groups for q in g["params"]]
    for p, q in zip(plist, twin_params):
        p.grad = torch.full_like(p, 0.7)
        q.grad = torch.full_like(q, 0.7)
    opt.step()
    twin.step()
    assert_snapshots_equal(snapshot(plist, opt), snapshot(twin_params, twin), "after recovery:")


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW"])
def test_sparse_gradient_only_param(name):
    p = torch.zeros(5, 2, requires_grad=True)
    opt = getattr(OURS, name)([p], lr=0.1)
    p.grad = sparse_grad_like(p)
    with pytest.raises(RuntimeError, match="(?i)sparse"):
        opt.step()
    assert torch.equal(p.detach(), torch.zeros(5, 2))
    assert len(opt.state.get(p, {})) == 0


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW"])
def test_unsupported_dtype_fails_cleanly_or_matches_torch(name):
    """complex64 is outside ferroptim's dtype list: it must either raise without touching
    anything, or produce torch's result - never silently corrupt."""
    g = torch.Generator().manual_seed(0)
    init = [torch.randn(6, generator=g), torch.randn(3, 2, dtype=torch.complex64, generator=g)]
    grads = [torch.randn(6, generator=g), torch.randn(3, 2, dtype=torch.complex64, generator=g)]
    results = {}
    for impl in ("ours", "torch"):
        plist = [t.clone().requires_grad_() for t in init]
        if impl == "ours":
            try:
                opt = getattr(OURS, name)(plist, lr=0.1)
            except Exception:  # noqa: BLE001 - refusing the params up front is fine
                return
        else:
            opt = getattr(torch.optim, name)(plist, lr=0.1, foreach=False)
        for p, gr in zip(plist, grads):
            p.grad = gr.clone()
        try:
            opt.step()
        except Exception:  # noqa: BLE001 - any clean error is acceptable
            assert impl == "ours", "torch.optim itself failed"
            for p, t in zip(plist, init):
                assert torch.equal(p.detach(), t), "a failed step modified a parameter"
            assert not any(len(opt.state.get(p, {})) for p in plist), "state was inserted"
            return
        results[impl] = [p.detach().clone() for p in plist]
    for a, b in zip(results["ours"], results["torch"]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("variant", ["SGD", "Adam", "AdamW"])
def test_state_of_wrong_shape_raises_and_mutates_nothing(variant):
    """A state tensor that does not match its param (here: transposed shape, as from a
    checkpoint of another model) is caught by the native call's validation: nothing moves,
    not even the params / state processed before the bad one."""
    name = variant
    plist = params(3)
    opt = getattr(OURS, name)(plist, **FAIL_KWARGS[variant])
    for k in range(2):
        for i, p in enumerate(plist):
            p.grad = torch.full_like(p, 0.1 * (k + i + 1))
        opt.step()
    key = "momentum_buffer" if name == "SGD" else "exp_avg_sq"
    opt.state[plist[2]][key] = opt.state[plist[2]][key].t().contiguous()
    for p in plist:
        p.grad = torch.full_like(p, 0.7)
    before = full_snapshot(plist, opt)
    with pytest.raises((RuntimeError, ValueError)):
        opt.step()
    assert_snapshots_equal(full_snapshot(plist, opt), before, "after the failed step:")
