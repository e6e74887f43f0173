//! RMSprop, optionally centered and with momentum.
//!
//! Hinton, "Neural Networks for Machine Learning", lecture 6e (2012); the centered variant as in
//! Graves, "Generating Sequences With Recurrent Neural Networks", 2013. The order of operations
//! matches `torch.optim.rmsprop._single_tensor_rmsprop` (torch 2.11).

use super::ops::{add_scaled, addcmul, ema_sq, l2_grad, lerp};
use crate::element::Float;
use crate::rule::{Rule, ScalarState};

/// RMSprop hyperparameters; `Default` gives torch.optim.RMSprop's defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RMSprop {
    /// Learning rate γ (default 1e-2).
    pub lr: f64,
    /// α, the smoothing constant of `square_avg` (default 0.99).
    pub alpha: f64,
    /// ε added to the denominator (default 1e-8).
    pub eps: f64,
    /// Weight decay λ, added to the gradient as `λθ` (default 0).
    pub weight_decay: f64,
    /// Momentum factor μ; positive values keep a `momentum_buffer` (default 0).
    pub momentum: f64,
    /// Normalise by an estimate of the gradient's variance, keeping `grad_avg` (default false).
    pub centered: bool,
    /// Maximize the objective instead of minimizing it (default false).
    pub maximize: bool,
}

impl Default for RMSprop {
    fn default() -> Self {
        RMSprop {
            lr: 1e-2,
            alpha: 0.99,
            eps: 1e-8,
            weight_decay: 0.0,
            momentum: 0.0,
            centered: false,
            maximize: false,
        }
    }
}

/// Per-parameter, per-step scalars of [`RMSprop`].
#[derive(Debug, Clone, Copy)]
pub struct RMSpropScalars {
    alpha: f64,
    one_minus_alpha: f64,
    eps: f64,
    neg_lr: f64,
    weight_decay: f64,
    momentum: f64,
    has_momentum: bool,
    centered: bool,
    maximize: bool,
}

impl Rule for RMSprop {
    type Scalars = RMSpropScalars;

    fn state_names(&self) -> &'static [&'static str] {
        match (self.momentum > 0.0, self.centered) {
            (false, false) => &["square_avg"],
            (true, false) => &["square_avg", "momentum_buffer"],
            (false, true) => &["square_avg", "grad_avg"],
            (true, true) => &["square_avg", "momentum_buffer", "grad_avg"],
        }
    }

    fn scalars(&self, scalar_state: &mut [ScalarState], _fresh: bool) -> RMSpropScalars {
        scalar_state[0].increment();
        RMSpropScalars {
            alpha: self.alpha,
            one_minus_alpha: 1.0 - self.alpha,
            eps: self.eps,
            neg_lr: -self.lr,
            weight_decay: self.weight_decay,
            momentum: self.momentum,
            has_momentum: self.momentum > 0.0,
            centered: self.centered,
            maximize: self.maximize,
        }
    }

    #[inline(always)]
    fn update<F: Float>(s: &RMSpropScalars, param: F, grad: F, state: &mut [F]) -> F {
        let g = l2_grad(grad, param, s.maximize, s.weight_decay);
        // v ← αv + (1 − α)g²
        let v = ema_sq(state[0], g, s.alpha, s.one_minus_alpha);
        state[0] = v;
        let avg = if s.centered {
            // ḡ ← lerp(ḡ, g, 1 − α);  avg = √(v − ḡ²)
            let k = if s.has_momentum { 2 } else { 1 };
            let ga = lerp(state[k], g, F::from_f64(s.one_minus_alpha));
            state[k] = ga;
            addcmul(v, -1.0, ga, ga).sqrt()
        } else {
            v.sqrt()
        } + F::from_f64(s.eps);
        if s.has_momentum {
            // b ← μb + g/avg;  θ ← θ − γb
            let b = state[1] * F::from_f64(s.momentum) + F::from_f64(1.0) * g / avg;
            state[1] = b;
            add_scaled(param, s.neg_lr, b)
        } else {
            param + F::from_f64(s.neg_lr) * g / avg
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::testing::{close, run};

    #[test]
    fn plain_two_steps_by_hand() {
        let cfg = RMSprop {
            lr: 0.1,
            alpha: 0.9,
            ..RMSprop::default()
        };
        let (p, st) = run(&cfg, 1.0, &[0.0], &[1.0, 2.0]);
        let v1: f64 = 0.1;
        let v2 = 0.9 * v1 + 0.1 * 4.0;
        close(st[0], v2);
        close(
            p,
            1.0 - 0.1 / (v1.sqrt() + 1e-8) - 0.1 * 2.0 / (v2.sqrt() + 1e-8),
        );
    }

    #[test]
    fn centered_with_momentum_by_hand() {
        let cfg = RMSprop {
            lr: 0.1,
            alpha: 0.9,
            momentum: 0.5,
            centered: true,
            ..RMSprop::default()
        };
        assert_eq!(
            cfg.state_names(),
            ["square_avg", "momentum_buffer", "grad_avg"]
        );
        let (p, st) = run(&cfg, 1.0, &[0.0; 3], &[1.0, 2.0]);
        let (v1, ga1) = (0.1f64, 0.1f64);
        let b1 = 1.0 / ((v1 - ga1 * ga1).sqrt() + 1e-8);
        let (v2, ga2) = (0.9 * v1 + 0.4, 0.9 * ga1 + 0.2);
        let b2 = 0.5 * b1 + 2.0 / ((v2 - ga2 * ga2).sqrt() + 1e-8);
        close(st[0], v2);
        close(st[1], b2);
        close(st[2], ga2);
        close(p, 1.0 - 0.1 * b1 - 0.1 * b2);
    }
}
