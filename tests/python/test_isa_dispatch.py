"""The SIMD variants of the fused kernel (baseline, AVX2, AVX-512, AVX-512 with AVX512_BF16) give
bit-identical results, for fp32 and 8-bit state.

The instruction set is chosen once per process, so each variant runs in a subprocess;
``FERROPTIM_ISA`` selects one the CPU supports and ``FERROPTIM_NO_SIMD=1`` forces the baseline.
Inputs include NaN, infinities, subnormals, zeros of both signs and bfloat16 rounding ties. NaNs
are compared as NaNs (their payload and sign may differ between variants for float32, float64
and float16); bfloat16 tensors, whose NaNs are always stored as ``0x7FC0``, are compared bit for
bit, NaNs included.
"""

import os
import subprocess
import sys

import pytest
import torch

SCRIPT = r"""
import sys, torch, ferroptim

def adversarial(n, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g) * torch.exp2(torch.randint(-30, 30, (n,), generator=g).float())
    k = torch.randint(0, 24, (n,), generator=g)
    for i, v in enumerate((float("nan"), float("inf"), -float("inf"), 1e-40, -3e-39, 0.0, -0.0,
                           1.0 + 2.0**-8, 1.0 + 3 * 2.0**-8, 1.2e-38)):
        x[k == i] = v
    return x.to(dtype)

torch.manual_seed(0)
out = {}
for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
    for name, kw in (("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)),
                     ("AdamW", dict(lr=0.01, amsgrad=True)),
                     ("Adam", dict(lr=0.01, weight_decay=0.1, maximize=True)),
                     ("Lion", dict(lr=1e-3, weight_decay=0.1)),
                     ("Adan", dict(lr=1e-3, weight_decay=0.02)),
                     ("AdEMAMix", dict(lr=1e-3)),
                     # 8-bit state (every parameter 8-bit; the quant codec and blocks loop)
                     ("AdamW8bit", dict(lr=0.01, amsgrad=True, min_8bit_size=0,
                                        bf16_stochastic_round=True)),
                     ("SGD8bit", dict(lr=0.1, momentum=0.9, min_8bit_size=0, block_size=64)),
                     ("Lion8bit", dict(lr=1e-3, weight_decay=0.1, min_8bit_size=0))):
        for mode in ("normal", "adversarial"):
            # odd sizes exercise vector bodies and scalar tails
            sizes = (1, 37, 100_003)
            if mode == "normal":
                params = [torch.nn.Parameter(torch.randn(n).to(dtype)) for n in sizes]
            else:
                params = [torch.nn.Parameter(adversarial(n, dtype, n)) for n in sizes]
            opt = getattr(ferroptim, name)(params, **kw)
            for step in range(3):
                for j, p in enumerate(params):
                    if mode == "normal":
                        p.grad = torch.randn_like(p)
                    else:
                        p.grad = adversarial(p.numel(), dtype, 1000 * step + j)
                opt.step()
            out[f"{name}-{dtype}-{mode}"] = [p.detach().clone() for p in params] + [
                t.clone() for p in params for k, t in opt.state[p].items() if k != "step"]
torch.save(out, sys.argv[1])
"""


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def variants() -> list[str]:
    """The variants this CPU runs (as the native dispatch detects them)."""
    flags = cpu_flags()
    out = ["baseline"]
    if {"avx2", "fma"} <= flags:
        out.append("avx2")
    if {"avx512f", "avx512bw", "avx512vl", "fma"} <= flags:
        out.append("avx512")
        if {"avx512dq", "avx512_bf16"} <= flags:
            out.append("avx512bf16")
    return out


def run_variant(path, isa: str | None, no_simd: bool = False):
    env = dict(os.environ)
    env.pop("FERROPTIM_NO_SIMD", None)
    env.pop("FERROPTIM_ISA", None)
    if no_simd:
        env["FERROPTIM_NO_SIMD"] = "1"
    if isa:
        env["FERROPTIM_ISA"] = isa
    subprocess.run([sys.executable, "-c", SCRIPT, str(path)], env=env, check=True)
    return torch.load(path)


def assert_same(a: torch.Tensor, b: torch.Tensor, key: str):
    assert a.dtype == b.dtype and a.shape == b.shape, key
    if not a.is_floating_point():  # 8-bit codes
        assert torch.equal(a, b), key
        return
    if a.dtype == torch.bfloat16:
        assert torch.equal(a.view(torch.int16), b.view(torch.int16)), key
        return
    nan = a.isnan()
    assert torch.equal(nan, b.isnan()), key
    bits = {torch.float64: torch.int64, torch.float32: torch.int32, torch.float16: torch.int16}
    assert torch.equal(a[~nan].view(bits[a.dtype]), b[~nan].view(bits[a.dtype])), key


@pytest.mark.skipif(sys.platform != "linux", reason="x86-64 Linux dispatch")
def test_every_variant_gives_the_baseline_bits(tmp_path):
    base = run_variant(tmp_path / "base.pt", None, no_simd=True)
    names = variants()
    assert len(names) >= 1
    for isa in names:
        got = run_variant(tmp_path / f"{isa}.pt", isa)
        assert got.keys() == base.keys()
        for key in base:
            for a, b in zip(got[key], base[key], strict=True):
                assert_same(a, b, f"{isa} {key}")
    # The default (best) variant as well.
    best = run_variant(tmp_path / "best.pt", None)
    for key in base:
        for a, b in zip(best[key], base[key], strict=True):
            assert_same(a, b, f"default {key}")
