"""The ATen device path: steps for parameters that are not on the CPU (e.g. CUDA), through
ATen's own multi-tensor kernels (core crate ``ferroptim::device::aten``, ``csrc/aten_*.cpp``).

``_fused_sgd_`` / ``_fused_adam_`` / ``_fused_adamw_`` / ``_fused_adagrad_`` where ATen has a
fused kernel for the device (Adagrad's exists for the CPU only), and otherwise the
``_foreach_*`` composition of torch's ``_multi_tensor_<class>`` (Adagrad on CUDA, Adamax,
RMSprop, Rprop, Adadelta, NAdam, RAdam, ASGD), so that results are bit-identical to
torch.optim's ``fused=True`` / ``foreach=True``; for the classes torch lacks (Lion, ADOPT,
Adan, AdEMAMix, ScheduleFreeAdamW, Lamb, LARS), ``_foreach_*`` compositions of ferroptim's
rule, equal to its CPU step to rounding. A subclass without a device composition
(``_aten_rule = None``) keeps the staged path (copy to the CPU and back at every step) and
warns once.

:func:`force_device_path` sends CPU parameters through the same path, which is how it is
tested without a GPU.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from typing import Any, NamedTuple

import torch

from ferroptim import _core, distributed


class _Mode(NamedTuple):
    foreach: bool


_forced: list[_Mode] = []
_warned: set[str] = set()

# The rules ferroptim's own NVRTC kernels cover (core ``ferroptim::device::nvrtc``): every
# elementwise rule, and LAMB and LARS (a reduction pass and the trust ratios on the device).
_NVRTC_RULES = frozenset(
    {
        "sgd", "adam", "adagrad", "adamax", "rmsprop", "rprop", "adadelta", "nadam",
        "radam", "asgd", "lion", "adopt", "adan", "ademamix", "schedule_free_adamw",
        "lamb", "lars",
    }
)  # fmt: skip
# Rules whose NVRTC kernels also take capturable steps (a group's ``capturable=True``: the
# scalar state, ``step`` and NAdam's ``mu_product``, float32 tensors on the parameter's device,
# advanced and read by the kernels). The classes torch.optim gives ``capturable`` to, except
# RAdam and ASGD (their update changes form with the step: chosen on the host so far).
_NVRTC_CAPTURABLE = frozenset({"adam", "adamax", "nadam", "adadelta", "rmsprop", "rprop"})
# Rules whose capturable NVRTC kernels read a tensor ``lr`` on the device (one element,
# float32 or float64, on the parameters' CUDA device) at every step: a captured CUDA graph
# replays with the value it holds then (``lr.fill_``, as LR schedulers do with a tensor lr).
_NVRTC_TENSOR_LR = frozenset({"adam"})
_cuda_kernels: list[bool] = [os.environ.get("FERROPTIM_CUDA_KERNELS", "") == "1"]


def use_cuda_kernels(enabled: bool = True) -> None:
    """Opt in to (or out of) ferroptim's own one-pass CUDA kernels. **Untested on a GPU.**

    With ``enabled=True``, CUDA parameters of every elementwise class step with kernels
    generated from ferroptim's Rust rules and compiled at run time with NVRTC
    (``nvidia-cuda-nvrtc``, installed with torch's CUDA wheels): one read and one write of
    each parameter, gradient and state tensor per step, on ``torch.cuda.current_stream()``.
    Lamb and LARS add a reduction pass (one more read) whose per-tensor sums, and the trust
    ratios computed from them on the device, follow the CPU driver's order, so no step waits
    on the host. Their arithmetic equals ferroptim's CPU step bit for bit (checked on the CPU
    without a GPU; NaN payloads aside). The default (``False``, or the environment
    variable ``FERROPTIM_CUDA_KERNELS=1`` at import to turn it on) is the ATen device path.

    Under the switch the per-parameter scalar state (``step``, …) lives on the CPU (torch's
    ``capturable=False`` layout), and GradScaler unscales and skips non-finite steps itself
    (``_step_supports_amp_scaling`` is False), as for torch's foreach optimizers. Adam,
    AdamW, Adamax, NAdam, Adadelta, RMSprop and Rprop with ``capturable=True`` keep their
    scalar state (``step``, NAdam's ``mu_product``) on the parameter's device (float32, as
    torch) instead; the kernels advance it and compute the step-dependent scalars (bias
    corrections, …) on the device, so the step reads nothing from the host and can be
    captured in a CUDA graph after a warm-up step. For Adam and AdamW, a learning rate that
    is a one-element float32 or float64 tensor on the parameters' CUDA device is read by the
    kernels at every step (so ``lr.fill_(new)`` between replays of a captured graph takes
    effect, and the step equals the one with ``lr=lr.item()`` bit for bit); for the other
    classes, or another dtype or device, a CUDA tensor learning rate keeps the ATen path.
    RAdam and ASGD with ``capturable=True`` keep the ATen path.
    Parameters that are not contiguous, or that
    span several CUDA devices in one optimizer, keep the ATen path.

    Args:
        enabled (bool, optional): use the NVRTC kernels. Default: True.
    """
    _cuda_kernels[0] = bool(enabled)


def cuda_kernels_enabled() -> bool:
    """Whether :func:`use_cuda_kernels` is on."""
    return _cuda_kernels[0]


def _nvrtc_dirs() -> list[str]:
    """Folders where torch's CUDA wheels install NVRTC (``nvidia/cu13/lib``)."""
    try:
        import nvidia  # type: ignore[import-not-found]
    except ImportError:
        return []
    return [os.path.join(p, "cu13", "lib") for p in nvidia.__path__]


def _nvrtc_for(opt: Any, params: list[torch.Tensor], mode: _Mode | None) -> bool:
    """Whether these device parameters of ``opt`` take the NVRTC kernels."""
    if not (_cuda_kernels[0] and mode is None and opt._aten_rule in _NVRTC_RULES):
        return False
    if not params or any(p.device.type != "cuda" or not p.is_contiguous() for p in params):
        return False
    return len({p.device for p in params}) == 1


def _nvrtc_capturable(opt: Any, group: dict[str, Any]) -> bool:
    """Whether a ``capturable=True`` group of ``opt`` can take the NVRTC kernels: its rule
    computes its per-step scalars on the device, and its learning rate is a number, a CPU
    tensor (read on the host by ``_hyper``) or, for the rules of ``_NVRTC_TENSOR_LR``, a
    one-element float32/float64 tensor on the parameters' device (read by the kernels)."""
    if opt._aten_rule not in _NVRTC_CAPTURABLE:
        return False
    return _device_lr(opt, group) is not None or not _lr_off_cpu(group)


def _lr_off_cpu(group: dict[str, Any]) -> bool:
    lr = group["lr"]
    return isinstance(lr, torch.Tensor) and lr.device.type != "cpu"


def _device_lr(opt: Any, group: dict[str, Any]) -> torch.Tensor | None:
    """The group's tensor ``lr`` when the capturable NVRTC kernels read it on the device."""
    lr = group["lr"]
    if not (_lr_off_cpu(group) and opt._aten_rule in _NVRTC_TENSOR_LR):
        return None
    devices = {p.device for p in group["params"]}
    if lr.dtype not in (torch.float32, torch.float64) or lr.numel() != 1 or devices != {lr.device}:
        return None
    return lr


@contextlib.contextmanager
def force_device_path(foreach: bool = False) -> Iterator[None]:
    """Within this context, every ``ferroptim`` optimizer (every class but a subclass with
    ``_aten_rule = None``: all have an ATen device path) steps *all* its parameters, CPU ones
    included, through it instead of ferroptim's own CPU kernel: ATen's fused kernel where ATen
    has one for the device (on the CPU: SGD, Adam, AdamW, Adagrad), else a foreach
    composition. Results then equal ``torch.optim``'s ``fused=True`` (resp. ``foreach=True``)
    implementation bit for bit (for the classes torch lacks: ferroptim's CPU step to
    rounding); this is how the path CUDA tensors take by default is tested on machines
    without a GPU.

    Args:
        foreach (bool, optional): use the foreach composition even where ATen has a fused
            kernel and ferroptim has the composition (Adagrad: ``foreach=True``, the path
            Adagrad takes on CUDA). Default: False.

    The switch is process-wide (not per thread) and nests; optimizers without a device path
    are unaffected. Under it, GradScaler's hand-over is accepted only by the fused kernels:
    the other classes report ``_step_supports_amp_scaling = False`` and GradScaler unscales
    their gradients itself, as for torch's foreach optimizers.
    """
    _forced.append(_Mode(bool(foreach)))
    try:
        yield
    finally:
        _forced.pop()


def forced() -> _Mode | None:
    """The innermost :func:`force_device_path` in effect, or None."""
    return _forced[-1] if _forced else None


def has_path(opt: Any, groups: list[dict[str, Any]]) -> bool:
    """Whether ``opt``'s step over ``groups`` can take the device path: its class has one, and
    unless it reduces over whole tensors (LAMB, LARS: ``_dtensor_gather``, whose norms need
    the full tensors that the general path gathers) with a DTensor parameter."""
    if opt._aten_rule is None:
        return False
    return not (opt._dtensor_gather and distributed.groups_are_sharded(groups))


def has_device_params(groups: list[dict[str, Any]]) -> bool:
    """True if any parameter of ``groups`` is not on the CPU."""
    return any(p.device.type != "cpu" for g in groups for p in g["params"])


def fused_on(opt: Any, device_type: str, mode: _Mode | None) -> bool:
    """Whether ``opt``'s device path uses an ATen fused kernel (which takes GradScaler's
    ``grad_scale``/``found_inf``) on ``device_type``."""
    devices = opt._aten_fused
    if mode is not None and mode.foreach and opt._aten_foreach_too:
        return False
    return devices is None or device_type in devices


def supports_amp_scaling(opt: Any) -> bool:
    """``_step_supports_amp_scaling`` of a native optimizer: True unless some parameter takes a
    foreach composition of the device path, whose torch counterpart leaves unscaling (and
    skipping non-finite steps) to GradScaler. GradScaler reads it at every step: while a
    cached plan exists (made by a step whose parameters were all on the CPU, and dropped when
    the device path is forced) the answer is True without a walk over the parameters."""
    mode = forced()
    if mode is None and opt.__dict__.get("_ferroptim_plan") is not None:
        return True
    if not has_path(opt, opt.param_groups):
        return True
    if _cuda_kernels[0] and opt._aten_rule in _NVRTC_RULES:
        cuda = [p for g in opt.param_groups for p in g["params"] if p.device.type == "cuda"]
        if _nvrtc_for(opt, cuda, mode):
            return False
    if mode is not None:
        return fused_on(opt, "cpu", mode)
    if opt._aten_fused is None:
        return True
    types = {p.device.type for g in opt.param_groups for p in g["params"]}
    return all(fused_on(opt, t, None) for t in types if t != "cpu")


def warn_staged(opt: Any) -> None:
    """Warns once per class that its CUDA (non-CPU) parameters take the staged path."""
    name = type(opt).__name__
    if name not in _warned:
        _warned.add(name)
        warnings.warn(
            f"ferroptim.{name} has no device kernel yet (no ATen fused kernel and no foreach "
            "composition): its non-CPU parameters are copied to the CPU, updated and copied "
            "back at every step (the staged path), which is slow",
            RuntimeWarning,
            stacklevel=3,
        )


def _split(
    tensors: dict[str, Any], on_device: list[bool], n_state: int, n_scalar: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``tensors`` (see ``NativeStep._collect``) split into the parameters that take the device
    path and the others."""
    parts: tuple[dict[str, list], dict[str, list]] = (
        {k: [] for k in tensors},
        {k: [] for k in tensors},
    )
    for i, dev in enumerate(on_device):
        part = parts[0] if dev else parts[1]
        part["params"].append(tensors["params"][i])
        part["grads"].append(tensors["grads"][i])
        part["fresh"].append(tensors["fresh"][i])
        part["states"].extend(tensors["states"][i * n_state : (i + 1) * n_state])
        part["scalar_states"].extend(tensors["scalar_states"][i * n_scalar : (i + 1) * n_scalar])
    return parts


def _place_scalar_state(
    opt: Any,
    dev: dict[str, Any],
    scalar_names: tuple[str, ...],
    created: dict[int, dict[str, Any]],
    mode: _Mode | None,
    host: bool = False,
    capturable: bool = False,
) -> None:
    """Puts each scalar state tensor (``step``, …) where torch's implementation keeps it: on
    the parameter's device (float32) for a fused kernel on a non-CPU device, for the NVRTC
    kernels' capturable steps (``capturable``) and for ASGD
    (``_aten_scalar_state_on_device``), on the CPU for the other foreach compositions (torch's
    ``capturable=False``) and for the NVRTC kernels (``host``). Replaces the entry in the state dict
    (as torch's ``load_state_dict`` moves ``step`` for fused optimizers)."""
    n = len(scalar_names)
    for i, p in enumerate(dev["params"]):
        fused = capturable or (
            not host and p.device.type != "cpu" and fused_on(opt, p.device.type, mode)
        )
        on_device = not host and (fused or opt._aten_scalar_state_on_device)
        want = p.device if on_device else torch.device("cpu")
        for k, name in enumerate(scalar_names):
            t = dev["scalar_states"][i * n + k]
            if t.device == want:
                continue
            moved = t.to(want, dtype=torch.float32 if fused else t.dtype)
            dev["scalar_states"][i * n + k] = moved
            for holder in (created.get(id(p)), opt.state.get(p)):
                if holder is not None and holder.get(name) is t:
                    holder[name] = moved


def _device_hyper(opt: Any, group: dict[str, Any]) -> dict[str, Any]:
    """The group's hyperparameters for the device path: a tensor ``lr`` is passed as the tensor
    (``lr_tensor``), never read on the host here (unless the class computes its step's
    learning rate itself: ``_aten_tensor_lr`` False)."""
    lr = group["lr"]
    if isinstance(lr, torch.Tensor) and opt._aten_tensor_lr:
        return {**opt._hyper({**group, "lr": 0.0}), "lr_tensor": lr}
    return {**opt._hyper(group), "lr_tensor": None}


def device_step(opt: Any, groups: list[dict[str, Any]], mode: _Mode | None) -> None:
    """One step of ``opt`` (a ``NativeStep`` with an ``_aten_rule``): parameters not on the CPU
    (all of them under :func:`force_device_path`) in one ``_core.aten_step`` call, the others
    in one call of the CPU kernel. GradScaler's ``grad_scale``/``found_inf`` go to the device
    path as tensors (no host read); the CPU part reads them as before."""
    from ferroptim._base import check_differentiable, grad_scaler_args

    opt.__dict__.pop("_ferroptim_plan", None)
    created_list: list[tuple[torch.Tensor, dict[str, Any]]] = []
    dev_calls, cpu_calls, nvrtc_calls, nvrtc_capturable_calls = [], [], [], []
    device = None
    for group in groups:
        check_differentiable(opt, group)
        names, scalar_names = opt._state_names(group)
        tensors = opt._collect(group, created_list)
        if not tensors["params"]:
            continue
        on_device = [mode is not None or p.device.type != "cpu" for p in tensors["params"]]
        dev, cpu = _split(tensors, on_device, len(names), len(scalar_names))
        if dev["params"]:
            created = {id(p): new for p, new in created_list}
            nvrtc = _nvrtc_for(opt, dev["params"], mode) and device in (
                None,
                dev["params"][0].device,
            )
            capturable = nvrtc and bool(group.get("capturable", False))
            if capturable and not _nvrtc_capturable(opt, group):
                nvrtc = capturable = False
            _place_scalar_state(
                opt,
                dev,
                scalar_names,
                created,
                mode,
                host=nvrtc and not capturable,
                capturable=capturable,
            )
            if nvrtc:
                device = dev["params"][0].device
                lr = _device_lr(opt, group) if capturable else None
                if lr is None:
                    hyper = opt._hyper(group)
                else:  # read by the kernels, not here (no host sync)
                    hyper = {**opt._hyper({**group, "lr": 0.0}), "lr_tensor": lr}
                calls = opt._native_calls(group, dev, hyper)
                (nvrtc_capturable_calls if capturable else nvrtc_calls).extend(calls)
            else:
                dev_calls.extend(opt._native_calls(group, dev, _device_hyper(opt, group)))
        if cpu["params"]:
            cpu_calls.extend(opt._native_calls(group, cpu))
    if dev_calls:
        _core.aten_step(
            opt._aten_rule,
            dev_calls,
            getattr(opt, "grad_scale", None),
            getattr(opt, "found_inf", None),
            bool(mode is not None and mode.foreach),
        )
    if nvrtc_calls or nvrtc_capturable_calls:
        stream = torch.cuda.current_stream(device).cuda_stream
        for calls, capturable in ((nvrtc_calls, False), (nvrtc_capturable_calls, True)):
            if calls:
                _core.nvrtc_step(
                    opt._aten_rule, calls, stream, _nvrtc_dirs(), capturable=capturable
                )
    if cpu_calls:
        skip, scale = grad_scaler_args(opt)
        if not skip:
            type(opt)._native_step(cpu_calls, scale)
    for p, new in created_list:
        opt.state[p].update(new)
