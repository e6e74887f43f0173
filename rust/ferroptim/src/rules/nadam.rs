//! NAdam: Adam with Nesterov momentum and a momentum schedule.
//!
//! Dozat, "Incorporating Nesterov Momentum into Adam", ICLR 2016 workshop; decoupled weight
//! decay as in Loshchilov & Hutter, ICLR 2019. The order of operations matches
//! `torch.optim.nadam._single_tensor_nadam` (torch 2.11), including the running product of the
//! momentum coefficients kept in the `mu_product` scalar state.

use super::ops::AdamMoments;
use crate::element::Float;
use crate::rule::{Rule, ScalarState};

/// NAdam hyperparameters; `Default` gives torch.optim.NAdam's defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NAdam {
    /// Learning rate γ (default 2e-3).
    pub lr: f64,
    /// β₁ (default 0.9).
    pub beta1: f64,
    /// β₂ (default 0.999).
    pub beta2: f64,
    /// ε added to the denominator (default 1e-8).
    pub eps: f64,
    /// Weight decay λ (default 0).
    pub weight_decay: f64,
    /// ψ, the momentum decay: `μ_t = β₁(1 − ½·0.96^(tψ))` (default 4e-3).
    pub momentum_decay: f64,
    /// Apply weight decay as `θ ← θ(1 − γλ)` instead of adding `λθ` to the gradient
    /// (default false).
    pub decoupled_weight_decay: bool,
    /// Maximize the objective instead of minimizing it (default false).
    pub maximize: bool,
}

impl Default for NAdam {
    fn default() -> Self {
        NAdam {
            lr: 2e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            momentum_decay: 4e-3,
            decoupled_weight_decay: false,
            maximize: false,
        }
    }
}

/// Per-parameter, per-step scalars of [`NAdam`].
#[derive(Debug, Clone, Copy)]
pub struct NAdamScalars {
    moments: AdamMoments,
    bias_correction2: f64,
    eps: f64,
    grad_coef: f64,
    exp_avg_coef: f64,
}

impl NAdam {
    /// `μ_t = β₁(1 − ½·0.96^(tψ))`.
    fn mu(&self, step: f64) -> f64 {
        self.beta1 * (1.0 - 0.5 * 0.96f64.powf(step * self.momentum_decay))
    }
}

impl Rule for NAdam {
    type Scalars = NAdamScalars;

    fn state_names(&self) -> &'static [&'static str] {
        &["exp_avg", "exp_avg_sq"]
    }

    /// `step` and `mu_product` (∏ μ_i, initially 1).
    fn scalar_state_names(&self) -> &'static [&'static str] {
        &["step", "mu_product"]
    }

    fn scalars(&self, scalar_state: &mut [ScalarState], _fresh: bool) -> NAdamScalars {
        let step = scalar_state[0].increment();
        let (mu, mu_next) = (self.mu(step), self.mu(step + 1.0));
        let mu_product = scalar_state[1].mul(mu);
        let mu_product_next = mu_product * mu_next;
        NAdamScalars {
            moments: AdamMoments::new(
                self.lr,
                (self.beta1, self.beta2),
                self.weight_decay,
                self.decoupled_weight_decay,
                self.maximize,
            ),
            bias_correction2: 1.0 - self.beta2.powf(step),
            eps: self.eps,
            grad_coef: -self.lr * (1.0 - mu) / (1.0 - mu_product),
            exp_avg_coef: (-self.lr * mu_next) / (1.0 - mu_product_next),
        }
    }

    #[inline(always)]
    fn update<F: Float>(s: &NAdamScalars, param: F, grad: F, state: &mut [F]) -> F {
        let (p, g, m, v) = s.moments.update(param, grad, state);
        // θ ← θ − γ(1 − μ_t)/(1 − ∏μ) · g/d − γμ_{t+1}/(1 − ∏μ·μ_{t+1}) · m/d,
        // d = √(v/(1 − β₂ᵗ)) + ε
        let denom = (v / F::from_f64(s.bias_correction2)).sqrt() + F::from_f64(s.eps);
        let p = p + F::from_f64(s.grad_coef) * g / denom;
        p + F::from_f64(s.exp_avg_coef) * m / denom
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::testing::{close, run_with};

    #[test]
    fn first_step_by_hand() {
        let cfg = NAdam {
            lr: 0.1,
            ..NAdam::default()
        };
        let ((p, st), scalar) = run_with(&cfg, 1.0, &[0.0, 0.0], &[0.0, 1.0], &[0.5]);
        let mu1 = 0.9 * (1.0 - 0.5 * 0.96f64.powf(0.004));
        let mu2 = 0.9 * (1.0 - 0.5 * 0.96f64.powf(0.008));
        let (m, v) = (0.05, 0.001 * 0.25);
        let d = (v / 0.001f64).sqrt() + 1e-8;
        close(st[0], m);
        close(st[1], v);
        assert_eq!(scalar, vec![1.0, mu1]);
        let expected =
            1.0 - 0.1 * (1.0 - mu1) / (1.0 - mu1) * 0.5 / d - 0.1 * mu2 / (1.0 - mu1 * mu2) * m / d;
        close(p, expected);
    }

    #[test]
    fn decoupled_weight_decay_scales_the_parameter_first() {
        let cfg = NAdam {
            weight_decay: 0.5,
            decoupled_weight_decay: true,
            ..NAdam::default()
        };
        let zero_grad = run_with(&cfg, 2.0, &[0.0, 0.0], &[0.0, 1.0], &[0.0]).0;
        close(zero_grad.0, 2.0 * (1.0 - 2e-3 * 0.5));
    }
}
