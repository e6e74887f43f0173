"""Writes go through materialised storage: a lazily cloned (copy-on-write) state tensor or
parameter must not write into the tensor it was cloned from."""

import copy

import ferroptim
import pytest
import torch

lazy_clone = getattr(torch, "_lazy_clone", None)


@pytest.mark.skipif(lazy_clone is None, reason="torch without copy-on-write tensors")
def test_state_and_param_clones_do_not_write_into_their_source():
    torch.manual_seed(0)
    p0 = torch.randn(64)
    source_p = p0.clone()
    p = torch.nn.Parameter(lazy_clone(source_p))
    p.grad = torch.randn(64)
    opt = ferroptim.AdamW([p], lr=0.1)
    opt.step()  # creates the state
    source_m = opt.state[p]["exp_avg"].clone()
    opt.state[p]["exp_avg"] = lazy_clone(source_m)
    before = source_m.clone()

    reference = torch.nn.Parameter(p.detach().clone())
    reference.grad = p.grad.clone()
    ref_opt = torch.optim.AdamW([reference], lr=0.1)
    # A deep copy: torch's load_state_dict keeps tensors already of the right dtype and device,
    # so both optimizers would otherwise update the same state tensors.
    ref_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    opt.step()
    ref_opt.step()

    assert torch.equal(source_p, p0), "parameter's copy-on-write source was modified"
    assert torch.equal(source_m, before), "exp_avg's copy-on-write source was modified"
    torch.testing.assert_close(p.detach(), reference.detach(), rtol=1e-6, atol=1e-7)
