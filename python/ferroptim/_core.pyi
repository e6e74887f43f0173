"""Type stubs of the native module ``ferroptim._core`` (built from rust/ferroptim-python).

Every ``*_step`` function takes a list of group dicts (the keys below) and an optional
``grad_scale``. It updates ``params``, ``states`` and ``scalar_states`` in place, for all groups
in one call with the GIL released; with ``grad_scale`` it also divides each gradient by it and
writes the unscaled gradient back (loss scaling, as torch's fused kernels). The hyperparameter
keys are the fields of the Rust rule (``rust/ferroptim/src/rules/``).
"""

from collections.abc import Sequence
from typing import TypedDict

import torch

__version__: str

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
