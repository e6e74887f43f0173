"""``zero_grad()``: one native call for all groups (``_core.zero_grad``) with
``torch.optim.Optimizer.zero_grad``'s semantics, checked against torch's own method run on a
twin of the same parameters: gradients set to None, or zeroed in place (same tensor, version
bumped, detached in place when they have a ``grad_fn``, else not requiring grad), sparse
gradients, parameters without gradients, non-leaf parameters (torch's path and warning), and
the profiler label."""

from __future__ import annotations

import warnings

import ferroptim
import pytest
import torch

CLASSES = [name for name in ferroptim.__all__ if isinstance(getattr(ferroptim, name), type)]


def _params(seed: int = 0) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    shapes = [(3, 4), (4,), (2, 2), (5,)]
    return [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]


def _make(name: str, params: list[torch.Tensor]) -> torch.optim.Optimizer:
    if name == "Muon":
        params = [p for p in params if p.dim() == 2]
    if name == "LBFGS":  # one group only
        return ferroptim.LBFGS(params)
    return getattr(ferroptim, name)([{"params": params[:2]}, {"params": params[2:]}])


def _with_grads(params: list[torch.Tensor], create_graph: bool = False) -> None:
    loss = sum((p * p).sum() for p in params[:-1])  # the last parameter gets no gradient
    loss.backward(create_graph=create_graph)


@pytest.mark.parametrize("name", CLASSES)
def test_set_to_none(name):
    params = _params()
    opt = _make(name, params)
    _with_grads(params)
    opt.zero_grad()
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    for p in params[:-1]:  # the last one never had a gradient
        assert (p.grad is None) == (id(p) in in_opt)  # others are not the optimizer's


@pytest.mark.parametrize("name", CLASSES)
def test_zeroed_in_place_as_torch(name):
    params = _params()
    twin = [torch.nn.Parameter(p.detach().clone()) for p in params]
    opt = _make(name, params)
    ref = torch.optim.SGD([{"params": twin[:2]}, {"params": twin[2:]}], lr=0.1)
    if name == "Muon":  # only its matrices are in the optimizer
        twin_in = [q for q in twin if q.dim() == 2]
        ref = torch.optim.SGD(twin_in, lr=0.1)
    _with_grads(params)
    _with_grads(twin)
    grads = [p.grad for p in params]
    versions = [None if g is None else g._version for g in grads]
    their_versions = [None if q.grad is None else q.grad._version for q in twin]
    opt.zero_grad(set_to_none=False)
    ref.zero_grad(set_to_none=False)
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    for i, (p, q, g) in enumerate(zip(params, twin, grads)):
        if id(p) not in in_opt:
            continue
        if q.grad is None or g is None:
            assert p.grad is None and q.grad is None, i
            continue
        assert p.grad is g, i  # the same tensor, in place
        assert torch.count_nonzero(p.grad) == 0 and torch.equal(p.grad, q.grad), i
        assert p.grad.requires_grad == q.grad.requires_grad, i
        # Autograd sees the same in-place writes (version counter bumps) as with torch.
        assert p.grad._version - versions[i] == q.grad._version - their_versions[i], i


def test_gradients_with_a_grad_fn_are_detached_in_place():
    """``backward(create_graph=True)`` leaves gradients with a grad_fn: torch detaches them in
    place before zeroing (the same tensor object, no longer part of a graph)."""
    params, twin = _params(), _params()
    opt = ferroptim.AdamW(params)
    ref = torch.optim.AdamW(twin)
    _with_grads(params, create_graph=True)
    _with_grads(twin, create_graph=True)
    grads = [p.grad for p in params]
    assert all(g is None or g.grad_fn is not None for g in grads)
    opt.zero_grad(set_to_none=False)
    ref.zero_grad(set_to_none=False)
    for p, q, g in zip(params, twin, grads):
        if g is None:
            continue
        assert p.grad is g and p.grad.grad_fn is None and not p.grad.requires_grad
        assert q.grad.grad_fn is None and not q.grad.requires_grad
        assert torch.equal(p.grad, q.grad) and torch.count_nonzero(p.grad) == 0


def test_sparse_gradients():
    weight = torch.nn.Parameter(torch.randn(6, 3))
    opt = ferroptim.SparseAdam([weight])
    torch.nn.functional.embedding(torch.tensor([1, 4]), weight, sparse=True).sum().backward()
    g = weight.grad
    assert g.is_sparse and g._nnz() > 0
    opt.zero_grad(set_to_none=False)
    assert weight.grad is g and g.is_sparse and g._nnz() == 0
    torch.nn.functional.embedding(torch.tensor([2]), weight, sparse=True).sum().backward()
    opt.zero_grad()
    assert weight.grad is None


def test_non_leaf_parameters_take_torch_path_with_its_warning():
    base = torch.randn(3, requires_grad=True)
    non_leaf = base * 2  # not a leaf: torch warns when its .grad is read
    leaf = torch.nn.Parameter(torch.randn(3))
    leaf.grad = torch.ones(3)
    opt = ferroptim.SGD([leaf, torch.nn.Parameter(torch.randn(3))], lr=0.1)
    # torch refuses non-leaf tensors in the constructor; one can still be put in a group.
    opt.param_groups[0]["params"][1] = non_leaf
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opt.zero_grad()
    assert leaf.grad is None
    assert any("non-leaf" in str(w.message) for w in caught)


def test_profiler_label():
    params = _params()
    opt = ferroptim.AdamW(params)
    _with_grads(params)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        opt.zero_grad()
    names = [e.name for e in prof.events()]
    assert "Optimizer.zero_grad#AdamW.zero_grad" in names
    assert all(p.grad is None for p in params)


def test_step_after_native_zero_grad_matches_torch():
    """A training loop (zero_grad, backward, step) gives torch.optim's parameters, both with
    set_to_none and in-place zeroing (which makes parameters without a new gradient take
    part in the step with zeros)."""
    for set_to_none in (True, False):
        params, twin = _params(), _params()
        params = [torch.nn.Parameter(p.detach().double()) for p in params]
        twin = [torch.nn.Parameter(p.detach().double()) for p in twin]
        opt = ferroptim.SGD(params, lr=0.1, momentum=0.9)
        ref = torch.optim.SGD(twin, lr=0.1, momentum=0.9, foreach=False)
        for k in range(4):
            for ps, o in ((params, opt), (twin, ref)):
                o.zero_grad(set_to_none=set_to_none)
                used = ps if k % 2 == 0 else ps[:2]
                sum((p * p * (k + 1)).sum() for p in used).backward()
                o.step()
        for p, q in zip(params, twin):
            torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)
            assert (p.grad is None) == (q.grad is None)
