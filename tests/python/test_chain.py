"""Optimizers composed with ``ferroptim.chain`` (``ferroptim.transforms``): AdamW, Adam with L2
weight decay, SGD with (Nesterov) momentum, Lion and LAMB (per-tensor trust ratio) written as
chains of transforms give the built-in classes' parameters and state bit for bit over 50 steps
(float32 and bfloat16, tensors of 1, 15, 129 and 9170 elements, one and two threads); a chain in
another order does not; repeated transforms get their own state; the three weight-decay forms;
definition-time errors for bad compositions and torch's validation messages."""

from __future__ import annotations

import copy

import ferroptim
import pytest
import torch
from ferroptim.transforms import (
    add_decayed_weights,
    chain,
    clip_by_global_norm,
    momentum,
    scale_by_adam,
    scale_by_adam_moments,
    scale_by_bias_correction,
    scale_by_lion,
    scale_by_lr,
    scale_by_trust_ratio,
    trace,
)

AdamWChain = ferroptim.chain(
    add_decayed_weights(1e-2, mode="decoupled"),
    scale_by_adam(betas=(0.9, 0.999), eps=1e-8),
    scale_by_lr(1e-3),
    name="AdamWChain",
)
AdamL2Chain = chain(
    add_decayed_weights(1e-2, mode="coupled"), scale_by_adam(), scale_by_lr(1e-3), name="AdamL2"
)
SGDChain = chain(
    add_decayed_weights(1e-3, mode="coupled"),
    trace(momentum=0.9, nesterov=True),
    scale_by_lr(1e-3),
    name="SGDChain",
)
LionChain = chain(
    add_decayed_weights(0.1), scale_by_lion(betas=(0.9, 0.99)), scale_by_lr(1e-4), name="LionC"
)
AMSGradChain = chain(add_decayed_weights(1e-2), scale_by_adam(amsgrad=True), scale_by_lr(1e-3))
PlainSGDChain = chain(add_decayed_weights(1e-3, mode="coupled"), scale_by_lr(1e-2))
# LAMB as ferroptim.Lamb computes it (pytorch-lamb's order): the trust ratio of the direction
# m/(√v + ε), then the step size lr/(1 − β₁ᵗ).
LambChain = chain(
    add_decayed_weights(0.0, mode="decoupled"),
    scale_by_adam_moments(betas=(0.9, 0.999), eps=1e-6),
    scale_by_trust_ratio(eps=1e-6, max_weight_norm=10.0),
    scale_by_bias_correction(),
    scale_by_lr(1e-3),
    name="LambChain",
)
LambL2Chain = chain(
    scale_by_adam_moments(),
    add_decayed_weights(1e-1, mode="coupled"),
    scale_by_trust_ratio(eps=1e-6, max_weight_norm=10.0),
    scale_by_bias_correction(),
    scale_by_lr(1e-3),
)

CASES = {
    "Lamb": (LambChain, {"lr": 1e-2}, lambda ps: ferroptim.Lamb(ps, lr=1e-2)),
    "Lamb-decay-maximize": (
        LambChain,
        {"weight_decay": 0.1, "grad_averaging": False, "maximize": True},
        lambda ps: ferroptim.Lamb(ps, weight_decay=0.1, grad_averaging=False, maximize=True),
    ),
    "Lamb-coupled": (
        LambL2Chain,
        {},
        lambda ps: ferroptim.Lamb(ps, weight_decay=0.1, weight_decouple=False),
    ),
    "AdamW": (AdamWChain, {}, lambda ps: ferroptim.AdamW(ps, weight_decay=1e-2)),
    "AdamW-maximize-lr": (
        AdamWChain,
        {"maximize": True, "lr": 3e-2, "weight_decay": 0.1},
        lambda ps: ferroptim.AdamW(ps, lr=3e-2, weight_decay=0.1, maximize=True),
    ),
    "AdamW-no-decay": (
        AdamWChain,
        {"weight_decay": 0.0},
        lambda ps: ferroptim.AdamW(ps, weight_decay=0.0),
    ),
    "AdamW-amsgrad": (
        AMSGradChain,
        {"lr": 1e-2},
        lambda ps: ferroptim.AdamW(ps, lr=1e-2, weight_decay=1e-2, amsgrad=True),
    ),
    "Adam-L2": (AdamL2Chain, {}, lambda ps: ferroptim.Adam(ps, weight_decay=1e-2)),
    "SGD-nesterov": (
        SGDChain,
        {},
        lambda ps: ferroptim.SGD(ps, lr=1e-3, momentum=0.9, weight_decay=1e-3, nesterov=True),
    ),
    "SGD-dampening-maximize": (
        SGDChain,
        {"nesterov": False, "dampening": 0.5, "maximize": True},
        lambda ps: ferroptim.SGD(
            ps, lr=1e-3, momentum=0.9, dampening=0.5, weight_decay=1e-3, maximize=True
        ),
    ),
    "SGD-momentum-no-decay": (
        SGDChain,
        {"weight_decay": 0.0, "nesterov": False},
        lambda ps: ferroptim.SGD(ps, lr=1e-3, momentum=0.9),
    ),
    "SGD-plain": (
        PlainSGDChain,
        {},
        lambda ps: ferroptim.SGD(ps, lr=1e-2, weight_decay=1e-3),
    ),
    "Lion": (LionChain, {}, lambda ps: ferroptim.Lion(ps, weight_decay=0.1)),
    "Lion-maximize": (
        LionChain,
        {"maximize": True, "betas": (0.95, 0.98)},
        lambda ps: ferroptim.Lion(ps, betas=(0.95, 0.98), weight_decay=0.1, maximize=True),
    ),
}

SIZES = (1, 15, 129, 9170)  # one element, odd, a block boundary, two threads' worth


def _params(dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(n, generator=gen).to(dtype)) for n in SIZES]


def _run(opt, ref, ours, theirs, dtype, steps=50):
    gen = torch.Generator().manual_seed(1)
    for k in range(steps):
        for p, q in zip(ours, theirs):
            grad = (torch.randn(p.shape, generator=gen) * (k + 1) / 10).to(dtype)
            p.grad, q.grad = grad.clone(), grad.clone()
        opt.step()
        ref.step()


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", list(CASES))
def test_chain_reproduces_the_builtin_class_bit_for_bit(case, dtype, threads):
    cls, kwargs, builtin = CASES[case]
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        ours, theirs = _params(dtype), _params(dtype)
        opt, ref = cls(ours, **kwargs), builtin(theirs)
        _run(opt, ref, ours, theirs, dtype)
        for p, q in zip(ours, theirs):
            assert torch.equal(p, q)
            assert set(opt.state[p]) - {"step"} == set(ref.state[q]) - {"step"}  # torch names
            for name, value in ref.state[q].items():
                if name != "step":
                    assert torch.equal(opt.state[p][name], value), name
        assert float(opt.state[ours[0]]["step"]) == 50.0
        assert not torch.equal(ours[3], _params(dtype)[3])  # it did move
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize(
    ("transforms", "builtin"),
    [
        # L2 penalty after the moments (optax's "adamw"-like order) is not torch's Adam.
        (
            (scale_by_adam(), add_decayed_weights(1e-2, mode="coupled"), scale_by_lr(1e-3)),
            lambda ps: ferroptim.Adam(ps, weight_decay=1e-2),
        ),
        # Weight decay after the momentum buffer instead of before it is not torch's SGD.
        (
            (trace(0.9, nesterov=True), add_decayed_weights(1e-3, "coupled"), scale_by_lr(1e-3)),
            lambda ps: ferroptim.SGD(ps, lr=1e-3, momentum=0.9, weight_decay=1e-3, nesterov=True),
        ),
        # The bias correction before the trust ratio (its norm then includes 1/(1 − β₁ᵗ)) is
        # not ferroptim's (pytorch-lamb's) Lamb.
        (
            (
                scale_by_adam_moments(),
                scale_by_bias_correction(),
                scale_by_trust_ratio(eps=1e-6, max_weight_norm=10.0),
                scale_by_lr(1e-3),
            ),
            lambda ps: ferroptim.Lamb(ps),
        ),
    ],
)
def test_another_order_gives_other_bits(transforms, builtin):
    ours, theirs = _params(torch.float32), _params(torch.float32)
    opt, ref = chain(*transforms)(ours), builtin(theirs)
    _run(opt, ref, ours, theirs, torch.float32, steps=5)
    differ = (ours[3] != theirs[3]).sum().item()
    assert differ > 100, differ  # of 9170 elements


def test_decoupled_decay_reads_the_parameter_where_it_stands():
    # Adam's direction does not read θ, so decoupled decay after it gives AdamW's bits too.
    ours, theirs = _params(torch.float32), _params(torch.float32)
    after = chain(scale_by_adam(), scale_by_lr(1e-3), add_decayed_weights(1e-2))
    opt, ref = after(ours), ferroptim.AdamW(theirs, weight_decay=1e-2)
    _run(opt, ref, ours, theirs, torch.float32, steps=10)
    assert all(torch.equal(p, q) for p, q in zip(ours, theirs))


def test_repeated_transforms_get_their_own_state_and_hyperparameters_are_shared():
    # Two momentum buffers in series (float64, checked against the same algebra in torch).
    Double = chain(trace(0.9), momentum(0.9), scale_by_lr(0.1))
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64))
    opt = Double([p])
    assert opt.defaults == {"momentum": 0.9, "dampening": 0.0, "nesterov": False, "lr": 0.1,
                            "maximize": False}  # fmt: skip
    ref, b1, b2 = p.detach().clone(), None, None
    for k in range(4):
        g = torch.tensor([0.5, 1.0, -1.5], dtype=torch.float64) * (k + 1)
        p.grad = g.clone()
        opt.step()
        b1 = g.clone() if b1 is None else b1 * 0.9 + g
        b2 = b1.clone() if b2 is None else b2 * 0.9 + b1
        ref = ref - 0.1 * b2
    assert set(opt.state[p]) == {"step", "momentum_buffer", "momentum_buffer_1"}
    torch.testing.assert_close(opt.state[p]["momentum_buffer"], b1, rtol=1e-15, atol=0)
    torch.testing.assert_close(opt.state[p]["momentum_buffer_1"], b2, rtol=1e-15, atol=0)
    torch.testing.assert_close(p.detach(), ref, rtol=1e-15, atol=1e-15)


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("coupled", lambda p, g: p - 0.5 * (g + 0.1 * p)),  # L2: u ← g + λθ
        ("decoupled", lambda p, g: p * (1 - 0.5 * 0.1) - 0.5 * g),  # θ(1 − lr·λ)
        ("absolute", lambda p, g: p * (1 - 0.1) - 0.5 * g),  # θ(1 − λ), no lr
    ],
)
def test_the_three_weight_decay_forms(mode, expected):
    p0 = torch.tensor([2.0, -4.0, 0.25], dtype=torch.float64)
    g = torch.tensor([1.0, 0.5, -2.0], dtype=torch.float64)
    p = torch.nn.Parameter(p0.clone())
    p.grad = g.clone()
    chain(add_decayed_weights(0.1, mode=mode), scale_by_lr(0.5))([p]).step()
    torch.testing.assert_close(p.detach(), expected(p0, g), rtol=1e-15, atol=0)


def test_state_dict_round_trip_and_scheduler():
    ps, qs = _params(torch.float32), _params(torch.float32)
    a, b = AdamWChain(ps, lr=1e-2), AdamWChain(qs, lr=1e-2)
    sa = torch.optim.lr_scheduler.StepLR(a, 1, gamma=0.5)
    _run(a, b, ps, qs, torch.float32, steps=3)
    sa.step()
    c = AdamWChain(qs, lr=1e-2)
    c.load_state_dict(b.state_dict())
    for group in c.param_groups:
        group["lr"] = a.param_groups[0]["lr"]
    _run(a, c, ps, qs, torch.float32, steps=3)
    assert all(torch.equal(p, q) for p, q in zip(ps, qs))
    assert a.param_groups[0]["lr"] == 5e-3


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: chain(), ValueError, "at least one transform"),
        (lambda: chain(scale_by_lr(), "sgd"), TypeError, "argument 1 .* got str"),
        (
            lambda: chain(scale_by_adam(), scale_by_lion(), scale_by_lr()),
            ValueError,
            r"scale_by_adam and scale_by_lion both set hyperparameter 'betas'",
        ),
        (
            lambda: chain(trace(0.9), trace(0.5), scale_by_lr()),
            ValueError,
            "'momentum', with defaults 0.9 and 0.5",
        ),
        (lambda: add_decayed_weights(0.1, mode="l2"), ValueError, "Invalid mode value: 'l2'"),
        (
            lambda: chain(add_decayed_weights(0.1, mode="decoupled"), scale_by_lion()),
            ValueError,
            "reads hyperparameter 'lr'",
        ),
        (lambda: chain(scale_by_adam()), ValueError, "no learning rate 'lr'"),
        (lambda: scale_by_lr(-1.0), ValueError, "Invalid learning rate: -1.0"),
        (lambda: scale_by_adam(eps=-1.0), ValueError, "Invalid epsilon value: -1.0"),
        (lambda: scale_by_adam(betas=(0.9, 1.0)), ValueError, "beta parameter at index 1"),
        (lambda: add_decayed_weights(-0.1), ValueError, "Invalid weight_decay value: -0.1"),
        (
            lambda: trace(0.9, dampening=0.1, nesterov=True),
            ValueError,
            "Nesterov momentum requires a momentum and zero dampening",
        ),
        (lambda: trace(-0.5), ValueError, "Invalid momentum value: -0.5"),
        (lambda: trace(0.9, nesterov=1), TypeError, "nesterov must be a bool"),
    ],
)
def test_bad_compositions_fail_at_definition(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_constructor_validation_is_torchs():
    p = [torch.nn.Parameter(torch.zeros(2))]
    with pytest.raises(ValueError, match="Invalid learning rate: -1"):
        AdamWChain(p, lr=-1.0)
    with pytest.raises(ValueError, match="Invalid beta parameter at index 1: 1.0"):
        AdamWChain(p, betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="Nesterov momentum requires"):
        SGDChain(p, dampening=0.5)
    with pytest.raises(ValueError, match="Invalid beta parameter at index 0: 1.5"):
        LionChain(p, betas=(1.5, 0.99))
    with pytest.raises(TypeError, match="unexpected keyword"):
        AdamWChain(p, momentum=0.9)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("loss_scale", [None, 1024.0])
@pytest.mark.parametrize(
    ("transforms", "builtin"),
    [
        (
            (add_decayed_weights(1e-2), scale_by_adam(), scale_by_lr(1e-3)),
            lambda ps: ferroptim.AdamW(ps, weight_decay=1e-2),
        ),
        (
            (add_decayed_weights(1e-3, "coupled"), trace(0.9, nesterov=True), scale_by_lr(1e-3)),
            lambda ps: ferroptim.SGD(ps, lr=1e-3, momentum=0.9, weight_decay=1e-3, nesterov=True),
        ),
    ],
)
def test_clip_by_global_norm_is_clip_grad_norm_then_the_chain(
    transforms, builtin, loss_scale, threads
):
    # float32: torch.nn.utils.clip_grad_norm_ then the built-in class, bit for bit (clipping
    # from the 6th step on: the gradients' norm grows from ~10 to ~480, max_norm is 50).
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        ours, theirs = _params(torch.float32), _params(torch.float32)
        opt = chain(clip_by_global_norm(50.0), *transforms)(ours)
        ref = builtin(theirs)
        gen = torch.Generator().manual_seed(1)
        clipped = 0
        for k in range(50):
            grads = [torch.randn(p.shape, generator=gen) * (k + 1) / 10 for p in ours]
            for q, g in zip(theirs, grads):
                q.grad = g.clone()
            clipped += int(torch.nn.utils.clip_grad_norm_(theirs, 50.0) > 50.0)
            ref.step()

            def closure(grads=grads):
                for p, g in zip(ours, grads):  # GradScaler-scaled gradients (powers of two)
                    p.grad = g * loss_scale if loss_scale else g.clone()
                return 1.0

            if loss_scale:
                opt.grad_scale, opt.found_inf = torch.tensor(loss_scale), torch.tensor(0.0)
            assert opt.step(closure) == 1.0
            opt.__dict__.pop("grad_scale", None)
            opt.__dict__.pop("found_inf", None)
        assert clipped == 45
        assert all(torch.equal(p, q) for p, q in zip(ours, theirs))
    finally:
        torch.set_num_threads(before)


def test_clip_by_global_norm_must_read_the_gradient():
    with pytest.raises(ValueError, match="must come before scale_by_adam"):
        chain(scale_by_adam(), clip_by_global_norm(1.0), scale_by_lr())
    with pytest.raises(ValueError, match="must come before scale_by_lr"):
        chain(scale_by_lr(), clip_by_global_norm(1.0))
    with pytest.raises(ValueError, match="at most one clip_by_global_norm"):
        chain(clip_by_global_norm(1.0), clip_by_global_norm(1.0), scale_by_lr())
    with pytest.raises(ValueError, match="Invalid max_norm value: -1.0"):
        clip_by_global_norm(-1.0)
    # Decoupled decay does not touch the update: it may come first.
    chain(add_decayed_weights(0.1), clip_by_global_norm(1.0), scale_by_lr())


def test_loads_a_torch_adamw_checkpoint():
    # Same state names and hyperparameter names as torch.optim.AdamW: its state_dict loads
    # into the chain, which then continues as ferroptim.AdamW does from the same checkpoint.
    ps = _params(torch.float32)
    torch_opt = torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.05)
    for _ in range(3):
        for p in ps:
            p.grad = torch.ones_like(p)
        torch_opt.step()
    sd = torch_opt.state_dict()
    ours = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    a, b = AdamWChain(ours), ferroptim.AdamW(theirs)
    a.load_state_dict(copy.deepcopy(sd))  # load_state_dict keeps the tensors it is given
    b.load_state_dict(copy.deepcopy(sd))
    assert a.param_groups[0]["weight_decay"] == 0.05
    _run(a, b, ours, theirs, torch.float32, steps=5)
    assert all(torch.equal(p, q) for p, q in zip(ours, theirs))
    assert float(a.state[ours[0]]["step"]) == 8.0


def test_clip_norm_is_global_over_groups_each_with_its_max_norm():
    ours, theirs = _params(torch.float32), _params(torch.float32)
    # (SGD, whose step is proportional to the clipped gradient; the first group's own norm is
    # ~4, the second's ~96: per-group norms would give other coefficients.)
    Clipped = chain(clip_by_global_norm(1.0), trace(0.9), scale_by_lr(0.1))
    opt = Clipped([{"params": ours[:2]}, {"params": ours[2:], "max_norm": 5.0}])
    ref = ferroptim.SGD(theirs, lr=0.1, momentum=0.9)
    gen = torch.Generator().manual_seed(1)
    for _ in range(5):
        grads = [torch.randn(p.shape, generator=gen) for p in ours]
        total = torch.linalg.vector_norm(torch.cat(grads))  # ~96
        for i, (p, q, g) in enumerate(zip(ours, theirs, grads)):
            p.grad = g.clone()
            max_norm = 1.0 if i < 2 else 5.0
            q.grad = g * torch.clamp(max_norm / (total + 1e-6), max=1.0)
        opt.step()
        ref.step()
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-6)  # norm summed in another order


def test_a_transform_of_your_own():
    # signSGD with a threshold hyperparameter: Transform is the public protocol.
    from ferroptim import rules as R
    from ferroptim.transforms import Transform

    def update(u, p, state, s):
        return R.where(abs(u) < s.threshold, 0.0 * u, R.sign(u)), None

    scale_by_sign = Transform("scale_by_sign", {"threshold": 0.25}, update=update)
    SignSGD = chain(scale_by_sign, scale_by_lr(0.1))
    p = torch.nn.Parameter(torch.tensor([1.0, 1.0, 1.0, 1.0]))
    opt = SignSGD([p], threshold=0.5)
    p.grad = torch.tensor([3.0, -0.75, 0.25, -0.0])
    opt.step()
    assert torch.equal(p.detach(), torch.tensor([0.9, 1.1, 1.0, 1.0]))
    assert opt.defaults == {"threshold": 0.5, "lr": 0.1, "maximize": False}
    assert SignSGD([p]).defaults["threshold"] == 0.25


def test_trust_ratio_is_optax_s_formula_per_tensor():
    # One step of chain(scale_by_trust_ratio, scale_by_lr): θ' = θ − lr·g·η‖θ‖/(‖g‖ + ε) per
    # tensor, and g where ‖θ‖ = 0.
    Trust = chain(scale_by_trust_ratio(trust_coefficient=0.5, eps=0.25), scale_by_lr(0.1))
    ps = [torch.nn.Parameter(torch.tensor([3.0, 4.0])), torch.nn.Parameter(torch.zeros(3))]
    grads = [torch.tensor([0.0, 2.0]), torch.tensor([1.0, -1.0, 2.0])]
    for p, g in zip(ps, grads):
        p.grad = g.clone()
    Trust(ps).step()
    torch.testing.assert_close(ps[0].detach(), torch.tensor([3.0, 4.0 - 0.1 * 2.0 * 2.5 / 2.25]))
    torch.testing.assert_close(ps[1].detach(), -0.1 * grads[1])


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda: chain(scale_by_adam(), scale_by_trust_ratio(), scale_by_lr()),
            "both set hyperparameter 'eps'",
        ),
        (
            lambda: chain(
                scale_by_trust_ratio(), scale_by_trust_ratio(trust_coefficient=1.0), scale_by_lr()
            ),
            "at most 2",
        ),
        (lambda: chain(scale_by_bias_correction(), scale_by_lr()), "'betas'"),
        (lambda: scale_by_trust_ratio(eps=-1.0), "Invalid eps value: -1.0"),
    ],
)
def test_trust_ratio_compositions_fail_at_definition(make, message):
    with pytest.raises(ValueError, match=message):
        make()
