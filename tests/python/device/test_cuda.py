"""The ATen device path on CUDA (needs a GPU; every test skips cleanly without one).

Run on the device machine by ``benches/gpu_check.sh`` (``pytest -k cuda``). Not yet run on a
GPU when written: the same path is tested bit for bit on the CPU by test_aten_path.py.

* float32 and bfloat16 training of the seeded MLP on CUDA: ``torch.equal`` to torch.optim's
  ``fused=True`` (SGD, Adam, AdamW) or ``foreach=True`` (Adagrad, Adamax, RMSprop, Rprop,
  Adadelta, NAdam, RAdam, ASGD) on CUDA, parameters and state, step counters on the device
  for fused classes and ASGD (where torch keeps them), on the CPU for the others;
* GradScaler on CUDA with an inf step, against the same torch implementation;
* CUDA-graph capture and replay of ``step()`` with ``capturable=True`` (fused classes);
* the classes torch lacks (Lion, ADOPT, Adan, AdEMAMix, ScheduleFreeAdamW, Lamb, LARS), whose
  foreach compositions have no torch counterpart: float32 steps on CUDA against ferroptim's
  CPU step (the Rust rule) from the same gradients, to rtol 1e-5 / atol 1e-6.
"""

from __future__ import annotations

import copy

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
    mlp_loss,
    snapshot,
)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

IMPLS = {
    "SGD": "fused",
    "Adam": "fused",
    "AdamW": "fused",
    "Adagrad": "foreach",
    "Adamax": "foreach",
    "RMSprop": "foreach",
    "Rprop": "foreach",
    "Adadelta": "foreach",
    "NAdam": "foreach",
    "RAdam": "foreach",
    "ASGD": "foreach",
}
#: The classes torch lacks, one configuration each (against ferroptim's CPU step).
BEYOND = {
    "Lion": {"lr": 1e-3, "weight_decay": 0.1},
    "ADOPT": {"lr": 0.01, "weight_decay": 0.01, "decouple": True},
    "Adan": {"lr": 0.01, "weight_decay": 0.02},
    "AdEMAMix": {"lr": 0.01, "weight_decay": 0.01, "alpha_warmup": 5, "beta3_warmup": 5},
    "ScheduleFreeAdamW": {"lr": 0.01, "weight_decay": 0.01, "warmup_steps": 3},
    "Lamb": {"lr": 0.01, "weight_decay": 0.01},
    "LARS": {"lr": 0.5, "weight_decay": 0.01, "nesterov": True},
}
#: Classes whose foreach composition keeps ``step`` on the parameter's device (as torch's).
STEP_ON_DEVICE = {"ASGD"}
CONFIGS = {
    "SGD": {"lr": 0.01, "momentum": 0.9, "nesterov": True, "weight_decay": 0.1},
    "Adam": {"lr": 0.01, "amsgrad": True, "weight_decay": 0.1},
    "AdamW": {"lr": 0.01, "maximize": True},
    "Adagrad": {"lr": 0.05, "lr_decay": 0.01, "weight_decay": 0.1},
    "Adamax": {"lr": 0.01, "weight_decay": 0.1},
    "RMSprop": {"lr": 0.01, "momentum": 0.5, "centered": True},
    "Rprop": {"lr": 0.01, "maximize": True},
    "Adadelta": {"lr": 0.5, "weight_decay": 0.1},
    "NAdam": {"lr": 0.01, "weight_decay": 0.1, "decoupled_weight_decay": True},
    "RAdam": {"lr": 0.01, "weight_decay": 0.1, "maximize": True},
    "ASGD": {"lr": 0.01, "t0": 3, "weight_decay": 0.1},
}


def _opt(impl: str, name: str, params, kwargs: dict):
    kwargs = copy.deepcopy(kwargs)
    if impl == "ours":
        return getattr(ferroptim, name)(params, **kwargs)
    return getattr(torch.optim, name)(params, **{impl: True}, **kwargs)


def _train(impl: str, name: str, kwargs: dict, dtype, steps: int = 10, scaler_inf_at=None):
    model = make_mlp(dtype).cuda()
    x, y = (t.cuda() for t in make_data(dtype))
    params = list(model.parameters())
    opt = _opt(impl, name, params, kwargs)
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0**10) if scaler_inf_at is not None else None
    sign = -1.0 if kwargs.get("maximize") else 1.0
    for k in range(steps):
        opt.zero_grad()
        loss = sign * mlp_loss(model, (x, y))
        if scaler is None:
            loss.backward()
            opt.step()
            continue
        scaler.scale(loss).backward()
        if k == scaler_inf_at:
            params[0].grad[0, 0] = float("inf")
        scaler.step(opt)
        scaler.update()
    torch.cuda.synchronize()
    return snapshot(params, opt)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", sorted(IMPLS))
def test_cuda_equals_torch(name, dtype):
    impl = IMPLS[name]
    if dtype == torch.bfloat16 and impl != "fused":
        pytest.skip("bfloat16 is checked for the fused kernels")
    if name == "SGD" and dtype == torch.bfloat16:
        pytest.skip("torch's fused SGD reads an uninitialized momentum buffer on bfloat16")
    expected = _train(impl, name, CONFIGS[name], dtype)
    actual = _train("ours", name, CONFIGS[name], dtype)
    assert_snapshots_equal(actual, expected, f"{name} on CUDA vs torch {impl}")
    for st in actual.state:
        if "step" in st:
            want = "cuda" if impl == "fused" or name in STEP_ON_DEVICE else "cpu"
            assert st["step"].device.type == want


@pytest.mark.parametrize("name", sorted(IMPLS))
def test_cuda_grad_scaler_inf_step_equals_torch(name):
    impl = IMPLS[name]
    expected = _train(impl, name, CONFIGS[name], torch.float32, scaler_inf_at=3)
    actual = _train("ours", name, CONFIGS[name], torch.float32, scaler_inf_at=3)
    assert_snapshots_equal(actual, expected, f"{name} under GradScaler on CUDA")


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW"])
def test_cuda_graph_capture_and_replay_capturable(name):
    """Warm up (state created), capture one ``step()`` in a CUDA graph, replay it: the same
    numbers as torch's fused optimizer captured the same way."""
    kwargs = dict(CONFIGS[name])
    if name != "SGD":
        kwargs["capturable"] = True
    results = []
    for impl in ("fused", "ours"):
        torch.manual_seed(0)
        params = [torch.randn(1000, 33, device="cuda"), torch.randn(77, device="cuda")]
        params = [torch.nn.Parameter(p) for p in params]
        opt = _opt(impl, name, params, kwargs)
        for p in params:
            p.grad = torch.randn_like(p)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                opt.step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            opt.step()
        for k in range(5):
            for p in params:
                p.grad.copy_(torch.full_like(p, 0.01 * (k + 1)))
            graph.replay()
        torch.cuda.synchronize()
        results.append(snapshot(params, opt))
    assert_snapshots_equal(results[1], results[0], f"{name} captured")


def _on_cpu(snap: Snapshot) -> Snapshot:
    return Snapshot(
        [p.cpu() for p in snap.params],
        [{k: v.cpu() if torch.is_tensor(v) else v for k, v in st.items()} for st in snap.state],
    )


@pytest.mark.parametrize("name", sorted(BEYOND))
def test_cuda_beyond_torch_equals_the_cpu_rule(name):
    """10 steps from the same random gradients (no CUDA matmul in the comparison) on CUDA and
    on the CPU; tensors of 1, 2 and 3 dimensions (LARS treats one-dimensional ones apart)."""
    torch.manual_seed(0)
    shapes = [(64, 33), (33,), (7, 5, 3)]
    cpu = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    cuda = [torch.nn.Parameter(p.detach().cuda()) for p in cpu]
    opts = [_opt("ours", name, ps, BEYOND[name]) for ps in (cpu, cuda)]
    for _ in range(10):
        grads = [torch.randn(s) for s in shapes]
        for ps, opt in zip((cpu, cuda), opts):
            for p, g in zip(ps, grads):
                p.grad = g.to(p.device)
            opt.step()
    torch.cuda.synchronize()
    expected = snapshot(cpu, opts[0])
    actual = _on_cpu(snapshot(cuda, opts[1]))
    assert_snapshots_close(actual, expected, *TOLERANCES[torch.float32], what=f"{name} on CUDA")
