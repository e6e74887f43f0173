"""torch.amp.GradScaler with the tensor-rule classes (``rust/ferroptim/src/tensor_rules/``).

Adafactor, Muon and SparseAdam take GradScaler's ``grad_scale``/``found_inf`` hand-over
(``_step_supports_amp_scaling``) and unscale the gradients inside the native step with
GradScaler's own operation (``torch._amp_foreach_non_finite_check_and_unscale_`` by
``float32(1 / scale)``). The reference is the same torch.optim class, which GradScaler unscales
itself before calling ``step()``: parameters, state, the unscaled gradients and the scaler's
scale must agree bit for bit, also across a step skipped for an inf gradient and with a loss
scale that is not a power of two (where multiplying by the float32 reciprocal and dividing by
the scale round differently). LBFGS, like torch's, takes no hand-over.
"""

from __future__ import annotations

import copy

import pytest
import torch
from optim_testlib import (
    OURS,
    assert_snapshots_equal,
    make_data,
    make_mlp,
    make_opt,
    mlp_loss,
    snapshot,
    sparsify_grads,
)
from torch import nn

AMP_CLASSES = ("Adafactor", "Muon", "SparseAdam")
CONFIGS = {
    "Adafactor": {"lr": 0.02, "beta2_decay": -0.7, "d": 1.2, "weight_decay": 0.05},
    "Muon": {"lr": 0.02, "momentum": 0.9, "nesterov": True, "weight_decay": 0.05},
    "SparseAdam": {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-6},
}
# 2**10, and 3·2**8: 1/768 is not a power of two, so its float32 rounding shows.
SCALES = (2.0**10, 768.0)


class EmbeddingModel(nn.Module):
    """A sparse embedding bag: its gradients are uncoalesced sparse COO tensors (an index drawn
    twice in a batch gives two entries), as SparseAdam is meant for."""

    def __init__(self) -> None:
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(0)
            self.emb = nn.Embedding(12, 8, sparse=True)
            self.head = torch.randn(8, 3)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.emb(idx).sum(1) @ self.head


def problem(name: str, dtype: torch.dtype = torch.float32):
    """(model, the parameters to optimize, loss function) in ``dtype``."""
    if name == "SparseAdam":
        model = EmbeddingModel().to(dtype)
        model.head = model.head.to(dtype)
        g = torch.Generator().manual_seed(1)
        idx = torch.randint(0, 12, (16, 5), generator=g)
        y = torch.randn(16, 3, generator=g).to(dtype)
        return model, [model.emb.weight], lambda: ((model(idx) - y) ** 2).mean()
    model, data = make_mlp(dtype), make_data(dtype)
    return model, list(model.parameters()), lambda: mlp_loss(model, data)


def poison(p: torch.Tensor) -> None:
    """Make one element of ``p``'s gradient infinite (a value of a sparse gradient)."""
    values = p.grad._values() if p.grad.is_sparse else p.grad
    values.view(-1)[0] = float("inf")


def amp_run(impl: str, name: str, init_scale: float, inf_at: int, steps: int = 6):
    """Train under bfloat16 autocast with a GradScaler, making a gradient infinite at step
    ``inf_at``. Returns a snapshot after every step, the scales, the gradients after every
    step and the gradients just before the inf step's ``scaler.step``."""
    model, params, loss_fn = problem(name)
    opt = make_opt(impl, name, params, **CONFIGS[name])
    scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
    snaps, scales, grads, poisoned = [], [], [], None
    for k in range(steps):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = loss_fn()
        scaler.scale(loss).backward()
        if name == "SparseAdam":
            assert not params[0].grad.is_coalesced()  # duplicate indices: summed by the step
        if k == inf_at:
            poison(params[0])
            poisoned = [p.grad.clone() for p in opt.param_groups[0]["params"]]
        scaler.step(opt)
        scaler.update()
        scales.append(scaler.get_scale())
        snaps.append(snapshot(params, opt))
        grads.append([p.grad.clone() for p in opt.param_groups[0]["params"]])
    return snaps, scales, grads, poisoned


def assert_grads_equal(ours: list[torch.Tensor], ref: list[torch.Tensor], what: str) -> None:
    for i, (a, b) in enumerate(zip(ours, ref)):
        assert a.is_sparse == b.is_sparse, what
        if a.is_sparse:
            assert torch.equal(a._indices(), b._indices()), f"{what} grad {i} indices"
            a, b = a._values(), b._values()
        assert torch.equal(a, b), f"{what} grad {i} differs"


@pytest.mark.parametrize("init_scale", SCALES)
@pytest.mark.parametrize("inf_at", [0, 3])
@pytest.mark.parametrize("name", AMP_CLASSES)
def test_grad_scaler_matches_torch_bit_for_bit(name, inf_at, init_scale):
    ours, our_scales, our_grads, our_poisoned = amp_run("ours", name, init_scale, inf_at)
    ref, ref_scales, ref_grads, _ = amp_run("forloop", name, init_scale, inf_at)
    assert our_scales == ref_scales
    assert our_scales[inf_at] == init_scale / 2  # the inf step backed off
    for k, (a, b) in enumerate(zip(ours, ref)):
        assert_snapshots_equal(a, b, what=f"{name} step {k}")
        if k != inf_at:
            # The unscaled gradients GradScaler's own path leaves in p.grad.
            assert_grads_equal(our_grads[k], ref_grads[k], f"{name} step {k}")
    # The skipped step changed nothing: no state on a skipped first step, else the state
    # (step counts included) of the step before; and the gradients are left as they were.
    if inf_at == 0:
        assert all(not s for s in ours[0].state)
    else:
        assert_snapshots_equal(ours[inf_at], ours[inf_at - 1], what=f"{name} skipped step")
    assert_grads_equal(our_grads[inf_at], our_poisoned, f"{name} skipped step")


@pytest.mark.parametrize("name", AMP_CLASSES)
def test_scaler_unscale_then_clip_then_step_matches_torch(name):
    """After an explicit ``scaler.unscale_(opt)`` (e.g. to clip), GradScaler hands over no
    ``grad_scale``: the step must not unscale again."""
    results = []
    for impl in ("ours", "forloop"):
        model, params, loss_fn = problem(name)
        opt = make_opt(impl, name, params, **CONFIGS[name])
        scaler = torch.amp.GradScaler("cpu", init_scale=768.0)
        for _ in range(4):
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = loss_fn()
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            if name != "SparseAdam":  # clip_grad_norm_ does not take sparse gradients
                torch.nn.utils.clip_grad_norm_(opt.param_groups[0]["params"], 0.5)
            scaler.step(opt)
            scaler.update()
        results.append(snapshot(params, opt))
    assert_snapshots_equal(results[0], results[1], what=name)


def float16_run(impl: str, name: str):
    """Four steps of a float16 model with loss scaling: 'ours' through ``scaler.step``; the
    reference ('forloop', torch's class) unscaled by hand as GradScaler would (coalescing
    float16 sparse gradients, then ``torch._amp_foreach_non_finite_check_and_unscale_`` by
    ``scale.double().reciprocal().float()``) before its ``step()``."""
    model, params, loss_fn = problem(name, torch.float16)
    opt = make_opt(impl, name, params, **CONFIGS[name])
    scaler = torch.amp.GradScaler("cpu", init_scale=768.0)
    for _ in range(4):
        opt.zero_grad()
        scaler.scale(loss_fn()).backward()
        if impl == "ours":
            scaler.step(opt)
            scaler.update()
            continue
        group = opt.param_groups[0]["params"]
        for p in group:
            if p.grad.is_sparse:
                p.grad = p.grad.coalesce()
        found_inf = torch.zeros(())
        inv_scale = torch.tensor(scaler.get_scale()).double().reciprocal().float()
        torch._amp_foreach_non_finite_check_and_unscale_(
            [p.grad._values() if p.grad.is_sparse else p.grad for p in group], found_inf, inv_scale
        )
        assert found_inf.item() == 0.0
        opt.step()
    return snapshot(params, opt), [p.grad for p in opt.param_groups[0]["params"]]


@pytest.mark.parametrize("name", AMP_CLASSES)
def test_float16_gradients_which_gradscalers_own_path_refuses(name):
    """GradScaler refuses to unscale float16 gradients itself (ValueError); with the hand-over
    they are unscaled in the step as GradScaler would have done."""
    model, params, loss_fn = problem(name, torch.float16)
    opt = make_opt("forloop", name, params, **CONFIGS[name])
    scaler = torch.amp.GradScaler("cpu", init_scale=768.0)
    scaler.scale(loss_fn()).backward()
    with pytest.raises(ValueError, match="Attempting to unscale FP16 gradients"):
        scaler.step(opt)
    (ours, our_grads), (ref, ref_grads) = float16_run("ours", name), float16_run("forloop", name)
    assert ours.params[0].dtype == torch.float16
    assert_snapshots_equal(ours, ref, what=name)
    assert_grads_equal(our_grads, ref_grads, name)


def scaled_problem(name: str, scale: float | None):
    """One parameter with a fixed gradient, multiplied by ``scale`` when given (for
    SparseAdam an uncoalesced sparse gradient)."""
    g = torch.Generator().manual_seed(5)
    p = torch.randn(6, 5, generator=g, dtype=torch.float64).requires_grad_()
    if name == "SparseAdam":
        indices = torch.tensor([[0, 3, 0, 5]])
        values = torch.randn(4, 5, generator=g, dtype=torch.float64)
        values = values if scale is None else values * scale
        grad = torch.sparse_coo_tensor(indices, values, p.shape)
    else:
        grad = torch.randn(6, 5, generator=g, dtype=torch.float64)
        grad = grad if scale is None else grad * scale
    return p, grad


@pytest.mark.parametrize("name", AMP_CLASSES)
def test_grad_scale_equals_an_unscaled_step(name):
    """``grad_scale=4`` with gradients multiplied by 4 is the unscaled step, and p.grad is left
    holding the unscaled gradient."""
    results, grads = [], []
    for scale in (None, 4.0):
        p, grad = scaled_problem(name, scale)
        opt = getattr(OURS, name)([p], **CONFIGS[name])
        for _ in range(3):
            p.grad = grad.clone()
            if scale is not None:
                opt.grad_scale = torch.tensor(scale)
                opt.found_inf = torch.tensor(0.0)
            opt.step()
        results.append(snapshot([p], opt))
        grads.append([p.grad])
    assert_snapshots_equal(results[1], results[0], what=name)
    assert_grads_equal(grads[1], grads[0], name)


@pytest.mark.parametrize("first", [True, False])
@pytest.mark.parametrize("name", AMP_CLASSES)
def test_found_inf_changes_nothing(name, first):
    """found_inf set: parameters, gradients, state and step counts unchanged, and no state
    created on a first step; grad_scale is not even looked at (here an invalid 0)."""
    p, grad = scaled_problem(name, 8.0)
    opt = getattr(OURS, name)([p], **CONFIGS[name])
    if not first:
        p.grad = grad.clone()
        opt.step()
    p.grad = grad.clone()
    before = snapshot([p], opt)
    opt.grad_scale = torch.tensor(0.0)
    opt.found_inf = torch.tensor(1.0)
    assert opt.step() is None
    assert_snapshots_equal(snapshot([p], opt), before, what=name)
    assert_grads_equal([p.grad], [grad], name)
    assert len(opt.state) == (0 if first else 1)
    del opt.found_inf
    with pytest.raises(ValueError, match="grad_scale"):  # validated before anything changes
        opt.step()
    assert_snapshots_equal(snapshot([p], opt), before, what=name)
    assert_grads_equal([p.grad], [grad], name)


def test_which_classes_take_the_hand_over():
    """As torch's fused optimizers, the three tensor-rule classes with a gradient-only step;
    not LBFGS (neither is torch's: see the next test)."""
    for name in AMP_CLASSES:
        assert getattr(OURS, name)._step_supports_amp_scaling
        assert not getattr(torch.optim, name)([torch.zeros(2, 2)]).__dict__.get(
            "_step_supports_amp_scaling", False
        )
    assert not getattr(OURS.LBFGS([torch.zeros(2)]), "_step_supports_amp_scaling", False)


def lbfgs_amp_run(impl: str):
    """Three LBFGS steps through ``scaler.step(opt, closure)`` (after a scaled backward, the
    second with an inf gradient); returns the snapshots after each step and the final scale."""
    model, data = make_mlp(), make_data()
    opt = make_opt(impl, "LBFGS", model.parameters(), lr=0.5, max_iter=4)
    scaler = torch.amp.GradScaler("cpu", init_scale=768.0)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = mlp_loss(model, data)
        loss.backward()
        return loss

    with pytest.raises(RuntimeError, match="Closure use is not currently supported"):
        scaler.step(opt, closure=closure)
    snaps = []
    for k in range(3):
        opt.zero_grad()
        scaler.scale(mlp_loss(model, data)).backward()
        if k == 1:  # GradScaler skips this step: it sees the inf before the closure runs
            next(iter(model.parameters())).grad[0, 0] = float("inf")
        scaler.step(opt, closure)
        scaler.update()
        # deepcopy: LBFGS's state holds lists that torch's step changes in place.
        snaps.append(copy.deepcopy(snapshot(model.parameters(), opt)))
    return snaps, scaler.get_scale()


def test_lbfgs_under_grad_scaler_behaves_as_torchs():
    """GradScaler cannot scale LBFGS's closure evaluations: ``closure=`` raises torch's
    RuntimeError, and a positional closure gets GradScaler's generic path (it unscales the
    gradients present before the step, skips the step if they are not finite, and leaves the
    closure's own gradients alone) — the same for ferroptim and torch."""
    ours, our_scale = lbfgs_amp_run("ours")
    ref, ref_scale = lbfgs_amp_run("forloop")
    for k, (a, b) in enumerate(zip(ours, ref)):
        assert_snapshots_equal(a, b, what=f"LBFGS step {k}")
    assert_snapshots_equal(ours[1], ours[0], what="LBFGS skipped step")
    assert our_scale == ref_scale == 768.0 / 2


def test_sparse_adam_with_coalesced_gradients_matches_torch_under_scaling():
    """SparseAdam on the MLP with sparsified (coalesced, unlike the embedding's) gradients of
    every shape, under a scaler."""
    results = []
    for impl in ("ours", "forloop"):
        model, data = make_mlp(), make_data()
        opt = make_opt(impl, "SparseAdam", model.parameters(), **CONFIGS["SparseAdam"])
        scaler = torch.amp.GradScaler("cpu", init_scale=768.0)
        for k in range(4):
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = mlp_loss(model, data)
            scaler.scale(loss).backward()
            sparsify_grads(model.parameters(), k)
            scaler.step(opt)
            scaler.update()
        results.append(snapshot(model.parameters(), opt))
    assert_snapshots_equal(results[0], results[1], what="SparseAdam")
