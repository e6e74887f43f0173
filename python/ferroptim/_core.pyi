"""Type stubs of the native module ``ferroptim._core`` (built from rust/ferroptim-python)."""

from collections.abc import Sequence
from typing import TypedDict

import torch

__version__: str

class _Tensors(TypedDict):
    params: Sequence[torch.Tensor]
    grads: Sequence[torch.Tensor]
    states: Sequence[torch.Tensor]  # parameter-major, the rule's state tensors per parameter
    steps: Sequence[torch.Tensor]
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

def sgd_step(groups: Sequence[SgdGroup]) -> None:
    """One SGD step over all groups; updates params and states in place. GIL released."""

def adam_step(groups: Sequence[AdamGroup]) -> None:
    """One Adam/AdamW step over all groups; increments ``steps`` and updates params and
    states in place. GIL released."""
