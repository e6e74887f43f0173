"""state_dict interchange with torch.optim and save/load round trips."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from optim_testlib import (
    TOLERANCES,
    assert_snapshots_close,
    assert_snapshots_equal,
    make_data,
    make_mlp,
    make_opt,
    snapshot,
    split_groups,
    train,
)

CASES = [
    pytest.param("SGD", {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.01}, None, id="SGD"),
    pytest.param("SGD", {"lr": 0.05}, None, id="SGD-no_momentum"),
    pytest.param("Adam", {"lr": 0.01, "amsgrad": True, "weight_decay": 0.05}, None, id="Adam"),
    pytest.param("AdamW", {"lr": 0.01}, None, id="AdamW"),
    pytest.param(
        "Adam",
        {"lr": 0.01},
        ({"lr": 0.003, "amsgrad": True}, {"betas": (0.8, 0.95)}),
        id="Adam-two_groups",
    ),
]

FIRST, SECOND = 20, 30  # steps before / after the hand-over


def start(impl, name, kwargs, groups):
    model = make_mlp()
    opt = make_opt(impl, name, split_groups(model, groups), **kwargs)
    return model, opt


def hyperparameters(sd):
    """Param-group settings without torch's implementation selectors (foreach/fused)."""
    skip = ("foreach", "fused")
    return [{k: v for k, v in g.items() if k not in skip} for g in sd["param_groups"]]


@pytest.mark.parametrize(("name", "kwargs", "groups"), CASES)
@pytest.mark.parametrize("direction", ["ours_to_torch", "torch_to_ours"])
def test_state_dict_interchange_with_torch(name, kwargs, groups, direction):
    src_impl, dst_impl = "ours", "forloop"
    if direction == "torch_to_ours":
        src_impl, dst_impl = dst_impl, src_impl
    data = make_data()
    model, opt = start(src_impl, name, kwargs, groups)
    train(model, opt, data, FIRST)

    # hand the state over to the other implementation, on a copy of the model
    model2 = copy.deepcopy(model)
    opt2 = make_opt(dst_impl, name, split_groups(model2, groups), **kwargs)
    sd = copy.deepcopy(opt.state_dict())  # state_dict() returns the live state tensors
    opt2.load_state_dict(sd)
    loaded = snapshot(model2.parameters(), opt2)
    assert_snapshots_equal(loaded, snapshot(model.parameters(), opt), "right after loading:")
    assert hyperparameters(opt2.state_dict()) == hyperparameters(sd)

    train(model, opt, data, SECOND)  # the original continues
    train(model2, opt2, data, SECOND)  # the other implementation continues
    rtol, atol = TOLERANCES[torch.float32]
    assert_snapshots_close(
        snapshot(model2.parameters(), opt2), snapshot(model.parameters(), opt), rtol, atol
    )


@pytest.mark.parametrize(("name", "kwargs", "groups"), CASES)
def test_state_dict_format_matches_torch(name, kwargs, groups):
    """Same keys, dtypes and shapes as torch's state_dict after the same steps."""
    data = make_data()
    sds = []
    for impl in ("ours", "forloop"):
        model, opt = start(impl, name, kwargs, groups)
        train(model, opt, data, 3)
        sds.append(opt.state_dict())
    ours, ref = sds
    assert hyperparameters(ours) == hyperparameters(ref)
    assert [g["params"] for g in ours["param_groups"]] == [g["params"] for g in ref["param_groups"]]
    assert sorted(ours["state"]) == sorted(ref["state"])
    for i, st in ref["state"].items():
        assert sorted(ours["state"][i]) == sorted(st), f"param {i}"
        for key, value in st.items():
            got = ours["state"][i][key]
            assert torch.is_tensor(got), f"param {i} state[{key!r}] is {type(got)}"
            assert (got.dtype, got.shape, got.device) == (value.dtype, value.shape, value.device), (
                f"param {i} state[{key!r}]"
            )


@pytest.mark.parametrize(("name", "kwargs", "groups"), CASES)
def test_save_load_resume_is_bit_identical(name, kwargs, groups):
    data = make_data()
    # uninterrupted run
    model, opt = start("ours", name, kwargs, groups)
    train(model, opt, data, FIRST + SECOND)
    uninterrupted = snapshot(model.parameters(), opt)

    # interrupted run: save after FIRST steps, load into fresh objects, continue
    model, opt = start("ours", name, kwargs, groups)
    train(model, opt, data, FIRST)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    del model, opt
    buf.seek(0)
    ckpt = torch.load(buf)  # weights_only=True (torch's default) must suffice
    model = make_mlp(seed=123)  # different init: everything must come from the checkpoint
    model.load_state_dict(ckpt["model"])
    opt = make_opt("ours", name, split_groups(model, groups), **kwargs)
    opt.load_state_dict(ckpt["opt"])
    train(model, opt, data, SECOND)
    assert_snapshots_equal(snapshot(model.parameters(), opt), uninterrupted, "resumed run:")


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW"])
def test_load_state_dict_casts_state_like_torch(name):
    """A float32 checkpoint loaded for float64 params: torch casts the state to the param
    dtype (except 'step'); training then continues like torch does."""
    kwargs = {"lr": 0.01, "momentum": 0.9} if name == "SGD" else {"lr": 0.01}
    data32, data64 = make_data(), make_data(torch.float64)
    model, opt = start("ours", name, kwargs, None)
    train(model, opt, data32, 5)
    sd = opt.state_dict()
    results = []
    for impl in ("ours", "forloop"):
        m = copy.deepcopy(model).double()
        o = make_opt(impl, name, m.parameters(), **kwargs)
        o.load_state_dict(copy.deepcopy(sd))
        for st in o.state.values():
            for key, value in st.items():
                want = torch.float32 if key == "step" else torch.float64
                assert value.dtype == want, f"{impl}: state[{key!r}] {value.dtype}"
        train(m, o, data64, 10)
        results.append(snapshot(m.parameters(), o))
    rtol, atol = TOLERANCES[torch.float64]
    assert_snapshots_close(results[0], results[1], rtol, atol)
