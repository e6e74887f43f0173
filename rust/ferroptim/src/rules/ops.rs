//! Elementwise operations computed as ATen's CPU kernels compute them, so that rules written
//! with them follow torch.optim's for-loop implementations operation by operation.
//!
//! ATen's vectorised CPU kernels (torch 2.11 wheels, AVX2/AVX-512) evaluate `x + α·y` with a
//! fused multiply-add: `add`/`add_` with `alpha`, `addcmul` and `lerp` (measured bit for bit
//! against numpy emulations). `addcdiv` (`x + (α·y)/z`) and separate in-place ops (`mul_`
//! then `add_`) round every operation.

use crate::element::Float;

/// `torch.lerp(start, end, weight)` as ATen's vectorised kernel computes it: one fused
/// multiply-add, anchored at `start` when `|weight| < 0.5` and at `end` otherwise.
#[inline(always)]
pub(crate) fn lerp<F: Float>(start: F, end: F, weight: F) -> F {
    let diff = end - start;
    if weight.abs() < F::from_f64(0.5) {
        weight.mul_add(diff, start)
    } else {
        (weight - F::from_f64(1.0)).mul_add(diff, end)
    }
}

/// `a.add(b, alpha=alpha)`: `a + α·b` with one rounding.
#[inline(always)]
pub(crate) fn add_scaled<F: Float>(a: F, alpha: f64, b: F) -> F {
    F::from_f64(alpha).mul_add(b, a)
}

/// `torch.sign`: −1, 0 or 1; NaN and ±0 give 0.
#[inline(always)]
pub(crate) fn sign<F: Float>(x: F) -> F {
    if x > F::ZERO {
        F::from_f64(1.0)
    } else if x < F::ZERO {
        F::from_f64(-1.0)
    } else {
        F::ZERO
    }
}

/// `torch.clamp(x, lo, hi)` for `lo <= hi`; NaN propagates.
#[inline(always)]
pub(crate) fn clamp<F: Float>(x: F, lo: F, hi: F) -> F {
    if x < lo {
        lo
    } else if x > hi {
        hi
    } else {
        x
    }
}

/// `a.addcmul(b, c, value=value)`: `a + (value·b)·c`, the last two operations fused.
#[inline(always)]
pub(crate) fn addcmul<F: Float>(a: F, value: f64, b: F, c: F) -> F {
    (F::from_f64(value) * b).mul_add(c, a)
}

/// `a.mul_(decay).addcmul_(b, b, value=weight)`: the exponential moving average of squares
/// used by Adam, RMSprop, Adadelta, … (`decay·a + (weight·b)·b`).
#[inline(always)]
pub(crate) fn ema_sq<F: Float>(a: F, b: F, decay: f64, weight: f64) -> F {
    addcmul(a * F::from_f64(decay), weight, b, b)
}

/// The gradient most torch.optim algorithms step with: negated when `maximize`, plus the L2
/// penalty `weight_decay·θ` (`grad.add(param, alpha=weight_decay)`) when nonzero.
#[inline(always)]
pub(crate) fn l2_grad<F: Float>(grad: F, param: F, maximize: bool, weight_decay: f64) -> F {
    let g = if maximize { -grad } else { grad };
    if weight_decay != 0.0 {
        add_scaled(g, weight_decay, param)
    } else {
        g
    }
}

/// The part Adam, NAdam and RAdam share: weight decay (coupled `g ← g + λθ`, or decoupled
/// `θ ← θ(1 − γλ)`), `maximize`, and the two moments `m ← lerp(m, g, 1 − β₁)`,
/// `v ← β₂v + (1 − β₂)g²` kept in `state[0]`, `state[1]`, in torch's order of operations.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AdamMoments {
    lerp_weight: f64,
    beta2: f64,
    one_minus_beta2: f64,
    weight_decay: f64,
    decay_factor: f64,
    decoupled: bool,
    maximize: bool,
}

impl AdamMoments {
    pub(crate) fn new(
        lr: f64,
        (beta1, beta2): (f64, f64),
        weight_decay: f64,
        decoupled: bool,
        maximize: bool,
    ) -> Self {
        AdamMoments {
            lerp_weight: 1.0 - beta1,
            beta2,
            one_minus_beta2: 1.0 - beta2,
            weight_decay,
            decay_factor: 1.0 - lr * weight_decay,
            decoupled,
            maximize,
        }
    }

    /// Applies weight decay and updates `state[0]` (m) and `state[1]` (v); returns the
    /// (possibly decayed) parameter, the gradient used, m and v.
    #[inline(always)]
    pub(crate) fn update<F: Float>(&self, param: F, grad: F, state: &mut [F]) -> (F, F, F, F) {
        let mut p = param;
        let mut g = if self.maximize { -grad } else { grad };
        if self.weight_decay != 0.0 {
            if self.decoupled {
                p = p * F::from_f64(self.decay_factor);
            } else {
                g = add_scaled(g, self.weight_decay, p);
            }
        }
        let m = lerp(state[0], g, F::from_f64(self.lerp_weight));
        let v = ema_sq(state[1], g, self.beta2, self.one_minus_beta2);
        state[0] = m;
        state[1] = v;
        (p, g, m, v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lerp_matches_aten_on_both_branches() {
        assert_eq!(lerp(1.0, 3.0, 0.25), 1.5);
        assert_eq!(lerp(1.0, 3.0, 0.75), 2.5);
    }

    #[test]
    fn sign_and_clamp_follow_torch_on_special_values() {
        assert_eq!(sign(f64::NAN), 0.0);
        assert_eq!(sign(-0.0f64), 0.0);
        assert_eq!(sign(-3.0f32), -1.0);
        assert!(clamp(f32::NAN, 0.0, 1.0).is_nan());
        assert_eq!(clamp(5.0f64, 0.0, 1.0), 1.0);
        assert_eq!(clamp(-5.0f64, 0.0, 1.0), 0.0);
    }
}
