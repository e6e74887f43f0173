"""Lion and ADOPT against their reference implementations (PyPI ``lion-pytorch`` 0.2.5 and the
authors' ``torch-adopt`` 0.1.0), as test_optim_db.py does for torch.optim's classes: float64
trajectories match to rtol 1e-10 / atol 1e-12 (ADOPT: 1e-7 / 1e-9, see below), float32 ones
are as accurate as the reference's own float32 run.

ADOPT divides by a square root, and ATen's ``sqrt`` is not correctly rounded even in float64
(~1.5% of elements 1 ulp off on this machine's torch 2.11 wheel); where the normalised
gradient then lands next to the clipping bound ``±step^¼`` the 1-ulp difference decides
whether it is clipped, and the trajectories part by ~1e-9 relative.
"""

from __future__ import annotations

import re

import pytest
import torch
from optim_testlib import TOLERANCES, assert_snapshots_close, run_mlp, snapshot_max_diff

CASES = [
    pytest.param("Lion", {"lr": 1e-3}, id="Lion-default"),
    pytest.param("Lion", {"lr": 3e-3, "betas": (0.95, 0.98)}, id="Lion-betas"),
    pytest.param("Lion", {"lr": 1e-3, "weight_decay": 0.5}, id="Lion-weight_decay"),
    pytest.param("ADOPT", {}, id="ADOPT-default"),
    pytest.param("ADOPT", {"lr": 0.01, "betas": (0.8, 0.99)}, id="ADOPT-betas"),
    pytest.param("ADOPT", {"lr": 0.01, "weight_decay": 0.1}, id="ADOPT-weight_decay"),
    pytest.param(
        "ADOPT", {"lr": 0.01, "weight_decay": 0.1, "decouple": True}, id="ADOPT-decoupled"
    ),
    pytest.param("ADOPT", {"lr": 0.01, "clip_lambda": None}, id="ADOPT-unclipped"),
    pytest.param("ADOPT", {"lr": 0.01, "maximize": True}, id="ADOPT-maximize"),
]


@pytest.mark.parametrize(("name", "kwargs"), CASES)
def test_float64_trajectory_matches_reference(name, kwargs):
    rtol, atol = TOLERANCES[torch.float64] if name == "Lion" else (1e-7, 1e-9)
    ours = run_mlp("ours", name, kwargs, dtype=torch.float64)
    ref = run_mlp("forloop", name, kwargs, dtype=torch.float64)
    assert_snapshots_close(ours, ref, rtol, atol, what=f"{name} {kwargs}")


@pytest.mark.parametrize(("name", "kwargs"), CASES)
def test_float32_trajectory_is_as_accurate_as_reference(name, kwargs):
    exact = run_mlp("forloop", name, kwargs, dtype=torch.float64)
    ours = run_mlp("ours", name, kwargs)
    ref = run_mlp("forloop", name, kwargs)
    assert snapshot_max_diff(ours, exact) <= 2 * snapshot_max_diff(ref, exact) + 1e-6


@pytest.mark.parametrize(("name", "kwargs"), CASES[:4])
def test_two_groups_match_reference(name, kwargs):
    rtol, atol = TOLERANCES[torch.float64] if name == "Lion" else (1e-7, 1e-9)
    lr = kwargs.get("lr", 1e-3)
    groups = ({}, {"lr": 0.5 * lr})
    ours = run_mlp("ours", name, kwargs, groups=groups, steps=20, dtype=torch.float64)
    ref = run_mlp("forloop", name, kwargs, groups=groups, steps=20, dtype=torch.float64)
    assert_snapshots_close(ours, ref, rtol, atol, what=f"{name} two groups")


def test_adopt_rejects_a_custom_clip_schedule():
    from ferroptim import ADOPT

    p = [torch.zeros(2, requires_grad=True)]
    with pytest.raises(ValueError, match="clip_lambda"):
        ADOPT(p, clip_lambda=lambda step: step**0.5)


@pytest.mark.parametrize(
    ("name", "kwargs", "text"),
    [
        ("Lion", {"lr": -1.0}, "Invalid lr value: -1.0"),
        ("Lion", {"betas": (0.9, 1.5)}, "Invalid betas[1] value: 1.5"),
        ("ADOPT", {"eps": -1e-3}, "Invalid eps value: -0.001"),
        ("ADOPT", {"betas": (1.0, 0.9)}, "Invalid betas[0] value: 1.0"),
    ],
)
def test_bad_hyperparameters_raise_value_error(name, kwargs, text):
    import ferroptim

    with pytest.raises(ValueError, match=re.escape(text)):
        getattr(ferroptim, name)([torch.zeros(2, requires_grad=True)], **kwargs)
