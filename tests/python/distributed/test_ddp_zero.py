"""ferroptim under DistributedDataParallel and ZeroRedundancyOptimizer, in two gloo processes.

Each rank trains on its own batches (DDP averages the gradients), float64, 6 steps.

* ``ddp-*``: ferroptim on a DDP model against torch.optim's for-loop class on a DDP copy:
  parameters and state to float64 rtol 1e-10 / atol 1e-12.
* ``zero-*``: ``ZeroRedundancyOptimizer(optimizer_class=ferroptim.AdamW)`` (each rank steps
  its partition of the parameters and broadcasts them) against the same with
  ``torch.optim.AdamW``: parameters on every rank, each rank's local optimizer state and the
  state dict consolidated on rank 0, to the same tolerance; and parameters bit-identical to
  ferroptim.AdamW stepping every parameter under plain DDP. With and without
  ``parameters_as_bucket_view`` (parameters that are views into flat buckets).
"""

from __future__ import annotations

from typing import Any, Callable

import ferroptim
import pytest
import torch
from dist_testlib import batches, groups, mlp, run_cases, snapshot, train
from optim_testlib import TOLERANCES, assert_snapshots_close, make_opt
from torch.nn.parallel import DistributedDataParallel as DDP

F64 = TOLERANCES[torch.float64]
STEPS = 6
KWARGS: dict[str, dict[str, Any]] = {
    "AdamW": {"lr": 0.01, "weight_decay": 0.1, "amsgrad": True},
    "SGD": {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 0.1},
    "Lamb": {"lr": 0.01, "weight_decay": 0.1},
}


def rank_batches(rank: int) -> list:
    return batches(mlp(), STEPS, seed=100 + rank)


def ddp_case(name: str) -> Callable[[int, int], None]:
    def case(rank: int, world_size: int) -> None:
        data = rank_batches(rank)
        snaps = []
        for impl in ("ours", "forloop"):
            model = DDP(mlp())
            opt = make_opt(impl, name, model.parameters(), **KWARGS[name])
            initial = snapshot(opt).params
            train(model, opt, data)
            snaps.append(snapshot(opt))
        assert_snapshots_close(snaps[0], snaps[1], *F64, what=f"{name} vs torch")
        assert not any(torch.equal(a, b) for a, b in zip(snaps[0].params, initial))

    return case


def zero_case(bucket_view: bool) -> Callable[[int, int], None]:
    def case(rank: int, world_size: int) -> None:
        from torch.distributed.optim import ZeroRedundancyOptimizer

        data = rank_batches(rank)
        kwargs = KWARGS["AdamW"]
        runs = []
        for cls, extra in ((ferroptim.AdamW, {}), (torch.optim.AdamW, {"foreach": False})):
            model = DDP(mlp())
            opt = ZeroRedundancyOptimizer(
                model.parameters(),
                optimizer_class=cls,
                parameters_as_bucket_view=bucket_view,
                **kwargs,
                **extra,
            )
            train(model, opt, data)
            local = snapshot(opt.optim)
            assert 0 < len(local.params) < 6  # this rank's partition
            opt.consolidate_state_dict(to=0)
            consolidated = opt.state_dict() if rank == 0 else None
            runs.append(([p.detach().clone() for p in model.parameters()], local, consolidated))
        (params, local, consolidated), (ref_params, ref_local, ref_consolidated) = runs
        for a, b in zip(params, ref_params):
            torch.testing.assert_close(a, b, rtol=F64[0], atol=F64[1])
        assert_snapshots_close(local, ref_local, *F64, what="local state vs torch")
        if rank == 0:
            state, ref_state = consolidated["state"], ref_consolidated["state"]
            assert sorted(state) == sorted(ref_state) == list(range(6))
            for i in state:
                assert sorted(state[i]) == sorted(ref_state[i])
                for key, value in ref_state[i].items():
                    torch.testing.assert_close(state[i][key], value, rtol=F64[0], atol=F64[1])
        # ferroptim stepping all parameters under plain DDP: the same update, bit for bit.
        model = DDP(mlp())
        opt = ferroptim.AdamW(model.parameters(), **kwargs)
        train(model, opt, data)
        assert all(torch.equal(a, b) for a, b in zip(params, model.parameters()))
        assert groups(opt)[0]["lr"] == kwargs["lr"]

    return case


CASES: dict[str, Callable[[int, int], None]] = {
    **{f"ddp-{name}": ddp_case(name) for name in KWARGS},
    "zero-AdamW": zero_case(False),
    "zero-AdamW-bucket_view": zero_case(True),
}


@pytest.fixture(scope="module")
def results() -> dict[str, str]:
    return run_cases(__file__, list(CASES))


@pytest.mark.parametrize("case", list(CASES))
def test_case(results: dict[str, str], case: str) -> None:
    assert not results[case], results[case]
