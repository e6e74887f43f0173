"""pytest configuration for the ferroptim Python tests (helpers live in optim_testlib.py)."""

from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import optim_testlib  # noqa: E402


def pytest_report_header(config: pytest.Config) -> list[str]:
    return [
        f"optimizer implementation under test: {optim_testlib.describe_implementation()}",
        f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads",
    ]


@pytest.fixture(autouse=True)
def _restore_torch_globals():
    """Tests may change the thread count or the default dtype; always restore them."""
    threads = torch.get_num_threads()
    default_dtype = torch.get_default_dtype()
    yield
    torch.set_num_threads(threads)
    torch.set_default_dtype(default_dtype)
