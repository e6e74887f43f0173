//! Lion, evolved sign momentum.
//!
//! Chen et al., "Symbolic Discovery of Optimization Algorithms", NeurIPS 2023 (Algorithm 2, with
//! decoupled weight decay). The order of operations matches the reference implementation
//! `lion-pytorch` 0.2.5 (`update_fn`, with `decoupled_weight_decay=False`).

use super::ops::{add_scaled, sign};
use crate::element::Float;
use crate::rule::{Rule, ScalarState};

/// Lion hyperparameters; `Default` gives the paper's and `lion-pytorch`'s defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lion {
    /// Learning rate γ (default 1e-4; the paper advises 3–10× smaller than AdamW's).
    pub lr: f64,
    /// β₁, the interpolation that gives the update's sign (default 0.9).
    pub beta1: f64,
    /// β₂, the decay of the momentum `exp_avg` (default 0.99).
    pub beta2: f64,
    /// Decoupled weight decay λ: `θ ← θ(1 − γλ)` (default 0).
    pub weight_decay: f64,
    /// Maximize the objective instead of minimizing it (default false).
    pub maximize: bool,
}

impl Default for Lion {
    fn default() -> Self {
        Lion {
            lr: 1e-4,
            beta1: 0.9,
            beta2: 0.99,
            weight_decay: 0.0,
            maximize: false,
        }
    }
}

/// Per-parameter, per-step scalars of [`Lion`].
#[derive(Debug, Clone, Copy)]
pub struct LionScalars {
    decay_factor: f64,
    neg_lr: f64,
    beta1: f64,
    beta2: f64,
    maximize: bool,
}

impl Rule for Lion {
    type Scalars = LionScalars;

    fn state_names(&self) -> &'static [&'static str] {
        &["exp_avg"]
    }

    /// None: Lion keeps no step counter.
    fn scalar_state_names(&self) -> &'static [&'static str] {
        &[]
    }

    fn scalars(&self, _scalar_state: &mut [ScalarState], _fresh: bool) -> LionScalars {
        LionScalars {
            decay_factor: 1.0 - self.lr * self.weight_decay,
            neg_lr: -self.lr,
            beta1: self.beta1,
            beta2: self.beta2,
            maximize: self.maximize,
        }
    }

    #[inline(always)]
    fn update<F: Float>(s: &LionScalars, param: F, grad: F, state: &mut [F]) -> F {
        let g = if s.maximize { -grad } else { grad };
        let m = state[0];
        // θ ← θ(1 − γλ) − γ·sign(β₁m + (1 − β₁)g);  m ← β₂m + (1 − β₂)g
        let p = param * F::from_f64(s.decay_factor);
        let c = add_scaled(m * F::from_f64(s.beta1), 1.0 - s.beta1, g);
        state[0] = add_scaled(m * F::from_f64(s.beta2), 1.0 - s.beta2, g);
        add_scaled(p, s.neg_lr, sign(c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::testing::{close, run};

    #[test]
    fn two_steps_by_hand() {
        let cfg = Lion {
            lr: 0.1,
            weight_decay: 0.5,
            ..Lion::default()
        };
        // step 1: c = 0.1·2 > 0 → θ = 1·0.95 − 0.1; m = 0.02
        // step 2: c = 0.9·0.02 + 0.1·(−1) = −0.082 < 0 → θ = θ₁·0.95 + 0.1; m = 0.99·0.02 − 0.01
        let (p, st) = run(&cfg, 1.0, &[0.0], &[2.0, -1.0]);
        let p1 = 0.95 - 0.1;
        close(p, p1 * 0.95 + 0.1);
        close(st[0], 0.99 * 0.02 - 0.01);
    }
}
