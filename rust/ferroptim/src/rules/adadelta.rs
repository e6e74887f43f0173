//! Adadelta.
//!
//! Zeiler, "ADADELTA: An Adaptive Learning Rate Method", 2012. The order of operations matches
//! `torch.optim.adadelta._single_tensor_adadelta` (torch 2.11).

use super::ops::{add_scaled, ema_sq, l2_grad};
use crate::element::Float;
use crate::rule::{Rule, ScalarState};

/// Adadelta hyperparameters; `Default` gives torch.optim.Adadelta's defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Adadelta {
    /// Learning rate γ, scaling the delta (default 1.0).
    pub lr: f64,
    /// ρ, the decay of both running averages (default 0.9).
    pub rho: f64,
    /// ε inside both square roots (default 1e-6).
    pub eps: f64,
    /// Weight decay λ, added to the gradient as `λθ` (default 0).
    pub weight_decay: f64,
    /// Maximize the objective instead of minimizing it (default false).
    pub maximize: bool,
}

impl Default for Adadelta {
    fn default() -> Self {
        Adadelta {
            lr: 1.0,
            rho: 0.9,
            eps: 1e-6,
            weight_decay: 0.0,
            maximize: false,
        }
    }
}

/// Per-parameter, per-step scalars of [`Adadelta`].
#[derive(Debug, Clone, Copy)]
pub struct AdadeltaScalars {
    rho: f64,
    one_minus_rho: f64,
    eps: f64,
    neg_lr: f64,
    weight_decay: f64,
    maximize: bool,
}

impl Rule for Adadelta {
    type Scalars = AdadeltaScalars;

    fn state_names(&self) -> &'static [&'static str] {
        &["square_avg", "acc_delta"]
    }

    fn scalars(&self, scalar_state: &mut [ScalarState], _fresh: bool) -> AdadeltaScalars {
        scalar_state[0].increment();
        AdadeltaScalars {
            rho: self.rho,
            one_minus_rho: 1.0 - self.rho,
            eps: self.eps,
            neg_lr: -self.lr,
            weight_decay: self.weight_decay,
            maximize: self.maximize,
        }
    }

    #[inline(always)]
    fn update<F: Float>(s: &AdadeltaScalars, param: F, grad: F, state: &mut [F]) -> F {
        let g = l2_grad(grad, param, s.maximize, s.weight_decay);
        let eps = F::from_f64(s.eps);
        // v ← ρv + (1 − ρ)g²;  Δ = √(u + ε)/√(v + ε) · g;  u ← ρu + (1 − ρ)Δ²;  θ ← θ − γΔ
        let v = ema_sq(state[0], g, s.rho, s.one_minus_rho);
        let delta = (state[1] + eps).sqrt() / (v + eps).sqrt() * g;
        state[0] = v;
        state[1] = ema_sq(state[1], delta, s.rho, s.one_minus_rho);
        add_scaled(param, s.neg_lr, delta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::testing::{close, run};

    #[test]
    fn first_step_by_hand() {
        let (p, st) = run(&Adadelta::default(), 1.0, &[0.0, 0.0], &[2.0]);
        let v: f64 = 0.1 * 4.0;
        let delta = (1e-6f64).sqrt() / (v + 1e-6).sqrt() * 2.0;
        close(st[0], v);
        close(st[1], 0.1 * delta * delta);
        close(p, 1.0 - delta);
    }
}
