"""Version counters and inference tensors: a step is an in-place update, as torch's is.

torch's in-place ops bump the version counter of every tensor they write, and autograd
refuses a backward through a graph whose saved tensors changed version since. ferroptim's
fused kernel writes through raw pointers, so the driver bumps the counters itself; these tests
check that autograd sees every step, and that inference tensors are refused outside
``torch.inference_mode`` (as torch's in-place ops refuse them) before anything is modified.
"""

from __future__ import annotations

import re

import pytest
import torch
from optim_testlib import (
    CLOSURE_CLASSES,
    OURS,
    SPARSE_GRAD_CLASSES,
    TENSOR_RULES,
    adapt_params,
    sparsify_grads,
)

# The classes, without the 8-bit-state family (tested in test_8bit.py; SGD8bit keeps a
# momentum_buffer it never writes when momentum is 0, a known gap).
NAMES = [n for n in OURS.__all__ if isinstance(getattr(OURS, n), type) and not n.endswith("8bit")]
FUSED_NAMES = [n for n in NAMES if n not in TENSOR_RULES]
INPLACE_ERROR = "modified by an inplace operation"


def linear_problem(name: str, seed: int = 0):
    """A 3x4 weight (and a bias unless the class takes only matrices) and a loss whose graph
    saves both (``pow`` keeps its input for backward)."""
    gen = torch.Generator().manual_seed(seed)
    weight = torch.nn.Parameter(torch.randn(3, 4, generator=gen))
    bias = torch.nn.Parameter(torch.randn(3, generator=gen))
    params = adapt_params(name, [weight, bias])
    x = torch.randn(5, 4, generator=gen)
    loss = (torch.tanh(x @ weight.t() + bias) ** 2).sum() + (weight**3).sum() + (bias**3).sum()
    return params, loss


def step(name: str, opt: torch.optim.Optimizer, params, loss_fn=None) -> None:
    if name in SPARSE_GRAD_CLASSES and not params[0].grad.is_sparse:
        sparsify_grads(params, 0)
    if name in CLOSURE_CLASSES:
        opt.step(loss_fn)
    else:
        opt.step()


@pytest.mark.parametrize("name", NAMES)
def test_backward_through_a_stepped_parameter_raises_as_in_torch(name):
    # Each class is checked on its own (the tensor rules' ATen ops bump the counters
    # themselves, the fused classes through the driver), and torch's class, where torch has
    # one, behaves the same.
    impls = [OURS] + ([torch.optim] if hasattr(torch.optim, name) else [])
    for impl in impls:
        params, loss = linear_problem(name)
        opt = getattr(impl, name)(params, lr=1e-3)
        loss.backward(retain_graph=True)

        # Two steps: ADOPT's first one only initialises its state, as its reference's does.
        # LBFGS's closure returns the loss whose gradients are already in place.
        detached = loss.detach()
        for _ in range(2):
            step(name, opt, params, lambda d=detached: d)
        with pytest.raises(RuntimeError, match=INPLACE_ERROR):
            loss.backward()


def tensor_versions(params, opt) -> dict[str, int]:
    """The version of every parameter, gradient and state tensor, by name."""
    out = {}
    for i, p in enumerate(params):
        out[f"params[{i}]"] = p._version
        out[f"grad[{i}]"] = p.grad._version
        for key, value in opt.state[p].items():
            if torch.is_tensor(value):
                out[f"{key}[{i}]"] = value._version
    return out


@pytest.mark.parametrize("name", FUSED_NAMES)
def test_every_written_tensor_changes_version_and_gradients_do_not(name):
    params, loss = linear_problem(name)
    opt = getattr(OURS, name)(params, lr=1e-3)
    loss.backward()
    opt.step()  # creates the state
    for _ in range(2):
        before = tensor_versions(params, opt)
        opt.step()
        after = tensor_versions(params, opt)
        assert before.keys() == after.keys()
        for key in before:
            if key.startswith("grad"):
                assert after[key] == before[key], key
            else:
                assert after[key] > before[key], key


def test_unscaled_gradients_change_version():
    # Through GradScaler's hand-over (`grad_scale`), the kernel divides the gradients in place.
    params, loss = linear_problem("AdamW")
    opt = OURS.AdamW(params, lr=1e-3)
    loss.backward()
    before = [p.grad._version for p in params]
    opt.grad_scale = torch.tensor(1024.0)
    opt.found_inf = torch.tensor(0.0)
    opt.step()
    assert all(p.grad._version > v for p, v in zip(params, before))


def test_staged_parameters_change_version():
    # A non-contiguous parameter and float64 state take the staged path (copy, update, copy
    # back); both the tensors copied back and those the kernel wrote in place are bumped.
    base = torch.randn(4, 3)
    w = torch.nn.Parameter(base.t())  # non-contiguous: staged
    v = torch.nn.Parameter(torch.randn(5))
    opt = OURS.Adam([w, v], lr=1e-3)
    w.grad, v.grad = torch.randn(3, 4), torch.randn(5)
    opt.step()
    opt.state[v]["exp_avg"] = opt.state[v]["exp_avg"].double()  # staged in float64
    before = tensor_versions([w, v], opt)
    opt.step()
    after = tensor_versions([w, v], opt)
    for key in before:
        if not key.startswith("grad"):
            assert after[key] > before[key], key


@pytest.mark.parametrize("where", ["param", "exp_avg", "step"])
def test_inference_tensors_are_refused_outside_inference_mode_and_nothing_changes(where):
    w = torch.nn.Parameter(torch.randn(4))
    w.grad = torch.randn(4)
    opt = OURS.AdamW([w], lr=0.1)
    opt.step()
    if where == "param":
        with torch.inference_mode():
            w = torch.randn(4)
        w.grad = torch.randn(4)
        opt = OURS.AdamW([w], lr=0.1)
        what = "params[0] in group 0"
    else:
        with torch.inference_mode():
            opt.state[w][where] = opt.state[w][where].clone()
        what = f"{where} of params[0] in group 0"
    before = {k: v.clone() for k, v in opt.state[w].items()}, w.detach().clone()
    with pytest.raises(RuntimeError, match=re.escape(f"{what} is an inference tensor")):
        opt.step()
    state, param = before
    assert torch.equal(w, param)
    assert opt.state[w].keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(opt.state[w][key], value), key
    if where == "param":
        # torch refuses it too (having created the state first).
        ref = torch.optim.AdamW([w], lr=0.1)
        with pytest.raises(RuntimeError, match="Inplace update to inference tensor"):
            ref.step()


def test_a_tensor_without_a_version_counter_is_refused_as_torch_refuses_it():
    # A tensor created in inference mode whose `.data` is then set outside it is no longer an
    # inference tensor (is_inference() is False) but still has no version counter, which
    # torch's in-place ops refuse outside inference mode.
    def make():
        with torch.inference_mode():
            w = torch.randn(4)
        w.data = torch.linspace(0, 1, 4)
        w.grad = torch.ones(4)
        assert not w.is_inference()
        return w

    with pytest.raises(RuntimeError, match="Inplace update to inference tensor"):
        torch.optim.AdamW([make()], lr=0.1).step()
    w = make()
    opt = OURS.AdamW([w], lr=0.1)
    with pytest.raises(RuntimeError, match=re.escape("params[0] in group 0 is an inference")):
        opt.step()
    assert torch.equal(w.data, torch.linspace(0, 1, 4))
    assert not opt.state


def test_inference_mode_steps_match_torch():
    # Inside torch.inference_mode in-place updates are allowed, to inference tensors and
    # others alike; the step is the same as torch's.
    with torch.inference_mode():
        start = torch.randn(6)
        grads = [torch.randn(6) for _ in range(3)]
    results = []
    for cls in (OURS.AdamW, torch.optim.AdamW):
        with torch.inference_mode():
            w = start.clone()
            opt = cls([w], lr=0.1, weight_decay=0.1)
            for g in grads:
                w.grad = g
                opt.step()
        results.append((w, opt.state[w]["exp_avg_sq"]))
    (ours, ours_v), (ref, ref_v) = results
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-7)
    torch.testing.assert_close(ours_v, ref_v, rtol=0, atol=1e-7)
