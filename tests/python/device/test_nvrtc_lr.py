"""A tensor ``lr`` read on the device by the capturable NVRTC kernels (Adam, AdamW;
``ferroptim.use_cuda_kernels``, ``capturable=True``). **Untested on a GPU when written.**

On the CPU: which groups the Python side sends with their tensor ``lr`` (meta tensors stand in
for CUDA ones), torch's own errors for a tensor ``lr`` (inherited from ``torch.optim.Adam``),
and the native entry's refusal of CPU tensors before writing. The device arithmetic (the
learning rate read from a float32/float64 tensor, every slot depending on it computed from it)
is checked bit for bit against the Rust rule by the core crate (``tests_scalars_lr.rs``).

On CUDA (``benches/gpu_check.sh nvrtc``): a float32 or float64 tensor ``lr`` gives the same
bits as the float ``lr.item()``, and a step captured once in ``torch.cuda.graph`` and replayed
after ``lr.fill_(new)`` equals eager steps with the new learning rates.
"""

from __future__ import annotations

import contextlib

import ferroptim
import pytest
import torch
from ferroptim import _core, _device
from optim_testlib import Snapshot, assert_snapshots_equal, snapshot

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

#: The classes whose capturable kernels read a tensor lr, in configurations that exercise
#: every slot depending on it (AdamW's 1 − lr·wd, Adam's coupled decay, AMSGrad).
TENSOR_LR = {
    "Adam": {"weight_decay": 0.01, "amsgrad": True},
    "AdamW": {"weight_decay": 0.1},
}
#: Learning rates set in place between steps (a schedule; the first is the initial one).
SCHEDULE = [0.01, 0.01, 0.01, 0.02, 3e-3, 0.0, 0.05, 1e-4]


@contextlib.contextmanager
def cuda_kernels(on: bool = True):
    before = _device.cuda_kernels_enabled()
    ferroptim.use_cuda_kernels(on)
    try:
        yield
    finally:
        ferroptim.use_cuda_kernels(before)


@pytest.mark.parametrize("name", sorted(TENSOR_LR))
def test_device_lr_is_sent_for_adam_and_adamw_only(name):
    """A one-element float32/float64 ``lr`` on the parameters' device (meta here, CUDA on a
    GPU) goes to the capturable kernels as the tensor; another dtype, size or device does not
    (the group keeps the ATen path); the other capturable classes keep the ATen path too."""
    params = [torch.nn.Parameter(torch.ones(3, device="meta"))]

    def with_lr(cls, lr):  # the constructor reads lr: set the meta tensor afterwards
        opt = getattr(ferroptim, cls)(params, capturable=True, **TENSOR_LR.get(cls, {}))
        opt.param_groups[0]["lr"] = lr
        return opt, opt.param_groups[0]

    for dtype in (torch.float32, torch.float64):
        lr = torch.tensor(0.01, dtype=dtype, device="meta")
        opt, group = with_lr(name, lr)
        assert _device._device_lr(opt, group) is lr
        assert _device._nvrtc_capturable(opt, group)
    for lr in (
        torch.tensor(0.01, dtype=torch.float16, device="meta"),
        torch.tensor([0.01, 0.02], device="meta"),
        torch.tensor(0.01),
    ):
        opt, group = with_lr(name, lr)
        assert _device._device_lr(opt, group) is None
        assert _device._nvrtc_capturable(opt, group) == (lr.device.type == "cpu")
    # CPU tensor lr: read on the host as before (still capturable); meta lr for CPU
    # parameters: neither.
    cpu = ferroptim.Adam([torch.nn.Parameter(torch.ones(3))], capturable=True)
    cpu.param_groups[0]["lr"] = torch.tensor(0.01, device="meta")
    assert _device._device_lr(cpu, cpu.param_groups[0]) is None
    assert not _device._nvrtc_capturable(cpu, cpu.param_groups[0])
    for other in ("Adamax", "NAdam", "RMSprop"):
        opt, _ = with_lr(other, torch.tensor(0.01, device="meta"))
        assert _device._device_lr(opt, opt.param_groups[0]) is None
        assert not _device._nvrtc_capturable(opt, opt.param_groups[0])


@pytest.mark.parametrize("name", sorted(TENSOR_LR))
def test_tensor_lr_errors_are_torchs(name):
    """The constructor's errors for a tensor ``lr`` are torch.optim's (same class, message)."""
    p = [torch.nn.Parameter(torch.ones(2))]
    cases = [
        ({"lr": torch.tensor([0.1, 0.2])}, "Tensor lr must be 1-element"),
        ({"lr": torch.tensor(0.1), "foreach": True}, "lr as a Tensor is not supported"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message) as ours:
            getattr(ferroptim, name)(p, **kwargs)
        with pytest.raises(ValueError) as theirs:
            getattr(torch.optim, name)(p, **kwargs)
        assert str(ours.value) == str(theirs.value)
    # capturable=True with foreach=True accepts a tensor lr, as torch does.
    getattr(ferroptim, name)(p, lr=torch.tensor(0.1), foreach=True, capturable=True)


def test_native_entry_with_lr_tensor_refuses_cpu_tensors_before_writing():
    p = torch.zeros(4)
    probe = ferroptim.AdamW([torch.zeros(1)])
    d = {
        **probe._hyper({**probe.param_groups[0], "lr": 0.0}),
        "lr_tensor": torch.tensor(0.5),
        "params": [p],
        "grads": [torch.ones(4)],
        "states": [torch.zeros(4), torch.zeros(4)],
        "scalar_states": [torch.zeros(())],
        "fresh": [False],
    }
    with pytest.raises(RuntimeError, match="cuda|Cuda|CUDA"):
        _core.nvrtc_step("adam", [d], 0, [], capturable=True)
    assert torch.equal(p, torch.zeros(4))
    assert torch.equal(d["scalar_states"][0], torch.zeros(()))


def _on_cpu(snap: Snapshot) -> Snapshot:
    return Snapshot(
        [p.cpu() for p in snap.params],
        [{k: v.cpu() if torch.is_tensor(v) else v for k, v in st.items()} for st in snap.state],
    )


def _grads(shapes, steps, seed=11):
    torch.manual_seed(seed)
    return [[torch.randn(s) for s in shapes] for _ in range(steps)]


@cuda
@pytest.mark.parametrize("lr_dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", sorted(TENSOR_LR))
def test_cuda_tensor_lr_equals_float_lr_bit_for_bit(name, lr_dtype):
    """8 capturable steps with a CUDA tensor ``lr`` changed in place between steps (read by
    the kernels) equal the same steps with the float ``lr.item()`` (read on the host), scalar
    state included."""
    shapes = [(1000, 33), (77,), (70000,)]
    grads = _grads(shapes, len(SCHEDULE))
    torch.manual_seed(0)
    base = [torch.randn(s).cuda() for s in shapes]
    lr = torch.tensor(SCHEDULE[0], dtype=lr_dtype, device="cuda")
    runs = []
    with cuda_kernels(True):
        for tensor in (True, False):
            params = [torch.nn.Parameter(b.clone()) for b in base]
            first = lr if tensor else lr.item()
            opt = getattr(ferroptim, name)(params, lr=first, capturable=True, **TENSOR_LR[name])
            group = opt.param_groups[0]
            assert _device._nvrtc_capturable(opt, group)
            assert (_device._device_lr(opt, group) is not None) == tensor
            for value, g in zip(SCHEDULE, grads):
                if tensor:
                    lr.fill_(value)
                else:
                    group["lr"] = torch.tensor(value, dtype=lr_dtype).item()
                for p, gi in zip(params, g):
                    p.grad = gi.cuda()
                opt.step()
            torch.cuda.synchronize()
            runs.append(_on_cpu(snapshot(params, opt)))
    assert_snapshots_equal(runs[0], runs[1], f"{name}: tensor lr vs float lr")


@cuda
@pytest.mark.parametrize("name", sorted(TENSOR_LR))
def test_cuda_graph_replay_after_lr_fill_equals_eager(name):
    """Warm up 3 steps on a side stream, capture one ``step()``, then before each of 5
    replays copy new gradients in and ``lr.fill_(new)``: the same numbers as 8 eager steps
    with the same learning rates (tensor lr, and float lr)."""
    shapes = [(1000, 33), (77,)]
    grads = _grads(shapes, len(SCHEDULE), seed=7)
    torch.manual_seed(0)
    base = [torch.randn(s) for s in shapes]
    runs = []
    with cuda_kernels(True):
        for mode in ("graph", "eager", "float"):
            params = [torch.nn.Parameter(b.cuda()) for b in base]
            lr = torch.tensor(SCHEDULE[0], device="cuda")
            first = lr.item() if mode == "float" else lr
            opt = getattr(ferroptim, name)(params, lr=first, capturable=True, **TENSOR_LR[name])
            group = opt.param_groups[0]
            for p in params:
                p.grad = torch.zeros_like(p)

            def load(k, lr=lr, params=params, group=group, mode=mode):
                for p, g in zip(params, grads[k]):
                    p.grad.copy_(g)
                if mode == "float":
                    group["lr"] = torch.tensor(SCHEDULE[k]).item()
                else:
                    lr.fill_(SCHEDULE[k])

            if mode == "graph":
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    for k in range(3):
                        load(k)
                        opt.step()
                torch.cuda.current_stream().wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    opt.step()
                for k in range(3, len(SCHEDULE)):
                    load(k)
                    graph.replay()
            else:
                for k in range(len(SCHEDULE)):
                    load(k)
                    opt.step()
            torch.cuda.synchronize()
            runs.append(_on_cpu(snapshot(params, opt)))
    assert_snapshots_equal(runs[0], runs[1], f"{name}: graph replay after lr.fill_ vs eager")
    assert_snapshots_equal(runs[1], runs[2], f"{name}: tensor lr vs float lr")
