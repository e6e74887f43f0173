"""Helpers of the distributed tests: a two-process gloo runner and FSDP2/DTensor comparisons.

A test module lists its cases in a dict ``CASES`` (name -> ``fn(rank, world_size)``) and
parametrizes one pytest test over the names; a module-scoped fixture calls
:func:`run_cases` once, which spawns ``world_size`` processes that join one gloo process
group (a FileStore in a temporary folder), load the test module from its file and run every
case in order, each process recording per case an empty string (passed) or its traceback.
One launch serves the whole module (starting torch in two processes takes seconds on a
2-core machine). Every case runs the same collectives on every rank (comparisons gather
with ``full_tensor()`` on all ranks before asserting), so a failing assertion fails on
every rank alike instead of leaving one waiting in a collective; a case that does hang
hits the process group's timeout and fails with the rest.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import tempfile
import traceback
from datetime import timedelta
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from optim_testlib import Snapshot
from torch import nn

#: Seconds a collective may wait before the process group gives up (a case that hangs).
COLLECTIVE_TIMEOUT = 60
#: Seconds the whole launch may take before the runner kills its workers.
LAUNCH_TIMEOUT = 600


def _load(path: str) -> Any:
    name = "_dist_case_module_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _worker(rank: int, world_size: int, path: str, names: list[str], tmp: str) -> None:
    torch.set_num_threads(1)
    store = dist.FileStore(os.path.join(tmp, "store"), world_size)
    dist.init_process_group(
        "gloo",
        store=store,
        rank=rank,
        world_size=world_size,
        timeout=timedelta(seconds=COLLECTIVE_TIMEOUT),
    )
    results: dict[str, str] = {}
    out = os.path.join(tmp, f"rank{rank}.json")
    try:
        cases = _load(path).CASES
        for name in names:
            torch.manual_seed(0)
            try:
                cases[name](rank, world_size)
                results[name] = ""
            except Exception:  # recorded for the test of this case
                results[name] = traceback.format_exc()
            with open(out, "w") as f:  # after every case: a later crash keeps these
                json.dump(results, f)
    finally:
        dist.destroy_process_group()


def run_cases(path: str, names: list[str], world_size: int = 2) -> dict[str, str]:
    """Runs the cases ``names`` of the test module at ``path`` in ``world_size`` spawned
    processes; returns name -> "" (passed on every rank) or the failures, rank by rank
    ("no result" for a case a rank did not reach: a crash or the launch timeout)."""
    with tempfile.TemporaryDirectory() as tmp:
        ctx = mp.get_context("spawn")
        procs = [
            ctx.Process(target=_worker, args=(rank, world_size, path, names, tmp))
            for rank in range(world_size)
        ]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(LAUNCH_TIMEOUT)
        for proc in procs:
            if proc.is_alive():
                proc.kill()
                proc.join()
        per_rank = []
        for rank in range(world_size):
            try:
                with open(os.path.join(tmp, f"rank{rank}.json")) as f:
                    per_rank.append(json.load(f))
            except FileNotFoundError:
                per_rank.append({})
    codes = [proc.exitcode for proc in procs]
    results = {}
    for name in names:
        failures = [
            f"rank {rank}: " + r.get(name, f"no result (worker exit code {codes[rank]})")
            for rank, r in enumerate(per_rank)
            if r.get(name) != ""
        ]
        results[name] = "\n".join(failures)
    return results


# ----------------------------------------------------------------------------------------
# Models, data, training
# ----------------------------------------------------------------------------------------


def mlp(dtype: torch.dtype = torch.float64, seed: int = 0, even: bool = False) -> nn.Sequential:
    """A small MLP. Sharded over 2 ranks on dim 0 (FSDP2), the default one has uneven shards
    (Linear(5, 3): 2 + 1 rows) and empty shards on rank 1 (Linear(4, 1)'s weight and its
    bias of size 1); ``even=True`` has only even shards."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if even:
            layers = [nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2)]
        else:
            layers = [nn.Linear(5, 3), nn.Tanh(), nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)]
        return nn.Sequential(*layers).to(dtype)


def fsdp(model: nn.Module, mesh: Any = None) -> nn.Module:
    """FSDP2 ``fully_shard`` on every Linear and on the root (1-D mesh over all ranks unless
    ``mesh`` is given, e.g. a 2-D HSDP mesh)."""
    from torch.distributed.fsdp import fully_shard

    if mesh is None:
        mesh = mesh_1d()
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def mesh_1d() -> Any:
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh("cpu", (dist.get_world_size(),))


def batches(model: nn.Module, steps: int, seed: int = 1) -> list[tuple[torch.Tensor, ...]]:
    """``steps`` (input, target) batches for ``model`` (an :func:`mlp`), the same on every
    rank, so FSDP's averaged gradient is the unsharded model's gradient, bit for bit."""
    linears = [m for m in model if isinstance(m, nn.Linear)]
    n_in, n_out = linears[0].in_features, linears[-1].out_features
    dtype = linears[0].weight.dtype
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(8, n_in, generator=g).to(dtype), torch.randn(8, n_out, generator=g).to(dtype))
        for _ in range(steps)
    ]


def loss_fn(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    x, y = batch
    out = model(x)
    if hasattr(out, "full_tensor"):  # tensor parallel: a DTensor output
        out = out.full_tensor()
    return ((out - y) ** 2).mean()


def train(model: nn.Module, opt: Any, data: list, closure: bool = False) -> None:
    """One optimizer step per batch of ``data`` (through a closure when ``closure``)."""
    for batch in data:
        if closure:

            def step_closure(batch: tuple = batch) -> torch.Tensor:
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(model, batch)
                loss.backward()
                return loss

            opt.step(step_closure)
        else:
            opt.zero_grad(set_to_none=True)
            loss_fn(model, batch).backward()
            opt.step()


# ----------------------------------------------------------------------------------------
# Comparisons of parameters and state (full tensors)
# ----------------------------------------------------------------------------------------


def full(value: Any) -> Any:
    """``value`` with every DTensor replaced by its full tensor (lists element by element).
    A collective: call it on every rank, in the same order."""
    if isinstance(value, (list, tuple)):
        return type(value)(full(v) for v in value)
    if hasattr(value, "full_tensor"):
        return value.full_tensor().detach().clone()
    return value.detach().clone() if torch.is_tensor(value) else value


def snapshot(opt: Any) -> Snapshot:
    """The optimizer's parameters and, from ``opt.state_dict()``, their state: full tensors."""
    params = [p for group in opt.param_groups for p in group["params"]]
    state = opt.state_dict()["state"]
    return Snapshot(
        [full(p) for p in params],
        [{k: full(v) for k, v in state.get(i, {}).items()} for i in range(len(params))],
    )


def groups(opt: Any) -> list[dict[str, Any]]:
    """``opt.state_dict()``'s param_groups without their parameter indices, tuples as lists
    (a state dict broadcast from rank 0 holds lists)."""
    return [
        {k: list(v) if isinstance(v, tuple) else v for k, v in g.items() if k != "params"}
        for g in opt.state_dict()["param_groups"]
    ]


def local_shards(opt: Any) -> list[torch.Tensor]:
    """Clones of the local shards of the optimizer's parameters and state tensors."""
    out = []
    for group in opt.param_groups:
        for p in group["params"]:
            out.append(getattr(p, "_local_tensor", p).detach().clone())
            for v in opt.state.get(p, {}).values():
                if torch.is_tensor(v):
                    out.append(getattr(v, "_local_tensor", v).detach().clone())
    return out


def assert_unchanged(before: list[torch.Tensor], opt: Any, what: str) -> None:
    after = local_shards(opt)
    assert len(after) == len(before), f"{what}: state tensors were created or dropped"
    for i, (a, b) in enumerate(zip(after, before)):
        assert torch.equal(a, b), f"{what}: tensor {i} changed"


def assert_raises_like(
    fn: Callable[[], Any], expected: Callable[[], Any], same_message: bool = False
) -> BaseException:
    """``fn()`` raises an exception of the type that ``expected()`` raises (with the same
    message if ``same_message``); returns it."""
    try:
        expected()
    except Exception as e:  # the reference's exception
        want = e
    else:
        raise AssertionError("the reference did not raise")
    try:
        fn()
    except Exception as e:
        assert type(e) is type(want), f"raised {type(e).__name__}: {e}; torch raised {want!r}"
        assert not same_message or str(e) == str(want), f"raised {e!r}; torch raised {want!r}"
        return e
    raise AssertionError(f"did not raise; the reference raised {want!r}")
