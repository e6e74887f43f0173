"""Type stubs of the native module ``ferroptim._core`` (built from rust/ferroptim-python).

Every fused-driver ``*_step`` function takes a list of group dicts (the keys below) and an
optional ``grad_scale``. It updates ``params``, ``states`` and ``scalar_states`` in place, for
all groups in one call with the GIL released; with ``grad_scale`` it also divides each gradient
by it and writes the unscaled gradient back (loss scaling, as torch's fused kernels). The
hyperparameter keys are the fields of the Rust rule (``rust/ferroptim/src/rules/``). The
tensor-rule functions (further below) take ``grad_scale`` too.

Every ``*_plan`` function makes a :class:`Plan`: the optimizer's parameters and state converted
once, so that later steps convert nothing per parameter (see ``rust/ferroptim-python/src/plan.rs``).
"""

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypedDict, final

import torch

__version__: str
__all__ = [
    "__version__",
    "record_function_observed",
    "Plan",
    "Graph",
    "graph_step",
    "graph_plan",
    "sgd_step",
    "sgd_plan",
    "adam_step",
    "adam_plan",
    "adagrad_step",
    "adagrad_plan",
    "adamax_step",
    "adamax_plan",
    "nadam_step",
    "nadam_plan",
    "radam_step",
    "radam_plan",
    "rmsprop_step",
    "rmsprop_plan",
    "rprop_step",
    "rprop_plan",
    "adadelta_step",
    "adadelta_plan",
    "asgd_step",
    "asgd_plan",
    "lion_step",
    "lion_plan",
    "adopt_step",
    "adopt_plan",
    "adan_step",
    "adan_plan",
    "ademamix_step",
    "ademamix_plan",
    "schedule_free_adamw_step",
    "schedule_free_adamw_plan",
    "lamb_step",
    "lamb_plan",
    "lars_step",
    "lars_plan",
    "aten_step",
    "nvrtc_step",
    "zero_grad",
    "adafactor_step",
    "muon_step",
    "sparse_adam_step",
    "lbfgs_step",
    "step_8bit",
    "quantize_8bit",
    "dequantize_8bit",
]

@final
class Plan:
    """A cached plan of one optimizer's steps."""

    def step(
        self,
        state: Mapping[torch.Tensor, Mapping[str, Any]],
        param_groups: Sequence[Mapping[str, Any]],
        hypers: Sequence[Mapping[str, float | bool | None]],
        grad_scale: float | None = None,
        zero_grad: bool | None = None,
    ) -> int:
        """Steps and returns 1 if ``state`` and ``param_groups`` hold the same objects as
        when the plan was made (and no parameter without state has a gradient); otherwise
        returns 0 having changed nothing. ``hypers``: one dict per group, keyed like the
        ``*_step`` group dicts' hyperparameters. ``zero_grad``: None, or the ``set_to_none``
        of a ``zero_grad`` done in the same call after the step (returns 2 if the step was
        done but a parameter is not a leaf tensor, so the gradients were left alone)."""

    def zero_grad(
        self, param_groups: Sequence[Mapping[str, Any]], set_to_none: bool = True
    ) -> bool:
        """``zero_grad(set_to_none)`` of the planned parameters; True if ``param_groups`` holds
        the same groups and parameters as when the plan was made (else False, nothing done)."""

_Names = Sequence[tuple[Sequence[str], Sequence[str]]]
_State = Mapping[torch.Tensor, Mapping[str, Any]]
_Groups = Sequence[Mapping[str, Any]]

class _Tensors(TypedDict):
    params: Sequence[torch.Tensor]
    grads: Sequence[torch.Tensor]
    states: Sequence[torch.Tensor]  # parameter-major: the rule's state tensors per parameter
    scalar_states: Sequence[torch.Tensor]  # parameter-major: `step`, … per parameter
    fresh: Sequence[bool]

class SgdGroup(_Tensors):
    lr: float
    momentum: float
    dampening: float
    weight_decay: float
    nesterov: bool
    maximize: bool

class AdamGroup(_Tensors):
    lr: float
    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    amsgrad: bool
    maximize: bool
    decoupled_weight_decay: bool

class AdagradGroup(_Tensors):
    lr: float
    lr_decay: float
    weight_decay: float
    eps: float
    initial_accumulator_value: float
    maximize: bool

class AdamaxGroup(_Tensors):
    lr: float
    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    maximize: bool

class NAdamGroup(_Tensors):
    lr: float
    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    momentum_decay: float
    decoupled_weight_decay: bool
    maximize: bool

class RAdamGroup(_Tensors):
    lr: float
    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    decoupled_weight_decay: bool
    maximize: bool

class RMSpropGroup(_Tensors):
    lr: float
    alpha: float
    eps: float
    weight_decay: float
    momentum: float
    centered: bool
    maximize: bool

class RpropGroup(_Tensors):
    lr: float
    etaminus: float
    etaplus: float
    step_size_min: float
    step_size_max: float
    maximize: bool

class AdadeltaGroup(_Tensors):
    lr: float
    rho: float
    eps: float
    weight_decay: float
    maximize: bool

class AsgdGroup(_Tensors):
    lr: float
    lambd: float
    alpha: float
    t0: float
    weight_decay: float
    maximize: bool

class LionGroup(_Tensors):
    lr: float
    beta1: float
    beta2: float
    weight_decay: float
    maximize: bool

class AdoptGroup(_Tensors):
    lr: float
    beta1: float
    beta2: float
    eps: float
    clip_exponent: float | None
    weight_decay: float
    decouple: bool
    maximize: bool

class AdanGroup(_Tensors):
    lr: float
    beta1: float
    beta2: float
    beta3: float
    eps: float
    weight_decay: float
    no_prox: bool
    maximize: bool

class AdEMAMixGroup(_Tensors):
    lr: float
    beta1: float
    beta2: float
    beta3: float
    alpha: float
    beta3_warmup: float | None
    alpha_warmup: float | None
    eps: float
    weight_decay: float
    maximize: bool

class ScheduleFreeAdamWGroup(_Tensors):
    lr: float  # this step's warmed-up learning rate
    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    ckp1: float  # weight of z in the average x at this step
    step: float  # 1-based step number (bias correction)
    maximize: bool

class LambGroup(_Tensors):
    lr: float
    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    weight_decouple: bool
    grad_averaging: bool
    adam: bool
    maximize: bool

class LarsGroup(_Tensors):
    lr: float
    momentum: float
    dampening: float
    weight_decay: float
    trust_coefficient: float
    nesterov: bool
    trust: bool  # apply weight decay and the trust ratio (LARS: parameters of 2+ dimensions)
    maximize: bool

def record_function_observed() -> bool: ...
def nvrtc_step(
    rule: str,
    groups: Sequence[Mapping[str, Any]],
    stream: int,
    nvrtc_dirs: Sequence[str],
    grad_scale: torch.Tensor | None = None,
    found_inf: torch.Tensor | None = None,
    capturable: bool = False,
) -> None:
    """One step with ferroptim's own NVRTC kernels (opt-in, untested on a GPU): ``rule`` as
    for :func:`aten_step` (``"lamb"`` and ``"lars"``: a reduction pass and the trust ratios on
    the device first); ``groups`` as for the CPU step (contiguous CUDA
    tensors, scalar state on the CPU); launched on ``stream`` (a ``CUstream`` address, e.g.
    ``torch.cuda.current_stream().cuda_stream``); ``nvrtc_dirs``: folders that may hold
    ``libnvrtc.so.13``. ``grad_scale``/``found_inf``: GradScaler's hand-over, read by the
    kernel (unscale, and skip when ``found_inf`` is nonzero; the CPU scalar state still
    advances). ``capturable`` (``"adam"``, ``"adamax"``, ``"nadam"``, ``"adadelta"``,
    ``"rmsprop"``, ``"rprop"``, else ValueError): the scalar state (``step``, NAdam's
    ``mu_product``) is float32 one-element tensors on the parameter's device, advanced
    (unless ``found_inf``) and read by the kernels, which compute the step-dependent scalars
    (bias corrections, …): nothing is read on the host, so the call can be captured in a
    CUDA graph after a warm-up call. Raises
    ValueError/RuntimeError before modifying anything if a tensor is not a contiguous CUDA
    tensor of the parameter's shape and dtype."""
    ...

def aten_step(
    rule: str,
    groups: Sequence[Mapping[str, Any]],
    grad_scale: torch.Tensor | None = None,
    found_inf: torch.Tensor | None = None,
    prefer_foreach: bool = False,
) -> None:
    """One step of the ATen device path (``rule``: ``"sgd"``, ``"adam"``, ``"adagrad"``,
    ``"adamax"``, ``"rmsprop"``, ``"rprop"``, ``"adadelta"``, ``"nadam"``, ``"radam"``,
    ``"asgd"``, ``"lion"``, ``"adopt"``, ``"adan"``, ``"ademamix"``, ``"schedule_free_adamw"``,
    ``"lamb"``, ``"lars"``); groups as for ``<rule>_step`` plus ``lr_tensor`` (torch's tensor
    ``lr`` or None)."""

def sgd_step(groups: Sequence[SgdGroup], grad_scale: float | None = None) -> None: ...
def adam_step(groups: Sequence[AdamGroup], grad_scale: float | None = None) -> None: ...
def adagrad_step(groups: Sequence[AdagradGroup], grad_scale: float | None = None) -> None: ...
def adamax_step(groups: Sequence[AdamaxGroup], grad_scale: float | None = None) -> None: ...
def nadam_step(groups: Sequence[NAdamGroup], grad_scale: float | None = None) -> None: ...
def radam_step(groups: Sequence[RAdamGroup], grad_scale: float | None = None) -> None: ...
def rmsprop_step(groups: Sequence[RMSpropGroup], grad_scale: float | None = None) -> None: ...
def rprop_step(groups: Sequence[RpropGroup], grad_scale: float | None = None) -> None: ...
def adadelta_step(groups: Sequence[AdadeltaGroup], grad_scale: float | None = None) -> None: ...
def asgd_step(groups: Sequence[AsgdGroup], grad_scale: float | None = None) -> None: ...
def lion_step(groups: Sequence[LionGroup], grad_scale: float | None = None) -> None: ...
def adopt_step(groups: Sequence[AdoptGroup], grad_scale: float | None = None) -> None: ...
def adan_step(groups: Sequence[AdanGroup], grad_scale: float | None = None) -> None: ...
def ademamix_step(groups: Sequence[AdEMAMixGroup], grad_scale: float | None = None) -> None: ...
def schedule_free_adamw_step(
    groups: Sequence[ScheduleFreeAdamWGroup], grad_scale: float | None = None
) -> None: ...
def lamb_step(groups: Sequence[LambGroup], grad_scale: float | None = None) -> None: ...
def lars_step(groups: Sequence[LarsGroup], grad_scale: float | None = None) -> None: ...
def sgd_plan(state: _State, param_groups: _Groups, names: _Names) -> Plan: ...
def adam_plan(state: _State, param_groups: _Groups, names: _Names) -> Plan: ...
def adagrad_plan(state: _State, param_groups: _Groups, names: _Names) -> Plan: ...
def adamax_plan(state: _State, param_groups: _Groups, names: _Names) -> Plan: ...
def nadam_plan(state: _State, param_groups: _Groups, names: _Names) -> Plan: ...
def radam_plan(state: _State, param_groups: _Groups, names: _Names) -> Plan: ...
def rmsprop_plan(state: _State, param_groups: _Groups, names: _Names) -> Plan: ...
def rprop_plan(state: _State, param_groups: _Groups, names: _Names) -> Plan: ...
def adadelta_plan(state: _State, param_groups: _Groups, names: _Names) -> Plan: ...
def asgd_plan(state: _State, param_groups: _Groups, names: _Names) -> Plan: ...
def lion_plan(state: _State, param_groups: _Groups, names: _Names) -> Plan: ...

_RawNode = tuple[str, int, int, int, float]

@final
class Graph:
    """A rule traced by ``ferroptim.rules`` (element and scalar graphs), checked and interned.
    Raises ValueError naming the first bad node."""

    def __new__(
        cls,
        state_names: Sequence[str],
        nodes: Sequence[_RawNode],
        param_out: int,
        state_out: Sequence[int],
        scalars: Sequence[_RawNode],
        slots: Sequence[int],
        n_hypers: int,
        norms: Sequence[int] = ...,
    ) -> Graph: ...
    @property
    def n_nodes(self) -> int:
        """The number of element nodes."""
    @property
    def n_norms(self) -> int:
        """The number of per-tensor norm terms."""

class GraphGroup(_Tensors):
    graph: Graph
    hypers: Sequence[float]

def graph_step(groups: Sequence[GraphGroup], grad_scale: float | None = None) -> None: ...
def graph_plan(state: _State, param_groups: _Groups, names: _Names) -> Plan: ...
def adopt_plan(state: _State, param_groups: _Groups, names: _Names) -> Plan: ...
def adan_plan(state: _State, param_groups: _Groups, names: _Names) -> Plan: ...
def ademamix_plan(state: _State, param_groups: _Groups, names: _Names) -> Plan: ...
def schedule_free_adamw_plan(state: _State, param_groups: _Groups, names: _Names) -> Plan: ...
def lamb_plan(state: _State, param_groups: _Groups, names: _Names) -> Plan: ...
def lars_plan(state: _State, param_groups: _Groups, names: _Names) -> Plan: ...

# Tensor rules (rust/ferroptim/src/tensor_rules/): ATen operations in torch's order, one call
# for all groups, GIL released; an optional grad_scale unscales the gradients first with
# GradScaler's own operation (a multiply by float32(1 / grad_scale), not the fused drivers'
# division). Each list has one entry per parameter with a gradient.

class AdafactorGroup(TypedDict):
    params: Sequence[torch.Tensor]
    grads: Sequence[torch.Tensor]
    steps: Sequence[torch.Tensor]  # `step` (0-d), incremented in place
    row_vars: Sequence[torch.Tensor | None]  # factored (dim > 1) parameters only
    col_vars: Sequence[torch.Tensor | None]
    variances: Sequence[torch.Tensor | None]  # dim <= 1 parameters only
    lr: float
    beta2_decay: float
    eps1: float | None
    eps2: float
    d: float
    weight_decay: float
    maximize: bool

class MuonGroup(TypedDict):
    params: Sequence[torch.Tensor]  # 2-D
    grads: Sequence[torch.Tensor]
    momentum_buffers: Sequence[torch.Tensor]
    lr: float
    weight_decay: float
    momentum: float
    nesterov: bool
    ns_coefficients: tuple[float, float, float]
    eps: float
    ns_steps: int
    adjust_lr_fn: str | None

class SparseAdamGroup(TypedDict):
    params: Sequence[torch.Tensor]
    grads: Sequence[torch.Tensor]  # sparse COO
    exp_avgs: Sequence[torch.Tensor]
    exp_avg_sqs: Sequence[torch.Tensor]
    steps: Sequence[int]  # step counts including this step
    lr: float
    beta1: float
    beta2: float
    eps: float
    maximize: bool

def adafactor_step(groups: Sequence[AdafactorGroup], grad_scale: float | None = None) -> None:
    """One torch.optim.Adafactor step over all groups. With ``grad_scale``, each gradient is
    first multiplied in place by ``float32(1 / grad_scale)`` as ``GradScaler.unscale_`` does
    (ValueError, before anything changes, if ``grad_scale`` is zero or not finite)."""

def muon_step(groups: Sequence[MuonGroup], grad_scale: float | None = None) -> None:
    """One torch.optim.Muon step over all groups; ``grad_scale`` as for
    :func:`adafactor_step`."""

def sparse_adam_step(groups: Sequence[SparseAdamGroup], grad_scale: float | None = None) -> None:
    """One torch.optim.SparseAdam step over all groups; with ``grad_scale`` the values of
    each sparse gradient are unscaled first, as for :func:`adafactor_step`."""

def lbfgs_step(
    params: Sequence[torch.Tensor],
    closure: Callable[[], tuple[float, list[torch.Tensor | None]]],
    state: dict[str, Any],
    group: dict[str, Any],
) -> dict[str, Any]:
    """One torch.optim.LBFGS step; ``state`` is torch's ``state[params[0]]`` (read), the
    entries to store are returned. ``group``: lr (float or 0-d tensor), max_iter, max_eval,
    tolerance_grad, tolerance_change, history_size, strong_wolfe (bool). GIL held."""

def zero_grad(param_groups: Sequence[Mapping[str, Any]], set_to_none: bool = True) -> bool:
    """Resets the gradients of every parameter of ``param_groups`` as
    ``torch.optim.Optimizer.zero_grad`` does, in one native call; False (nothing changed) if a
    parameter is not a leaf tensor."""

def step_8bit(
    rule: str,
    groups: Sequence[Mapping[str, Any]],
    grad_scale: float | None = None,
    fp32_groups: Sequence[Mapping[str, Any]] = ...,
) -> None:
    """One step of the elementwise rule ``rule`` (``"adam"``, ``"sgd"``, ``"lion"``,
    ``"rmsprop"``, ``"adagrad"``, ``"adan"``, ``"ademamix"``, ``"adamax"``, ``"nadam"``,
    ``"radam"``, ``"adadelta"``, ``"adopt"``) over groups with 8-bit state: each group dict
    holds the rule's hyperparameters (as for its ``*_step``), ``block_size``, ``params``,
    ``grads``, ``codes`` and ``absmax`` (per parameter, one uint8 codes tensor and one
    float32 absmax tensor per state name, in the rule's order), ``scalar_states``, ``fresh``,
    and optionally ``states`` (unquantized bfloat16 state instead of codes/absmax) and
    ``bf16_stochastic_round`` (an int seed, or None). ``fp32_groups``: groups of the same
    rule with full-precision state, as its ``*_step`` takes them, stepped in the same call;
    both lists are validated before anything is modified. GIL released."""

def quantize_8bit(t: torch.Tensor, name: str, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The uint8 codes (``t``'s shape) and float32 block absmax (``[ceil(numel/block_size)]``)
    of the state tensor ``t`` named ``name`` (which picks the signed or unsigned map)."""

def dequantize_8bit(
    codes: torch.Tensor, absmax: torch.Tensor, name: str, block_size: int
) -> torch.Tensor:
    """The float32 values of 8-bit state (the shape of ``codes``)."""
