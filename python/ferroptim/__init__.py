"""ferroptim: fused native optimizer steps as drop-in replacements for ``torch.optim``.

``ferroptim.SGD``, ``ferroptim.Adam`` and ``ferroptim.AdamW`` take the same arguments, defaults,
``param_groups`` and ``state_dict`` as their ``torch.optim`` namesakes (torch 2.11), and update
every parameter of every group in one native, multi-threaded call per ``step()``.
"""

import torch  # noqa: F401  (loads libtorch before the extension that links it)

from ferroptim import _core
from ferroptim.adam import Adam, AdamW
from ferroptim.sgd import SGD

__version__ = _core.__version__
__all__ = ["SGD", "Adam", "AdamW", "__version__"]
