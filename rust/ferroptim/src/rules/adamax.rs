//! Adamax, Adam's variant based on the infinity norm.
//!
//! Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015, section 7.1. The order
//! of operations matches `torch.optim.adamax._single_tensor_adamax` (torch 2.11).

use super::ops::{l2_grad, lerp};
use crate::element::Float;
use crate::rule::{Rule, ScalarState};

/// Adamax hyperparameters; `Default` gives torch.optim.Adamax's defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Adamax {
    /// Learning rate γ (default 2e-3).
    pub lr: f64,
    /// β₁, decay of the first moment `exp_avg` (default 0.9).
    pub beta1: f64,
    /// β₂, decay of the infinity norm `exp_inf` (default 0.999).
    pub beta2: f64,
    /// ε added to `|g|` before the maximum (default 1e-8).
    pub eps: f64,
    /// Weight decay λ, added to the gradient as `λθ` (default 0).
    pub weight_decay: f64,
    /// Maximize the objective instead of minimizing it (default false).
    pub maximize: bool,
}

impl Default for Adamax {
    fn default() -> Self {
        Adamax {
            lr: 2e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            maximize: false,
        }
    }
}

/// Per-parameter, per-step scalars of [`Adamax`].
#[derive(Debug, Clone, Copy)]
pub struct AdamaxScalars {
    lerp_weight: f64,
    beta2: f64,
    eps: f64,
    neg_clr: f64,
    weight_decay: f64,
    maximize: bool,
}

impl Rule for Adamax {
    type Scalars = AdamaxScalars;

    fn state_names(&self) -> &'static [&'static str] {
        &["exp_avg", "exp_inf"]
    }

    fn scalars(&self, scalar_state: &mut [ScalarState], _fresh: bool) -> AdamaxScalars {
        let step = scalar_state[0].increment();
        AdamaxScalars {
            lerp_weight: 1.0 - self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            neg_clr: -(self.lr / (1.0 - self.beta1.powf(step))),
            weight_decay: self.weight_decay,
            maximize: self.maximize,
        }
    }

    #[inline(always)]
    fn update<F: Float>(s: &AdamaxScalars, param: F, grad: F, state: &mut [F]) -> F {
        let g = l2_grad(grad, param, s.maximize, s.weight_decay);
        // m ← lerp(m, g, 1 − β₁);  u ← max(β₂u, |g| + ε);  θ ← θ − γ/(1 − β₁ᵗ) · m/u
        let m = lerp(state[0], g, F::from_f64(s.lerp_weight));
        let u = (state[1] * F::from_f64(s.beta2)).max_nan(g.abs() + F::from_f64(s.eps));
        state[0] = m;
        state[1] = u;
        param + F::from_f64(s.neg_clr) * m / u
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::testing::{close, run};

    #[test]
    fn two_steps_by_hand() {
        let cfg = Adamax {
            lr: 0.1,
            ..Adamax::default()
        };
        let (p, st) = run(&cfg, 1.0, &[0.0, 0.0], &[-2.0, 0.5]);
        // step 1: m = −0.2, u = 2 + ε, θ = 1 + 0.1/0.1 · 0.2/(2 + ε)
        let p1 = 1.0 - (0.1 / 0.1) * -0.2 / (2.0 + 1e-8);
        // step 2: m = −0.2 + 0.1(0.5 + 0.2) = −0.13; u = max(0.999(2 + ε), 0.5 + ε)
        let (m2, u2) = (-0.13, 0.999 * (2.0 + 1e-8));
        close(st[0], m2);
        close(st[1], u2);
        close(p, p1 - (0.1 / (1.0 - 0.81)) * m2 / u2);
    }
}
