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
        f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads, CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}; tests use {TEST_THREADS} thread(s), "
        f"oneDNN {'on' if ONEDNN else 'off'}, seed offset {optim_testlib.SEED_OFFSET}",
    ]


# Tests run with one intra-op thread: the MLP tensors are tiny, and a busy 2-core CI box
# makes multi-threaded torch on tiny tensors very slow. Tests of the multi-threaded split
# (large tensors, 1 vs 2 threads) set the thread count themselves. The robustness sweep
# (tests/sweep.sh) changes it with FERROPTIM_TEST_THREADS, and turns oneDNN off with
# FERROPTIM_TEST_ONEDNN=0; FERROPTIM_TEST_SEED (optim_testlib.SEED_OFFSET) moves the seeds.
TEST_THREADS = int(os.environ.get("FERROPTIM_TEST_THREADS", "1"))
ONEDNN = os.environ.get("FERROPTIM_TEST_ONEDNN", "1") != "0"


@pytest.fixture(autouse=True)
def _torch_globals():
    """One intra-op thread per test by default; restore thread count and default dtype."""
    threads = torch.get_num_threads()
    default_dtype = torch.get_default_dtype()
    torch.set_num_threads(TEST_THREADS)
    if ONEDNN:
        yield
    else:
        # torch.testing._internal (imported for optim_db) locks the global flags: the context
        # manager is the way to set them.
        with torch.backends.mkldnn.flags(enabled=False):
            yield
    torch.set_num_threads(threads)
    torch.set_default_dtype(default_dtype)
