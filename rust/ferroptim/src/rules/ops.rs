//! Elementwise operations computed as ATen's CPU kernels compute them, so that rules written
//! with them follow torch.optim's for-loop implementations operation by operation.

use crate::element::Float;

/// `torch.lerp(start, end, weight)`: ATen's formula depends on whether `|weight| < 0.5`.
#[inline(always)]
pub(crate) fn lerp<F: Float>(start: F, end: F, weight: F) -> F {
    if weight.abs() < F::from_f64(0.5) {
        start + weight * (end - start)
    } else {
        end - (end - start) * (F::from_f64(1.0) - weight)
    }
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

/// `a.mul_(decay).addcmul_(b, b, value=weight)`: the exponential moving average of squares
/// used by Adam, RMSprop, Adadelta, … (`decay·a + (weight·b)·b`).
#[inline(always)]
pub(crate) fn ema_sq<F: Float>(a: F, b: F, decay: f64, weight: f64) -> F {
    a * F::from_f64(decay) + F::from_f64(weight) * b * b
}

/// The gradient most torch.optim algorithms step with: negated when `maximize`, plus the L2
/// penalty `weight_decay·θ` (`grad.add(param, alpha=weight_decay)`) when nonzero.
#[inline(always)]
pub(crate) fn l2_grad<F: Float>(grad: F, param: F, maximize: bool, weight_decay: f64) -> F {
    let g = if maximize { -grad } else { grad };
    if weight_decay != 0.0 {
        g + F::from_f64(weight_decay) * param
    } else {
        g
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
