"""ferroptim's own NVRTC kernels (``ferroptim.use_cuda_kernels``; core
``ferroptim::device::nvrtc``). **Untested on a GPU when written.**

On the CPU (here and in CI): the switch's default and its effect on CPU parameters (none), and
the native entry point's refusal of CPU tensors. The generated arithmetic itself is checked on
the CPU by the core crate's tests (host C++ bit for bit against the Rust rules; NVRTC compiles
every kernel for sm_80 and sm_90).

Capturable steps (``capturable=True`` for Adam, AdamW, Adamax, NAdam, Adadelta, RMSprop and
Rprop: ``step`` and NAdam's ``mu_product`` float32 tensors on the device, the step-dependent
scalars computed by the kernels): on the CPU, the native entry accepts exactly these rules
and refuses CPU tensors before writing; on CUDA they equal the CPU step bit for bit, a
``torch.cuda.graph`` capture replayed equals eager steps, and the kernel-side ``found_inf``
skips the step and keeps the scalar state.

On CUDA (``benches/gpu_check.sh``, ``-k cuda``): 10 steps of every covered class (Lamb and
LARS included: their reduction and trust ratios run on the device) in float32 and bfloat16
from the same random gradients equal ferroptim's CPU step bit for bit (``torch.equal``: the
kernels compute the Rust rule's operations in its order, and sum the norms in the CPU
driver's order), stay within
float32 rounding of torch's fused/foreach implementation on CUDA, GradScaler's inf step is
skipped, and the kernel-side hand-over (``grad_scale``/``found_inf``) unscales and skips.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys

import ferroptim
import pytest
import torch
from ferroptim import _core, _device
from optim_testlib import Snapshot, assert_snapshots_equal, snapshot

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

#: Every class the kernels cover, in a configuration that exercises its options.
CLASSES = {
    "SGD": {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-2},
    "Adam": {"lr": 0.01, "amsgrad": True},
    "AdamW": {"lr": 0.01, "weight_decay": 0.1},
    "Adagrad": {"lr": 0.05, "lr_decay": 1e-3, "weight_decay": 1e-2},
    "Adamax": {"lr": 0.01, "weight_decay": 1e-2},
    "RMSprop": {"lr": 0.01, "momentum": 0.9, "centered": True},
    "Rprop": {"lr": 0.01},
    "Adadelta": {"lr": 0.5, "weight_decay": 1e-2},
    "NAdam": {"lr": 0.01, "weight_decay": 1e-2, "decoupled_weight_decay": True},
    "RAdam": {"lr": 0.01, "weight_decay": 1e-2},
    "ASGD": {"lr": 0.01, "t0": 3},
    "Lion": {"lr": 1e-3, "weight_decay": 0.1},
    "ADOPT": {"lr": 0.01, "weight_decay": 0.01, "decouple": True},
    "Adan": {"lr": 0.01, "weight_decay": 0.02},
    "AdEMAMix": {"lr": 0.01, "weight_decay": 0.01, "alpha_warmup": 5, "beta3_warmup": 5},
    "ScheduleFreeAdamW": {"lr": 0.01, "weight_decay": 0.01, "warmup_steps": 3},
    "Lamb": {"lr": 0.01, "weight_decay": 0.01},
    "LARS": {"lr": 0.1, "weight_decay": 1e-3, "nesterov": True},
}
#: torch's implementation of the class on CUDA (the others have none).
TORCH = {
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
SHAPES = [(64, 33), (33,), (7, 5, 3), (70000,)]  # the last spans two chunks
#: The classes whose capturable steps the kernels take (torch.optim's ``capturable`` classes
#: but RAdam and ASGD), in configurations that exercise their options.
CAPTURABLE = {
    "Adam": {"lr": 0.01, "weight_decay": 0.01, "amsgrad": True},
    "AdamW": {"lr": 0.01, "weight_decay": 0.01},
    "Adamax": {"lr": 0.01, "weight_decay": 1e-2},
    "NAdam": {"lr": 0.01, "weight_decay": 1e-2, "decoupled_weight_decay": True},
    "Adadelta": {"lr": 0.5, "weight_decay": 1e-2},
    "RMSprop": {"lr": 0.01, "momentum": 0.9, "centered": True},
    "Rprop": {"lr": 0.01},
}


@contextlib.contextmanager
def cuda_kernels(on: bool = True):
    before = _device.cuda_kernels_enabled()
    ferroptim.use_cuda_kernels(on)
    try:
        yield
    finally:
        ferroptim.use_cuda_kernels(before)


def _on_cpu(snap: Snapshot) -> Snapshot:
    return Snapshot(
        [p.cpu() for p in snap.params],
        [{k: v.cpu() if torch.is_tensor(v) else v for k, v in st.items()} for st in snap.state],
    )


def _run(opts_params, steps: int, dtype, seed: int = 0):
    torch.manual_seed(seed)
    for _ in range(steps):
        grads = [torch.randn(s, dtype=torch.float32).to(dtype) for s in SHAPES]
        for ps, opt in opts_params:
            for p, g in zip(ps, grads):
                p.grad = g.to(p.device)
            opt.step()


def test_switch_is_off_by_default_and_toggles():
    if os.environ.get("FERROPTIM_CUDA_KERNELS", "") != "1":
        assert not ferroptim.cuda_kernels_enabled()
    with cuda_kernels(True):
        assert ferroptim.cuda_kernels_enabled()
    with cuda_kernels(False):
        assert not ferroptim.cuda_kernels_enabled()


def test_environment_variable_turns_the_switch_on():
    code = "import ferroptim; print(ferroptim.cuda_kernels_enabled())"
    env = {**os.environ, "FERROPTIM_CUDA_KERNELS": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "True", out.stderr


@pytest.mark.parametrize("name", ["AdamW", "SGD", "Lion"])
def test_switch_leaves_cpu_parameters_alone(name):
    """CPU parameters take ferroptim's CPU kernel whatever the switch: bit-identical runs."""
    torch.manual_seed(1)
    base = [torch.randn(s) for s in SHAPES]
    runs = []
    for on in (False, True):
        params = [torch.nn.Parameter(b.clone()) for b in base]
        opt = getattr(ferroptim, name)(params, **CLASSES[name])
        with cuda_kernels(on):
            _run([(params, opt)], 3, torch.float32)
        runs.append(snapshot(params, opt))
    assert_snapshots_equal(runs[1], runs[0], name)


def test_native_entry_refuses_cpu_tensors_before_writing():
    p = torch.zeros(4)
    group = {
        "lr": 0.1,
        "momentum": 0.0,
        "dampening": 0.0,
        "weight_decay": 0.0,
        "nesterov": False,
        "maximize": False,
        "params": [p],
        "grads": [torch.ones(4)],
        "states": [],
        "scalar_states": [],
        "fresh": [False],
    }
    with pytest.raises(RuntimeError, match="cuda|Cuda|CUDA"):
        _core.nvrtc_step("sgd", [group], 0, [])
    assert torch.equal(p, torch.zeros(4))
    with pytest.raises(ValueError, match="no capturable NVRTC kernel for rule 'sgd'"):
        _core.nvrtc_step("sgd", [group], 0, [], capturable=True)
    probe = ferroptim.Adam([torch.zeros(1)])
    adam = {
        **probe._hyper(probe.param_groups[0]),
        "params": [p],
        "grads": [torch.ones(4)],
        "states": [torch.zeros(4), torch.zeros(4)],
        "scalar_states": [torch.zeros(())],
        "fresh": [False],
    }
    with pytest.raises(RuntimeError, match="cuda|Cuda|CUDA"):
        _core.nvrtc_step("adam", [adam], 0, [], capturable=True)
    assert torch.equal(adam["scalar_states"][0], torch.zeros(()))
    for rule in ("radam", "asgd"):
        with pytest.raises(ValueError, match=f"no capturable NVRTC kernel for rule '{rule}'"):
            _core.nvrtc_step(rule, [group], 0, [], capturable=True)
    with pytest.raises(ValueError, match="no NVRTC kernel for rule 'adafactor'"):
        _core.nvrtc_step("adafactor", [group], 0, [])
    lars = {**group, "trust_coefficient": 1e-3, "trust": True, "states": [], "momentum": 0.0}
    with pytest.raises(RuntimeError, match="cuda|Cuda|CUDA"):
        _core.nvrtc_step("lars", [lars], 0, [])
    assert torch.equal(p, torch.zeros(4))


def _native_group(opt, params: list[torch.Tensor]) -> dict:
    """The native call's dict for ``opt``'s first group, its state created (not stored)."""
    for p in params:
        p.grad = torch.ones_like(p)
    group = opt.param_groups[0]
    (d,) = opt._native_calls(group, opt._collect(group, []))
    return d


@pytest.mark.parametrize("name", sorted(CAPTURABLE))
def test_capturable_rules_are_accepted_and_refuse_cpu_tensors_before_writing(name):
    """Each capturable class's rule reaches the capturable kernels (no "no capturable NVRTC
    kernel" error) and is refused for CPU tensors before anything is written; the Python
    side sends exactly these classes' ``capturable=True`` groups to them."""
    params = [torch.nn.Parameter(torch.ones(5)), torch.nn.Parameter(torch.ones(3))]
    opt = getattr(ferroptim, name)(params, capturable=True, **CAPTURABLE[name])
    d = _native_group(opt, params)
    before = [t.clone() for t in d["params"] + d["states"] + d["scalar_states"]]
    with pytest.raises(RuntimeError, match="cuda|Cuda|CUDA"):
        _core.nvrtc_step(opt._aten_rule, [d], 0, [], capturable=True)
    after = d["params"] + d["states"] + d["scalar_states"]
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    assert _device._nvrtc_capturable(opt, opt.param_groups[0])
    opt.param_groups[0]["lr"] = torch.tensor(0.01)
    assert _device._nvrtc_capturable(opt, opt.param_groups[0])


@pytest.mark.parametrize("name", ["RAdam", "ASGD", "SGD", "Adagrad", "Lion"])
def test_other_classes_keep_the_aten_path_when_capturable(name):
    kwargs = {"capturable": True} if name in ("RAdam", "ASGD") else {}
    opt = getattr(ferroptim, name)([torch.nn.Parameter(torch.ones(2))], lr=0.01, **kwargs)
    assert not _device._nvrtc_capturable(opt, opt.param_groups[0])


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("name", sorted(CLASSES))
def test_cuda_nvrtc_equals_the_cpu_rule_bit_for_bit(name, dtype):
    torch.manual_seed(0)
    cpu = [torch.nn.Parameter(torch.randn(s).to(dtype)) for s in SHAPES]
    dev = [torch.nn.Parameter(p.detach().cuda()) for p in cpu]
    opts = [getattr(ferroptim, name)(ps, **CLASSES[name]) for ps in (cpu, dev)]
    with cuda_kernels(True):
        _run(list(zip((cpu, dev), opts)), 10, dtype)
    torch.cuda.synchronize()
    expected = snapshot(cpu, opts[0])
    actual = snapshot(dev, opts[1])
    for st in actual.state:  # the kernels keep scalar state on the CPU
        for k, v in st.items():
            if torch.is_tensor(v) and v.numel() == 1 and k != "momentum_buffer":
                assert v.device.type == "cpu", f"{name}: {k} on {v.device}"
    assert_snapshots_equal(_on_cpu(actual), expected, f"{name} nvrtc {dtype}")


@cuda
@pytest.mark.parametrize("name", sorted(TORCH))
def test_cuda_nvrtc_trajectory_close_to_torch(name):
    torch.manual_seed(0)
    base = [torch.randn(s, device="cuda") for s in SHAPES]
    ours = [torch.nn.Parameter(b.clone()) for b in base]
    theirs = [torch.nn.Parameter(b.clone()) for b in base]
    flag = {TORCH[name]: True}
    kwargs = dict(CLASSES[name])
    opts = [
        getattr(ferroptim, name)(ours, **kwargs),
        getattr(torch.optim, name)(theirs, **flag, **kwargs),
    ]
    with cuda_kernels(True):
        _run([(ours, opts[0]), (theirs, opts[1])], 10, torch.float32)
    torch.cuda.synchronize()
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@cuda
def test_cuda_nvrtc_grad_scaler_skips_the_inf_step():
    """GradScaler (power-of-two scales: scaling is exact) against the same CUDA model stepped
    without a scaler that skips the inf step itself."""
    torch.manual_seed(0)
    models = [torch.nn.Linear(8, 4).cuda() for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    x = torch.randn(16, 8, device="cuda")
    opts = [ferroptim.AdamW(m.parameters(), lr=0.01) for m in models]
    scaler = torch.amp.GradScaler("cuda", init_scale=4.0)
    with cuda_kernels(True):
        for step in range(4):
            inf = float("inf") if step == 2 else 1.0
            for i, (m, opt) in enumerate(zip(models, opts)):
                opt.zero_grad()
                loss = m(x).square().mean() * inf
                if i == 0:
                    scaler.scale(loss).backward()
                    scaler.step(opt)
                    scaler.update()
                elif step != 2:
                    loss.backward()
                    opt.step()
    torch.cuda.synchronize()
    assert scaler.get_scale() == 2.0
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        assert torch.equal(a, b)


@cuda
def test_cuda_nvrtc_kernel_hand_over_unscales_and_skips():
    """``grad_scale``/``found_inf`` read by the kernel: SGD (no scalar state)."""
    p = torch.nn.Parameter(torch.ones(70000, device="cuda"))
    opt = ferroptim.SGD([p], lr=0.5)
    group = opt.param_groups[0]
    grads = torch.full_like(p, 8.0)

    def call(grad_scale, found_inf):
        d = {
            **opt._hyper(group),
            "params": [p],
            "grads": [grads],
            "states": [],
            "scalar_states": [],
            "fresh": [False],
        }
        stream = torch.cuda.current_stream().cuda_stream
        _core.nvrtc_step("sgd", [d], stream, _device._nvrtc_dirs(), grad_scale, found_inf)

    with torch.no_grad():
        call(torch.tensor([4.0], device="cuda"), torch.tensor([1.0], device="cuda"))
        torch.cuda.synchronize()
        assert torch.equal(p, torch.ones_like(p)) and torch.equal(grads, torch.full_like(p, 8.0))
        call(torch.tensor([4.0], device="cuda"), torch.tensor([0.0], device="cuda"))
        torch.cuda.synchronize()
        assert torch.equal(grads, torch.full_like(p, 2.0))  # stored unscaled
        assert torch.equal(p, torch.zeros_like(p))  # 1 - 0.5 * 2


@cuda
def test_cuda_nvrtc_many_tensors_span_several_launches():
    """More tensors than one launch holds (110 at most) and more chunks than its blocks
    (320): 400 tensors of 70000 elements, AdamW, against the CPU rule bit for bit."""
    torch.manual_seed(3)
    base = [torch.randn(70000) for _ in range(400)]
    cpu = [torch.nn.Parameter(b.clone()) for b in base]
    dev = [torch.nn.Parameter(b.cuda()) for b in base]
    opts = [ferroptim.AdamW(ps, lr=0.01) for ps in (cpu, dev)]
    with cuda_kernels(True):
        for _ in range(2):
            for p in cpu:
                p.grad = torch.randn_like(p)
            for p, q in zip(dev, cpu):
                p.grad = q.grad.cuda()
            for opt in opts:
                opt.step()
    torch.cuda.synchronize()
    for a, b in zip(dev, cpu):
        assert torch.equal(a.detach().cpu(), b.detach())


@cuda
@pytest.mark.parametrize("name", ["AdamW", "NAdam"])
def test_cuda_nvrtc_capturable_many_tensors_span_several_scalar_launches(name):
    """More tensors than one scalar-kernel launch holds (256 with one scalar state, 128 with
    NAdam's two): 300 small tensors with ``capturable=True``, 3 steps, against the CPU rule
    bit for bit, every tensor's scalar state advanced once per step."""
    torch.manual_seed(4)
    base = [torch.randn(17 + i % 5) for i in range(300)]
    cpu = [torch.nn.Parameter(b.clone()) for b in base]
    dev = [torch.nn.Parameter(b.cuda()) for b in base]
    kwargs = CAPTURABLE[name]
    opts = [
        getattr(ferroptim, name)(cpu, **kwargs),
        getattr(ferroptim, name)(dev, capturable=True, **kwargs),
    ]
    with cuda_kernels(True):
        for _ in range(3):
            for p, q in zip(cpu, dev):
                p.grad = torch.randn_like(p)
                q.grad = p.grad.cuda()
            for opt in opts:
                opt.step()
    torch.cuda.synchronize()
    assert all(opts[1].state[p]["step"].item() == 3.0 for p in dev)
    assert_snapshots_equal(_on_cpu(snapshot(dev, opts[1])), snapshot(cpu, opts[0]), name)


@cuda
@pytest.mark.parametrize("name", ["Lamb", "LARS"])
def test_cuda_nvrtc_norm_rules_many_tensors(name):
    """Lamb and LARS over more tensors than one trust-ratio launch takes (256), one that spans
    several launches' chunks, zero parameters and zero gradients (trust ratio 1): bit for bit
    against the CPU step."""
    torch.manual_seed(4)
    shapes = [(3, 7)] * 300 + [(1500, 1000), (0, 5), (64, 64), (8, 8)]
    base = [torch.randn(s) for s in shapes]
    base[-1].zero_()
    cpu = [torch.nn.Parameter(b.clone()) for b in base]
    dev = [torch.nn.Parameter(b.cuda()) for b in base]
    opts = [getattr(ferroptim, name)(ps, **CLASSES[name]) for ps in (cpu, dev)]
    with cuda_kernels(True):
        for _ in range(3):
            for p in cpu:
                p.grad = torch.randn_like(p)
            cpu[-2].grad.zero_()
            for p, q in zip(dev, cpu):
                p.grad = q.grad.cuda()
            for opt in opts:
                opt.step()
    torch.cuda.synchronize()
    for i, (a, b) in enumerate(zip(dev, cpu)):
        assert torch.equal(a.detach().cpu(), b.detach()), f"{name}: tensor {i}"


def _grads(shapes, steps, seed=5):
    torch.manual_seed(seed)
    return [[torch.randn(s) for s in shapes] for _ in range(steps)]


@cuda
@pytest.mark.parametrize("name", sorted(CAPTURABLE))
def test_cuda_nvrtc_capturable_equals_the_cpu_step(name):
    """``capturable=True``: the scalar state (``step``, NAdam's ``mu_product``) stays float32
    tensors on the device and the kernels compute the step-dependent scalars; 10 steps equal
    the CPU step bit for bit (scalar state included)."""
    kwargs = CAPTURABLE[name]
    torch.manual_seed(0)
    base = [torch.randn(s) for s in SHAPES]
    cpu = [torch.nn.Parameter(b.clone()) for b in base]
    dev = [torch.nn.Parameter(b.cuda()) for b in base]
    opts = [
        getattr(ferroptim, name)(cpu, **kwargs),
        getattr(ferroptim, name)(dev, capturable=True, **kwargs),
    ]
    with cuda_kernels(True):
        for grads in _grads(SHAPES, 10):
            for p, q, g in zip(cpu, dev, grads):
                p.grad, q.grad = g.clone(), g.cuda()
            for opt in opts:
                opt.step()
    torch.cuda.synchronize()
    _, scalar_names = opts[1]._state_names(opts[1].param_groups[0])
    for p in dev:
        for key in scalar_names:
            t = opts[1].state[p][key]
            assert t.device.type == "cuda" and t.dtype == torch.float32, key
        assert opts[1].state[p]["step"].item() == 10.0
    assert_snapshots_equal(_on_cpu(snapshot(dev, opts[1])), snapshot(cpu, opts[0]), name)


@cuda
@pytest.mark.parametrize("name", sorted(CAPTURABLE))
def test_cuda_nvrtc_capturable_graph_replay_equals_eager(name):
    """Warm up on a side stream (kernels compiled, state created), capture one ``step()`` in
    ``torch.cuda.graph``, replay it 5 times with new gradients copied in: the same numbers as
    8 eager capturable NVRTC steps and as 8 CPU steps."""
    kwargs = CAPTURABLE[name]
    shapes = [(1000, 33), (77,)]
    grads = _grads(shapes, 8, seed=7)
    torch.manual_seed(0)
    base = [torch.randn(s) for s in shapes]
    runs = []
    with cuda_kernels(True):
        for mode in ("graph", "eager", "cpu"):
            device = "cpu" if mode == "cpu" else "cuda"
            params = [torch.nn.Parameter(b.to(device)) for b in base]
            extra = {} if mode == "cpu" else {"capturable": True}
            opt = getattr(ferroptim, name)(params, **kwargs, **extra)
            for p in params:
                p.grad = torch.zeros_like(p)
            if mode == "graph":
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    for k in range(3):
                        for p, g in zip(params, grads[k]):
                            p.grad.copy_(g)
                        opt.step()
                torch.cuda.current_stream().wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    opt.step()
                for k in range(3, 8):
                    for p, g in zip(params, grads[k]):
                        p.grad.copy_(g)
                    graph.replay()
            else:
                for k in range(8):
                    for p, g in zip(params, grads[k]):
                        p.grad.copy_(g)
                    opt.step()
            if device == "cuda":
                torch.cuda.synchronize()
            runs.append(_on_cpu(snapshot(params, opt)))
    assert_snapshots_equal(runs[0], runs[1], f"{name}: graph replay vs eager")
    assert_snapshots_equal(runs[1], runs[2], f"{name}: eager capturable vs CPU")


@cuda
def test_cuda_nvrtc_capturable_found_inf_skips_and_keeps_step():
    p = torch.nn.Parameter(torch.ones(70000, device="cuda"))
    opt = ferroptim.Adam([p], lr=0.5, capturable=True)
    group = opt.param_groups[0]
    grads = torch.full_like(p, 8.0)
    state = [torch.zeros_like(p), torch.zeros_like(p)]
    step = torch.zeros((), device="cuda")

    def call(found):
        d = {
            **opt._hyper(group),
            "params": [p],
            "grads": [grads],
            "states": state,
            "scalar_states": [step],
            "fresh": [False],
        }
        stream = torch.cuda.current_stream().cuda_stream
        found_inf = torch.tensor([found], device="cuda")
        grad_scale = torch.tensor([4.0], device="cuda")
        _core.nvrtc_step(
            "adam", [d], stream, _device._nvrtc_dirs(), grad_scale, found_inf, capturable=True
        )

    with torch.no_grad():
        call(1.0)
        torch.cuda.synchronize()
        assert step.item() == 0.0 and torch.equal(p, torch.ones_like(p))
        assert torch.equal(grads, torch.full_like(p, 8.0))
        call(0.0)
        torch.cuda.synchronize()
        assert step.item() == 1.0
        assert torch.equal(grads, torch.full_like(p, 2.0))
        # First Adam step: θ − lr·sign(g) (to rounding): 1 − 0.5
        torch.testing.assert_close(p, torch.full_like(p, 0.5))


@cuda
@pytest.mark.parametrize("name", sorted(CAPTURABLE))
def test_cuda_nvrtc_capturable_found_inf_keeps_every_tensor(name):
    """A capturable call with ``found_inf`` set changes nothing (parameters, gradients, state,
    ``step``, NAdam's ``mu_product``); the same call with it clear equals a CPU step with
    the gradients unscaled."""
    base = [torch.randn(70000), torch.randn(33)]
    grads = [torch.randn(70000), torch.randn(33)]
    dev = [torch.nn.Parameter(b.cuda()) for b in base]
    cpu = [torch.nn.Parameter(b.clone()) for b in base]
    opt = getattr(ferroptim, name)(dev, capturable=True, **CAPTURABLE[name])
    ref = getattr(ferroptim, name)(cpu, **CAPTURABLE[name])
    d = _native_group(opt, dev)  # state created on the device, scalar state moved there
    d["scalar_states"] = [t.cuda() for t in d["scalar_states"]]
    d["grads"] = [(g * 4.0).cuda() for g in grads]
    before = [t.clone() for t in d["params"] + d["grads"] + d["states"] + d["scalar_states"]]
    stream = torch.cuda.current_stream().cuda_stream
    scale = torch.tensor([4.0], device="cuda")
    with torch.no_grad():
        args = (opt._aten_rule, [d], stream, _device._nvrtc_dirs(), scale)
        _core.nvrtc_step(*args, torch.tensor([1.0], device="cuda"), capturable=True)
        torch.cuda.synchronize()
        after = d["params"] + d["grads"] + d["states"] + d["scalar_states"]
        for i, (a, b) in enumerate(zip(before, after)):
            assert torch.equal(a, b), f"{name}: tensor {i} changed under found_inf"
        _core.nvrtc_step(*args, torch.tensor([0.0], device="cuda"), capturable=True)
        torch.cuda.synchronize()
    assert d["scalar_states"][0].item() == 1.0
    for p, g in zip(cpu, grads):
        p.grad = g.clone()
    ref.step()
    for a, b in zip(d["params"], cpu):
        assert torch.equal(a.detach().cpu(), b.detach()), name
