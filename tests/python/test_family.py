"""Every ferroptim class: torch's signature, defaults and validation; state_dict interchange
with torch.optim (or, for the algorithms torch lacks, with their reference implementations, see
optim_testlib.reference_class); a failed step changes nothing; GradScaler (fused unscaling,
skipped steps)."""

from __future__ import annotations

import copy
import inspect

import pytest
import torch
from optim_testlib import (
    OURS,
    TENSOR_RULES,
    TOLERANCES,
    assert_snapshots_close,
    assert_snapshots_equal,
    assert_synced_steps_close,
    load_snapshot,
    make_data,
    make_mlp,
    make_opt,
    mlp_loss,
    snapshot,
    synced_run,
    train,
)

# One non-default configuration per class, exercising most of its state.
CONFIGS = {
    "SGD": {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01},
    "Adam": {"lr": 0.01, "amsgrad": True, "weight_decay": 0.05},
    "AdamW": {"lr": 0.01, "weight_decay": 0.1},
    "Adadelta": {"lr": 0.5, "rho": 0.95, "weight_decay": 0.01},
    "Adagrad": {"lr": 0.05, "lr_decay": 0.01, "initial_accumulator_value": 0.1},
    "Adamax": {"lr": 0.01, "weight_decay": 0.01},
    "ASGD": {"lr": 0.02, "t0": 5, "lambd": 0.01, "weight_decay": 0.01},
    "NAdam": {"lr": 0.01, "weight_decay": 0.01, "decoupled_weight_decay": True},
    "RAdam": {"lr": 0.01, "weight_decay": 0.01},
    "RMSprop": {"lr": 0.001, "momentum": 0.5, "centered": True, "weight_decay": 0.01},
    "Rprop": {"lr": 0.001, "etas": (0.4, 1.3), "step_sizes": (1e-5, 1.0)},
    "Lion": {"lr": 0.001, "betas": (0.9, 0.95), "weight_decay": 0.1},
    "ADOPT": {"lr": 0.01, "weight_decay": 0.01, "decouple": True},
    "Adan": {"lr": 0.01, "betas": (0.9, 0.9, 0.99), "weight_decay": 0.02},
    "AdEMAMix": {"lr": 0.01, "weight_decay": 0.01, "alpha_warmup": 5, "beta3_warmup": 5},
    "ScheduleFreeAdamW": {"lr": 0.01, "weight_decay": 0.01, "warmup_steps": 3},
    "Lamb": {"lr": 0.01, "weight_decay": 0.01},
    "LARS": {"lr": 0.5, "weight_decay": 0.01, "nesterov": True},
    "Adafactor": {"lr": 0.02, "beta2_decay": -0.7, "d": 1.2, "weight_decay": 0.05},
    "Muon": {"lr": 0.01, "momentum": 0.9, "nesterov": False, "adjust_lr_fn": "match_rms_adamw"},
    "SparseAdam": {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-6},
    "LBFGS": {"lr": 0.5, "max_iter": 4, "history_size": 3, "line_search_fn": "strong_wolfe"},
}
# Their references (pytorch_optimizer's for-loops) overwrite p.grad in place (Adan negates it,
# ScheduleFreeAdamW divides it by the denominator, LARS scales it and adds weight decay and
# momentum); ferroptim leaves the unscaled gradient.
REFERENCE_OVERWRITES_GRAD = {"Adan", "ScheduleFreeAdamW", "LARS"}
# The classes, without the 8-bit-state family (`ferroptim.lowbit`: its state is not torch's,
# tested in test_8bit.py and test_stochastic_round.py).
NAMES = [n for n in OURS.__all__ if isinstance(getattr(OURS, n), type) and not n.endswith("8bit")]
TORCH_NAMES = [n for n in NAMES if hasattr(torch.optim, n)]
# The classes whose step runs in the fused driver (dense gradients; their GradScaler hand-over
# is tested here, the tensor rules' in test_amp_tensor_rules.py).
FUSED_NAMES = [n for n in NAMES if n not in TENSOR_RULES]
F64_RTOL, F64_ATOL = TOLERANCES[torch.float64]


def test_configs_cover_every_class():
    assert sorted(CONFIGS) == sorted(NAMES)


@pytest.mark.parametrize("name", TORCH_NAMES)
def test_signature_defaults_and_subclass_match_torch(name):
    ours, ref = getattr(OURS, name), getattr(torch.optim, name)
    assert issubclass(ours, ref)
    assert inspect.signature(ours.__init__) == inspect.signature(ref.__init__)
    p = [torch.zeros(3, 3, requires_grad=True)]
    skip = ("foreach", "fused")
    assert {k: v for k, v in ours(p).defaults.items() if k not in skip} == {
        k: v for k, v in ref(p).defaults.items() if k not in skip
    }


@pytest.mark.parametrize("name", TORCH_NAMES)
def test_negative_lr_raises_torchs_error(name):
    p = [torch.zeros(3, 3, requires_grad=True)]
    with pytest.raises(ValueError) as ref:
        getattr(torch.optim, name)(p, lr=-0.5)
    with pytest.raises(ValueError) as ours:
        getattr(OURS, name)(p, lr=-0.5)
    assert str(ours.value) == str(ref.value)


def hand_over(src: str, name: str):
    """20 float64 steps with implementation ``src``; its state_dict loaded into a fresh torch
    optimizer (the reference) and a fresh ferroptim one, each over a copy of the model; then
    20 synced steps (optim_testlib.synced_run) of the two from the reference's inputs."""
    data = make_data(torch.float64)
    model = make_mlp(torch.float64)
    opt = make_opt(src, name, model.parameters(), **CONFIGS[name])
    train(model, opt, data, 20)
    sd = copy.deepcopy(opt.state_dict())
    ref_model, our_model = copy.deepcopy(model), copy.deepcopy(model)
    ref = make_opt("forloop", name, ref_model.parameters(), **CONFIGS[name])
    ours = make_opt("ours", name, our_model.parameters(), **CONFIGS[name])
    ref.load_state_dict(copy.deepcopy(sd))
    ours.load_state_dict(copy.deepcopy(sd))
    first = (snapshot(ref_model.parameters(), ref), snapshot(our_model.parameters(), ours))
    peers = {"ours": (list(our_model.parameters()), ours)}
    return first, synced_run(ref_model, data, ref, peers, 20, lr_checked={"ours"})


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("src", ["ours", "forloop"], ids=["ours_to_torch", "torch_to_ours"])
def test_state_dict_interchange_with_torch(name, src):
    """A state_dict of ferroptim (or of torch.optim) loads into torch.optim and into ferroptim
    alike, and both continue from it with the same steps (float64, step by step; torch's
    load_state_dict casts every state entry but ``step`` to the parameter's dtype, in both)."""
    if name in TENSOR_RULES:  # torch's own operations, bit for bit: free-running trajectories
        dst = "forloop" if src == "ours" else "ours"
        assert_snapshots_close(
            free_hand_over(src, dst, name),
            free_hand_over("forloop", "forloop", name),
            F64_RTOL,
            F64_ATOL,
            what=f"{name} from {src}",
        )
        return
    (ref_loaded, our_loaded), record = hand_over(src, name)
    assert_snapshots_equal(our_loaded, ref_loaded, what=f"{name} loaded from {src}")
    assert_synced_steps_close(record, "ours", F64_RTOL, F64_ATOL, what=f"{name} from {src}")


def free_hand_over(src: str, dst: str, name: str):
    """20 steps with implementation ``src``, its state_dict into a fresh ``dst`` optimizer
    over a copy of the model, 20 more steps."""
    data = make_data(torch.float64)
    model = make_mlp(torch.float64)
    opt = make_opt(src, name, model.parameters(), **CONFIGS[name])
    train(model, opt, data, 20)
    sd = copy.deepcopy(opt.state_dict())
    model2 = copy.deepcopy(model)
    opt2 = make_opt(dst, name, model2.parameters(), **CONFIGS[name])
    opt2.load_state_dict(sd)
    train(model2, opt2, data, 20)
    return snapshot(model2.parameters(), opt2)


@pytest.mark.parametrize("name", FUSED_NAMES)
def test_failed_step_changes_nothing(name):
    """A sparse gradient on the last parameter: the error comes before any parameter or state
    is touched, and no state is created."""
    model = make_mlp()
    opt = getattr(OURS, name)(model.parameters(), **CONFIGS[name])
    train(model, opt, make_data(), 2)
    before = snapshot(model.parameters(), opt)
    n_state = len(opt.state)
    params = list(model.parameters())
    for p in params:
        p.grad = torch.ones_like(p)
    params[-1].grad = torch.ones_like(params[-1]).to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()
    assert len(opt.state) == n_state
    assert_snapshots_equal(snapshot(model.parameters(), opt), before, what=name)


def amp_synced(ref_impl: str, name: str, inf_at: int, steps: int = 8):
    """ferroptim and torch's ``ref_impl`` ('forloop' or 'fused') train the MLP under bfloat16
    autocast, each with its own GradScaler (init_scale 2**10); the gradients of step
    ``inf_at`` are made infinite. Before every step ferroptim is given torch's parameters and
    state (optim_testlib.load_snapshot): a bfloat16 forward turns a 1-ulp difference of a
    parameter into a gradient difference of ~2**-8, so free-running trajectories part within
    a few steps on some seeds and CPUs. Asserts at every step: the same scale, the same
    gradients left in ``p.grad``, parameters and state within the float32 tolerances, and a
    skipped step that changes nothing."""
    models = {impl: make_mlp() for impl in ("ours", ref_impl)}
    opts = {
        impl: make_opt(impl, name, m.parameters(), **CONFIGS[name]) for impl, m in models.items()
    }
    scalers = {impl: torch.amp.GradScaler("cpu", init_scale=2.0**10) for impl in models}
    data = make_data()
    rtol, atol = TOLERANCES[torch.float32]
    for k in range(steps):
        before = snapshot(models[ref_impl].parameters(), opts[ref_impl])
        if k:
            load_snapshot(list(models["ours"].parameters()), opts["ours"], before)
        for impl, model in models.items():
            opts[impl].zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = mlp_loss(model, data)
            scalers[impl].scale(loss).backward()
            if k == inf_at:
                next(iter(model.parameters())).grad[0, 0] = float("inf")
            scalers[impl].step(opts[impl])
            scalers[impl].update()
        what = f"{name} vs {ref_impl} step {k}"
        assert scalers["ours"].get_scale() == scalers[ref_impl].get_scale(), what
        ours = snapshot(models["ours"].parameters(), opts["ours"])
        assert_snapshots_close(
            ours, snapshot(models[ref_impl].parameters(), opts[ref_impl]), rtol, atol, what=what
        )
        if k == inf_at:
            assert scalers["ours"].get_scale() == 2.0**9, what  # the inf step backed off
            assert_snapshots_equal(ours, before, what=f"{what} (skipped)")
        elif ref_impl == "forloop" and name not in REFERENCE_OVERWRITES_GRAD:
            for a, b in zip(models["ours"].parameters(), models[ref_impl].parameters()):
                torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0, msg=what)


@pytest.mark.parametrize("name", FUSED_NAMES)
def test_grad_scaler_matches_torch_including_a_skipped_step(name):
    """ferroptim takes GradScaler's ``grad_scale``/``found_inf`` (unscaling inside the native
    pass); torch's for-loop is unscaled by the scaler itself. The same steps, the same skipped
    step (scale halved, nothing updated), and the same unscaled gradients left in ``p.grad``
    (test_grad_scale_unscales_in_the_native_pass checks ours where the reference overwrites
    them)."""
    amp_synced("forloop", name, inf_at=3)


@pytest.mark.parametrize("name", ["Adam", "AdamW", "SGD", "Adagrad"])
def test_grad_scaler_matches_torch_fused(name):
    """Against torch's fused CPU kernel, which also unscales in its own pass."""
    amp_synced("fused", name, inf_at=2)


@pytest.mark.parametrize("name", FUSED_NAMES)
def test_found_inf_skips_everything(name):
    """A step with found_inf set changes nothing: parameters, gradients, state, step."""
    model = make_mlp()
    opt = getattr(OURS, name)(model.parameters(), **CONFIGS[name])
    train(model, opt, make_data(), 2)
    before = snapshot(model.parameters(), opt)
    grads = [p.grad.clone() for p in model.parameters()]
    opt.grad_scale = torch.tensor(4.0)
    opt.found_inf = torch.tensor(1.0)
    opt.step()
    assert_snapshots_equal(snapshot(model.parameters(), opt), before, what=name)
    for p, g in zip(model.parameters(), grads):
        assert torch.equal(p.grad, g)
    assert opt._step_supports_amp_scaling


@pytest.mark.parametrize("name", FUSED_NAMES)
def test_grad_scale_unscales_in_the_native_pass(name):
    """grad_scale=4: the step equals an unscaled step, and p.grad holds the unscaled gradient."""
    results = []
    for scale in (None, 4.0):
        torch.manual_seed(0)
        p = torch.randn(1000, dtype=torch.float64, requires_grad=True)
        g = torch.randn(1000, dtype=torch.float64)
        opt = getattr(OURS, name)([p], **CONFIGS[name])
        p.grad = g.clone() if scale is None else g * scale
        if scale is not None:
            opt.grad_scale = torch.tensor(scale)
            opt.found_inf = torch.tensor(0.0)
        opt.step()
        assert torch.equal(p.grad, g)
        results.append(snapshot([p], opt))
    assert_snapshots_equal(results[1], results[0], what=name)
