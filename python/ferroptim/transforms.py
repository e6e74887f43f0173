r"""Optimizers as a chain of small transforms, fused into one native rule.

:func:`chain` composes building blocks — :func:`scale_by_adam`, :func:`scale_by_lion`,
:func:`trace` (momentum / Nesterov), :func:`add_decayed_weights` (coupled, decoupled or
absolute weight decay), :func:`scale_by_lr`, :func:`clip_by_global_norm` — into **one**
per-element rule (the idea of optax's ``chain``: Babuschkin et al., "The DeepMind JAX
Ecosystem", 2020), traced once by :func:`ferroptim.rules.rule_optimizer` and stepped by
ferroptim's fused native driver: one pass over memory per step for the whole chain, whatever
its length. The result is a
``torch.optim.Optimizer`` subclass with the union of the transforms' hyperparameters as its
constructor's keyword arguments and ``defaults``, torch's validation messages, and its state
in ``optimizer.state[p]``::

    import ferroptim
    from ferroptim.transforms import add_decayed_weights, scale_by_adam, scale_by_lr

    MyAdamW = ferroptim.chain(
        add_decayed_weights(1e-2, mode="decoupled"),  # θ ← θ(1 − lr·λ)
        scale_by_adam(betas=(0.9, 0.999), eps=1e-8),  # u ← m̂ / (√v̂ + ε)
        scale_by_lr(1e-3),                            # θ ← θ − lr·u
        name="MyAdamW",
    )
    opt = MyAdamW(model.parameters(), lr=3e-4)  # gives ferroptim.AdamW's results bit for bit

**How a chain computes.** The gradient ``g`` (negated first when the group's ``maximize`` is
true, as torch's classes do) is the initial update ``u``; each transform in turn maps ``u``
(and may read or decay the parameter ``θ``), and the final ``u`` is added to ``θ``. Scalar
factors (Adam's ``1/(1 − β₁ᵗ)``, ``−lr``) are multiplied in float64 once per step, not per
element, and applied where the next transform reads ``u`` or, at the end, as
``θ + (c·num)/den`` (``fma(c, u, θ)`` without a denominator). That is the order of operations
of ferroptim's (and torch's) built-in AdamW, Adam, SGD and Lion, so those chains reproduce
them bit for bit (``tests/python/test_chain.py``). Order matters: coupled weight decay before
:func:`scale_by_adam` is Adam's L2 penalty, after it is a different algorithm.

**State names.** Each transform keeps torch's state names (``exp_avg``, ``exp_avg_sq``,
``momentum_buffer``) so a chain that reproduces a torch class has its ``state_dict`` layout;
when two transforms of one chain claim the same name, the later one's slot is named
``<name>_<position>`` (e.g. ``exp_avg_2``). ``step`` (float32) is kept as for every rule.

**Hyperparameters.** Every transform contributes its torch-named hyperparameters (``lr``,
``betas``, ``eps``, ``weight_decay``, ``momentum``, ``dampening``, ``nesterov``) with the
defaults given to it; a chain also has ``maximize`` (default False). Two transforms may share a
name only with equal defaults (e.g. decoupled weight decay reads the ``lr`` of
:func:`scale_by_lr`).

:func:`clip_by_global_norm` needs the gradients' global norm, a reduction: it is computed
with torch before the fused pass and handed to it as a per-step scalar.
:func:`scale_by_trust_ratio` needs per-tensor norms of the parameter and of the update where
it stands in the chain: the native rule sums their squares over each tensor in a first pass
(float64, fixed order, as ferroptim's :class:`~ferroptim.Lamb`), then the fused update pass
applies the ratio as a per-tensor factor. LAMB (You et al., "Large Batch Optimization for Deep
Learning: Training BERT in 76 minutes", ICLR 2020) as ferroptim's :class:`~ferroptim.Lamb`
computes it, bit for bit::

    Lamb = ferroptim.chain(
        add_decayed_weights(0.0, mode="decoupled"),           # θ ← θ(1 − lr·λ)
        scale_by_adam_moments(betas=(0.9, 0.999), eps=1e-6),  # u ← m / (√v + ε)
        scale_by_trust_ratio(eps=1e-6, max_weight_norm=10.0), # u ← u·min(‖θ‖, 10)/(‖u‖ + ε)
        scale_by_bias_correction(),                           # u ← u / (1 − β₁ᵗ)
        scale_by_lr(1e-3),
    )
"""

from __future__ import annotations

from typing import Any

import torch

from . import rules as R
from ._base import scalar
from ._chain import Transform, _Frac, chain

__all__ = [
    "Transform",
    "chain",
    "scale_by_adam",
    "scale_by_lion",
    "trace",
    "momentum",
    "add_decayed_weights",
    "scale_by_lr",
    "clip_by_global_norm",
    "scale_by_adam_moments",
    "scale_by_bias_correction",
    "scale_by_trust_ratio",
]


def _check(name: str, value: Any, ok: bool, message: str | None = None) -> None:
    if not ok:
        raise ValueError(message or f"Invalid {name} value: {value}")


def _nonneg(h: dict[str, Any], key: str, message: str | None = None) -> None:
    value = h[key]
    if isinstance(value, torch.Tensor) and value.numel() != 1:
        raise ValueError(f"Tensor {key} must be 1-element")
    _check(key, value, scalar(value) >= 0.0, message and message.format(value))


def _betas(h: dict[str, Any], closed: bool) -> None:
    betas = h["betas"]
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"Invalid betas value: {betas!r} (expected a pair (beta1, beta2))")
    for i, beta in enumerate(betas):
        b = scalar(beta)
        if not (0.0 <= b <= 1.0 if closed else 0.0 <= b < 1.0):
            raise ValueError(f"Invalid beta parameter at index {i}: {beta}")


def _made(t: Transform) -> Transform:
    """Checks a transform's own defaults at definition time."""
    if t.validate is not None:
        t.validate(dict(t.defaults))
    return t


def scale_by_adam(
    betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, *, amsgrad: bool = False
) -> Transform:
    r"""Adam's bias-corrected direction ``u ← m̂ / (√v̂ + ε)`` (Kingma & Ba, "Adam: A Method
    for Stochastic Optimization", ICLR 2015), in torch's order of operations:
    ``m ← lerp(m, u, 1 − β₁)``, ``v ← β₂v + (1 − β₂)u²``, ``u ← (m / (1 − β₁ᵗ)) /
    (√v / √(1 − β₂ᵗ) + ε)`` (the factor ``1/(1 − β₁ᵗ)`` is carried to the next scaling).

    Args:
        betas: β₁, β₂ (default (0.9, 0.999)), each in [0, 1).
        eps: ε added to the denominator (default 1e-8), ≥ 0.
        amsgrad: use the running maximum of ``v`` in the denominator (AMSGrad: Reddi et al.,
            "On the Convergence of Adam and Beyond", ICLR 2018) and keep it as
            ``max_exp_avg_sq`` (default False). Fixed when the chain is defined (the state
            depends on it), so unlike torch's ``amsgrad`` it is not a group hyperparameter.

    State: ``exp_avg``, ``exp_avg_sq`` (like the parameter), and ``max_exp_avg_sq`` with
    ``amsgrad``. Hyperparameters: ``betas``, ``eps``. Raises ValueError for an invalid
    default (torch's messages), TypeError for a non-bool ``amsgrad``.
    """
    if not isinstance(amsgrad, bool):
        raise TypeError(f"amsgrad must be a bool, got {type(amsgrad).__name__}")

    def scalars(h: Any, step: Any) -> dict[str, Any]:
        beta1, beta2 = h.betas
        return {
            "lerp_weight": 1 - beta1,
            "beta2": beta2,
            "one_minus_beta2": 1 - beta2,
            "bc2_sqrt": (1 - beta2**step) ** 0.5,
        }

    def factor(h: Any, step: Any) -> _Frac:
        beta1, _ = h.betas
        return None, 1 - beta1**step

    def update(u: Any, p: Any, state: Any, s: Any) -> tuple[Any, Any]:
        m = R.lerp(state.exp_avg, u, s.lerp_weight)
        v = R.fma(s.one_minus_beta2 * u, u, state.exp_avg_sq * s.beta2)
        state.exp_avg, state.exp_avg_sq = m, v
        if amsgrad:
            v = state.max_exp_avg_sq = R.maximum(state.max_exp_avg_sq, v)
        return m, R.sqrt(v) / s.bc2_sqrt + s.eps

    def validate(h: dict[str, Any]) -> None:
        _nonneg(h, "eps", "Invalid epsilon value: {}")
        _betas(h, closed=False)

    return _made(
        Transform(
            "scale_by_adam",
            {"betas": tuple(betas), "eps": eps},
            state=("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if amsgrad else ()),
            scalars=scalars,
            update=update,
            factor=factor,
            validate=validate,
        )
    )


def scale_by_lion(betas: tuple[float, float] = (0.9, 0.99)) -> Transform:
    r"""Lion's direction ``u ← sign(β₁m + (1 − β₁)u)``, then ``m ← β₂m + (1 − β₂)u`` (Chen et
    al., "Symbolic Discovery of Optimization Algorithms", NeurIPS 2023, Algorithm 2), each
    sum one fused multiply-add as ferroptim's :class:`~ferroptim.Lion`.

    Args:
        betas: β₁ (the sign's interpolation) and β₂ (the momentum's decay) (default (0.9,
            0.99)), each in [0, 1].

    State: ``exp_avg``. Hyperparameters: ``betas``. Raises ValueError for invalid betas.
    """

    def scalars(h: Any, step: Any) -> dict[str, Any]:
        beta1, beta2 = h.betas
        return {
            "beta1": beta1,
            "beta2": beta2,
            "one_minus_beta1": 1 - beta1,
            "one_minus_beta2": 1 - beta2,
        }

    def update(u: Any, p: Any, state: Any, s: Any) -> tuple[Any, Any]:
        m = state.exp_avg
        c = R.fma(s.one_minus_beta1, u, m * s.beta1)
        state.exp_avg = R.fma(s.one_minus_beta2, u, m * s.beta2)
        return R.sign(c), None

    return _made(
        Transform(
            "scale_by_lion",
            {"betas": tuple(betas)},
            state=("exp_avg",),
            scalars=scalars,
            update=update,
            validate=lambda h: _betas(h, closed=True),
        )
    )


def trace(momentum: float = 0.9, dampening: float = 0.0, nesterov: bool = False) -> Transform:
    r"""Momentum as torch.optim.SGD computes it (Sutskever et al., "On the importance of
    initialization and momentum in deep learning", ICML 2013): ``b ← u`` on a parameter's
    first step, else ``b ← μb + (1 − τ)u``; then ``u ← u + μb`` (Nesterov) or ``u ← b``.

    Args:
        momentum: μ (default 0.9), ≥ 0. Unlike torch.optim.SGD, ``momentum_buffer`` is kept
            even when μ = 0 (the state is fixed when the chain is defined).
        dampening: τ (default 0).
        nesterov: Nesterov momentum (default False); needs μ > 0 and τ = 0.

    State: ``momentum_buffer``. Hyperparameters: ``momentum``, ``dampening``, ``nesterov``.
    Raises ValueError as torch.optim.SGD (negative momentum; Nesterov with μ ≤ 0 or τ ≠ 0).
    """

    def scalars(h: Any, step: Any) -> dict[str, Any]:
        return {"one_minus_dampening": 1 - h.dampening, "first": h.fresh}

    def update(u: Any, p: Any, state: Any, s: Any) -> tuple[Any, Any]:
        buf = R.where(
            s.first, u, R.fma(s.one_minus_dampening, u, state.momentum_buffer * s.momentum)
        )
        state.momentum_buffer = buf
        return (R.fma(s.momentum, buf, u) if s.nesterov else buf), None

    def validate(h: dict[str, Any]) -> None:
        _nonneg(h, "momentum")
        if h["nesterov"] and (scalar(h["momentum"]) <= 0 or scalar(h["dampening"]) != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")

    if not isinstance(nesterov, bool):
        raise TypeError(f"nesterov must be a bool, got {type(nesterov).__name__}")
    return _made(
        Transform(
            "trace",
            {"momentum": momentum, "dampening": dampening, "nesterov": nesterov},
            state=("momentum_buffer",),
            scalars=scalars,
            update=update,
            validate=validate,
        )
    )


#: :func:`trace` under torch's name.
momentum = trace

_MODES = ("coupled", "decoupled", "absolute")


def add_decayed_weights(weight_decay: float = 1e-2, mode: str = "decoupled") -> Transform:
    r"""Weight decay λ, in one of the three forms of labml's ``WeightDecay``:

    - ``"coupled"``: the L2 penalty added to the update, ``u ← u + λθ`` (torch's Adam and
      SGD ``weight_decay``; place it before the moments to match them);
    - ``"decoupled"``: ``θ ← θ(1 − lr·λ)`` (AdamW: Loshchilov & Hutter, "Decoupled Weight
      Decay Regularization", ICLR 2019; Lion); reads the chain's ``lr``;
    - ``"absolute"``: ``θ ← θ(1 − λ)``, independent of the learning rate.

    With λ = 0 the coupled form leaves the update untouched (as torch skips it). The
    decoupled and absolute forms decay the parameter where the transform stands in the chain.

    Args:
        weight_decay: λ (default 1e-2), ≥ 0.
        mode: ``"coupled"``, ``"decoupled"`` (default) or ``"absolute"``.

    Hyperparameters: ``weight_decay``. Raises ValueError for an unknown ``mode`` or a negative
    λ, naming the value.
    """
    if mode not in _MODES:
        raise ValueError(f"Invalid mode value: {mode!r} (expected one of {', '.join(_MODES)})")

    def coupled(u: Any, p: Any, state: Any, s: Any) -> tuple[Any, Any]:
        # where() on a per-step mask computes only the branch taken (no cost per element).
        return R.where(R.eq(s.weight_decay, 0.0), u, R.fma(s.weight_decay, p, u)), None

    def scalars(h: Any, step: Any) -> dict[str, Any]:
        if mode == "decoupled":
            return {"decay": 1 - h.lr * h.weight_decay}
        return {"decay": 1 - h.weight_decay}

    def decay(p: Any, s: Any) -> Any:
        return p * s.decay

    return _made(
        Transform(
            f"add_decayed_weights({mode})",
            {"weight_decay": weight_decay},
            requires=("lr",) if mode == "decoupled" else (),
            scalars=None if mode == "coupled" else scalars,
            update=coupled if mode == "coupled" else None,
            param=None if mode == "coupled" else decay,
            validate=lambda h: _nonneg(h, "weight_decay"),
        )
    )


def scale_by_lr(lr: float | torch.Tensor = 1e-3) -> Transform:
    r"""Descent with learning rate γ: ``u ← −γ·u`` (the factor is applied to the update where
    the next transform reads it, or in the final ``θ + u``).

    Args:
        lr: γ (default 1e-3), ≥ 0; a float or a one-element tensor, changed by torch's LR
            schedulers like any ``lr``.

    Hyperparameters: ``lr``. Raises ValueError for a negative ``lr`` ("Invalid learning rate").
    """
    return _made(
        Transform(
            "scale_by_lr",
            {"lr": lr},
            factor=lambda h, step: (-h.lr, None),
            validate=lambda h: _nonneg(h, "lr", "Invalid learning rate: {}"),
        )
    )


def clip_by_global_norm(max_norm: float = 1.0) -> Transform:
    r"""Clips the gradient by its global norm, as ``torch.nn.utils.clip_grad_norm_`` does:
    ``u ← u · min(1, max_norm / (‖g‖ + 1e-6))``, with ``‖g‖`` the 2-norm of the gradients of
    all parameters of all groups (unscaled by GradScaler's loss scale when one is handed over).

    The norm is a reduction, computed before the fused pass with torch's own
    ``torch.nn.utils.get_total_norm`` and the coefficient with torch's float32 operations,
    then handed to the pass as a per-step scalar (one extra read of the gradients, done by
    torch). So for float32 gradients a chain starting with it gives ``clip_grad_norm_``
    followed by the rest of the chain bit for bit; for bf16/fp16 gradients the clipped
    gradient stays in float32 inside the pass where torch rounds it to the gradient's dtype.

    It must come before any transform that changes the update (it reads the gradient); only
    decoupled or absolute weight decay may precede it.

    Args:
        max_norm: the largest norm kept (default 1.0), ≥ 0; each group may set its own.

    Hyperparameters: ``max_norm``. Raises ValueError for a negative ``max_norm``.
    """
    return _made(
        Transform(
            "clip_by_global_norm",
            {"max_norm": max_norm},
            # The chain hands the clip coefficient to the graph in max_norm's place.
            scalars=lambda h, step: {"coef": h.max_norm},
            update=lambda u, p, state, s: (u * s.coef, None),
            validate=lambda h: _nonneg(h, "max_norm"),
            global_norm=True,
        )
    )


def scale_by_adam_moments(
    betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6, grad_averaging: bool = True
) -> Transform:
    r"""Adam's moments without bias correction, LAMB's direction as pytorch-lamb and
    ferroptim's :class:`~ferroptim.Lamb` compute it: ``m ← β₁m + (1 − β₁)u`` (one fused
    multiply-add; ``m ← β₁m + u`` without ``grad_averaging``), ``v ← β₂v + (1 − β₂)u²``,
    ``u ← m / (√v + ε)``. The first moment's bias correction is
    :func:`scale_by_bias_correction`, placed where the algorithm applies it (LAMB: in the
    step size, after :func:`scale_by_trust_ratio`).

    Args:
        betas: β₁, β₂ (default (0.9, 0.999)), each in [0, 1).
        eps: ε added to ``√v`` (default 1e-6, LAMB's), ≥ 0.
        grad_averaging: weight the new update by ``1 − β₁`` in ``m`` (default True).

    State: ``exp_avg``, ``exp_avg_sq`` (like the parameter). Hyperparameters: ``betas``,
    ``eps``, ``grad_averaging``. Raises ValueError for an invalid default (torch's messages),
    TypeError for a non-bool ``grad_averaging``.
    """
    if not isinstance(grad_averaging, bool):
        raise TypeError(f"grad_averaging must be a bool, got {type(grad_averaging).__name__}")

    def scalars(h: Any, step: Any) -> dict[str, Any]:
        beta1, beta2 = h.betas
        return {
            "beta1": beta1,
            "new_weight": 1 - beta1 if h.grad_averaging else 1.0,
            "beta2": beta2,
            "one_minus_beta2": 1 - beta2,
        }

    def update(u: Any, p: Any, state: Any, s: Any) -> tuple[Any, Any]:
        m = R.fma(s.new_weight, u, state.exp_avg * s.beta1)
        v = R.fma(s.one_minus_beta2 * u, u, state.exp_avg_sq * s.beta2)
        state.exp_avg, state.exp_avg_sq = m, v
        return m, R.sqrt(v) + s.eps

    def validate(h: dict[str, Any]) -> None:
        _nonneg(h, "eps", "Invalid epsilon value: {}")
        _betas(h, closed=False)

    return _made(
        Transform(
            "scale_by_adam_moments",
            {"betas": tuple(betas), "eps": eps, "grad_averaging": grad_averaging},
            state=("exp_avg", "exp_avg_sq"),
            scalars=scalars,
            update=update,
            validate=validate,
        )
    )


def scale_by_bias_correction() -> Transform:
    r"""Adam's first-moment bias correction as a per-step factor: ``u ← u / (1 − β₁ᵗ)``, with
    β₁ the chain's ``betas[0]`` (e.g. of :func:`scale_by_adam_moments`) and ``t`` the step.
    Combined with the other per-step factors in float64 (LAMB's step size ``lr / (1 − β₁ᵗ)``).

    Hyperparameters: none of its own; reads ``betas``. Raises ValueError at :func:`chain`
    when no transform sets ``betas``.
    """
    return Transform(
        "scale_by_bias_correction",
        requires=("betas",),
        factor=lambda h, step: (None, 1 - h.betas[0] ** step),
    )


def scale_by_trust_ratio(
    trust_coefficient: float = 1.0, eps: float = 0.0, *, max_weight_norm: float | None = None
) -> Transform:
    r"""Scales the update of each tensor by its trust ratio (optax's ``scale_by_trust_ratio``;
    You et al., "Large Batch Optimization for Deep Learning: Training BERT in 76 minutes", ICLR
    2020, the layer-wise scaling of LAMB): ``u ← u · η·φ(‖θ‖) / (‖u‖ + ε)``, or ``u`` unchanged
    for a tensor where ``φ(‖θ‖)`` or ``‖u‖`` is 0. ``‖·‖`` is the 2-norm over the whole
    tensor of the parameter (after any decoupled decay before it) and of the update where the
    transform stands; ``φ(z) = min(z, max_weight_norm)`` (LAMB's clamp, 10 in pytorch-lamb), or
    ``z`` without ``max_weight_norm``.

    The norms are computed natively before the update pass (a first read of each tensor),
    summed in float64 in a fixed order, so results do not depend on the thread count; the
    ratio is a per-tensor factor combined, after the per-step factors, into the coefficient
    of the update (``(-(lr/(1 − β₁ᵗ)))·ratio``, ferroptim's :class:`~ferroptim.Lamb`).
    A chain may hold one.

    Args:
        trust_coefficient: η (default 1.0), ≥ 0.
        eps: ε added to ``‖u‖`` (default 0.0), ≥ 0. Its hyperparameter is the chain's
            ``eps``: give it the value of :func:`scale_by_adam_moments`'s (LAMB uses one ε for
            both) or :func:`chain` raises ValueError for two defaults.
        max_weight_norm: the bound of ``φ`` (default None: no bound), ≥ 0; fixed when the
            chain is defined whether there is one, its value a hyperparameter.

    Hyperparameters: ``trust_coefficient``, ``eps`` and ``max_weight_norm`` (when given).
    Raises ValueError for a negative value.
    """
    defaults: dict[str, Any] = {"trust_coefficient": trust_coefficient, "eps": eps}
    if max_weight_norm is not None:
        defaults["max_weight_norm"] = max_weight_norm

    def factor(h: Any, norms: tuple[Any, ...], step: Any) -> Any:
        weight, norm = norms
        if max_weight_norm is not None:
            # min(‖θ‖, c) as the built-in Lamb's f64::min (a NaN norm gives c)
            weight = R.where(weight < h.max_weight_norm, weight, h.max_weight_norm)
        ratio = h.trust_coefficient * weight / (norm + h.eps)
        return R.where(R.eq(weight, 0.0), 1.0, R.where(R.eq(norm, 0.0), 1.0, ratio))

    def validate(h: dict[str, Any]) -> None:
        for key in defaults:
            _nonneg(h, key)

    return _made(
        Transform(
            "scale_by_trust_ratio",
            defaults,
            update=lambda u, p, state, s: (u, None),
            norms=2,
            norm_terms=lambda u, p, s: (p, u),
            tensor_factor=factor,
            validate=validate,
        )
    )
