"""Adan, AdEMAMix, ScheduleFreeAdamW, Lamb and LARS against ``pytorch_optimizer`` 4.1.0 (PyPI
``pytorch-optimizer``), adapted by ``optim_testlib.pytorch_optimizer_reference`` to the
authors' reference code where the two differ (AdEMAMix's warmup schedules; no ``1e-15`` under
ScheduleFreeAdamW's square root): step by step along the oracle's 50-step float64 trajectory
(``optim_testlib.synced_steps``, see test_optim_db.py), float64 steps match to rtol 1e-10 /
atol 1e-12 and float32 steps are as accurate as the oracle's own float32 steps. Also
ScheduleFreeAdamW's ``train()``/``eval()`` switching, and thread-count independence."""

from __future__ import annotations

import copy
import math
import re

import pytest
import torch
from optim_testlib import (
    OURS,
    TOLERANCES,
    assert_snapshots_close,
    assert_snapshots_equal,
    check_float32_steps,
    check_float64_steps,
    make_data,
    make_mlp,
    make_noise,
    make_opt,
    run_manual,
    run_mlp,
    snapshot,
    train,
)

F64 = TOLERANCES[torch.float64]

CASES = [
    pytest.param("Adan", {}, id="Adan-default"),
    pytest.param("Adan", {"lr": 0.01, "betas": (0.9, 0.9, 0.99)}, id="Adan-betas"),
    pytest.param("Adan", {"lr": 0.01, "weight_decay": 0.1}, id="Adan-prox"),
    pytest.param("Adan", {"lr": 0.01, "weight_decay": 0.1, "no_prox": True}, id="Adan-no_prox"),
    pytest.param("AdEMAMix", {}, id="AdEMAMix-default"),
    pytest.param(
        "AdEMAMix", {"lr": 0.01, "alpha": 5.0, "betas": (0.8, 0.99, 0.999)}, id="AdEMAMix-betas"
    ),
    pytest.param(
        "AdEMAMix",
        {"lr": 0.01, "alpha": 8.0, "alpha_warmup": 30, "beta3_warmup": 30},
        id="AdEMAMix-warmup",
    ),
    pytest.param("AdEMAMix", {"lr": 0.01, "weight_decay": 0.1}, id="AdEMAMix-weight_decay"),
    pytest.param("AdEMAMix", {"betas": (0.0, 0.999, 0.9999)}, id="AdEMAMix-beta1_0"),
    pytest.param("AdEMAMix", {"lr": 0.01, "maximize": True}, id="AdEMAMix-maximize"),
    pytest.param("ScheduleFreeAdamW", {}, id="SF-default"),
    pytest.param("ScheduleFreeAdamW", {"lr": 0.01, "warmup_steps": 20}, id="SF-warmup"),
    pytest.param("ScheduleFreeAdamW", {"lr": 0.01, "weight_decay": 0.05}, id="SF-weight_decay"),
    pytest.param(
        "ScheduleFreeAdamW",
        {"lr": 0.01, "r": 1.0, "weight_lr_power": 0.0, "betas": (0.95, 0.99)},
        id="SF-r-betas",
    ),
    pytest.param("ScheduleFreeAdamW", {"lr": 0.01, "maximize": True}, id="SF-maximize"),
    pytest.param("Lamb", {}, id="Lamb-default"),
    pytest.param("Lamb", {"lr": 0.01, "weight_decay": 0.1}, id="Lamb-decoupled"),
    pytest.param(
        "Lamb", {"lr": 0.01, "weight_decay": 0.1, "weight_decouple": False}, id="Lamb-coupled"
    ),
    pytest.param(
        "Lamb", {"lr": 0.01, "grad_averaging": False, "betas": (0.8, 0.99)}, id="Lamb-no-avg"
    ),
    pytest.param("Lamb", {"lr": 0.01, "adam": True}, id="Lamb-adam"),
    pytest.param("Lamb", {"lr": 0.01, "maximize": True}, id="Lamb-maximize"),
    pytest.param("LARS", {"lr": 0.5}, id="LARS-default"),
    pytest.param("LARS", {"lr": 0.5, "weight_decay": 0.1}, id="LARS-weight_decay"),
    pytest.param(
        "LARS", {"lr": 0.5, "nesterov": True, "dampening": 0.1}, id="LARS-nesterov-dampening"
    ),
    pytest.param("LARS", {"lr": 1.0, "momentum": 0.0}, id="LARS-no-momentum"),
    pytest.param(
        "LARS", {"lr": 0.5, "trust_coefficient": 0.02, "maximize": True}, id="LARS-maximize"
    ),
]


@pytest.mark.parametrize(("name", "kwargs"), CASES)
def test_float64_steps_match_reference(name, kwargs):
    check_float64_steps(name, kwargs, *F64)


@pytest.mark.parametrize(("name", "kwargs"), CASES)
def test_float32_steps_are_as_accurate_as_reference(name, kwargs):
    check_float32_steps(name, kwargs)


@pytest.mark.parametrize(("name", "kwargs"), [CASES[2], CASES[6], CASES[11], CASES[16], CASES[22]])
def test_two_groups_match_reference(name, kwargs):
    lr = kwargs.get("lr", 1e-3)
    groups = ({}, {"lr": 0.5 * lr})
    check_float64_steps(name, kwargs, *F64, groups=groups, steps=20)


@pytest.mark.parametrize("name", ["Adan", "AdEMAMix", "ScheduleFreeAdamW", "Lamb", "LARS"])
def test_maximize_is_minimizing_the_negated_gradient(name):
    """maximize=True with gradients g steps exactly as maximize=False with −g. (Adan's oracle
    is left out for maximize: pytorch_optimizer 4.1.0 initialises ``previous_grad`` from the
    gradient before negating it, so its first gradient difference is −2g instead of 0.)"""
    init = [torch.randn(7, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)]
    noise = make_noise(init, 6)
    kwargs = {"lr": 0.01, "weight_decay": 0.1}
    up = run_manual("ours", name, {**kwargs, "maximize": True}, init, 6, noise=noise)
    negated = [[-n for n in step] for step in noise]
    params = [t.clone().requires_grad_(True) for t in init]
    opt = getattr(OURS, name)(params, **kwargs)
    for k in range(6):
        for p, n in zip(params, negated[k]):
            p.grad = -(p.detach() * 0.5) + n
        opt.step()
    down = snapshot(params, opt)
    assert_snapshots_equal(up, down, what=f"{name} maximize")


def test_ademamix_warmup_differs_from_unadapted_oracle_only_by_the_log_epsilon():
    """pytorch_optimizer's own β₃ schedule is the reference's without ``ln(β + 1e-8)`` (which
    moves ln 0.9999, and so β₃'s half-life, by 1e-4 relative): during the warmup the
    trajectories part, at the 1e-5 level."""
    import pytorch_optimizer

    kwargs = {"lr": 0.01, "alpha": 8.0, "alpha_warmup": 30, "beta3_warmup": 30}
    ours = run_mlp("ours", "AdEMAMix", kwargs, dtype=torch.float64)
    model = make_mlp(torch.float64)
    opt = pytorch_optimizer.AdEMAMix(
        model.parameters(),
        lr=0.01,
        alpha=8.0,
        t_alpha_beta3=30,
        weight_decouple=True,
        foreach=False,
    )
    train(model, opt, make_data(torch.float64), 50)
    diffs = [(a - b).abs().max().item() for a, b in zip(ours.params, model.parameters())]
    assert 1e-7 < max(diffs) < 1e-4


def test_ademamix_alpha_warmup_by_hand():
    """One element, g = 1 every step, β₁ = β₂ = 0 and no β₃ warmup: m₁ = 1, ν = 1, and the
    slow EMA is 1 − β₃ᵗ, so each step moves θ by −lr(1 + α(t)(1 − β₃ᵗ))/(1 + eps)."""
    p = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = OURS.AdEMAMix([p], lr=0.1, betas=(0.0, 0.0, 0.5), alpha=4.0, alpha_warmup=4)
    expected = 0.0
    for t in range(1, 7):
        p.grad = torch.ones_like(p)
        opt.step()
        alpha_t = 4.0 * min(t / 4, 1.0)
        expected -= 0.1 * (1.0 + alpha_t * (1.0 - 0.5**t)) / (1.0 + 1e-8)
        assert math.isclose(p.item(), expected, rel_tol=1e-14), t


def sf_pair(kwargs, steps=25):
    """Ours and the reference after ``steps`` float64 steps on the MLP."""
    out = []
    for impl in ("ours", "forloop"):
        model = make_mlp(torch.float64)
        opt = make_opt(impl, "ScheduleFreeAdamW", model.parameters(), **kwargs)
        train(model, opt, make_data(torch.float64), steps)
        out.append((model, opt))
    return out


def test_schedule_free_eval_and_train_switch_like_the_reference():
    """eval() moves the parameters to x, train() back to y (within rounding), as the
    reference does; the group's mode and counters match the reference's."""
    kwargs = {"lr": 0.02, "warmup_steps": 5, "weight_decay": 0.01}
    (model, opt), (ref_model, ref_opt) = sf_pair(kwargs)
    y = [p.detach().clone() for p in model.parameters()]
    opt.eval()
    ref_opt.eval()
    assert all(not g["train_mode"] for g in opt.param_groups)
    ours_x, ref_x = snapshot(model.parameters(), opt), snapshot(ref_model.parameters(), ref_opt)
    assert_snapshots_close(ours_x, ref_x, *F64, what="x")
    # x is the average: y = (1 − β₁)z + β₁x
    for p_x, p_y, p in zip(ours_x.params, y, model.parameters()):
        z = opt.state[p]["z"]
        torch.testing.assert_close(0.1 * z + 0.9 * p_x, p_y, rtol=1e-12, atol=1e-13)
    opt.eval()  # a second eval() changes nothing
    assert_snapshots_equal(snapshot(model.parameters(), opt), ours_x, what="eval twice")
    opt.train()
    ref_opt.train()
    for p, p_y in zip(model.parameters(), y):
        torch.testing.assert_close(p.detach(), p_y, rtol=1e-12, atol=1e-13)
    group, ref_group = opt.param_groups[0], ref_opt.param_groups[0]
    assert group["k"] == ref_group["k"] == 25
    assert group["weight_sum"] == pytest.approx(ref_group["weight_sum"], rel=1e-15)
    assert group["lr_max"] == ref_group["lr_max"] == 0.02
    assert group["scheduled_lr"] == 0.02
    # training continues as the reference does
    train(model, opt, make_data(torch.float64), 10)
    train(ref_model, ref_opt, make_data(torch.float64), 10)
    assert_snapshots_close(
        snapshot(model.parameters(), opt), snapshot(ref_model.parameters(), ref_opt), *F64
    )


def test_schedule_free_step_in_eval_mode_raises_and_changes_nothing():
    (model, opt), _ = sf_pair({"lr": 0.01}, steps=3)
    opt.eval()
    before = snapshot(model.parameters(), opt)
    k = opt.param_groups[0]["k"]
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    with pytest.raises(RuntimeError, match="eval mode"):
        opt.step()
    assert opt.param_groups[0]["k"] == k
    assert_snapshots_equal(snapshot(model.parameters(), opt), before, what="eval step")


def test_schedule_free_warmup_and_average_weights_by_hand():
    """warmup_steps=4, r=0, weight_lr_power=2: lr_t = lr·t/4, c_t = lr_t² / Σ lr_s²."""
    p = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = OURS.ScheduleFreeAdamW([p], lr=0.4, warmup_steps=4)
    total = 0.0
    for t in range(1, 7):
        p.grad = torch.ones_like(p)
        opt.step()
        lr_t = 0.4 * min(t / 4, 1.0)
        total += lr_t**2
        group = opt.param_groups[0]
        assert group["k"] == t
        assert group["scheduled_lr"] == pytest.approx(lr_t, rel=1e-15)
        assert group["weight_sum"] == pytest.approx(total, rel=1e-14)
    # g = 1 always: v̂ = 1, ĝ = 1/(1 + eps); z = −ĝ Σ lr_t
    z = -sum(0.4 * min(t / 4, 1.0) for t in range(1, 7)) / (1.0 + 1e-8)
    torch.testing.assert_close(opt.state[p]["z"], torch.full((3,), z, dtype=torch.float64))


def test_schedule_free_state_dict_round_trip():
    """state_dict (in eval mode, as the reference advises) into a fresh optimizer: the same
    continuation."""
    kwargs = {"lr": 0.01, "warmup_steps": 5}
    (model, opt), _ = sf_pair(kwargs, steps=8)
    opt.eval()
    sd = copy.deepcopy(opt.state_dict())
    model2 = copy.deepcopy(model)
    opt2 = OURS.ScheduleFreeAdamW(model2.parameters(), **kwargs)
    opt2.load_state_dict(sd)
    for o, m in ((opt, model), (opt2, model2)):
        o.train()
        train(m, o, make_data(torch.float64), 5)
    assert_snapshots_equal(snapshot(model2.parameters(), opt2), snapshot(model.parameters(), opt))
    assert opt2.param_groups[0]["k"] == 13


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("Adan", {"lr": 0.01, "weight_decay": 0.1}),
        ("AdEMAMix", {"lr": 0.01, "alpha_warmup": 3, "beta3_warmup": 3, "weight_decay": 0.1}),
        ("ScheduleFreeAdamW", {"lr": 0.01, "warmup_steps": 2, "weight_decay": 0.1}),
        ("Lamb", {"lr": 0.01, "weight_decay": 0.1}),
        ("LARS", {"lr": 0.5, "weight_decay": 0.1}),
    ],
)
def test_thread_count_does_not_change_results(name, kwargs):
    """A large tensor (split across threads), small ones, float64/bfloat16 and a strided
    parameter: 1 and 2 threads give bit-identical parameters and state."""
    g = torch.Generator().manual_seed(5)
    init = [
        torch.randn(300_001, generator=g),
        torch.randn(33, 17, generator=g, dtype=torch.float64),
        torch.randn(2000, generator=g).to(torch.bfloat16),
        torch.randn(40, 50, generator=g).t(),
    ]
    layouts = ["contiguous", "contiguous", "contiguous", "strided"]
    noise = make_noise(init, 4)
    results = []
    for threads in (1, 2):
        torch.set_num_threads(threads)  # restored by the conftest fixture
        results.append(run_manual("ours", name, kwargs, init, 4, layouts, noise))
    assert_snapshots_equal(results[1], results[0], what=f"{name} 2 threads vs 1")


@pytest.mark.parametrize(
    ("name", "kwargs", "error", "text"),
    [
        ("Adan", {"lr": -1.0}, ValueError, "Invalid lr value: -1.0"),
        ("Adan", {"betas": (0.9, 0.9)}, ValueError, "Invalid betas value"),
        ("Adan", {"betas": (0.9, 1.0, 0.9)}, ValueError, "Invalid betas[1] value: 1.0"),
        ("Adan", {"max_grad_norm": 1.0}, ValueError, "Invalid max_grad_norm value: 1.0"),
        ("AdEMAMix", {"alpha": -2.0}, ValueError, "Invalid alpha value: -2.0"),
        ("AdEMAMix", {"beta3_warmup": 0}, ValueError, "Invalid beta3_warmup value: 0"),
        ("AdEMAMix", {"eps": -1e-3}, ValueError, "Invalid eps value: -0.001"),
        ("ScheduleFreeAdamW", {"betas": (0.0, 0.9)}, ValueError, "Invalid betas[0] value: 0.0"),
        ("ScheduleFreeAdamW", {"weight_decay": -1}, ValueError, "Invalid weight_decay value: -1"),
        ("Lamb", {"betas": (0.9, 1.0)}, ValueError, "Invalid betas[1] value: 1.0"),
        ("Lamb", {"eps": -1.0}, ValueError, "Invalid eps value: -1.0"),
        ("LARS", {"momentum": 1.0}, ValueError, "Invalid momentum value: 1.0"),
        ("LARS", {"trust_coefficient": -1.0}, ValueError, "Invalid trust_coefficient value: -1.0"),
    ],
)
def test_bad_hyperparameters_raise(name, kwargs, error, text):
    with pytest.raises(error, match=re.escape(text)):
        getattr(OURS, name)([torch.zeros(2, requires_grad=True)], **kwargs)


@pytest.mark.parametrize("name", ["Adan", "AdEMAMix", "ScheduleFreeAdamW"])
def test_defaults_are_the_reference_implementations(name):
    """The defaults of the authors' code (sail-sg/Adan, apple/ml-ademamix,
    facebookresearch/schedule_free), which the class docstrings cite."""
    expected = {
        "Adan": {"lr": 1e-3, "betas": (0.98, 0.92, 0.99), "eps": 1e-8, "no_prox": False},
        "AdEMAMix": {
            "lr": 1e-3,
            "betas": (0.9, 0.999, 0.9999),
            "alpha": 2.0,
            "beta3_warmup": None,
            "alpha_warmup": None,
            "eps": 1e-8,
            "weight_decay": 0.0,
        },
        "ScheduleFreeAdamW": {
            "lr": 0.0025,
            "betas": (0.9, 0.999),
            "eps": 1e-8,
            "weight_decay": 0.0,
            "warmup_steps": 0,
            "r": 0.0,
            "weight_lr_power": 2.0,
            "k": 0,
            "weight_sum": 0.0,
            "lr_max": -1.0,
        },
    }[name]
    defaults = getattr(OURS, name)([torch.zeros(2, requires_grad=True)]).defaults
    assert {k: defaults[k] for k in expected} == expected


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("Adan", {"lr": 0.01, "weight_decay": 0.1}),
        ("AdEMAMix", {"lr": 0.01, "alpha_warmup": 3, "beta3_warmup": 3, "weight_decay": 0.1}),
        ("ScheduleFreeAdamW", {"lr": 0.01, "warmup_steps": 2, "weight_decay": 0.1}),
        ("Lamb", {"lr": 0.01, "weight_decay": 0.1}),
        ("LARS", {"lr": 0.5, "weight_decay": 0.1}),
    ],
)
def test_half_precision_computes_in_float32_and_rounds_once(name, kwargs, dtype):
    """Half-precision parameters and state: each step equals the float32 step from the same
    (widened) values, rounded once to ``dtype``, bit for bit."""
    g = torch.Generator().manual_seed(6)
    half = torch.randn(5000, generator=g).to(dtype).requires_grad_(True)
    shadow = half.detach().float().requires_grad_(True)
    opt_half = getattr(OURS, name)([half], **kwargs)
    opt_f32 = getattr(OURS, name)([shadow], **kwargs)
    for _ in range(5):
        grad = torch.randn(5000, generator=g).to(dtype)
        half.grad, shadow.grad = grad, grad.float()
        opt_half.step()
        opt_f32.step()
        with torch.no_grad():  # round the float32 step's results once, as stored in `dtype`
            shadow.copy_(shadow.to(dtype).float())
            for value in opt_f32.state[shadow].values():
                if value.shape == shadow.shape:
                    value.copy_(value.to(dtype).float())
        assert torch.equal(half.detach().float(), shadow.detach())
        for key, value in opt_half.state[half].items():
            if value.shape == half.shape:
                assert value.dtype == dtype
                assert torch.equal(value.float(), opt_f32.state[shadow][key]), key


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("Adan", {"lr": 0.01, "weight_decay": 0.1}),
        ("AdEMAMix", {"lr": 0.01, "weight_decay": 0.1}),
        ("ScheduleFreeAdamW", {"lr": 0.01, "weight_decay": 0.1}),
        ("Lamb", {"lr": 0.01, "weight_decay": 0.1}),
        ("LARS", {"lr": 0.5, "weight_decay": 0.1}),
    ],
)
def test_empty_zero_dim_and_strided_tensors_match_reference(name, kwargs):
    """Empty tensors (norm 0: trust ratio 1), a 0-d tensor, a transposed matrix and a
    strided gradient, in float64, against the oracle."""
    g = torch.Generator().manual_seed(9)
    init = [
        torch.randn(6, 5, generator=g, dtype=torch.float64),
        torch.empty(0, 4, dtype=torch.float64),
        torch.tensor(1.5, dtype=torch.float64),
        torch.randn(7, 3, generator=g, dtype=torch.float64).t(),
        torch.randn(9, generator=g, dtype=torch.float64),
    ]
    layouts = ["contiguous", "contiguous", "contiguous", "transposed", "strided"]
    noise = make_noise(init, 6)
    ours = run_manual("ours", name, kwargs, init, 6, layouts, noise)
    ref = run_manual("forloop", name, kwargs, init, 6, layouts, noise)
    assert_snapshots_close(ours, ref, *F64, what=name)
