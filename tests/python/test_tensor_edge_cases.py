"""Tensor edge cases vs torch: memory layouts, empty and 0-d tensors, a large tensor (the
multi-threaded split), mixed dtypes in one group, state of another dtype than its param,
and bit-identical results for different thread counts.

Gradients are synthetic (``0.5 * param + fixed noise``, see ``run_manual``), so every
element evolves independently and results do not depend on any matmul.
"""

from __future__ import annotations

import pytest
import torch
from optim_testlib import (
    OURS,
    TOLERANCES,
    Fp32Reference,
    Snapshot,
    assert_snapshots_close,
    assert_snapshots_equal,
    assert_within_ulps,
    leaf_like,
    make_noise,
    run_manual,
    snapshot,
    with_layout,
)

CONFIGS = [
    pytest.param("SGD", {"lr": 0.05}, id="SGD-plain"),
    pytest.param(
        "SGD",
        {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 0.1},
        id="SGD-nesterov-wd",
    ),
    pytest.param(
        "SGD",
        {"lr": 0.05, "momentum": 0.8, "dampening": 0.3, "maximize": True},
        id="SGD-dampening-maximize",
    ),
    pytest.param("Adam", {"lr": 0.01, "amsgrad": True, "weight_decay": 0.1}, id="Adam-amsgrad"),
    pytest.param("Adam", {"lr": 0.01, "betas": (0.0, 0.9), "maximize": True}, id="Adam-beta1_0"),
    pytest.param("AdamW", {"lr": 0.01, "weight_decay": 0.2}, id="AdamW"),
]
STEPS = 8
RTOL32, ATOL32 = TOLERANCES[torch.float32]


def randn(*shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)


def compare_with_torch(name, kwargs, init, grad_layouts=None, steps=STEPS):
    ours = run_manual("ours", name, kwargs, init, steps, grad_layouts)
    ref = run_manual("forloop", name, kwargs, init, steps, grad_layouts)
    for i, t in enumerate(init):
        # half-precision tensors only appear empty here (see test_half_precision.py)
        assert t.dtype in TOLERANCES or t.numel() == 0
        rtol, atol = TOLERANCES.get(t.dtype, (0.0, 0.0))
        assert_snapshots_close(
            Snapshot([ours.params[i]], [ours.state[i]]),
            Snapshot([ref.params[i]], [ref.state[i]]),
            rtol,
            atol,
            what=f"{name} tensor {i} {tuple(t.shape)} stride {t.stride()}:",
        )
    return ours


@pytest.mark.parametrize(("name", "kwargs"), CONFIGS)
def test_non_contiguous_params_and_grads(name, kwargs):
    transposed = randn(8, 5, seed=1).t()  # param stored as a transpose
    gapped = torch.empty_strided((4, 5), (12, 2))  # param with gaps between elements
    gapped.copy_(randn(4, 5, seed=2))
    init = [transposed, transposed.clone(), randn(6, 7, seed=3), gapped, randn(3, 4, seed=4)]
    assert not init[0].is_contiguous() and not init[3].is_contiguous()
    layouts = ["transposed", "contiguous", "strided", "strided", "transposed"]
    compare_with_torch(name, kwargs, init, layouts)


@pytest.mark.parametrize(("name", "kwargs"), CONFIGS)
def test_autograd_grad_of_transposed_param(name, kwargs):
    """The usual source of non-contiguous params: a transposed weight trained by autograd
    (AccumulateGrad gives the grad the param's strides)."""
    x = randn(16, 8, seed=5)
    results = []
    for impl in ("ours", "forloop"):
        w = torch.nn.Parameter(randn(8, 5, seed=6).t())  # shape (5, 8), non-contiguous
        b = torch.nn.Parameter(torch.zeros(5))
        opt = (getattr(OURS, name) if impl == "ours" else _torch_forloop(name))([w, b], **kwargs)
        for _ in range(20):
            opt.zero_grad()
            torch.tanh(x @ w.t() + b).square().mean().backward()
            assert not w.grad.is_contiguous()
            opt.step()
        assert not w.is_contiguous()
        results.append(snapshot([w, b], opt))
    assert_snapshots_close(results[0], results[1], RTOL32, ATOL32)


def _torch_forloop(name):
    cls = getattr(torch.optim, name)
    return lambda params, **kw: cls(params, foreach=False, **kw)


@pytest.mark.parametrize(("name", "kwargs"), CONFIGS)
def test_empty_and_zero_dim_tensors(name, kwargs):
    init = [
        torch.empty(0),
        torch.empty(3, 0),
        torch.tensor(1.5),  # 0-d
        torch.tensor(-0.25, dtype=torch.float64),  # 0-d float64
        randn(7, seed=7),
        torch.empty(0, 4, dtype=torch.bfloat16),
    ]
    ours = compare_with_torch(name, kwargs, init)
    for p, t in zip(ours.params, init):
        assert p.shape == t.shape and p.dtype == t.dtype


@pytest.mark.parametrize(("name", "kwargs"), [CONFIGS[1], CONFIGS[3], CONFIGS[5]])
def test_large_tensor_multithreaded(name, kwargs):
    """3M (+1, an odd size) elements: split across threads; matches torch, and the result
    does not depend on the thread count."""
    torch.set_num_threads(2)  # restored by the conftest fixture
    init = [randn(3_000_001, seed=8), randn(1000, 1001, seed=9).t()]
    noise = make_noise(init, 3)
    ours = compare_with_torch(name, kwargs, init, ["contiguous", "transposed"], steps=3)
    for threads in (1, 3):
        torch.set_num_threads(threads)
        again = run_manual("ours", name, kwargs, init, 3, ["contiguous", "transposed"], noise)
        assert_snapshots_equal(again, ours, f"{threads} threads vs 2:")


@pytest.mark.parametrize(("name", "kwargs"), CONFIGS)
def test_thread_count_does_not_change_results(name, kwargs):
    """Many tensors of assorted sizes, dtypes and layouts (work may be split per tensor or
    within one): 1, 2 and 4 threads give bit-identical params and state."""
    init = [
        randn(33, 17, seed=10),
        randn(5, dtype=torch.float64, seed=11),
        randn(300, dtype=torch.bfloat16, seed=12),
        randn(70_001, seed=21),
        randn(257, 129, dtype=torch.float16, seed=22),
        randn(3, seed=23),
        randn(40, 50, dtype=torch.float64, seed=24).t(),
        randn(20_000, dtype=torch.bfloat16, seed=25),
    ]
    layouts = ["contiguous"] * 6 + ["transposed", "strided"]
    noise = make_noise(init, STEPS)
    results = []
    for threads in (1, 2, 4):
        torch.set_num_threads(threads)  # restored by the conftest fixture
        results.append(run_manual("ours", name, kwargs, init, STEPS, layouts, noise))
    assert_snapshots_equal(results[1], results[0], "2 threads vs 1:")
    assert_snapshots_equal(results[2], results[0], "4 threads vs 1:")


HALF = (torch.bfloat16, torch.float16)


@pytest.mark.parametrize(("name", "kwargs"), CONFIGS)
def test_mixed_dtypes_in_one_group(name, kwargs):
    """f32 + f64 + bf16 + f16 params (contiguous and not) in one group. Full-precision
    params must match torch's for-loop; half params the float32 reference (optimizers act
    per parameter, so each reference may see just its own subset)."""
    init = [
        randn(5, 4, seed=13),
        randn(7, dtype=torch.float64, seed=14),
        randn(6, 3, dtype=torch.bfloat16, seed=15),
        randn(9, dtype=torch.float16, seed=16),
        randn(4, 6, dtype=torch.bfloat16, seed=17).t(),
        randn(5, 3, dtype=torch.float64, seed=18).t(),
    ]
    noise = make_noise(init, STEPS)
    layouts = ["contiguous", "strided", "contiguous", "strided", "transposed", "contiguous"]
    ours = run_manual("ours", name, kwargs, init, STEPS, layouts, noise)
    full = [i for i, t in enumerate(init) if t.dtype not in HALF]
    ref = run_manual(
        "forloop",
        name,
        kwargs,
        [init[i] for i in full],
        STEPS,
        [layouts[i] for i in full],
        [[n[i] for i in full] for n in noise],
    )
    for j, i in enumerate(full):
        rtol, atol = TOLERANCES[init[i].dtype]
        assert_snapshots_close(
            Snapshot([ours.params[i]], [ours.state[i]]),
            Snapshot([ref.params[j]], [ref.state[j]]),
            rtol,
            atol,
            what=f"{init[i].dtype} param {i}:",
        )
    for dtype in HALF:
        idx = [i for i, t in enumerate(init) if t.dtype == dtype]
        half_ref = run_manual(
            "fp32ref",
            name,
            kwargs,
            [init[i] for i in idx],
            STEPS,
            [layouts[i] for i in idx],
            [[n[i] for i in idx] for n in noise],
        )
        assert_within_ulps(
            Snapshot([ours.params[i] for i in idx], [ours.state[i] for i in idx]),
            half_ref,
            dtype,
            f"{dtype} params:",
        )


@pytest.mark.parametrize(("name", "kwargs"), CONFIGS)
def test_float32_state_for_bfloat16_param(name, kwargs):
    """State tensors of another dtype than the param (here float32 state for a bfloat16
    param, set by hand after 2 steps): the step must use them, keep their dtype, and match
    a float32 computation that stores the param rounded to bfloat16 and the state as float32.
    """
    init = [randn(40, dtype=torch.bfloat16, seed=19), randn(6, 5, dtype=torch.bfloat16, seed=20)]
    noise = make_noise(init, 6)
    plist = [leaf_like(t) for t in init]
    ref_params = [leaf_like(t) for t in init]
    ours = getattr(OURS, name)(plist, **kwargs)
    ref = Fp32Reference(name, ref_params, **kwargs)

    def step(k):
        for opt, ps in ((ours, plist), (ref, ref_params)):
            for p, n in zip(ps, noise[k]):
                p.grad = with_layout(p.detach() * 0.5 + n, "contiguous")
            opt.step()

    for k in range(2):
        step(k)
    for opt, ps in ((ours, plist), (ref, ref_params)):
        for p in ps:
            for key, value in list(opt.state.get(p, {}).items()):
                if key != "step":
                    opt.state[p][key] = value.to(torch.float32)
    for k in range(2, 6):
        step(k)
    got, want = snapshot(plist, ours), snapshot(ref_params, ref)
    for st in got.state:
        for key, value in st.items():
            assert value.dtype == torch.float32, f"state[{key!r}] became {value.dtype}"
    assert all(p.dtype == torch.bfloat16 for p in got.params)
    assert_within_ulps(got, want, torch.bfloat16, "float32 state:", max_fraction=0.05)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(("name", "kwargs"), CONFIGS)
def test_cuda_params_use_the_staged_path_correctly(name, kwargs):
    init = [randn(64, 3).cuda(), randn(5, 7, dtype=torch.float64).t().cuda()]
    compare_with_torch(name, kwargs, init)
