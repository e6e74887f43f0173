"""Distributed checkpoints of ferroptim optimizers on FSDP2 models, in two gloo processes.

Each case trains an FSDP2 MLP (uneven and empty shards, float64) for 3 steps, checkpoints
model and optimizer with ``torch.distributed.checkpoint.state_dict``'s
``get_model_state_dict`` / ``get_optimizer_state_dict``, trains 3 more steps (the
uninterrupted run), then loads the checkpoint into a fresh model (other initial values) and a
fresh optimizer that never stepped (``get_optimizer_state_dict`` initialises its state with
torch's zero-gradient, lr 0 step), resumes the 3 steps and requires parameters, state and
param_groups bit-identical to the uninterrupted run.

* ``sharded-*``: sharded state dicts (DTensor state), written with ``dcp.save`` to a
  temporary folder and read back with ``dcp.load``;
* ``full-*``: full state dicts offloaded to rank 0's CPU, saved with ``torch.save`` and
  loaded with ``broadcast_from_rank0``.

For AdamW and Adagrad, torch.optim does the same and must agree to float64 rtol 1e-10 /
atol 1e-12 (the checkpointed state as well as the resumed run), and ferroptim's sharded
checkpoint loaded into torch.optim.AdamW resumes as torch's own.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any, Callable

import pytest
import torch
import torch.distributed as dist
from dist_testlib import batches, fsdp, full, groups, mlp, run_cases, snapshot, train
from optim_testlib import TOLERANCES, assert_snapshots_close, assert_snapshots_equal, make_opt

F64 = TOLERANCES[torch.float64]

KWARGS: dict[str, dict[str, Any]] = {
    "AdamW": {"lr": 0.01, "weight_decay": 0.1, "amsgrad": True},
    "Adagrad": {"lr": 0.1, "weight_decay": 0.1, "initial_accumulator_value": 0.1},
    "Adafactor": {"lr": 0.01, "weight_decay": 0.1},
    "Lamb": {"lr": 0.01, "weight_decay": 0.1},
    "ScheduleFreeAdamW": {"lr": 0.01, "weight_decay": 0.05, "warmup_steps": 2},
}
#: torch.optim's classes among them that run on FSDP2 (the others are compared with their
#: unsharded runs in test_fsdp.py).
TORCH_TOO = ("AdamW", "Adagrad")


def shared_tmpdir() -> str:
    """A temporary folder made by rank 0, its path sent to every rank."""
    path = [tempfile.mkdtemp(prefix="ferroptim-dcp-") if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(path, src=0)
    return path[0]


def options(full_state: bool, load: bool = False) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    if not full_state:
        return StateDictOptions()
    if load:
        return StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def save(model: Any, opt: Any, path: str, full_state: bool) -> dict[str, Any]:
    """Checkpoints ``model`` and ``opt`` to ``path``; returns the optimizer state dict."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    sd = {
        "model": get_model_state_dict(model, options=options(full_state)),
        "optim": get_optimizer_state_dict(model, opt, options=options(full_state)),
    }
    if full_state:
        if dist.get_rank() == 0:
            torch.save(sd, os.path.join(path, "full.pt"))
    else:
        dcp.save(sd, checkpoint_id=path)
    return sd["optim"]


def load(model: Any, opt: Any, path: str, full_state: bool) -> None:
    """Loads ``path`` into ``model`` and ``opt`` (which has never stepped)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    # Never stepped (Adagrad creates its state, at step 0, in its constructor).
    assert all(float(state.get("step", 0)) == 0 for state in opt.state.values())
    if full_state:
        sd = torch.load(os.path.join(path, "full.pt")) if dist.get_rank() == 0 else {}
        model_sd, optim_sd = sd.get("model", {}), sd.get("optim", {})
    else:
        sd = {
            "model": get_model_state_dict(model),
            "optim": get_optimizer_state_dict(model, opt),  # initialises the state
        }
        dcp.load(sd, checkpoint_id=path)
        model_sd, optim_sd = sd["model"], sd["optim"]
    set_model_state_dict(model, model_sd, options=options(full_state, load=True))
    set_optimizer_state_dict(model, opt, optim_sd, options=options(full_state, load=True))


def run(name: str, impl: str, full_state: bool) -> tuple[Any, Any, str]:
    """Uninterrupted and checkpointed-resumed runs of ``impl`` (ferroptim: 'ours', or
    torch.optim: 'forloop'), which must agree bit for bit; returns the uninterrupted run's
    snapshot, the checkpointed optimizer state dict (full tensors) and the folder."""
    kwargs = KWARGS[name]
    data = batches(mlp(), 6)
    path = shared_tmpdir()
    model = fsdp(mlp())
    opt = make_opt(impl, name, model.parameters(), **kwargs)
    train(model, opt, data[:3])
    saved = full(save(model, opt, path, full_state))
    dist.barrier()
    train(model, opt, data[3:])
    uninterrupted = snapshot(opt), groups(opt)

    fresh = fsdp(mlp(seed=7))
    fresh_opt = make_opt(impl, name, fresh.parameters(), **kwargs)
    load(fresh, fresh_opt, path, full_state)
    for p in fresh.parameters():  # state laid out like the parameters, as torch.optim's
        for v in fresh_opt.state[p].values():
            if hasattr(v, "placements") and v.shape == p.shape:
                assert v.placements == p.placements
    train(fresh, fresh_opt, data[3:])
    resumed = snapshot(fresh_opt), groups(fresh_opt)
    assert_snapshots_equal(resumed[0], uninterrupted[0], what=f"{name} resumed")
    assert resumed[1] == uninterrupted[1], (resumed[1], uninterrupted[1])
    return uninterrupted[0], saved, path


def assert_state_dicts_close(a: Any, b: Any, where: str = "") -> None:
    if isinstance(b, dict):
        assert sorted(a) == sorted(b), f"{where}: keys {sorted(a)} vs {sorted(b)}"
        for k in b:
            assert_state_dicts_close(a[k], b[k], f"{where}/{k}")
    elif isinstance(b, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_state_dicts_close(x, y, f"{where}[{i}]")
    elif torch.is_tensor(b):
        torch.testing.assert_close(a, b, rtol=F64[0], atol=F64[1], msg=lambda m: f"{where}: {m}")
    else:
        assert a == b, f"{where}: {a!r} vs {b!r}"


def hyper(optim_state_dict: dict[str, Any]) -> list[dict[str, Any]]:
    """The param_groups of a state dict but ``foreach``/``fused`` (ours: None, not chosen;
    the for-loop reference's: False)."""
    return [
        {k: v for k, v in group.items() if k not in ("foreach", "fused")}
        for group in optim_state_dict["param_groups"]
    ]


def dcp_case(name: str, full_state: bool) -> Callable[[int, int], None]:
    def case(rank: int, world_size: int) -> None:
        paths = []
        try:
            compare(rank, paths)
        finally:
            dist.barrier()
            if rank == 0:
                for path in paths:
                    shutil.rmtree(path, ignore_errors=True)

    def compare(rank: int, paths: list[str]) -> None:
        ours, ours_saved, ours_path = run(name, "ours", full_state)
        paths.append(ours_path)
        if name not in TORCH_TOO:
            return
        ref, ref_saved, ref_path = run(name, "forloop", full_state)
        paths.append(ref_path)
        assert_snapshots_close(ours, ref, *F64, what=f"{name} vs torch")
        if not full_state or rank == 0:  # (full, CPU-offloaded: rank 0's alone)
            assert ours_saved["state"], "empty checkpoint"
            assert_state_dicts_close(ours_saved["state"], ref_saved["state"], "state")
            assert hyper(ours_saved) == hyper(ref_saved)
        if name == "AdamW" and not full_state:
            # ferroptim's checkpoint resumed by torch.optim: torch's own run.
            model = fsdp(mlp(seed=7))
            opt = make_opt("forloop", name, model.parameters(), **KWARGS[name])
            load(model, opt, ours_path, full_state)
            train(model, opt, batches(mlp(), 6)[3:])
            assert_snapshots_close(snapshot(opt), ref, *F64, what="torch resumes ferroptim's")

    return case


CASES: dict[str, Callable[[int, int], None]] = {
    **{f"sharded-{name}": dcp_case(name, False) for name in KWARGS},
    **{f"full-{name}": dcp_case(name, True) for name in ("AdamW", "Adafactor", "Lamb")},
}


@pytest.fixture(scope="module")
def results() -> dict[str, str]:
    return run_cases(__file__, list(CASES))


@pytest.mark.parametrize("case", list(CASES))
def test_case(results: dict[str, str], case: str) -> None:
    assert not results[case], results[case]
