"""A ferroptim step allocates nothing beyond the optimizer state, which the first step creates.

Measured with the process's resident set size (Linux): ``VmRSS`` and the peak ``VmHWM`` from
/proc/self/status, the peak being reset by writing ``5`` to /proc/self/clear_refs. Each
measurement runs in a fresh Python process, so that memory held by other tests (or by an
earlier measurement) does not blur it. On one float32 tensor of 25M elements (100 MB), a
step that allocated one tensor-sized temporary would raise the peak by ~95 MiB; the bound
is 8 MiB. As a sanity check of the method, torch's for-loop AdamW (``foreach=False``), which
allocates such temporaries every step, must exceed the bound. benches/memory_check.py prints
the same figures for every optimizer, ferroptim and torch side by side.
"""

import json
import os
import subprocess
import sys

import pytest

MIB = 2**20
NUMEL = 25_000_000
STATE_BYTES = 2 * 4 * NUMEL  # AdamW: exp_avg and exp_avg_sq, float32
STEP_GROWTH_BOUND = 8 * MIB
STATE_TOLERANCE = 8 * MIB

# argv: implementation ("ferroptim" or "forloop"), steps after the first, tensor elements.
SCRIPT = r"""
import gc, json, sys
import torch

def status(field):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith(field + ":"))

def reset_peak():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")

def adamw(params):
    if sys.argv[1] == "ferroptim":
        import ferroptim
        return ferroptim.AdamW(params, lr=1e-3)
    return torch.optim.AdamW(params, lr=1e-3, foreach=False)

torch.set_num_threads(1)
# One step on a small tensor first: code paged in and threads started are not the state.
w = torch.zeros(2**18, requires_grad=True)
w.grad = torch.ones_like(w)
adamw([w]).step()

numel = int(sys.argv[3])
p = torch.randn(numel, requires_grad=True)
p.grad = torch.randn(numel)
gc.collect()
before = status("VmRSS")
reset_peak()
opt = adamw([p])
opt.step()
first_rss, first_peak = status("VmRSS"), status("VmHWM")
reset_peak()
steps_rss = status("VmRSS")
for _ in range(int(sys.argv[2])):
    opt.step()
print(json.dumps({
    "state": sum(v.nbytes for v in opt.state[p].values() if isinstance(v, torch.Tensor)),
    "first_step_rss_growth": first_rss - before,
    "first_step_peak_growth": first_peak - before,
    "steps_peak_growth": status("VmHWM") - steps_rss,
}))
"""


def can_reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        with open("/proc/self/status") as f:
            return any(line.startswith("VmHWM:") for line in f)
    except OSError:
        return False


pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not can_reset_peak_rss(),
    reason="needs Linux /proc/self/clear_refs and VmHWM",
)


def measure(impl: str, steps: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, impl, str(steps), str(NUMEL)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_ferroptim_adamw_steps_allocate_nothing_beyond_the_state():
    m = measure("ferroptim", steps=100)
    assert m["state"] == pytest.approx(STATE_BYTES, abs=64)  # + the step counter
    # The first step creates exp_avg and exp_avg_sq, and nothing else stays or peaks.
    assert abs(m["first_step_rss_growth"] - STATE_BYTES) < STATE_TOLERANCE, m
    assert m["first_step_peak_growth"] < STATE_BYTES + STATE_TOLERANCE, m
    # The next 100 steps do not raise the peak: no tensor-sized temporary, no leak.
    assert m["steps_peak_growth"] < STEP_GROWTH_BOUND, m


def test_method_catches_a_step_with_tensor_sized_temporaries():
    m = measure("forloop", steps=2)
    assert m["steps_peak_growth"] > STEP_GROWTH_BOUND, m
