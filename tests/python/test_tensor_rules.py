"""Adafactor, Muon and SparseAdam (``rust/ferroptim/src/tensor_rules/``) beyond what torch's
optim_db cases cover: state layouts, shapes and layouts of parameters, torch's step-time
errors, and the quirks of torch's implementations, all against torch.optim bit for bit."""

from __future__ import annotations

import copy

import pytest
import torch
from optim_testlib import (
    OURS,
    assert_snapshots_equal,
    make_data,
    make_mlp,
    make_opt,
    mlp_loss,
    run_manual,
    snapshot,
    train,
)


def shaped(*shapes, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=torch.float64).to(dtype) for s in shapes]


# ----------------------------------------------------------------------------------------
# Adafactor
# ----------------------------------------------------------------------------------------


def test_adafactor_factors_every_parameter_of_more_than_one_dimension():
    init = shaped((), (7,), (5, 3), (2, 4, 6))
    opt = OURS.Adafactor([p.clone().requires_grad_() for p in init])
    for p in opt.param_groups[0]["params"]:
        p.grad = torch.ones_like(p)
    opt.step()
    layouts = [
        {k: tuple(v.shape) for k, v in opt.state[p].items()} for p in opt.param_groups[0]["params"]
    ]
    assert layouts == [
        {"step": (), "variance": ()},
        {"step": (), "variance": (7,)},
        {"step": (), "row_var": (5, 1), "col_var": (1, 3)},
        {"step": (), "row_var": (2, 4, 1), "col_var": (2, 1, 6)},
    ]


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"eps": (1e-20, 1e-2), "weight_decay": 0.1, "maximize": True, "d": 1.0, "lr": 0.5},
        # A tensor lr: torch computes 1 − lr·λ and α in float32 (and min(lr, 1/√t) switches
        # from the tensor to the float from step 5 on here).
        {"lr": torch.tensor(0.45), "weight_decay": 0.2},
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_adafactor_matches_torch_bit_for_bit_on_every_shape(kwargs, dtype):
    init = shaped((), (7,), (5, 3), (3, 1), (1, 4), (2, 4, 6), dtype=dtype)
    ours = run_manual("ours", "Adafactor", kwargs, init, steps=12)
    ref = run_manual("forloop", "Adafactor", kwargs, init, steps=12)
    assert_snapshots_equal(ours, ref, what=f"Adafactor {kwargs} {dtype}")


def test_adafactor_non_contiguous_parameters_and_gradients():
    init = [shaped((6, 4))[0].t(), shaped((9,), seed=1)[0][::2]]
    layouts = ["transposed", "strided"]
    ours = run_manual("ours", "Adafactor", {}, init, steps=8, grad_layouts=layouts)
    ref = run_manual("forloop", "Adafactor", {}, init, steps=8, grad_layouts=layouts)
    assert_snapshots_equal(ours, ref, what="Adafactor non-contiguous")


def test_adafactor_takes_eps1_from_the_first_parameter_of_the_group():
    """torch fills ``eps[0] = None`` with the machine epsilon of the group's first parameter
    and keeps it for the others (float64 then float32 here): so does ferroptim."""
    init = [*shaped((4, 3), dtype=torch.float64), *shaped((5,), seed=2)]
    ours = run_manual("ours", "Adafactor", {}, init, steps=6)
    ref = run_manual("forloop", "Adafactor", {}, init, steps=6)
    assert_snapshots_equal(ours, ref, what="Adafactor mixed dtypes")


# ----------------------------------------------------------------------------------------
# Muon
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(3,), (2, 3, 4)])
def test_muon_rejects_parameters_that_are_not_matrices_as_torch_does(shape):
    p = [torch.zeros(4, 4, requires_grad=True), torch.zeros(shape, requires_grad=True)]
    with pytest.raises(ValueError) as ref:
        torch.optim.Muon(p)
    with pytest.raises(ValueError) as ours:
        OURS.Muon(p)
    assert str(ours.value) == str(ref.value)


@pytest.mark.parametrize("adjust_lr_fn", [None, "original", "match_rms_adamw"])
@pytest.mark.parametrize("nesterov", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_muon_matches_torch_bit_for_bit(adjust_lr_fn, nesterov, dtype):
    """Tall, wide and square matrices; with bfloat16 and ``nesterov=False`` torch's
    ``.bfloat16()`` returns the momentum buffer itself and normalizes it in place: the same
    happens here."""
    init = shaped((8, 3), (3, 8), (5, 5), dtype=dtype)
    kwargs = {"nesterov": nesterov, "adjust_lr_fn": adjust_lr_fn, "lr": 0.02}
    ours = run_manual("ours", "Muon", kwargs, init, steps=10)
    ref = run_manual("forloop", "Muon", kwargs, init, steps=10)
    assert_snapshots_equal(ours, ref, what=f"Muon {kwargs} {dtype}")


@pytest.mark.parametrize(
    "group_change",
    [{"ns_steps": 100}, {"ns_coefficients": (1.0, 2.0)}],
)
def test_muon_step_time_errors_are_torchs_and_change_nothing(group_change):
    results = {}
    for impl in ("ours", "forloop"):
        p = torch.nn.Parameter(shaped((4, 6))[0])
        opt = make_opt(impl, "Muon", [p])
        p.grad = torch.ones_like(p)
        opt.step()
        opt.param_groups[0].update(group_change)
        before = snapshot([p], opt)
        with pytest.raises(ValueError) as err:
            opt.step()
        results[impl] = str(err.value)
        if impl == "ours":
            assert_snapshots_equal(snapshot([p], opt), before, what="Muon failed step")
    assert results["ours"] == results["forloop"]


# ----------------------------------------------------------------------------------------
# SparseAdam
# ----------------------------------------------------------------------------------------


def embedding_run(impl: str, kwargs: dict, dtype: torch.dtype, steps: int = 10):
    """An ``nn.Embedding(sparse=True)`` whose batches repeat indices: its gradients are
    uncoalesced sparse tensors, which SparseAdam must coalesce (sum duplicates) first."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        emb = torch.nn.Embedding(20, 4, sparse=True).to(dtype)
    opt = make_opt(impl, "SparseAdam", emb.parameters(), **kwargs)
    g = torch.Generator().manual_seed(5)
    for _ in range(steps):
        idx = torch.randint(0, 8, (12,), generator=g)  # rows 8..19 never move
        opt.zero_grad()
        emb(idx).to(torch.float64).pow(2).sum().backward()
        opt.step()
    return snapshot(emb.parameters(), opt)


@pytest.mark.parametrize("kwargs", [{}, {"lr": 0.05, "maximize": True, "betas": (0.5, 0.9)}])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_sparse_adam_embedding_matches_torch_bit_for_bit(kwargs, dtype):
    ours = embedding_run("ours", kwargs, dtype)
    ref = embedding_run("forloop", kwargs, dtype)
    assert_snapshots_equal(ours, ref, what=f"SparseAdam {kwargs} {dtype}")
    assert isinstance(ours.state[0]["step"], int) and ours.state[0]["step"] == 10


def test_sparse_adam_counts_a_step_without_entries_and_changes_nothing_else():
    results = []
    for impl in ("ours", "forloop"):
        p = torch.nn.Parameter(torch.ones(3, 2))
        opt = make_opt(impl, "SparseAdam", [p])
        p.grad = torch.sparse_coo_tensor(
            torch.zeros(2, 0, dtype=torch.long), [], (3, 2), check_invariants=True
        )
        opt.step()
        results.append(snapshot([p], opt))
    assert_snapshots_equal(results[0], results[1], what="empty sparse gradient")
    assert results[0].state[0]["step"] == 1
    assert torch.equal(results[0].params[0], torch.ones(3, 2))


# ----------------------------------------------------------------------------------------
# All three: torch's step-time errors, before anything changes
# ----------------------------------------------------------------------------------------

WRONG_GRADIENT = {
    "Adafactor": lambda g: g.to_sparse(),
    "Muon": lambda g: g.to_sparse(),
    "SparseAdam": lambda g: g,  # dense
}


@pytest.mark.parametrize("name", sorted(WRONG_GRADIENT))
def test_wrong_gradient_layout_raises_torchs_error_and_changes_nothing(name):
    messages = {}
    for impl in ("ours", "forloop"):
        params = [torch.nn.Parameter(t) for t in shaped((4, 3), (5, 2))]
        opt = make_opt(impl, name, params)
        good = (lambda g: g.to_sparse()) if name == "SparseAdam" else (lambda g: g)
        for p in params:
            p.grad = good(torch.ones_like(p))
        opt.step()
        before = snapshot(params, opt)
        params[0].grad = good(torch.ones_like(params[0]))
        params[1].grad = WRONG_GRADIENT[name](torch.ones_like(params[1]))
        with pytest.raises(RuntimeError) as err:
            opt.step()
        messages[impl] = str(err.value)
        if impl == "ours":
            assert_snapshots_equal(snapshot(params, opt), before, what=f"{name} failed step")
    assert messages["ours"] == messages["forloop"]


@pytest.mark.parametrize("name", ["Adafactor", "LBFGS", "Muon", "SparseAdam"])
def test_state_dict_round_trip_through_torch_keeps_training_identical(name):
    """ours → torch → ours: after every hand-over the run continues as torch's own run."""
    data = make_data(torch.float64)
    runs = []
    for chain in (("ours", "forloop", "ours"), ("forloop", "forloop", "forloop")):
        model = make_mlp(torch.float64)
        opt = None
        for impl in chain:
            new = make_opt(impl, name, model.parameters())
            if opt is not None:
                new.load_state_dict(copy.deepcopy(opt.state_dict()))
            opt = new
            train(model, opt, data, 5)
        runs.append(snapshot(model.parameters(), opt))
    assert_snapshots_equal(runs[0], runs[1], what=f"{name} round trip")


# ----------------------------------------------------------------------------------------
# LBFGS
# ----------------------------------------------------------------------------------------


def lbfgs_run(impl: str, kwargs: dict, dtype=torch.float64, steps: int = 4):
    model = make_mlp(dtype)
    data = make_data(dtype)
    opt = make_opt(impl, "LBFGS", model.parameters(), **kwargs)
    losses = []
    for _ in range(steps):

        def closure():
            opt.zero_grad()
            loss = mlp_loss(model, data)
            loss.backward()
            return loss

        losses.append(opt.step(closure))
    return snapshot(model.parameters(), opt), losses, opt.state[opt._params[0]]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_iter": 1},  # no re-evaluation inside a step
        {"line_search_fn": "strong_wolfe", "max_eval": 6},  # line search runs out of evaluations
        {"line_search_fn": "strong_wolfe", "history_size": 2, "lr": 0.3},
        {"history_size": 1, "tolerance_change": 1e-3, "lr": torch.tensor(0.2)},
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lbfgs_matches_torch_bit_for_bit_including_state_types(kwargs, dtype):
    """Iterates, the returned (first) losses, evaluation counts and every state entry with
    its Python type (ints, floats, 0-d tensors, lists) equal torch's."""
    ours, our_losses, our_state = lbfgs_run("ours", kwargs, dtype)
    ref, ref_losses, ref_state = lbfgs_run("forloop", kwargs, dtype)
    assert_snapshots_equal(ours, ref, what=f"LBFGS {kwargs} {dtype}")
    assert [x.item() for x in our_losses] == [x.item() for x in ref_losses]
    assert all(torch.is_tensor(x) and x.requires_grad for x in our_losses)
    assert sorted(our_state) == sorted(ref_state)
    assert our_state["func_evals"] == ref_state["func_evals"] >= 4


def test_lbfgs_stops_at_once_when_the_gradient_is_already_small():
    """torch returns after one evaluation, storing only the counters: so does ferroptim."""
    states = []
    for impl in ("ours", "forloop"):
        p = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
        opt = make_opt(impl, "LBFGS", [p])
        opt.step(lambda p=p: ((p - 1e-9) ** 2).sum().backward() or (p**2).sum())
        states.append(dict(opt.state[p]))
    assert states[0] == states[1] == {"func_evals": 1, "n_iter": 0}


def test_lbfgs_closure_errors_propagate_unchanged():
    p = torch.nn.Parameter(torch.ones(3))
    opt = OURS.LBFGS([p])
    calls = []

    def closure():
        calls.append(1)
        if len(calls) == 2:
            raise KeyError("from the closure")
        opt.zero_grad()
        loss = (p**2).sum()
        loss.backward()
        return loss

    with pytest.raises(KeyError, match="from the closure"):
        opt.step(closure)


def test_lbfgs_rejects_an_unknown_line_search_as_torch_does():
    messages = []
    for impl in ("ours", "forloop"):
        p = torch.nn.Parameter(torch.ones(3))
        opt = make_opt(impl, "LBFGS", [p], line_search_fn="armijo")

        def closure(p=p):
            p.grad = 2 * p.detach()
            return (p**2).sum()

        with pytest.raises(RuntimeError) as err:
            opt.step(closure)
        messages.append(str(err.value))
    assert messages[0] == messages[1]
