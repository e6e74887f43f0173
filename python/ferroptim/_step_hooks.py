"""The wrapper torch.optim puts around every optimizer's ``step``, without its cost when no
profiler runs.

``torch.optim.Optimizer.__init__`` wraps ``type(self).step`` once with
``self.profile_hook_step``: step pre-hooks (global, then the optimizer's), the step,
``_optimizer_step_code`` (the profiler's Python-tracing entry point), post-hooks (the
optimizer's, then global), all inside ``record_function("Optimizer.step#<class>.step")``.
Entering that region dispatches two profiler ops even when nothing records them: measured on
a 2-core EPYC with torch 2.11, about 6 µs per step with warm caches and 170 µs after the
previous step streamed the model through them (``benches/RESULTS.md``). ``NativeStep`` uses
this version instead, which enters the region only while something observes libtorch's
``RecordFunction`` events (``_core.record_function_observed``: a profiler on this thread or
on all threads, an execution trace observer, ``emit_nvtx``, ...), so every trace still shows
the step under the same name.
"""

from __future__ import annotations

import functools
from itertools import chain
from typing import Any, Callable

import torch
from torch.optim.optimizer import _global_optimizer_post_hooks, _global_optimizer_pre_hooks

from . import _core


def profile_hook_step(func: Callable[..., Any]) -> Callable[..., Any]:
    """``func`` (an optimizer's ``step``) with step hooks and a profiler label, as
    ``torch.optim.Optimizer.profile_hook_step`` wraps it (see the module docstring).

    Raises:
        RuntimeError: a pre-hook returned something other than None or a
            ``(new_args, new_kwargs)`` pair.
    """

    @functools.wraps(func)
    def step(*args: Any, **kwargs: Any) -> Any:
        optimizer = args[0]
        # Dynamo ignores record_function regions (and cannot trace the extension call).
        if not torch.compiler.is_compiling() and _core.record_function_observed():
            label = f"Optimizer.step#{type(optimizer).__name__}.step"
            with torch.autograd.profiler.record_function(label):
                return _with_hooks(func, optimizer, args, kwargs)
        return _with_hooks(func, optimizer, args, kwargs)

    return step


def _with_hooks(func: Callable[..., Any], optimizer: Any, args: tuple, kwargs: dict) -> Any:
    pre_hooks = chain(
        _global_optimizer_pre_hooks.values(), optimizer._optimizer_step_pre_hooks.values()
    )
    for hook in pre_hooks:
        result = hook(optimizer, args, kwargs)
        if result is None:
            continue
        if not (isinstance(result, tuple) and len(result) == 2):
            raise RuntimeError(
                f"{func} must return None or a tuple of (new_args, new_kwargs), but got {result}."
            )
        args, kwargs = result
    out = func(*args, **kwargs)
    optimizer._optimizer_step_code()
    post_hooks = chain(
        optimizer._optimizer_step_post_hooks.values(), _global_optimizer_post_hooks.values()
    )
    for hook in post_hooks:
        hook(optimizer, args, kwargs)
    return out
