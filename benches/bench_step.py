"""Median ``step()`` time of ferroptim's optimizers against torch.optim's.

For every optimizer (SGD with momentum 0.9, Adam, AdamW, and with torch's defaults Adadelta,
Adagrad, Adamax, ASGD, NAdam, RAdam, RMSprop, Rprop, Lion, ADOPT, Adan, AdEMAMix,
ScheduleFreeAdamW, Lamb, LARS), parameter layout (one
tensor of 25M elements, or 500 tensors of 4096 elements) and dtype (float32, or bfloat16
parameters, gradients and state), the script times ``optimizer.step()`` for

* torch.optim with ``foreach=False`` (the per-tensor for-loop), ``foreach=True`` and
  ``fused=True`` (where torch has them; for the algorithms torch lacks, the reference
  implementations ``lion-pytorch``, ``torch-adopt`` and ``pytorch-optimizer`` take the
  for-loop column);
* ferroptim (the column is skipped, with a message, when ``import ferroptim`` fails);
* DeepSpeed's ``DeepSpeedCPUAdam`` (Adam and AdamW only, CPU only), when ``import deepspeed``
  works and its ``cpu_adam`` op builds or loads; otherwise the column is skipped with a
  message. It runs with torch's default hyper-parameters for the optimizer (lr, betas, eps,
  weight_decay; ``adamw_mode=False`` for Adam, ``True`` for AdamW) and, for bfloat16
  parameters, bfloat16 state (``fp32_optimizer_states=False``) like the other columns. It is
  not a candidate for "torch-best"; ferroptim's time relative to it is reported on its own.
  DeepSpeed is optional (not in .ci/requirements.txt). Install it into the venv without
  letting pip touch torch, then let it JIT-build the op once (ninja and g++; ~1 minute):

      pip install --dry-run deepspeed        # must not list torch; otherwise use --no-deps
      pip install --no-deps deepspeed einops hjson msgpack ninja psutil py-cpuinfo \
          pydantic pydantic-core annotated-types typing-inspection
      DS_ACCELERATOR=cpu python -c \
          "from deepspeed.ops.op_builder import CPUAdamBuilder; CPUAdamBuilder().load()"

  (The script sets ``DS_ACCELERATOR=cpu`` unless it is set, so that DeepSpeed builds its CPU
  op even where a GPU is present.)

Everything runs in one process. Each implementation gets its own parameters (same values),
gradients (random, set once and reused by every step) and state, and takes a few warm-up
steps first (the state is created lazily by the first step). Then every repetition
round-robins over the implementations, the start of the round rotating, so that machine
noise hits them all alike. A bandwidth probe takes part in the round-robin: an optimizer
step is memory-bound, so each case also reports its floor,

    floor time = bytes moved per step / read-modify-write bandwidth,

with the bytes per element of SGD with momentum = 5 x element size (read p, g, buf; write
p, buf) and of Adam/AdamW = 7 x element size (read p, g, m, v; write p, m, v), and the
bandwidth measured as the median time of ``a.mul_(1.0001)`` on a 64 Mi-element float32
tensor (8 bytes moved per element) within the same case. Ratios are implementation time /
torch's fastest implementation in the case (above 1 means slower than torch's best; the
speedup is its inverse) and implementation time / floor.

After timing, each implementation's parameters are compared with those of the for-loop
implementation (all took the same number of steps), which guards against a step that does
not do its work; the difference is printed relative to how far the for-loop moved them.

``--plot PATH`` runs a size sweep instead of the fixed cases: one tensor of 2^12 ... 2^25
elements, AdamW and float32 unless ``--optimizers`` / ``--dtypes`` say otherwise, timed the
same way (interleaved, with the bandwidth probe; repetitions scaled down above 2^21 elements
so that the sweep takes about a minute per optimizer and dtype), and writes a log-log PNG of
median step time against tensor size per implementation, with the bandwidth floor (at the
sweep's median probe bandwidth) drawn as a line. ``--markdown`` / ``--json`` then report the
sweep.

Usage (from the repository root, in the venv where ferroptim is installed):

    python benches/bench_step.py                       # everything, a few minutes
    python benches/bench_step.py --reps 10 --optimizers AdamW --cases 1x25M
    python benches/bench_step.py --markdown --json bench.json
    python benches/bench_step.py --threads 1 --dtypes float32
    python benches/bench_step.py --device cuda         # times with CUDA synchronisation
    python benches/bench_step.py --plot bench.png      # size sweep, AdamW float32
    python benches/bench_step.py --plot sgd.png --optimizers SGD --dtypes float32 bfloat16

``bash .ci/dev bench [args]`` builds ferroptim and runs this script.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import sys
import time

import numpy as np
import torch

OPTIMIZERS = {
    "SGD": {"lr": 1e-3, "momentum": 0.9},
    "Adam": {"lr": 1e-3},
    "AdamW": {"lr": 1e-3},
    "Adadelta": {},
    "Adagrad": {},
    "Adamax": {},
    "ASGD": {},
    "NAdam": {},
    "RAdam": {},
    "RMSprop": {},
    "Rprop": {},
    "Lion": {},
    "ADOPT": {},
    "Adan": {},
    "AdEMAMix": {},
    "ScheduleFreeAdamW": {},
    "Lamb": {},
    "LARS": {},
}
# Tensors of the element size read or written per parameter element by one step (with the
# settings above): parameter and gradient, plus each state tensor read and written.
TRAFFIC = {
    "SGD": 5,
    "Adam": 7,
    "AdamW": 7,
    "Adadelta": 7,
    "Adagrad": 5,
    "Adamax": 7,
    "ASGD": 5,
    "NAdam": 7,
    "RAdam": 7,
    "RMSprop": 5,
    "Rprop": 7,
    "Lion": 5,
    "ADOPT": 7,
    "Adan": 11,  # four state tensors: exp_avg, exp_avg_sq, exp_avg_diff, neg_pre_grad
    "AdEMAMix": 9,
    "ScheduleFreeAdamW": 7,
    "Lamb": 11,  # two passes: norms (p, g, m, v read), then the update (7)
    "LARS": 7,  # two passes: norms (p, g read), then the update (5)
}
# name -> (number of tensors, elements per tensor)
CASES = {"1x25M": (1, 25_000_000), "500x4096": (500, 4096)}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
TORCH_IMPLS = {
    "forloop": {"foreach": False},
    "foreach": {"foreach": True},
    "fused": {"fused": True},
}
IMPLS = [*TORCH_IMPLS, "ferroptim", "deepspeed"]
OPTIONAL_IMPLS = ("ferroptim", "deepspeed")  # skipped, with a message, when not importable
# DeepSpeedCPUAdam's adamw_mode per optimizer; it has no SGD.
DEEPSPEED_ADAMW_MODE = {"Adam": False, "AdamW": True}
# --plot: one tensor per size, by default one optimizer and dtype.
SWEEP_CASES = {f"1x2^{k}": (1, 2**k) for k in range(12, 26)}
SWEEP_OPTIMIZER = "AdamW"
SWEEP_DTYPE = "float32"
SWEEP_FULL_REPS_NUMEL = 2**21  # above this, repetitions shrink in proportion to the size
SWEEP_MIN_REPS = 10
ALL_CASES = {**CASES, **SWEEP_CASES}
REFERENCE = "forloop"
DEFAULT_REPS = 60
DEFAULT_WARMUP = 3
SEED = 0
# fp32 implementations should agree to rounding; bf16 ones legitimately differ by ulps.
FP32_MAX_REL_DIFF = 0.05
LOAD_WARNING = 0.5  # 1-minute load average above which the header warns


# --------------------------------------------------------------------------- timing


def _no_sync() -> None:
    pass


def make_sync(device: torch.device):
    """Return the function that waits for queued work on ``device``."""
    return torch.cuda.synchronize if device.type == "cuda" else _no_sync


def time_call(fn, sync) -> float:
    """Seconds taken by ``fn()``, synchronising the device before and after."""
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


class BandwidthProbe:
    """Read-modify-write bandwidth of ``a.mul_(1.0001)`` on a 64 Mi-element float32 tensor."""

    NUMEL = 64 * 2**20
    BYTES = 8 * NUMEL  # 4 B read + 4 B written per element

    def __init__(self, device: torch.device, sync):
        self.a = torch.ones(self.NUMEL, dtype=torch.float32, device=device)
        self.sync = sync
        self.factor = 1.0001
        self.all_samples: list[float] = []  # every measurement of the run, in seconds

    def _mul(self) -> None:
        self.a.mul_(self.factor)
        self.factor = 1.0 / self.factor  # keep the values bounded however long the run

    def measure(self) -> float:
        seconds = time_call(self._mul, self.sync)
        self.all_samples.append(seconds)
        return seconds

    @classmethod
    def gbps(cls, seconds: float) -> float:
        return cls.BYTES / seconds / 1e9


# --------------------------------------------------------------------------- set-up


def import_ferroptim():
    """Return ``(module, None)``, or ``(None, reason)`` when ferroptim cannot be imported."""
    try:
        import ferroptim
    except Exception as exc:  # not built yet, or a broken build (missing libtorch symbols)
        return None, f"{type(exc).__name__}: {exc}"
    return ferroptim, None


def import_deepspeed(device: torch.device):
    """Return ``(DeepSpeedCPUAdam, None)``, or ``(None, reason)`` when it cannot be used.

    Loading the ``cpu_adam`` op JIT-builds it on first use (about a minute), then loads it
    from torch's extension cache.
    """
    if device.type != "cpu":
        return None, "DeepSpeedCPUAdam runs on the CPU only"
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    try:
        from deepspeed.ops.adam import DeepSpeedCPUAdam
        from deepspeed.ops.op_builder import CPUAdamBuilder

        CPUAdamBuilder().load()
    except Exception as exc:  # not installed, or no compiler to build the op
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
    return DeepSpeedCPUAdam, None


def import_optional(device: torch.device):
    """The optional implementations: ``({impl: module or class}, {impl: reason missing})``."""
    loaders = {"ferroptim": import_ferroptim, "deepspeed": lambda: import_deepspeed(device)}
    modules, missing = {}, {}
    for impl, loader in loaders.items():
        module, reason = loader()
        if module is None:
            missing[impl] = reason
        else:
            modules[impl] = module
    return modules, missing


def make_params(case: str, dtype: torch.dtype, device: torch.device, grads: bool = True):
    """The case's parameters (same values on every call) with random gradients attached."""
    count, numel = ALL_CASES[case]
    gen = torch.Generator().manual_seed(SEED)
    params = []
    for _ in range(count):
        p = torch.randn(numel, generator=gen).to(device=device, dtype=dtype)
        g = torch.randn(numel, generator=gen)
        if grads:
            p.requires_grad_(True)
            p.grad = g.to(device=device, dtype=dtype)
        params.append(p)
    return params


class NotApplicable(Exception):
    """An implementation that does not offer this optimizer or dtype."""


def make_deepspeed(cls, name: str, params):
    """DeepSpeedCPUAdam with the hyper-parameters of torch's optimizer of the same name.

    bfloat16 parameters get bfloat16 state, as in the other implementations.
    """
    if name not in DEEPSPEED_ADAMW_MODE:
        raise NotApplicable(f"DeepSpeed has no CPU {name}")
    defaults = getattr(torch.optim, name)(params, **OPTIMIZERS[name]).defaults
    return cls(
        params,
        lr=defaults["lr"],
        betas=defaults["betas"],
        eps=defaults["eps"],
        weight_decay=defaults["weight_decay"],
        adamw_mode=DEEPSPEED_ADAMW_MODE[name],
        fp32_optimizer_states=params[0].dtype == torch.float32,
    )


def make_optimizer(impl: str, name: str, params, optional: dict):
    hyper = OPTIMIZERS[name]
    if impl == "ferroptim":
        return getattr(optional[impl], name)(params, **hyper)
    if impl == "deepspeed":
        return make_deepspeed(optional[impl], name, params)
    if hasattr(torch.optim, name):
        return getattr(torch.optim, name)(params, **hyper, **TORCH_IMPLS[impl])
    # Not in torch.optim: its reference implementation takes the "forloop" column.
    if impl != "forloop":
        raise NotApplicable(f"torch.optim has no {name}")
    return reference_class(name)(params, **hyper)


def reference_class(name: str):
    """The reference implementation of an algorithm torch lacks (PyPI lion-pytorch, the
    authors' torch-adopt, and pytorch-optimizer's Adan, AdEMAMix, ScheduleFreeAdamW, Lamb,
    LARS; all in .ci/requirements.txt)."""
    if name in ("Adan", "AdEMAMix", "ScheduleFreeAdamW", "Lamb", "LARS"):
        import pytorch_optimizer

        return getattr(pytorch_optimizer, name)
    if name == "Lion":
        import lion_pytorch

        return lion_pytorch.Lion
    import adopt

    if not hasattr(adopt.ADOPT, "_cuda_graph_capture_health_check"):
        # torch-adopt 0.1.0 calls a torch.optim helper torch 2.11 no longer has (a CUDA-graph
        # check; a no-op on the CPU).
        adopt.ADOPT._cuda_graph_capture_health_check = lambda self: None
    return adopt.ADOPT


def prepare(impl, name, case, dtype, device, sync, optional, warmup):
    """Build one implementation's parameters and optimizer and take the warm-up steps."""
    params = make_params(case, dtype, device)
    opt = make_optimizer(impl, name, params, optional)
    for _ in range(warmup):
        opt.step()
    sync()
    return opt, params


# --------------------------------------------------------------------------- one case


def time_round_robin(runners: dict, probe: BandwidthProbe, reps: int, sync):
    """Interleaved timings: per repetition one step of every implementation and one probe."""
    keys = [*runners, "probe"]
    samples: dict[str, list[float]] = {key: [] for key in keys}
    gc.disable()  # a collection inside one implementation's step would only hit that one
    try:
        for rep in range(reps):
            shift = rep % len(keys)
            for key in keys[shift:] + keys[:shift]:
                if key == "probe":
                    samples[key].append(probe.measure())
                else:
                    samples[key].append(time_call(runners[key][0].step, sync))
    finally:
        gc.enable()
    return samples


@torch.no_grad()
def l1_distance(params_a, params_b, chunk: int = 2**20) -> float:
    """Sum over all elements of |a - b|, in float64, a chunk at a time to bound memory."""
    total = 0.0
    for a, b in zip(params_a, params_b):
        for ca, cb in zip(a.detach().reshape(-1).split(chunk), b.detach().reshape(-1).split(chunk)):
            total += float((ca.double() - cb.double()).abs().sum())
    return total


def check_results(runners: dict, case, dtype, device) -> dict:
    """How far each implementation's parameters are from the reference's, and moved.

    Both are L1 distances relative to how far the reference moved its parameters from
    their initial values: ``diff`` is about 0 for an implementation doing the same update
    (rounding differences aside) and 1 for one whose step leaves the parameters as they were.
    """
    ref = REFERENCE if REFERENCE in runners else next(iter(runners))
    initial = make_params(case, dtype, device, grads=False)
    ref_params = runners[ref][1]
    ref_moved = l1_distance(ref_params, initial)
    checks = {"reference": ref, "reference_moved_l1": ref_moved}
    for impl, (_, params) in runners.items():
        moved = l1_distance(params, initial)
        diff = l1_distance(params, ref_params)
        checks[impl] = {
            "diff": diff / ref_moved if ref_moved else float("inf"),
            "moved": moved / ref_moved if ref_moved else float("inf"),
        }
    return checks


def run_case(name, case, dtype_name, probe, args, device, sync, optional, missing, reps=None):
    """Time every implementation on one case; return the raw samples and notes.

    ``optional`` and ``missing`` are :func:`import_optional`'s results; ``reps`` defaults to
    ``args.reps``.
    """
    dtype = DTYPES[dtype_name]
    runners, notes = {}, {}
    for impl in IMPLS:
        if impl in missing:
            notes[impl] = f"skipped: {impl} not available ({missing[impl]})"
            continue
        try:
            runners[impl] = prepare(impl, name, case, dtype, device, sync, optional, args.warmup)
        except NotApplicable as exc:
            notes[impl] = f"n/a: {exc}"
        except Exception as exc:  # e.g. a combination torch does not support on this device
            notes[impl] = f"skipped: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
    samples = time_round_robin(runners, probe, reps or args.reps, sync) if runners else {}
    checks = check_results(runners, case, dtype, device) if runners else {}
    runners.clear()
    gc.collect()
    return samples, notes, checks


def is_suspect(check, dtype_name: str) -> bool:
    """Whether an implementation's parameters disagree with the reference implementation's."""
    if check is None:
        return False
    limit = FP32_MAX_REL_DIFF if dtype_name == "float32" else 0.5
    return check["diff"] > limit or abs(check["moved"] - 1) > 0.5


def summarize(name, case, dtype_name, samples, notes, checks) -> dict:
    """Medians, ratios to torch's best and to the bandwidth floor for one case."""
    count, numel = ALL_CASES[case]
    elements = count * numel
    step_bytes = TRAFFIC[name] * DTYPES[dtype_name].itemsize * elements
    probe = samples.pop("probe", None)
    bandwidth = BandwidthProbe.gbps(float(np.median(probe))) if probe else None
    floor_ms = step_bytes / (bandwidth * 1e9) * 1e3 if bandwidth else None
    impls = {}
    for impl, secs in samples.items():
        ms = np.asarray(secs) * 1e3
        impls[impl] = {
            "median_ms": float(np.median(ms)),
            "p25_ms": float(np.percentile(ms, 25)),
            "p75_ms": float(np.percentile(ms, 75)),
            "samples_ms": [round(float(x), 4) for x in ms],
            "check": checks.get(impl),
        }
        impls[impl]["suspect"] = is_suspect(impls[impl]["check"], dtype_name)
    # An implementation whose result disagrees with the for-loop's (torch 2.11's fused CPU SGD
    # on bf16/fp16 updates only a short tail of each tensor) is not a fair "best".
    torch_ms = {
        k: v["median_ms"] for k, v in impls.items() if k in TORCH_IMPLS and not v["suspect"]
    }
    best = min(torch_ms, key=torch_ms.get) if torch_ms else None
    for stats in impls.values():
        med = stats["median_ms"]
        stats["ratio_torch_best"] = med / torch_ms[best] if best else None
        stats["speedup_vs_torch_best"] = torch_ms[best] / med if best else None
        stats["ratio_floor"] = med / floor_ms if floor_ms else None
    for impl, note in notes.items():
        impls[impl] = {"skipped": note}
    if "ferroptim" in samples and "deepspeed" in samples:
        ferro, ds = impls["ferroptim"], impls["deepspeed"]
        ferro["ratio_deepspeed"] = ferro["median_ms"] / ds["median_ms"]
    return {
        "optimizer": name,
        "case": case,
        "dtype": dtype_name,
        "tensors": count,
        "elements": elements,
        "bytes_per_step": step_bytes,
        "bandwidth_gbps": bandwidth,
        "floor_ms": floor_ms,
        "torch_best": best,
        "reference": checks.get("reference"),
        "impls": {impl: impls[impl] for impl in IMPLS if impl in impls},
    }


# --------------------------------------------------------------------------- output


def fmt(x, spec=".2f", suffix="") -> str:
    return "-" if x is None else f"{x:{spec}}{suffix}"


def fmt_ms(ms) -> str:
    if ms is None:
        return "-"
    return f"{ms:.3f}" if ms < 10 else f"{ms:.2f}"


def load_average():
    """The 1-minute load average, or None where the platform has none."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def max_rss_gb():
    """Peak resident memory of this process so far (Linux reports kilobytes)."""
    try:
        import resource
    except ImportError:
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def optional_versions(optional: dict) -> dict:
    """Version of each importable optional implementation (None for the missing ones)."""
    modules = {"ferroptim": optional.get("ferroptim"), "deepspeed": sys.modules.get("deepspeed")}
    return {
        impl: getattr(modules[impl], "__version__", "installed") if impl in optional else None
        for impl in OPTIONAL_IMPLS
    }


def machine_info(device: torch.device, optional: dict, probe_gbps: float) -> dict:
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        **optional_versions(optional),
        "device": str(device),
        "bandwidth_gbps_initial": probe_gbps,
        "load_average_start": load_average(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def print_header(info: dict, args, missing) -> None:
    print("ferroptim step() benchmark")
    print(f"  date        {info['date']}")
    print(f"  cpu         {info['cpu']} ({info['cores']} cores, {info['cores_usable']} usable)")
    if "gpu" in info:
        print(f"  gpu         {info['gpu']}")
    print(
        f"  python      {info['python']}   torch {info['torch']}   "
        f"torch threads {info['torch_threads']}"
    )
    for impl in OPTIONAL_IMPLS:
        print(f"  {impl:<11} {info[impl] or 'NOT AVAILABLE, column skipped: ' + missing[impl]}")
    reps = f"{args.reps}" + (
        f" (fewer above 2^21 elements, >= {SWEEP_MIN_REPS})" if args.plot else ""
    )
    print(f"  device      {info['device']}   reps {reps}   warm-up steps {args.warmup}")
    print(
        f"  bandwidth   {info['bandwidth_gbps_initial']:.1f} GB/s (read-modify-write, "
        "64 Mi float32 mul_; re-measured in every case)"
    )
    load = info["load_average_start"]
    print(f"  load        {fmt(load)} (1-minute average)")
    if load is not None and load > LOAD_WARNING:
        print(
            "  WARNING: the machine is busy; with as many torch threads as cores, a thread "
            "descheduled in\n  a parallel region stalls the whole step (worst for many "
            "small tensors): timings may be unreliable."
        )
    print()


def print_case(result: dict, index: int, total: int) -> None:
    r = result
    print(
        f"[{index}/{total}] {r['optimizer']}  {r['case']}  {r['dtype']}   "
        f"{r['bytes_per_step'] / 1e6:.1f} MB/step   "
        f"bandwidth {fmt(r['bandwidth_gbps'], '.1f')} GB/s -> floor {fmt_ms(r['floor_ms'])} ms"
    )
    print(
        f"  {'impl':<10} {'median ms':>10} {'IQR %':>6} {'/torch-best':>11} "
        f"{'speedup':>8} {'/floor':>7} {'diff/move':>10}"
    )
    for impl, s in r["impls"].items():
        if "skipped" in s:
            print(f"  {impl:<10} {s['skipped']}")
            continue
        iqr = (s["p75_ms"] - s["p25_ms"]) / s["median_ms"] * 100
        best = "*" if impl == r["torch_best"] else " "
        check = "ref" if impl == r["reference"] else fmt(s["check"]["diff"], ".1e")
        print(
            f"  {impl:<9}{best} {fmt_ms(s['median_ms']):>10} {iqr:>6.1f} "
            f"{fmt(s['ratio_torch_best']):>11} {fmt(s['speedup_vs_torch_best'], '.2f', 'x'):>8} "
            f"{fmt(s['ratio_floor']):>7} {check:>10}"
        )
    ratio = r["impls"].get("ferroptim", {}).get("ratio_deepspeed")
    if ratio is not None:
        print(f"  ferroptim / deepspeed {ratio:.2f} (speed-up {1 / ratio:.2f}x)")
    for warning in case_warnings(r):
        print(f"  WARNING: {warning}")
    print()


def case_warnings(result: dict) -> list[str]:
    """One line per implementation whose parameters disagree with the reference's."""
    ref = result["reference"]
    return [
        f"{impl}: its parameters are {s['check']['diff']:.2f} x (L1) as far from {ref}'s as "
        f"{ref}'s moved, and moved {s['check']['moved']:.2f} x as far: its step does not do "
        "the same update, and its time may not be comparable"
        for impl, s in result["impls"].items()
        if s.get("suspect")
    ]


def has_timings(results: list[dict], impl: str) -> bool:
    return any("median_ms" in r["impls"].get(impl, {}) for r in results)


def markdown_ms(result: dict, impl: str) -> str:
    stats = result["impls"].get(impl, {})
    if stats.get("skipped", "").startswith("n/a"):
        return "n/a"
    return fmt_ms(stats.get("median_ms")) + (" †" if stats.get("suspect") else "")


def markdown_table(results: list[dict], info: dict, bandwidth: list[float]) -> str:
    """The results as a Markdown table; DeepSpeed's columns only when it was timed."""
    deepspeed = has_timings(results, "deepspeed")
    impls = [*TORCH_IMPLS, "ferroptim", *(["deepspeed"] if deepspeed else [])]
    ratios = ["ratio_torch_best", "ratio_floor", *(["ratio_deepspeed"] if deepspeed else [])]
    ratio_names = ["torch-best", "floor", "deepspeed"][: len(ratios)]
    head = ["optimizer", "case", "dtype", *(f"{i} ms" for i in impls)]
    head += [f"ferroptim/{n}" for n in ratio_names]
    lines = ["| " + " | ".join(head) + " |", "|---|---|---|" + "---:|" * (len(head) - 3)]
    for r in results:
        ferro = r["impls"].get("ferroptim", {})
        cells = [r["optimizer"], r["case"], r["dtype"], *(markdown_ms(r, i) for i in impls)]
        cells += [fmt(ferro.get(ratio)) for ratio in ratios]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if any(s.get("suspect") for r in results for s in r["impls"].values()):
        lines.append(
            f"† parameters after the run disagree with the {REFERENCE} "
            "implementation's (see the script's warnings); excluded from torch-best."
        )
        lines.append("")
    lines.append(
        f"{info['cpu']}, {info['cores']} cores, torch {info['torch']} "
        f"({info['torch_threads']} threads), device {info['device']}, {info['date'][:10]}; "
        f"{bandwidth_summary(bandwidth)}."
    )
    return "\n".join(lines)


def bandwidth_summary(samples: list[float]) -> str:
    gbps = sorted(BandwidthProbe.gbps(s) for s in samples)
    if not gbps:
        return "no bandwidth samples"
    return (
        f"read-modify-write bandwidth median {np.median(gbps):.1f} GB/s "
        f"(min {gbps[0]:.1f}, max {gbps[-1]:.1f}, {len(gbps)} probes)"
    )


# --------------------------------------------------------------------------- size sweep

# matplotlib style per implementation (the rest get matplotlib's defaults)
PLOT_STYLE = {
    "forloop": {"color": "tab:gray", "marker": "v"},
    "foreach": {"color": "tab:olive", "marker": "^"},
    "fused": {"color": "tab:blue", "marker": "s"},
    "ferroptim": {"color": "tab:red", "marker": "o", "linewidth": 2.2},
    "deepspeed": {"color": "tab:green", "marker": "D"},
}


def sweep_reps(case: str, reps: int) -> int:
    """Repetitions for one sweep size: ``reps`` up to SWEEP_FULL_REPS_NUMEL elements, then
    in inverse proportion to the size, but at least SWEEP_MIN_REPS (or ``reps`` if fewer)."""
    numel = ALL_CASES[case][1]
    return min(reps, max(SWEEP_MIN_REPS, reps * SWEEP_FULL_REPS_NUMEL // numel))


def plan(args) -> list[tuple[str, str, str, int]]:
    """(optimizer, case, dtype, repetitions) for every case of the run, in order."""
    if args.plot:
        return [
            (n, c, d, sweep_reps(c, args.reps))
            for n in args.optimizers
            for d in args.dtypes
            for c in SWEEP_CASES
        ]
    return [(n, c, d, args.reps) for n in args.optimizers for c in args.cases for d in args.dtypes]


def plot_panel(ax, rows: list[dict], gbps: float) -> None:
    """One optimizer and dtype: median time per implementation and the floor, log-log."""
    for impl in IMPLS:
        timed = [r for r in rows if "median_ms" in r["impls"].get(impl, {})]
        if not timed:
            continue
        suspect = any(r["impls"][impl]["suspect"] for r in timed)
        ax.plot(
            [r["elements"] for r in timed],
            [r["impls"][impl]["median_ms"] for r in timed],
            label=impl + (" (wrong results)" if suspect else ""),
            **PLOT_STYLE.get(impl, {}),
        )
    elements = [r["elements"] for r in rows]
    floor_ms = [r["bytes_per_step"] / (gbps * 1e9) * 1e3 for r in rows]
    ax.plot(elements, floor_ms, "k--", label=f"bandwidth floor ({gbps:.0f} GB/s)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("elements in the (single) tensor")
    ax.set_ylabel("median step() time, ms")
    ax.set_title(f"{rows[0]['optimizer']}, {rows[0]['dtype']}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()


def plot_sweep(results: list[dict], info: dict, bandwidth: list[float], path: str) -> None:
    """Write the sweep's log-log plot, one panel per optimizer and dtype, to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(dict.fromkeys((r["optimizer"], r["dtype"]) for r in results))
    gbps = float(np.median([BandwidthProbe.gbps(s) for s in bandwidth]))
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 5.5), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        plot_panel(ax, [r for r in results if (r["optimizer"], r["dtype"]) == panel], gbps)
    fig.suptitle(
        f"step() time vs tensor size: {info['cpu']}, torch {info['torch']} "
        f"({info['torch_threads']} threads), {info['date'][:10]}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- main


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--reps",
        type=int,
        default=DEFAULT_REPS,
        help=f"timed steps per implementation and case (default {DEFAULT_REPS})",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=DEFAULT_WARMUP,
        help=f"untimed steps first (default {DEFAULT_WARMUP})",
    )
    parser.add_argument(
        "--optimizers",
        nargs="+",
        choices=list(OPTIMIZERS),
        help=f"default: all; with --plot, {SWEEP_OPTIMIZER}",
    )
    parser.add_argument(
        "--cases",
        nargs="+",
        choices=list(CASES),
        help="parameter layouts: 1 x 25M elements, 500 x 4096 elements (default: both)",
    )
    parser.add_argument(
        "--dtypes",
        nargs="+",
        choices=list(DTYPES),
        help=f"default: all; with --plot, {SWEEP_DTYPE}",
    )
    parser.add_argument(
        "--plot",
        metavar="PATH",
        help="instead of the cases, time one tensor of 2^12 ... 2^25 elements and write a "
        "log-log PNG of step time vs size per implementation, with the bandwidth floor, to PATH",
    )
    parser.add_argument(
        "--threads", type=int, help="torch.set_num_threads (default: torch's own default)"
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--json", metavar="PATH", help="write every number to PATH")
    parser.add_argument(
        "--markdown", action="store_true", help="also print a Markdown table for benches/RESULTS.md"
    )
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    if args.reps < 1 or args.warmup < 1:
        parser.error("--reps and --warmup must be at least 1 (the first step creates state)")
    if args.plot and args.cases:
        parser.error("--cases does not apply to --plot (the sweep has its own sizes)")
    args.optimizers = args.optimizers or ([SWEEP_OPTIMIZER] if args.plot else list(OPTIMIZERS))
    args.dtypes = args.dtypes or ([SWEEP_DTYPE] if args.plot else list(DTYPES))
    args.cases = args.cases or ([] if args.plot else list(CASES))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = make_sync(device)
    optional, missing = import_optional(device)
    started = time.perf_counter()

    probe = BandwidthProbe(device, sync)
    probe.measure()  # first touch of the pages
    initial = [probe.measure() for _ in range(10)]
    info = machine_info(device, optional, BandwidthProbe.gbps(float(np.median(initial))))
    print_header(info, args, missing)

    combos = plan(args)
    results = []
    for index, (name, case, dtype_name, reps) in enumerate(combos, 1):
        samples, notes, checks = run_case(
            name, case, dtype_name, probe, args, device, sync, optional, missing, reps
        )
        results.append(summarize(name, case, dtype_name, samples, notes, checks))
        print_case(results[-1], index, len(combos))

    elapsed = time.perf_counter() - started
    info["max_rss_gb"] = max_rss_gb()
    print(f"bandwidth over the run: {bandwidth_summary(probe.all_samples)}")
    print(
        f"total time {elapsed:.0f} s; load average now {fmt(load_average())}; "
        f"peak resident memory {fmt(info['max_rss_gb'])} GB"
    )
    if args.markdown:
        print()
        print(markdown_table(results, info, probe.all_samples))
    if args.plot:
        plot_sweep(results, info, probe.all_samples, args.plot)
        print(f"wrote {args.plot}")
    if args.json:
        payload = {
            "machine": info,
            "settings": {k: v for k, v in vars(args).items() if k != "json"},
            "bandwidth_probe_gbps": [BandwidthProbe.gbps(s) for s in probe.all_samples],
            "results": results,
            "elapsed_s": elapsed,
        }
        with open(args.json, "w") as f:
            json.dump(payload, f, indent=1)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
