"""ferroptim: fused native optimizer steps as drop-in replacements for ``torch.optim``.

Every torch.optim class here takes the same arguments, defaults, ``param_groups`` and
``state_dict`` as its ``torch.optim`` namesake (torch 2.11); ``Lion``, ``ADOPT``, ``Adan``,
``AdEMAMix``, ``ScheduleFreeAdamW``, ``Lamb`` and ``LARS`` follow their reference
implementations. Each updates every parameter of every group in one native call per
``step()``: a fused multi-threaded pass for the elementwise algorithms (and a per-tensor norm
pass first for ``Lamb`` and ``LARS``), torch's own ATen operations in torch's order for
``Adafactor``, ``Muon``, ``SparseAdam`` and ``LBFGS``.
"""

import torch  # loads libtorch before the extension that links it

from ferroptim._torch_build import check_torch

# Before the native module is loaded: a torch of another minor release is an ImportError
# naming both versions, not an undefined symbol.
check_torch(torch.__version__)

from ferroptim import _core
from ferroptim import checkpoint as checkpoint  # the submodule, as an attribute
from ferroptim import rules as rules  # your own rules (ferroptim.rules.rule_optimizer)
from ferroptim import transforms as transforms  # building blocks of ferroptim.chain
from ferroptim._device import cuda_kernels_enabled, force_device_path, use_cuda_kernels
from ferroptim.adadelta import Adadelta
from ferroptim.adafactor import Adafactor
from ferroptim.adagrad import Adagrad
from ferroptim.adam import Adam, AdamW
from ferroptim.adamax import Adamax
from ferroptim.adan import Adan
from ferroptim.ademamix import AdEMAMix
from ferroptim.adopt import ADOPT
from ferroptim.asgd import ASGD
from ferroptim.lamb import Lamb
from ferroptim.lars import LARS
from ferroptim.lbfgs import LBFGS
from ferroptim.lion import Lion
from ferroptim.lowbit import (
    Adagrad8bit,
    Adam8bit,
    AdamW8bit,
    Adan8bit,
    AdEMAMix8bit,
    Lion8bit,
    RMSprop8bit,
    SGD8bit,
)
from ferroptim.muon import Muon
from ferroptim.nadam import NAdam
from ferroptim.radam import RAdam
from ferroptim.rmsprop import RMSprop
from ferroptim.rprop import Rprop
from ferroptim.schedule_free import ScheduleFreeAdamW
from ferroptim.sgd import SGD
from ferroptim.sparse_adam import SparseAdam
from ferroptim.transforms import chain

__version__ = _core.__version__
__all__ = [
    "ADOPT",
    "ASGD",
    "LARS",
    "LBFGS",
    "SGD",
    "Adadelta",
    "Adagrad8bit",
    "Adam8bit",
    "AdamW8bit",
    "Adan8bit",
    "AdEMAMix8bit",
    "Lion8bit",
    "RMSprop8bit",
    "SGD8bit",
    "Adafactor",
    "Adagrad",
    "Adam",
    "AdamW",
    "AdEMAMix",
    "Adamax",
    "Adan",
    "Lamb",
    "Lion",
    "Muon",
    "NAdam",
    "RAdam",
    "RMSprop",
    "Rprop",
    "ScheduleFreeAdamW",
    "SparseAdam",
    "__version__",
    "chain",
    "force_device_path",
    "use_cuda_kernels",
    "cuda_kernels_enabled",
]
