//! Adagrad.
//!
//! Duchi, Hazan & Singer, "Adaptive Subgradient Methods for Online Learning and Stochastic
//! Optimization", JMLR 2011. The order of operations matches
//! `torch.optim.adagrad._single_tensor_adagrad` (torch 2.11), dense gradients.

use super::ops::l2_grad;
use crate::element::Float;
use crate::rule::{Rule, ScalarState};

/// Adagrad hyperparameters; `Default` gives torch.optim.Adagrad's defaults.
///
/// `initial_accumulator_value` is the value the caller fills the `sum` state with when creating
/// it (e.g. [`crate::optim::Algorithm::init_state`]); it plays no part in a step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Adagrad {
    /// Learning rate γ (default 1e-2).
    pub lr: f64,
    /// Learning-rate decay η: step `t` uses `γ / (1 + (t − 1)η)` (default 0).
    pub lr_decay: f64,
    /// Weight decay λ, added to the gradient as `λθ` (default 0).
    pub weight_decay: f64,
    /// ε added to the denominator (default 1e-10).
    pub eps: f64,
    /// The value `sum` starts from (default 0).
    pub initial_accumulator_value: f64,
    /// Maximize the objective instead of minimizing it (default false).
    pub maximize: bool,
}

impl Default for Adagrad {
    fn default() -> Self {
        Adagrad {
            lr: 1e-2,
            lr_decay: 0.0,
            weight_decay: 0.0,
            eps: 1e-10,
            initial_accumulator_value: 0.0,
            maximize: false,
        }
    }
}

/// Per-parameter, per-step scalars of [`Adagrad`].
#[derive(Debug, Clone, Copy)]
pub struct AdagradScalars {
    neg_clr: f64,
    weight_decay: f64,
    eps: f64,
    maximize: bool,
}

impl Rule for Adagrad {
    type Scalars = AdagradScalars;

    fn state_names(&self) -> &'static [&'static str] {
        &["sum"]
    }

    fn scalars(&self, scalar_state: &mut [ScalarState], _fresh: bool) -> AdagradScalars {
        let step = scalar_state[0].increment();
        AdagradScalars {
            neg_clr: -(self.lr / (1.0 + (step - 1.0) * self.lr_decay)),
            weight_decay: self.weight_decay,
            eps: self.eps,
            maximize: self.maximize,
        }
    }

    #[inline(always)]
    fn update<F: Float>(s: &AdagradScalars, param: F, grad: F, state: &mut [F]) -> F {
        let g = l2_grad(grad, param, s.maximize, s.weight_decay);
        // Σ ← Σ + g²;  θ ← θ − γ_t · g / (√Σ + ε)
        let sum = g.mul_add(g, state[0]);
        state[0] = sum;
        param + F::from_f64(s.neg_clr) * g / (sum.sqrt() + F::from_f64(s.eps))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::testing::{close, run};

    #[test]
    fn two_steps_with_lr_decay_by_hand() {
        let cfg = Adagrad {
            lr: 0.1,
            lr_decay: 0.5,
            ..Adagrad::default()
        };
        let (p, st) = run(&cfg, 1.0, &[0.0], &[2.0, 1.0]);
        // step 1: Σ = 4, θ = 1 − 0.1·2/(2 + ε); step 2: Σ = 5, γ₂ = 0.1/1.5
        let p1 = 1.0 - 0.1 * 2.0 / (2.0 + 1e-10);
        close(st[0], 5.0);
        close(p, p1 - (0.1 / 1.5) * 1.0 / (5f64.sqrt() + 1e-10));
    }

    #[test]
    fn weight_decay_and_maximize() {
        let cfg = Adagrad {
            weight_decay: 0.5,
            maximize: true,
            ..Adagrad::default()
        };
        // g' = −1 + 0.5·2 = 0
        let (p, st) = run(&cfg, 2.0, &[0.0], &[1.0]);
        close(st[0], 0.0);
        close(p, 2.0);
    }
}
