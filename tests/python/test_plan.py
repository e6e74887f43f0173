"""Cached step plans: after a first step, ``step()`` reuses a native plan of the optimizer's
parameters and state, which must notice every change a user can make between steps.

Each scenario runs the same manipulations on ferroptim and on torch.optim and compares the
trajectories exactly (float64, elementwise algorithms that match torch to rounding)."""

from __future__ import annotations

from typing import Callable

import ferroptim
import pytest
import torch

Scenario = Callable[[torch.optim.Optimizer, list[torch.nn.Parameter], int], None]


def _params(seed: int = 0) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    shapes = [(3, 4), (5,), (), (2, 2)]
    return [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=torch.float64)) for s in shapes]


def _grads(params: list[torch.nn.Parameter], step: int) -> None:
    gen = torch.Generator().manual_seed(1000 + step)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)


def _run(
    cls_name: str, scenario: Scenario, steps: int = 6, **kwargs: object
) -> tuple[list[torch.Tensor], list[torch.Tensor], ferroptim.AdamW]:
    results = []
    for module in (ferroptim, torch.optim):
        params = _params()
        opt = getattr(module, cls_name)(params, **kwargs)
        for t in range(steps):
            _grads(params, t)
            scenario(opt, params, t)
            opt.step()
        results.append((params, opt))
    (ours, ours_opt), (ref, ref_opt) = results
    for p, q in zip(ours, ref):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=0)
    for p, q in zip(ours, ref):
        # `.get`: indexing the defaultdict would add entries (and so invalidate the plan)
        state, ref_state = ours_opt.state.get(p, {}), ref_opt.state.get(q, {})
        assert state.keys() == ref_state.keys()
        for key, value in state.items():
            torch.testing.assert_close(value, ref_state[key], rtol=1e-12, atol=0)
    return ours, ref, ours_opt


def _nothing(opt: torch.optim.Optimizer, params: list[torch.nn.Parameter], t: int) -> None:
    pass


def test_the_plan_is_made_and_used() -> None:
    params = _params()
    opt = ferroptim.AdamW(params, lr=0.1)
    _grads(params, 0)
    opt.step()
    plan, names = opt._ferroptim_plan  # type: ignore[attr-defined]
    hypers = [opt._hyper(g) for g in opt.param_groups]
    before = [p.detach().clone() for p in params]
    assert plan.step(opt.state, opt.param_groups, hypers, None) == 1
    assert all(not torch.equal(p, q) for p, q in zip(params, before))
    # another optimizer's state is not this plan's
    assert plan.step({}, opt.param_groups, hypers, None) == 0


@pytest.mark.parametrize("index", [0, 15, 16, 39])
def test_a_replaced_state_tensor_in_any_batch_makes_the_plan_decline(index: int) -> None:
    # The plan checks the state dicts in batches of 16 (their cache misses overlapping).
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(3, generator=gen)) for _ in range(40)]
    opt = ferroptim.AdamW(params, lr=0.1)
    _grads(params, 0)
    opt.step()
    plan, _ = opt._ferroptim_plan  # type: ignore[attr-defined]
    hypers = [opt._hyper(g) for g in opt.param_groups]
    assert plan.step(opt.state, opt.param_groups, hypers, None) == 1
    opt.state[params[index]]["exp_avg"] = opt.state[params[index]]["exp_avg"].clone()
    before = [p.detach().clone() for p in params]
    assert plan.step(opt.state, opt.param_groups, hypers, None) == 0
    assert all(torch.equal(p, q) for p, q in zip(params, before))


@pytest.mark.parametrize(
    "cls_name, kwargs",
    [
        ("AdamW", {"lr": 0.1, "weight_decay": 0.1}),
        ("Adam", {"lr": 0.1, "amsgrad": True}),
        ("SGD", {"lr": 0.1}),  # no state at all
        ("SGD", {"lr": 0.1, "momentum": 0.9, "nesterov": True}),
        ("ASGD", {"lr": 0.1, "t0": 2}),  # three scalar state tensors
        ("NAdam", {"lr": 0.1}),
    ],
)
def test_repeated_steps_match_torch(cls_name: str, kwargs: dict[str, object]) -> None:
    _, _, opt = _run(cls_name, _nothing, **kwargs)
    plan, _ = opt._ferroptim_plan  # type: ignore[attr-defined]
    hypers = [opt._hyper(g) for g in opt.param_groups]
    assert plan.step(opt.state, opt.param_groups, hypers, None) == 1


def test_a_replaced_state_tensor_is_used() -> None:
    def scenario(opt: torch.optim.Optimizer, params: list[torch.nn.Parameter], t: int) -> None:
        if t == 3:
            # e.g. moving state to a device: new tensor objects under the same keys
            for state in opt.state.values():
                for key, value in state.items():
                    state[key] = value.clone() * 0.5

    _run("AdamW", scenario, lr=0.1)


def test_deleted_state_is_created_again() -> None:
    def scenario(opt: torch.optim.Optimizer, params: list[torch.nn.Parameter], t: int) -> None:
        if t == 3:
            del opt.state[params[1]]
            opt.state[params[2]] = {}  # torch re-creates empty state too

    _run("Adam", scenario, lr=0.1)


def test_a_parameter_getting_its_first_gradient_late_gets_state() -> None:
    def scenario(opt: torch.optim.Optimizer, params: list[torch.nn.Parameter], t: int) -> None:
        if t < 3:
            params[0].grad = None

    _, _, opt = _run("AdamW", scenario, lr=0.1)
    assert opt.state[opt.param_groups[0]["params"][0]]["step"].item() == 3


def test_missing_gradients_skip_parameters() -> None:
    def scenario(opt: torch.optim.Optimizer, params: list[torch.nn.Parameter], t: int) -> None:
        if t in (2, 4):
            opt.zero_grad(set_to_none=True)
        if t == 5:
            params[3].grad = None

    _run("AdamW", scenario, lr=0.1)


def test_groups_and_params_changed_in_place_are_followed() -> None:
    def scenario(opt: torch.optim.Optimizer, params: list[torch.nn.Parameter], t: int) -> None:
        if t == 2:
            # move the last parameter into a new group with another lr
            last = opt.param_groups[0]["params"].pop()
            opt.add_param_group({"params": [last], "lr": 0.01})
        if t == 4:
            # swap two parameters' places within the group's list
            ps = opt.param_groups[0]["params"]
            ps[0], ps[1] = ps[1], ps[0]

    _run("AdamW", scenario, lr=0.1)


def test_new_parameter_storage_is_followed() -> None:
    def scenario(opt: torch.optim.Optimizer, params: list[torch.nn.Parameter], t: int) -> None:
        if t == 3:
            # what `module.to(...)` does: new storage under the same Parameter object
            for p in params:
                p.data = p.data.clone() + 1.0
            state = opt.state[params[0]]
            state["exp_avg"].data = state["exp_avg"].data.clone()

    _run("AdamW", scenario, lr=0.1)


def test_load_state_dict_between_steps() -> None:
    snapshot: dict[int, dict[str, object]] = {}

    def scenario(opt: torch.optim.Optimizer, params: list[torch.nn.Parameter], t: int) -> None:
        if t == 2:
            snapshot[id(opt)] = opt.state_dict()
        if t == 4:
            import copy

            opt.load_state_dict(copy.deepcopy(snapshot[id(opt)]))
            assert "_ferroptim_plan" not in opt.__dict__

    _run("AdamW", scenario, lr=0.1)


def test_hyperparameter_changes_are_read_at_every_step() -> None:
    def scenario(opt: torch.optim.Optimizer, params: list[torch.nn.Parameter], t: int) -> None:
        opt.param_groups[0]["lr"] = 0.1 / (t + 1)
        opt.param_groups[0]["betas"] = (0.9 - 0.01 * t, 0.99)
        if t == 3:
            opt.param_groups[0]["maximize"] = True

    _run("AdamW", scenario, lr=0.1)


def test_a_failing_planned_step_changes_nothing() -> None:
    params = _params()
    opt = ferroptim.AdamW(params, lr=0.1)
    for t in range(2):
        _grads(params, t)
        opt.step()
    before = [p.detach().clone() for p in params]
    state = {k: v.clone() for k, v in opt.state[params[1]].items()}
    # same tensor object (so the plan holds), new shape: caught by the driver's checks
    opt.state[params[2]]["exp_avg"].data = torch.zeros(7, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="shape"):
        opt.step()
    assert all(torch.equal(p, q) for p, q in zip(params, before))
    for key, value in state.items():
        assert torch.equal(opt.state[params[1]][key], value)


class _GeneralLARS(ferroptim.LARS):
    """LARS without cached plans: every step takes the general path (`_native_calls`)."""

    _native_plan = None


@pytest.mark.parametrize("momentum", [0.9, 0.0])
def test_lars_plans_split_groups_by_dimension_and_notice_a_new_dimension(
    momentum: float,
) -> None:
    """LARS steps tensors of one dimension or fewer without the trust ratio; its plan splits
    each group the same way, and re-checks the split: a parameter reshaped to another number
    of dimensions (``p.data = …``) makes the step take the general path."""
    results = []
    for cls in (ferroptim.LARS, _GeneralLARS):
        params = _params()
        opt = cls(params, lr=0.1, weight_decay=0.01, momentum=momentum)
        for t in range(8):
            _grads(params, t)
            if t == 4:  # (3, 4) -> (12,): now without trust ratio; state reshaped alike
                with torch.no_grad():
                    params[0].data = params[0].data.reshape(12)
                    if momentum:
                        buf = opt.state[params[0]]["momentum_buffer"]
                        buf.data = buf.data.reshape(12)
                params[0].grad = params[0].grad.reshape(12)
            opt.step()
        results.append((params, opt))
    (ours, ours_opt), (ref, _) = results
    assert ours_opt.__dict__.get("_ferroptim_plan") is not None
    for p, q in zip(ours, ref):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    # the split changed the trajectory: a 2-d (12,) tensor would have moved differently
    assert ours[0].shape == (12,)
