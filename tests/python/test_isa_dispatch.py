"""The SIMD variants of the fused kernel (AVX-512, AVX2, baseline) give bit-identical results.

The instruction set is chosen once per process, so each variant runs in a subprocess;
``FERROPTIM_NO_SIMD=1`` forces the baseline loop.
"""

import os
import subprocess
import sys

import pytest
import torch

SCRIPT = r"""
import sys, torch, ferroptim
torch.manual_seed(0)
out = {}
for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
    for name, kw in (("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)),
                     ("AdamW", dict(lr=0.01, amsgrad=True)),
                     ("Adam", dict(lr=0.01, weight_decay=0.1, maximize=True))):
        # odd sizes exercise vector bodies and scalar tails
        params = [torch.nn.Parameter(torch.randn(n).to(dtype)) for n in (1, 37, 100_003)]
        opt = getattr(ferroptim, name)(params, **kw)
        for _ in range(3):
            for p in params:
                p.grad = torch.randn_like(p)
            opt.step()
        out[f"{name}-{dtype}"] = [p.detach().clone() for p in params]
torch.save(out, sys.argv[1])
"""


def run_variant(path, no_simd: bool):
    env = dict(os.environ)
    env.pop("FERROPTIM_NO_SIMD", None)
    if no_simd:
        env["FERROPTIM_NO_SIMD"] = "1"
    subprocess.run([sys.executable, "-c", SCRIPT, str(path)], env=env, check=True)
    return torch.load(path)


@pytest.mark.skipif(sys.platform != "linux", reason="x86-64 Linux dispatch")
def test_simd_and_baseline_kernels_are_bit_identical(tmp_path):
    simd = run_variant(tmp_path / "simd.pt", no_simd=False)
    base = run_variant(tmp_path / "base.pt", no_simd=True)
    assert simd.keys() == base.keys()
    for key in simd:
        for a, b in zip(simd[key], base[key]):
            assert torch.equal(a, b), key
