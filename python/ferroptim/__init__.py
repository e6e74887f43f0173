"""ferroptim: fused native optimizer steps as drop-in replacements for ``torch.optim``.

Every torch.optim class here takes the same arguments, defaults, ``param_groups`` and
``state_dict`` as its ``torch.optim`` namesake (torch 2.11); ``Lion`` and ``ADOPT`` follow their
reference implementations. Each updates every parameter of every group in one native,
multi-threaded call per ``step()``.
"""

import torch  # noqa: F401  (loads libtorch before the extension that links it)

from ferroptim import _core
from ferroptim import checkpoint as checkpoint  # the submodule, as an attribute
from ferroptim.adadelta import Adadelta
from ferroptim.adagrad import Adagrad
from ferroptim.adam import Adam, AdamW
from ferroptim.adamax import Adamax
from ferroptim.adopt import ADOPT
from ferroptim.asgd import ASGD
from ferroptim.lion import Lion
from ferroptim.nadam import NAdam
from ferroptim.radam import RAdam
from ferroptim.rmsprop import RMSprop
from ferroptim.rprop import Rprop
from ferroptim.sgd import SGD

__version__ = _core.__version__
__all__ = [
    "ADOPT",
    "ASGD",
    "SGD",
    "Adadelta",
    "Adagrad",
    "Adam",
    "AdamW",
    "Adamax",
    "Lion",
    "NAdam",
    "RAdam",
    "RMSprop",
    "Rprop",
    "__version__",
]
