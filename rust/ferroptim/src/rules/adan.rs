//! Adan: adaptive Nesterov momentum.
//!
//! Xie et al., "Adan: Adaptive Nesterov Momentum Algorithm for Faster Optimizing Deep Models",
//! IEEE TPAMI 2024 (arXiv:2208.06677, 2022), Algorithm 1 with the authors' restart-free
//! reformulation. Names, defaults and the proximal weight decay follow the authors'
//! implementation (github.com/sail-sg/Adan, `adan.py`): state `exp_avg` (m), `exp_avg_diff`
//! (the momentum of gradient differences), `exp_avg_sq` (n) and `neg_pre_grad` (−g of the
//! previous step). The order of operations matches `pytorch_optimizer.Adan` 4.1.0 (the tests'
//! oracle), which computes the same quantities as the authors' code with `lerp` for the two
//! momenta.

use super::ops::{ema_sq, lerp};
use crate::element::Float;
use crate::rule::{Rule, ScalarState};

/// Adan hyperparameters; `Default` gives the authors' defaults.
///
/// The betas are the authors' (and `pytorch_optimizer`'s) convention, the decay of each
/// average: the paper's β₁, β₂, β₃ are one minus these.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Adan {
    /// Learning rate η (default 1e-3).
    pub lr: f64,
    /// Decay of the gradient momentum `exp_avg` (default 0.98).
    pub beta1: f64,
    /// Decay of the gradient-difference momentum `exp_avg_diff` (default 0.92).
    pub beta2: f64,
    /// Decay of the second moment `exp_avg_sq` (default 0.99).
    pub beta3: f64,
    /// ε added to the denominator (default 1e-8).
    pub eps: f64,
    /// Weight decay λ (default 0).
    pub weight_decay: f64,
    /// `false` (default): the paper's proximal decay `θ ← θ / (1 + ηλ)` after the step;
    /// `true`: `θ ← θ(1 − ηλ)` before it (the authors' `no_prox`).
    pub no_prox: bool,
    /// Maximize the objective instead of minimizing it (default false).
    pub maximize: bool,
}

impl Default for Adan {
    fn default() -> Self {
        Adan {
            lr: 1e-3,
            beta1: 0.98,
            beta2: 0.92,
            beta3: 0.99,
            eps: 1e-8,
            weight_decay: 0.0,
            no_prox: false,
            maximize: false,
        }
    }
}

/// Per-parameter, per-step scalars of [`Adan`].
#[derive(Debug, Clone, Copy)]
pub struct AdanScalars {
    /// The first step: the gradient difference is zero (`neg_pre_grad` is taken as −g).
    first: bool,
    beta1: f64,
    beta2: f64,
    beta3: f64,
    bias_correction3_sqrt: f64,
    eps: f64,
    neg_step_size: f64,
    neg_step_size_diff: f64,
    decay_factor: f64,
    prox_divisor: f64,
    weight_decay: f64,
    no_prox: bool,
    maximize: bool,
}

impl Rule for Adan {
    type Scalars = AdanScalars;

    fn state_names(&self) -> &'static [&'static str] {
        &["exp_avg", "exp_avg_sq", "exp_avg_diff", "neg_pre_grad"]
    }

    fn scalars(&self, scalar_state: &mut [ScalarState], _fresh: bool) -> AdanScalars {
        let first = scalar_state[0].get() == 0.0;
        let step = scalar_state[0].increment();
        let bias_correction1 = 1.0 - self.beta1.powf(step);
        let bias_correction2 = 1.0 - self.beta2.powf(step);
        let bias_correction3 = 1.0 - self.beta3.powf(step);
        AdanScalars {
            first,
            beta1: self.beta1,
            beta2: self.beta2,
            beta3: self.beta3,
            bias_correction3_sqrt: bias_correction3.sqrt(),
            eps: self.eps,
            neg_step_size: -self.lr / bias_correction1,
            neg_step_size_diff: -self.lr * self.beta2 / bias_correction2,
            decay_factor: 1.0 - self.lr * self.weight_decay,
            prox_divisor: 1.0 + self.lr * self.weight_decay,
            weight_decay: self.weight_decay,
            no_prox: self.no_prox,
            maximize: self.maximize,
        }
    }

    #[inline(always)]
    fn update<F: Float>(s: &AdanScalars, param: F, grad: F, state: &mut [F]) -> F {
        let g = if s.maximize { -grad } else { grad };
        // Δ = g_t − g_{t−1} (zero at the first step)
        let diff = if s.first { F::ZERO } else { state[3] + g };
        // m ← lerp(m, g, 1 − β₁);  d ← lerp(d, Δ, 1 − β₂)
        let m = lerp(state[0], g, F::from_f64(1.0 - s.beta1));
        let d = lerp(state[2], diff, F::from_f64(1.0 - s.beta2));
        // n ← β₃n + (1 − β₃)(g + β₂Δ)²
        let nesterov = diff * F::from_f64(s.beta2) + g;
        let n = ema_sq(state[1], nesterov, s.beta3, 1.0 - s.beta3);
        state[0] = m;
        state[1] = n;
        state[2] = d;
        state[3] = -g;
        let denom = n.sqrt_div(F::from_f64(s.bias_correction3_sqrt)) + F::from_f64(s.eps);
        let mut p = param;
        let decays = s.weight_decay != 0.0;
        if decays && s.no_prox {
            p = p * F::from_f64(s.decay_factor);
        }
        // θ ← θ − η·m/(1 − β₁ᵗ)/denom − η·β₂·d/(1 − β₂ᵗ)/denom (two addcdiv)
        p = p + F::from_f64(s.neg_step_size) * m / denom;
        p = p + F::from_f64(s.neg_step_size_diff) * d / denom;
        if decays && !s.no_prox {
            p = p / F::from_f64(s.prox_divisor);
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::testing::{close, run};

    #[test]
    fn two_steps_by_hand() {
        let cfg = Adan {
            lr: 0.1,
            weight_decay: 0.5,
            ..Adan::default()
        };
        let (p, st) = run(&cfg, 1.0, &[0.0; 4], &[2.0, -1.0]);
        // step 1: Δ = 0; m = 0.04; d = 0; n = 0.01·4; denom = √0.04/√0.01 + ε = 2 + ε
        let denom1 = 0.04f64.sqrt() / 0.01f64.sqrt() + 1e-8;
        let p1 = (1.0 - 0.1 / 0.02 * 0.04 / denom1) / 1.05;
        // step 2: Δ = −3; m = 0.98·0.04 − 0.02; d = −0.08·3; n = 0.99·0.04 + 0.01·(−1 − 0.92·3)²
        let m2 = 0.98 * 0.04 - 0.02;
        let d2 = 0.08 * -3.0;
        let n2 = 0.99 * 0.04 + 0.01 * (-1.0f64 - 0.92 * 3.0).powi(2);
        let denom2 = n2.sqrt() / (1.0 - 0.99f64.powi(2)).sqrt() + 1e-8;
        let bc1 = 1.0 - 0.98f64.powi(2);
        let bc2 = 1.0 - 0.92f64.powi(2);
        let p2 = (p1 - 0.1 / bc1 * m2 / denom2 - 0.1 * 0.92 / bc2 * d2 / denom2) / 1.05;
        close(st[0], m2);
        close(st[1], n2);
        close(st[2], d2);
        close(st[3], 1.0);
        close(p, p2);
    }

    #[test]
    fn no_prox_decays_before_the_step() {
        let cfg = Adan {
            lr: 0.1,
            weight_decay: 0.5,
            no_prox: true,
            ..Adan::default()
        };
        let (p, _) = run(&cfg, 1.0, &[0.0; 4], &[2.0]);
        let denom1 = 0.04f64.sqrt() / 0.01f64.sqrt() + 1e-8;
        close(p, 0.95 - 0.1 / 0.02 * 0.04 / denom1);
    }
}
