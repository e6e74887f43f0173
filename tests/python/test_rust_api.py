"""The Rust API (``rust/ferroptim/src/optim``, ``src/sched``) against the Python package and
torch: the same trajectories for the same data, checkpoints exchanged in both directions
(``ferroptim.checkpoint``), and LR schedules equal to ``torch.optim.lr_scheduler``'s.

The Rust side is ``examples/interop.rs``, built with cargo (as ``cargo test`` already does in
CI); the tests are skipped, saying so, where cargo is not installed.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from typing import Any

import pytest
import torch
from ferroptim import checkpoint
from optim_testlib import TOLERANCES, make_opt
from safetensors.torch import load_file, save_file
from test_family import CONFIGS, NAMES

# Python classes the Rust API (`Optim<R>`, `LbfgsOptim`, examples/interop.rs) does not have yet.
RUST_NOT_YET: frozenset[str] = frozenset()
RUST_NAMES = [n for n in NAMES if n not in RUST_NOT_YET]
# SparseAdam steps with sparse gradients (rows dropped as `sparsify_grads` does); LBFGS with a
# closure whose loss is sum((p - c)²) for the step's targets c; Muon takes only 2-D parameters.
SPARSE, CLOSURE, MATRIX = "SparseAdam", "LBFGS", "Muon"

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS, SAVE_AT = 6, 3
RTOL, ATOL = TOLERANCES[torch.float32]


@pytest.fixture(scope="module")
def interop() -> tuple[str, dict[str, str]]:
    """The path of the built ``interop`` example and the environment to run it in."""
    cargo = shutil.which("cargo")
    if cargo is None:
        pytest.skip("cargo is not installed: the Rust API tests build examples/interop.rs")
    env = dict(os.environ)
    env.setdefault("LIBTORCH_USE_PYTORCH", "1")
    torch_lib = os.path.join(os.path.dirname(torch.__file__), "lib")
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        p for p in (torch_lib, env.get("LD_LIBRARY_PATH")) if p
    )
    cmd = [cargo, "build", "--release", "-p", "ferroptim", "--example", "interop"]
    built = subprocess.run(
        [*cmd, "--message-format=json"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert built.returncode == 0, built.stderr[-4000:]
    for line in built.stdout.splitlines():
        msg = json.loads(line)
        if msg.get("reason") == "compiler-artifact" and msg["target"]["name"] == "interop":
            return msg["executable"], env
    raise AssertionError("cargo built no interop executable")


def run_rust(interop: Any, *args: str) -> str:
    exe, env = interop
    out = subprocess.run([exe, *args], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-4000:]
    return out.stdout


def make_params(seed: int = 0, name: str = "") -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = [(3, 4), (4, 2), (5, 3)] if name == MATRIX else [(3, 4), (4,), (5,)]
    return [torch.randn(s, generator=g).requires_grad_() for s in shapes]


def make_grads(params: list[torch.Tensor], seed: int = 1, name: str = "") -> list:
    """Gradients of each step (for LBFGS: the targets of its loss); for SparseAdam with the
    rows that ``sparsify_grads`` drops set to zero."""
    g = torch.Generator().manual_seed(seed)
    out = [[torch.randn(p.shape, generator=g) for p in params] for _ in range(STEPS)]
    if name == SPARSE:
        for t, gs in enumerate(out):
            for grad in gs:
                rows = torch.arange(grad.shape[0])
                keep = ((rows + t) % 3 != 0).reshape(-1, *([1] * (grad.dim() - 1)))
                grad.mul_(keep)
    return out


def groups(name: str, params: list[torch.Tensor]) -> list[dict[str, Any]]:
    """Two groups: the first with the class's test configuration, the second at half its lr
    (LBFGS: one group, torch's only)."""
    if name == CLOSURE:
        return [{"params": params}]
    return [{"params": params[:2]}, {"params": params[2:], "lr": CONFIGS[name]["lr"] * 0.5}]


def plain_groups(name: str, params: list[torch.Tensor]) -> list[dict[str, Any]]:
    """The groups of :func:`groups`, without hyperparameters."""
    return [{"params": g["params"]} for g in groups(name, params)]


def leaves(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    return [t.detach().clone().requires_grad_() for t in tensors]


def steps(opt: Any, params: list[torch.Tensor], grads: list[list[torch.Tensor]]) -> list:
    """Runs one step per entry of ``grads``; returns the parameters after each."""
    out = []
    names = {c.__name__ for c in type(opt).__mro__}
    for gs in grads:
        if CLOSURE in names:

            def closure(gs: list[torch.Tensor] = gs) -> torch.Tensor:
                opt.zero_grad()
                loss = None
                for p, c in zip(params, gs):
                    term = ((p - c) * (p - c)).sum()
                    loss = term if loss is None else loss + term
                loss.backward()
                return loss

            opt.step(closure)
        else:
            for p, g in zip(params, gs):
                p.grad = g.to_sparse() if SPARSE in names else g.clone()
            opt.step()
        out.append([p.detach().clone() for p in params])
    return out


def rust_steps(interop: Any, tmp: Any, name: str, params, grads, ckpt, save=None) -> list:
    """Runs ``grads`` through the Rust API from ``params`` after loading checkpoint ``ckpt``;
    returns the parameters after each step (and saves a checkpoint after step ``save[0]``)."""
    problem, out = str(tmp / "problem.safetensors"), str(tmp / "out.safetensors")
    tensors = {f"param.{i}": p.detach().contiguous() for i, p in enumerate(params)}
    for t, gs in enumerate(grads):
        tensors.update({f"grad.{t}.{i}": g.contiguous() for i, g in enumerate(gs)})
    sizes = [len(g["params"]) for g in groups(name, params)]
    save_file(tensors, problem, metadata={"group_sizes": json.dumps(sizes)})
    extra = [str(save[0]), str(save[1])] if save else []
    run_rust(interop, "run", name, problem, str(ckpt), out, *extra)
    result = load_file(out)
    return [
        [result[f"param.{t}.{i}"] for i in range(len(params))] for t in range(1, 1 + len(grads))
    ]


def assert_equal(actual: list, expected: list, what: str) -> None:
    assert len(actual) == len(expected), what
    for t, (a, e) in enumerate(zip(actual, expected)):
        for i, (x, y) in enumerate(zip(a, e)):
            assert torch.equal(x, y), f"{what}: step {t + 1}, param {i}: {(x - y).abs().max()}"


def assert_close(actual: list, expected: list, what: str) -> None:
    assert len(actual) == len(expected), what
    for t, (a, e) in enumerate(zip(actual, expected)):
        for i, (x, y) in enumerate(zip(a, e)):
            torch.testing.assert_close(x, y, rtol=RTOL, atol=ATOL, msg=f"{what}: step {t + 1}, {i}")


@pytest.mark.parametrize("name", RUST_NAMES)
def test_trajectory_and_checkpoints_match_python(interop, tmp_path, name):
    import ferroptim

    params0, cfg = make_params(name=name), CONFIGS[name]
    grads = make_grads(params0, name=name)

    # Python -> Rust (hyperparameters): the Rust optimizer starts from default
    # hyperparameters and loads the Python optimizer's checkpoint before its first step.
    ours_params = leaves(params0)
    ours = make_opt("ours", name, groups(name, ours_params), **cfg)
    checkpoint.save(ours, tmp_path / "start.safetensors")
    rust_ckpt = tmp_path / "rust-step3.safetensors"
    rust = rust_steps(
        interop,
        tmp_path,
        name,
        params0,
        grads,
        tmp_path / "start.safetensors",
        save=(SAVE_AT, rust_ckpt),
    )

    # Same trajectory as the Python package, bit for bit; close to the reference's.
    expected = steps(ours, ours_params, grads)
    assert_equal(rust, expected, f"Rust vs ferroptim.{name}")
    ref_params = leaves(params0)
    ref = make_opt("forloop", name, groups(name, ref_params), **cfg)
    assert_close(rust, steps(ref, ref_params, grads), f"Rust vs reference {name}")

    # Rust -> Python: both ferroptim and torch.optim, built with default hyperparameters,
    # continue from the Rust checkpoint of step 3.
    at3 = rust[SAVE_AT - 1]
    impls = ["ours"] + (["forloop"] if hasattr(torch.optim, name) else [])
    for impl in impls:
        p = leaves(at3)
        opt = make_opt(impl, name, plain_groups(name, p))
        checkpoint.load(opt, rust_ckpt)
        assert opt.param_groups[-1]["lr"] == cfg["lr"] * (1 if name == CLOSURE else 0.5)
        cont = steps(opt, p, grads[SAVE_AT:])
        if impl == "ours":
            assert_equal(cont, rust[SAVE_AT:], f"ferroptim.{name} resumed from Rust")
        else:
            assert_close(cont, rust[SAVE_AT:], f"torch.optim.{name} resumed from Rust")

    # Python -> Rust (state): the Rust API continues a Python run bit-identically (ferroptim),
    # or to rounding (torch.optim).
    for impl in impls:
        p = leaves(params0)
        opt = make_opt(impl, name, groups(name, p), **cfg)
        steps(opt, p, grads[:SAVE_AT])
        checkpoint.save(opt, tmp_path / "py-step3.safetensors")
        at3 = [t.detach().clone() for t in p]
        want = steps(opt, p, grads[SAVE_AT:])
        got = rust_steps(
            interop, tmp_path, name, at3, grads[SAVE_AT:], tmp_path / "py-step3.safetensors"
        )
        if impl == "ours":
            assert_equal(got, want, f"Rust resumed from ferroptim.{name}")
        else:
            assert_close(got, want, f"Rust resumed from torch.optim.{name}")
    assert isinstance(ours, getattr(ferroptim, name))


def test_checkpoint_round_trip_in_python(tmp_path):
    """ferroptim.checkpoint alone: save/load restores state_dict exactly, inf included."""
    p = leaves(make_params())
    opt = torch.optim.Rprop([{"params": p}], lr=0.01, step_sizes=(1e-6, math.inf))
    steps(opt, p, make_grads(p)[:2])
    checkpoint.save(opt, tmp_path / "c.safetensors")
    other = torch.optim.Rprop([{"params": leaves(p)}])
    checkpoint.load(other, tmp_path / "c.safetensors")
    a, b = opt.state_dict(), other.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for i, state in a["state"].items():
        for key, value in state.items():
            assert (
                torch.equal(value, b["state"][i][key]) and value.dtype == b["state"][i][key].dtype
            )
    with pytest.raises(ValueError, match="parameter groups"):
        checkpoint.load(
            torch.optim.Rprop([{"params": p[:1]}, {"params": p[1:]}]), tmp_path / "c.safetensors"
        )


def _same(a: Any, b: Any, where: str) -> None:
    """Equal values of the same types: tensors (and their dtypes), Python numbers, lists."""
    assert type(a) is type(b), f"{where}: {type(a)} vs {type(b)}"
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b) and a.dtype == b.dtype, where
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for k, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{k}]")
    else:
        assert a == b, where


@pytest.mark.parametrize("name", ["SparseAdam", "LBFGS"])
def test_checkpoint_keeps_state_that_is_not_tensors(tmp_path, name):
    """torch.optim's SparseAdam (an int ``step``) and LBFGS (ints, floats, lists of tensors
    and None) through ferroptim.checkpoint: the same state_dict, Python types included."""
    params0 = make_params(name=name)
    p = leaves(params0)
    opt = make_opt("forloop", name, groups(name, p), **CONFIGS[name])
    steps(opt, p, make_grads(params0, name=name)[:3])
    checkpoint.save(opt, tmp_path / "c.safetensors")
    other = make_opt("forloop", name, plain_groups(name, leaves(p)))
    checkpoint.load(other, tmp_path / "c.safetensors")
    a, b = opt.state_dict(), other.state_dict()
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys()
    for i, state in a["state"].items():
        assert state.keys() == b["state"][i].keys()
        for key, value in state.items():
            _same(value, b["state"][i][key], f"state[{i}][{key}]")
    if name == "LBFGS":
        assert isinstance(a["state"][0]["n_iter"], int) and a["state"][0]["old_dirs"]


def torch_schedules() -> dict[str, list]:
    """The scenarios of ``interop schedules``, computed by torch.optim.lr_scheduler."""
    S = torch.optim.lr_scheduler
    out: dict[str, list] = {}

    def sgd():
        ps = [torch.zeros(1, requires_grad=True) for _ in range(2)]
        return torch.optim.SGD(
            [{"params": ps[:1]}, {"params": ps[1:], "lr": 0.01}], lr=0.1, momentum=0.9
        )

    def adam():
        ps = [torch.zeros(1, requires_grad=True) for _ in range(2)]
        return torch.optim.Adam([{"params": ps[:1]}, {"params": ps[1:], "lr": 0.01}], lr=0.1)

    def trace(opt, sched, n, key=None):
        lrs = [[g["lr"] for g in opt.param_groups]]
        moms = [[key(g) for g in opt.param_groups]] if key else None
        for _ in range(n):
            opt.step()
            sched.step()
            lrs.append([g["lr"] for g in opt.param_groups])
            if key:
                moms.append([key(g) for g in opt.param_groups])
        return lrs, moms

    o = sgd()
    out["StepLR"] = trace(o, S.StepLR(o, 3, 0.5), 12)[0]
    o = sgd()
    out["MultiStepLR"] = trace(o, S.MultiStepLR(o, [2, 5, 5], 0.1), 8)[0]
    o = sgd()
    out["ExponentialLR"] = trace(o, S.ExponentialLR(o, 0.9), 10)[0]
    o = sgd()
    out["CosineAnnealingLR"] = trace(o, S.CosineAnnealingLR(o, 10, 1e-3), 35)[0]
    o = sgd()
    out["LinearLR"] = trace(o, S.LinearLR(o, 0.1, 1.0, 5), 8)[0]
    for name, three_phase, strategy in [
        ("OneCycleLR", False, "cos"),
        ("OneCycleLR3", True, "linear"),
    ]:
        o = sgd()
        s = S.OneCycleLR(o, [0.5, 0.05], 20, three_phase=three_phase, anneal_strategy=strategy)
        out[name], out[f"{name}.momentum"] = trace(o, s, 19, key=lambda g: g["momentum"])
    o = adam()
    s = S.OneCycleLR(o, [0.5, 0.05], 20)
    out["OneCycleLR.adam"], out["OneCycleLR.adam.beta1"] = trace(
        o, s, 19, key=lambda g: g["betas"][0]
    )
    o = sgd()
    s = S.ReduceLROnPlateau(o, factor=0.5, patience=2, cooldown=1, min_lr=[0.02, 0.0])
    metrics = [5.0, 4.0, 4.0, 4.0, 4.0, 3.0, 3.5, 3.5, 3.5, 3.5, 3.5, 3.5, 1.0, 2.0, 2.0, 2.0, 2.0]
    lrs = [[g["lr"] for g in o.param_groups]]
    for m in metrics:
        o.step()
        s.step(m)
        lrs.append([g["lr"] for g in o.param_groups])
    out["ReduceLROnPlateau"] = lrs
    return out


def test_schedulers_equal_torch(interop):
    rust = json.loads(run_rust(interop, "schedules"))
    expected = torch_schedules()
    assert sorted(rust) == sorted(expected)
    for name, values in expected.items():
        # The same floats: torch's recursive formulas evaluated in the same order.
        assert rust[name] == values, name
