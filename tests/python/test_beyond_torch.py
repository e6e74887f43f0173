"""Lion and ADOPT against their reference implementations (PyPI ``lion-pytorch`` 0.2.5 and the
authors' ``torch-adopt`` 0.1.0), as test_optim_db.py does for torch.optim's classes: float64
steps match to rtol 1e-10 / atol 1e-12 and float32 steps are as accurate as the reference's
own float32 steps, step by step along the reference's float64 trajectory
(``optim_testlib.synced_steps``; see test_optim_db.py for why not two free-running
trajectories: ADOPT with weight decay grows a float64 rounding difference by ~2.5x per step
on some seeds, so the free-running trajectories parted by 1e-7 on an Intel machine's BLAS).
"""

from __future__ import annotations

import re

import pytest
import torch
from optim_testlib import TOLERANCES, check_float32_steps, check_float64_steps

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
def test_float64_steps_match_reference(name, kwargs):
    check_float64_steps(name, kwargs, *TOLERANCES[torch.float64])


@pytest.mark.parametrize(("name", "kwargs"), CASES)
def test_float32_steps_are_as_accurate_as_reference(name, kwargs):
    check_float32_steps(name, kwargs)


@pytest.mark.parametrize(("name", "kwargs"), CASES[:4])
def test_two_groups_match_reference(name, kwargs):
    lr = kwargs.get("lr", 1e-3)
    groups = ({}, {"lr": 0.5 * lr})
    check_float64_steps(name, kwargs, *TOLERANCES[torch.float64], groups=groups, steps=20)


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
