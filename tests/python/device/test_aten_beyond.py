"""The ATen device path of the classes torch.optim lacks, forced for CPU tensors
(``ferroptim.force_device_path()``).

torch has no foreach implementation of these to be bit-identical to: their compositions
(``csrc/aten_foreach_beyond.cpp``) are ferroptim's CPU rule as ``_foreach_*`` passes, which
round some multiply-adds twice where the rule fuses them. So they are checked to rounding:

* against ferroptim's own CPU step (the oracle: the Rust rule), free-running for a few steps
  of the seeded MLP, float64 to rtol 1e-10 / atol 1e-12 and float32 to rtol 1e-5 / atol 1e-6,
  one and two parameter groups, every configuration the CPU rule is tested with against its
  reference (tests/python/test_beyond_torch.py, test_vs_pytorch_optimizer.py);
* against the reference implementation (``optim_testlib.reference_class``), float64, step by
  step along its trajectory (``check_float64_steps``), to the same tolerance;
* float16 and bfloat16: computed in float32 and rounded once, as the CPU rule (within an ulp);
* under GradScaler with an inf step: GradScaler unscales and skips (the foreach classes'
  ``_step_supports_amp_scaling`` is False on this path), to rounding of the CPU path's result.
"""

from __future__ import annotations

import contextlib
import copy

import ferroptim
import pytest
import torch
from optim_testlib import (
    TOLERANCES,
    assert_snapshots_close,
    check_float64_steps,
    make_data,
    make_mlp,
    mlp_loss,
    snapshot,
    split_groups,
    train,
)
from test_beyond_torch import CASES as LION_ADOPT_CASES
from test_vs_pytorch_optimizer import CASES as PYTORCH_OPTIMIZER_CASES

CLASSES = ["Lion", "ADOPT", "Adan", "AdEMAMix", "ScheduleFreeAdamW", "Lamb", "LARS"]
CASES = [c for c in LION_ADOPT_CASES + PYTORCH_OPTIMIZER_CASES if c.values[0] in CLASSES]
STEPS = 5


@contextlib.contextmanager
def _device_path(forced: bool):
    """``force_device_path()`` (when ``forced``), asserting that ``_core.aten_step`` ran."""
    if not forced:
        yield
        return
    calls = []
    step = ferroptim._core.aten_step

    def counted(*args, **kwargs):
        calls.append(args[0])
        return step(*args, **kwargs)

    ferroptim._core.aten_step = counted
    try:
        with ferroptim.force_device_path():
            yield
    finally:
        ferroptim._core.aten_step = step
    assert calls, "the device path was not taken"


def _run(name: str, kwargs: dict, dtype, groups, forced: bool, steps: int = STEPS):
    model = make_mlp(dtype)
    data = make_data(dtype)
    opt = getattr(ferroptim, name)(split_groups(model, groups), **copy.deepcopy(kwargs))
    sign = -1.0 if kwargs.get("maximize") else 1.0
    with _device_path(forced):
        train(model, opt, data, steps, loss_sign=sign)
    return snapshot(model.parameters(), opt)


def _groups(kwargs: dict, two: bool):
    return [{}, {"lr": kwargs.get("lr", 1e-3) / 2}] if two else None


@pytest.mark.parametrize("two_groups", [False, True], ids=["1group", "2groups"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize(("name", "kwargs"), CASES)
def test_forced_device_path_equals_the_cpu_rule(name, kwargs, dtype, two_groups):
    groups = _groups(kwargs, two_groups)
    expected = _run(name, kwargs, dtype, groups, forced=False)
    actual = _run(name, kwargs, dtype, groups, forced=True)
    assert_snapshots_close(actual, expected, *TOLERANCES[dtype], what=f"{name} device path")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize(("name", "kwargs"), CASES)
def test_half_precision_is_computed_in_float32_and_rounded_once(name, kwargs, dtype):
    """As the CPU rule: a float32 computation rounded once when stored (with float16 and
    ``eps=1e-8`` a half-precision computation gives NaN). Parameters and state within one
    unit in the last place of the CPU step's."""
    expected = _run(name, kwargs, dtype, None, forced=False)
    actual = _run(name, kwargs, dtype, None, forced=True)
    pairs = zip(
        actual.params + [v for st in actual.state for v in st.values() if v.dim()],
        expected.params + [v for st in expected.state for v in st.values() if v.dim()],
    )
    info = torch.finfo(dtype)
    for a, e in pairs:
        assert a.dtype == dtype
        ulp = info.eps * e.float().abs().clamp_min(info.tiny)
        assert ((a.float() - e.float()).abs() <= ulp).all(), f"{name}: {a} vs {e}"


@pytest.mark.parametrize(("name", "kwargs"), CASES)
def test_forced_device_path_float64_steps_match_the_reference(name, kwargs):
    with _device_path(True):
        check_float64_steps(name, kwargs, *TOLERANCES[torch.float64], steps=10)


@pytest.mark.parametrize("name", CLASSES)
def test_tensor_lr_equals_the_cpu_rule(name):
    kwargs = {"lr": torch.tensor(0.01)}
    groups = [{}, {"lr": torch.tensor(0.004)}]
    expected = _run(name, kwargs, torch.float64, groups, forced=False)
    actual = _run(name, kwargs, torch.float64, groups, forced=True)
    assert_snapshots_close(actual, expected, *TOLERANCES[torch.float64], what=name)


def _scaled_run(name: str, forced: bool, inf_at: int = 3):
    """8 steps under a CPU GradScaler (growth every step, an inf gradient at ``inf_at``)."""
    model = make_mlp(torch.float64)
    data = make_data(torch.float64)
    params = list(model.parameters())
    opt = getattr(ferroptim, name)(params, lr=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=1)
    with _device_path(forced):
        assert opt._step_supports_amp_scaling is not forced
        for k in range(8):
            opt.zero_grad()
            scaler.scale(mlp_loss(model, data)).backward()
            if k == inf_at:
                params[0].grad[0, 0] = float("inf")
            scaler.step(opt)
            scaler.update()
    return snapshot(params, opt), [p.grad.clone() for p in params], scaler.get_scale()


@pytest.mark.parametrize("name", CLASSES)
def test_grad_scaler_unscales_and_skips_the_inf_step(name):
    """On the device path GradScaler unscales the gradients and skips the inf step itself (as
    for torch's foreach optimizers); the CPU path does both inside its fused pass. Same
    result to rounding; gradients left unscaled; the inf step does not count."""
    expected, exp_grads, exp_scale = _scaled_run(name, forced=False)
    actual, grads, scale = _scaled_run(name, forced=True)
    rtol, atol = TOLERANCES[torch.float64]
    assert_snapshots_close(actual, expected, rtol, atol, what=f"{name} under GradScaler")
    for g, e in zip(grads, exp_grads):
        torch.testing.assert_close(g, e, rtol=rtol, atol=atol)
    assert scale == exp_scale
    for st in actual.state:
        if "step" in st:
            assert st["step"].item() == 7.0
