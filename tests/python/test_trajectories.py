"""ferroptim vs torch.optim's for-loop implementation along 50-step trajectories of a small MLP.

The loss is recomputed every step, so gradients depend on the whole trajectory. Each step is
checked from the inputs of torch's float64 trajectory (``optim_testlib.synced_steps``, see
test_optim_db.py for why): in float64 every parameter's and state tensor's change matches
torch's to rtol 1e-10 / atol 1e-12; in float32 the step is as accurate as torch's own float32
step (``optim_testlib.check_float32_steps``). LR schedulers give the same learning rates (and
OneCycleLR's momentum / betas) as with torch.optim, to the last bit.
"""

from __future__ import annotations

import pytest
import torch
from optim_testlib import TOLERANCES, check_float32_steps, check_float64_steps, run_mlp


def case(name, kwargs, groups=None, *, id):
    return pytest.param(name, kwargs, groups, id=f"{name}-{id}")


TWO_GROUPS_SGD = (
    {"lr": 0.02, "momentum": 0.9, "weight_decay": 0.05},
    {"lr": 0.08, "momentum": 0.5, "dampening": 0.2, "nesterov": False},
)
TWO_GROUPS_ADAM = (
    {"lr": 0.003, "betas": (0.8, 0.95), "weight_decay": 0.1, "amsgrad": True},
    {"lr": 0.01, "eps": 1e-6},
)
TWO_GROUPS_ADAMW = (
    {"lr": 0.003, "weight_decay": 0.3, "amsgrad": True},
    {"lr": 0.01, "weight_decay": 0.0, "betas": (0.85, 0.99)},
)

CASES = [
    case("SGD", {"lr": 0.05}, id="plain"),
    case("SGD", {"lr": 0.05, "momentum": 0.9}, id="momentum"),
    case("SGD", {"lr": 0.05, "momentum": 0.9, "dampening": 0.3}, id="dampening"),
    case("SGD", {"lr": 0.05, "weight_decay": 0.05}, id="weight_decay"),
    case("SGD", {"lr": 0.05, "momentum": 0.9, "nesterov": True}, id="nesterov"),
    case("SGD", {"lr": 0.05, "maximize": True}, id="maximize"),
    case("SGD", {"lr": 0.03, "momentum": 0.8, "maximize": True}, id="momentum-maximize"),
    case(
        "SGD",
        {"lr": 0.05, "momentum": 0.7, "dampening": 0.1, "weight_decay": 0.02},
        id="momentum-dampening-wd",
    ),
    case(
        "SGD",
        {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01, "maximize": True},
        id="nesterov-wd-maximize",
    ),
    case("SGD", {"lr": torch.tensor(0.05), "momentum": 0.9}, id="tensor_lr"),
    case("SGD", {"lr": 0.05}, TWO_GROUPS_SGD, id="two_groups"),
    case("Adam", {"lr": 0.01}, id="default"),
    case("Adam", {"lr": 0.01, "betas": (0.8, 0.9)}, id="betas"),
    case("Adam", {"lr": 0.003, "betas": (0.0, 0.9)}, id="beta1-zero"),
    case("Adam", {"lr": 0.01, "eps": 1e-3}, id="eps"),
    case("Adam", {"lr": 0.01, "weight_decay": 0.1}, id="weight_decay"),
    case("Adam", {"lr": 0.01, "amsgrad": True}, id="amsgrad"),
    case("Adam", {"lr": 0.01, "maximize": True}, id="maximize"),
    case("Adam", {"lr": 0.01, "weight_decay": 0.1, "decoupled_weight_decay": True}, id="decoupled"),
    case(
        "Adam",
        {"lr": 0.01, "amsgrad": True, "weight_decay": 0.05, "maximize": True, "eps": 1e-6},
        id="amsgrad-wd-maximize",
    ),
    case(
        "Adam",
        {"lr": 0.01, "amsgrad": True, "weight_decay": 0.2, "decoupled_weight_decay": True},
        id="amsgrad-decoupled",
    ),
    case("Adam", {"lr": torch.tensor(0.01)}, id="tensor_lr"),
    case("Adam", {"lr": 0.01}, TWO_GROUPS_ADAM, id="two_groups"),
    case("AdamW", {"lr": 0.01}, id="default"),
    case("AdamW", {"lr": 0.01, "weight_decay": 0.3}, id="weight_decay"),
    case("AdamW", {"lr": 0.01, "weight_decay": 0.0}, id="no_weight_decay"),
    case("AdamW", {"lr": 0.01, "amsgrad": True}, id="amsgrad"),
    case("AdamW", {"lr": 0.01, "maximize": True}, id="maximize"),
    case(
        "AdamW",
        {"lr": 0.01, "amsgrad": True, "maximize": True, "weight_decay": 0.5, "betas": (0.7, 0.9)},
        id="amsgrad-maximize-wd-betas",
    ),
    case("AdamW", {"lr": torch.tensor(0.01), "amsgrad": True}, id="tensor_lr"),
    case("AdamW", {"lr": 0.01}, TWO_GROUPS_ADAMW, id="two_groups"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize(("name", "kwargs", "groups"), CASES)
def test_trajectory_matches_torch(name, kwargs, groups, dtype):
    # A float32 tensor lr with float64 params is ambiguous (torch's for-loop rounds the step
    # size to float32, its fused kernel does not): use a tensor of the params' dtype.
    kwargs = {k: v.to(dtype) if torch.is_tensor(v) else v for k, v in kwargs.items()}
    if dtype == torch.float64:
        check_float64_steps(name, kwargs, *TOLERANCES[dtype], groups=groups)
    else:
        check_float32_steps(name, kwargs, groups=groups)
    # the trajectory must actually have moved the parameters
    ours = run_mlp("ours", name, kwargs, groups=groups, dtype=dtype, steps=5)
    start = run_mlp("ours", name, kwargs, groups=groups, dtype=dtype, steps=0)
    assert any(not torch.equal(a, b) for a, b in zip(ours.params, start.params))


# ----------------------------------------------------------------------------------------
# LR schedulers drive ferroptim exactly as they drive torch.optim
# ----------------------------------------------------------------------------------------


def one_cycle(opt):
    max_lr = 0.05 if isinstance(opt, torch.optim.SGD) else 0.01
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lr, total_steps=50)


def step_lr(opt):
    return torch.optim.lr_scheduler.StepLR(opt, step_size=10, gamma=0.5)


def cosine(opt):
    return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=20, eta_min=1e-4)


SCHEDULER_CASES = [
    pytest.param("SGD", {"lr": 0.05, "momentum": 0.9}, one_cycle, id="SGD-OneCycleLR"),
    pytest.param("Adam", {"lr": 0.01}, one_cycle, id="Adam-OneCycleLR"),
    pytest.param("AdamW", {"lr": 0.01, "amsgrad": True}, one_cycle, id="AdamW-OneCycleLR"),
    pytest.param("SGD", {"lr": 0.05, "momentum": 0.5}, step_lr, id="SGD-StepLR"),
    pytest.param("Adam", {"lr": 0.01, "weight_decay": 0.1}, step_lr, id="Adam-StepLR"),
    pytest.param("AdamW", {"lr": 0.01}, cosine, id="AdamW-CosineAnnealingLR"),
]


@pytest.mark.parametrize(("name", "kwargs", "scheduler"), SCHEDULER_CASES)
def test_lr_scheduler_matches_torch(name, kwargs, scheduler):
    ours = run_mlp("ours", name, kwargs, scheduler=scheduler)
    ref = run_mlp("forloop", name, kwargs, scheduler=scheduler)
    # lr (and OneCycleLR's momentum / betas) per step must be exactly torch's
    assert ours.extra["lrs"] == ref.extra["lrs"]
    assert len(set(map(tuple, ours.extra["lrs"]))) > 2, "the scheduler did not change lr"
    assert _hyperparameters(ours.extra["groups"]) == _hyperparameters(ref.extra["groups"])
    check_float32_steps(name, kwargs, scheduler=scheduler)


def _hyperparameters(groups):
    """Param-group hyperparameters (final lr, momentum / betas, ...) without torch's
    implementation selectors, which legitimately differ."""
    return [{k: v for k, v in g.items() if k not in ("foreach", "fused")} for g in groups]
