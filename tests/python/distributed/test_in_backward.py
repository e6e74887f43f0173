"""Optimizers stepped inside ``backward()`` (single process, float64, 6 steps).

* PyTorch's tutorial recipe ("How to save memory by fusing the optimizer step into the
  backward pass"): one optimizer per parameter, ``optimizer_dict = {p: Optimizer([p]) …}``,
  stepped and zeroed from ``p.register_post_accumulate_grad_hook``.
* ``torch.distributed.optim._apply_optimizer_in_backward(cls, params, kwargs)``, which hangs
  a ``cls([p], **kwargs)`` on every parameter and steps it from a gradient-accumulator hook.

A parameter's step then runs as soon as its gradient is final, before the backward pass
reaches the earlier layers. For every class whose step works per parameter without a
closure, ferroptim in backward must match ferroptim's ordinary step after ``backward()``
bit for bit (parameters and state); for AdamW, SGD and Adagrad also torch.optim in backward,
to float64 rtol 1e-10 / atol 1e-12.
"""

from __future__ import annotations

from typing import Any

import ferroptim
import pytest
import torch
from optim_testlib import (
    TOLERANCES,
    Snapshot,
    assert_snapshots_close,
    assert_snapshots_equal,
    make_data,
    make_mlp,
    make_opt,
    mlp_loss,
)
from torch import nn

F64 = TOLERANCES[torch.float64]
STEPS = 6
KWARGS: dict[str, dict[str, Any]] = {
    "SGD": {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 0.1},
    "Adam": {"lr": 0.01, "weight_decay": 0.1, "amsgrad": True},
    "AdamW": {"lr": 0.01, "weight_decay": 0.1, "amsgrad": True},
    "Adadelta": {"lr": 0.5, "weight_decay": 0.1},
    "Adagrad": {"lr": 0.1, "lr_decay": 0.01, "weight_decay": 0.1},
    "Adamax": {"lr": 0.01, "weight_decay": 0.1},
    "ASGD": {"lr": 0.01, "t0": 2.0, "weight_decay": 0.1},
    "NAdam": {"lr": 0.01, "weight_decay": 0.1},
    "RAdam": {"lr": 0.01, "weight_decay": 0.1},
    "RMSprop": {"lr": 0.01, "momentum": 0.9, "centered": True},
    "Rprop": {"lr": 0.01},
    "Adafactor": {"lr": 0.01, "weight_decay": 0.1},
    "Muon": {"lr": 0.02, "weight_decay": 0.1},
    "Lion": {"lr": 1e-3, "weight_decay": 0.5},
    "ADOPT": {"lr": 0.01, "weight_decay": 0.1},
    "Adan": {"lr": 0.01, "weight_decay": 0.1},
    "AdEMAMix": {"lr": 0.01, "weight_decay": 0.1},
    "ScheduleFreeAdamW": {"lr": 0.01, "weight_decay": 0.05},
    "Lamb": {"lr": 0.01, "weight_decay": 0.1},
    "LARS": {"lr": 0.5, "weight_decay": 0.1},
}
TORCH_TOO = ("AdamW", "SGD", "Adagrad")


def trainable(name: str, model: nn.Module) -> list[nn.Parameter]:
    """The parameters the class steps (Muon: the matrices; the others stay fixed)."""
    return [p for p in model.parameters() if name != "Muon" or p.ndim == 2]


def run_standard(name: str, impl: str) -> Snapshot:
    model, data = make_mlp(torch.float64), make_data(torch.float64)
    params = trainable(name, model)
    opt = make_opt(impl, name, params, **KWARGS[name])
    for _ in range(STEPS):
        opt.zero_grad(set_to_none=True)
        mlp_loss(model, data).backward()
        opt.step()
    return per_param_snapshot(params, {p: opt for p in params})


def run_recipe(name: str, impl: str) -> Snapshot:
    """The tutorial's recipe: one optimizer per parameter, stepped from its hook."""
    model, data = make_mlp(torch.float64), make_data(torch.float64)
    params = trainable(name, model)
    optimizer_dict = {p: make_opt(impl, name, [p], **KWARGS[name]) for p in params}
    stepped = []

    def optimizer_hook(p: torch.Tensor) -> None:
        optimizer_dict[p].step()
        optimizer_dict[p].zero_grad()
        stepped.append(p)

    handles = [p.register_post_accumulate_grad_hook(optimizer_hook) for p in params]
    for _ in range(STEPS):
        mlp_loss(model, data).backward()
        assert all(p.grad is None for p in params)
    for handle in handles:
        handle.remove()
    assert len(stepped) == STEPS * len(params)
    return per_param_snapshot(params, optimizer_dict)


def run_apply_in_backward(name: str, impl: str) -> Snapshot:
    """``torch.distributed.optim._apply_optimizer_in_backward``."""
    from torch.distributed.optim import _apply_optimizer_in_backward

    model, data = make_mlp(torch.float64), make_data(torch.float64)
    params = trainable(name, model)
    cls = getattr(ferroptim, name) if impl == "ours" else getattr(torch.optim, name)
    kwargs = dict(KWARGS[name], **({"foreach": False} if impl == "forloop" else {}))
    _apply_optimizer_in_backward(cls, params, kwargs)
    for _ in range(STEPS):
        mlp_loss(model, data).backward()
        for p in params:  # the hook steps; zeroing is the caller's (as after optimizer.step)
            p.grad = None
    optimizers = {p: p._in_backward_optimizers[0] for p in params}
    assert all(type(o) is cls for o in optimizers.values())
    return per_param_snapshot(params, optimizers)


def per_param_snapshot(params: list[torch.Tensor], optimizers: dict[Any, Any]) -> Snapshot:
    states = []
    for p in params:
        state = optimizers[p].state.get(p, {})
        states.append({k: v.clone() if torch.is_tensor(v) else v for k, v in state.items()})
    return Snapshot([p.detach().clone() for p in params], states)


@pytest.mark.parametrize("name", list(KWARGS))
@pytest.mark.parametrize("run", [run_recipe, run_apply_in_backward], ids=["recipe", "apply"])
def test_in_backward_matches_standard_step(name: str, run: Any) -> None:
    standard = run_standard(name, "ours")
    in_backward = run(name, "ours")
    assert_snapshots_equal(in_backward, standard, what=f"{name} in backward")
    initial = trainable(name, make_mlp(torch.float64))
    assert not any(torch.equal(a, b) for a, b in zip(in_backward.params, initial))


@pytest.mark.parametrize("name", TORCH_TOO)
@pytest.mark.parametrize("run", [run_recipe, run_apply_in_backward], ids=["recipe", "apply"])
def test_in_backward_matches_torch(name: str, run: Any) -> None:
    assert_snapshots_close(run(name, "ours"), run(name, "forloop"), *F64, what=name)
