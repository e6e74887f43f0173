"""The ATen device path, forced for CPU tensors (``ferroptim.force_device_path()``), against
torch.optim's fused and foreach implementations: bit for bit.

This is the path CUDA tensors take by default (``_fused_*`` kernels where ATen has them for
the device, torch's ``_foreach_*`` composition otherwise), so on a machine without a GPU these
tests check everything but the CUDA kernels themselves (tests/python/device/test_cuda.py does
that on a GPU). Every class with a device path, every CPU input of torch's ``optim_db`` for it
(minus the implementation flags), one and two parameter groups (the second at half the
learning rate), float32 and float64 (and bfloat16 for the fused kernels): parameters and state
after 12 steps of the seeded MLP are ``torch.equal`` to torch's, step counters included.
"""

from __future__ import annotations

import copy
import inspect

import ferroptim
import pytest
import torch
from optim_testlib import (
    assert_snapshots_equal,
    make_data,
    make_mlp,
    mlp_loss,
    snapshot,
    split_groups,
    train,
)
from torch.testing._internal.common_optimizers import optim_db

IMPLEMENTATION_FLAGS = ("foreach", "fused", "capturable", "differentiable")
#: Class -> torch implementation the forced path matches on the CPU.
DEVICE_CLASSES = {
    "SGD": "fused",
    "Adam": "fused",
    "AdamW": "fused",
    "Adagrad": "fused",
    "Adamax": "foreach",
    "RMSprop": "foreach",
    "Rprop": "foreach",
    "Adadelta": "foreach",
    "NAdam": "foreach",
    "RAdam": "foreach",
    "ASGD": "foreach",
}
#: Compositions reachable with force_device_path(foreach=True) (the CUDA path of Adagrad).
FOREACH_TOO = {"Adagrad"}
STEPS = 12


def _torch_inputs(info) -> list:
    fn = info.optim_inputs_func
    if "dtype" in inspect.signature(fn).parameters:
        return fn(device="cpu", dtype=torch.float32)
    return fn(device="cpu")


def _cases():
    for info in optim_db:
        name = info.optim_cls.__name__
        if name not in DEVICE_CLASSES:
            continue
        impls = [DEVICE_CLASSES[name]] + (["foreach"] if name in FOREACH_TOO else [])
        for inp in _torch_inputs(info):
            kwargs = {k: v for k, v in inp.kwargs.items() if k not in IMPLEMENTATION_FLAGS}
            for impl in impls:
                yield pytest.param(
                    name, impl, kwargs, id=f"{name}-{impl}-{inp.desc.replace(' ', '_')}"
                )


CASES = list(_cases())


def _torch_opt(name: str, impl: str, params, kwargs: dict):
    return getattr(torch.optim, name)(params, **{impl: True}, **copy.deepcopy(kwargs))


def _run(impl: str, name: str, kwargs: dict, dtype, groups) -> object:
    model = make_mlp(dtype)
    data = make_data(dtype)
    params = split_groups(model, groups)
    sign = -1.0 if kwargs.get("maximize") else 1.0
    if impl == "ours" or impl == "ours-foreach":
        opt = getattr(ferroptim, name)(params, **copy.deepcopy(kwargs))
        with ferroptim.force_device_path(foreach=impl == "ours-foreach"):
            train(model, opt, data, STEPS, loss_sign=sign)
    else:
        opt = _torch_opt(name, impl, params, kwargs)
        train(model, opt, data, STEPS, loss_sign=sign)
    return snapshot(model.parameters(), opt)


def _groups(kwargs: dict, two: bool):
    if not two:
        return None
    lr = kwargs.get("lr", 1e-3)
    half = lr / 2 if not isinstance(lr, torch.Tensor) else lr.clone() / 2
    return [{}, {"lr": half}]


def _reference_or_skip(name, impl, kwargs, dtype, groups):
    try:
        return _run(impl, name, kwargs, dtype, groups)
    except RuntimeError as e:
        if "not supported" in str(e):
            pytest.skip(f"torch's {impl} implementation refuses this input: {e}")
        raise


@pytest.mark.parametrize("two_groups", [False, True], ids=["1group", "2groups"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name,impl,kwargs", CASES)
def test_forced_device_path_equals_torch(name, impl, kwargs, dtype, two_groups):
    if dtype == torch.bfloat16 and impl != "fused":
        pytest.skip("bfloat16 is checked for the fused kernels")
    if name == "SGD" and dtype == torch.bfloat16 and kwargs.get("momentum", 0) != 0:
        pytest.skip(
            "torch's fused CPU SGD on bfloat16 reads the uninitialized momentum buffer "
            "(torch.empty_like) of its first step: two torch runs differ from each other"
        )
    groups = _groups(kwargs, two_groups)
    expected = _reference_or_skip(name, impl, kwargs, dtype, groups)
    ours_impl = "ours-foreach" if impl == "foreach" and name in FOREACH_TOO else "ours"
    actual = _run(ours_impl, name, kwargs, dtype, groups)
    assert_snapshots_equal(actual, expected, f"{name} vs torch {impl}")


def _scaled_run(impl: str, name: str, kwargs: dict, inf_at: int):
    """Training under a CPU GradScaler (growth every step, an inf gradient at step
    ``inf_at``): parameters, state, gradients and the scaler's scale."""
    model = make_mlp(torch.float32)
    data = make_data(torch.float32)
    params = list(model.parameters())
    if impl == "ours":
        opt = getattr(ferroptim, name)(params, **kwargs)
    else:
        opt = _torch_opt(name, impl, params, kwargs)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=1)
    ctx = ferroptim.force_device_path() if impl == "ours" else _nullcontext()
    with ctx:
        for k in range(8):
            opt.zero_grad()
            scaler.scale(mlp_loss(model, data)).backward()
            if k == inf_at:
                params[0].grad[0, 0] = float("inf")
            scaler.step(opt)
            scaler.update()
    snap = snapshot(params, opt)
    return snap, [p.grad.clone() for p in params], scaler.get_scale()


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("SGD", {"lr": 0.01, "momentum": 0.9, "weight_decay": 0.1}),
        ("Adam", {"lr": 0.01, "amsgrad": True}),
        ("AdamW", {"lr": torch.tensor(0.01), "weight_decay": 0.1}),
        ("Adagrad", {"lr": 0.05, "weight_decay": 0.1}),
        ("Adamax", {"lr": 0.01}),
        ("RMSprop", {"lr": 0.01, "momentum": 0.5, "centered": True}),
        ("Rprop", {"lr": 0.01}),
        ("Adadelta", {"lr": 0.5, "weight_decay": 0.1}),
        ("NAdam", {"lr": 0.01, "weight_decay": 0.1, "decoupled_weight_decay": True}),
        ("RAdam", {"lr": 0.01, "weight_decay": 0.1, "maximize": True}),
        ("ASGD", {"lr": 0.01, "t0": 3, "weight_decay": 0.1}),
    ],
)
def test_grad_scaler_with_an_inf_step_equals_torch(name, kwargs):
    """Fused classes take GradScaler's hand-over (found_inf as a tensor, no host read);
    foreach classes leave unscaling to GradScaler, as torch's foreach optimizers do."""
    impl = DEVICE_CLASSES[name]
    expected, exp_grads, exp_scale = _scaled_run(impl, name, copy.deepcopy(kwargs), inf_at=3)
    actual, grads, scale = _scaled_run("ours", name, copy.deepcopy(kwargs), inf_at=3)
    assert_snapshots_equal(actual, expected, f"{name} under GradScaler")
    for g, e in zip(grads, exp_grads):
        assert torch.equal(g, e)
    assert scale == exp_scale


def test_amp_hand_over_follows_the_path():
    p = torch.nn.Parameter(torch.ones(3))
    adam, adamax = ferroptim.Adam([p]), ferroptim.Adamax([p])
    adagrad = ferroptim.Adagrad([p])
    assert adam._step_supports_amp_scaling and adamax._step_supports_amp_scaling
    with ferroptim.force_device_path():
        assert adam._step_supports_amp_scaling and adagrad._step_supports_amp_scaling
        assert not adamax._step_supports_amp_scaling
    with ferroptim.force_device_path(foreach=True):
        assert not adagrad._step_supports_amp_scaling


def test_errors_leave_everything_unchanged():
    """A state tensor of the wrong shape is refused before any tensor changes."""
    ps = [torch.nn.Parameter(torch.randn(4)) for _ in range(3)]
    opt = ferroptim.Adam(ps, lr=0.1)
    for p in ps:
        p.grad = torch.ones(4)
    with ferroptim.force_device_path():
        opt.step()
        opt.state[ps[2]]["exp_avg"] = torch.zeros(5)
        before = [p.detach().clone() for p in ps]
        steps = [opt.state[p]["step"].clone() for p in ps]
        with pytest.raises(RuntimeError, match="shape"):
            opt.step()
    assert all(torch.equal(p, b) for p, b in zip(ps, before))
    assert all(torch.equal(opt.state[p]["step"], s) for p, s in zip(ps, steps))


class _NoPath(ferroptim.Adam):
    """A subclass without a device path (every ferroptim class has one)."""

    _aten_rule = None


def test_switch_is_scoped_and_classes_without_a_path_ignore_it():
    ps = [torch.nn.Parameter(torch.randn(5))]
    ps[0].grad = torch.randn(5)
    opt = _NoPath(ps, lr=0.1)
    ref = torch.nn.Parameter(ps[0].detach().clone())
    ref.grad = ps[0].grad.clone()
    ref_opt = ferroptim.Adam([ref], lr=0.1)
    with ferroptim.force_device_path():
        assert ferroptim._device.forced() is not None
        opt.step()
    ref_opt.step()
    assert ferroptim._device.forced() is None
    assert torch.equal(ps[0], ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("name", sorted(DEVICE_CLASSES))
def test_tensor_lr_equals_torch(name, dtype):
    """A tensor ``lr`` (and a second group with another one) is passed as torch passes it."""
    kwargs = {"lr": torch.tensor(0.01)}
    groups = [{}, {"lr": torch.tensor(0.004)}]
    expected = _reference_or_skip(name, DEVICE_CLASSES[name], kwargs, dtype, groups)
    actual = _run("ours", name, kwargs, dtype, groups)
    assert_snapshots_equal(actual, expected, f"{name} with a tensor lr")
