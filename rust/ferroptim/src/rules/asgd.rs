//! ASGD, averaged stochastic gradient descent.
//!
//! Polyak & Juditsky, "Acceleration of Stochastic Approximation by Averaging", SIAM J. Control
//! Optim. 1992, with the step-size schedule of Bottou, "Large-Scale Machine Learning with
//! Stochastic Gradient Descent", 2010. The order of operations matches
//! `torch.optim.asgd._single_tensor_asgd` (torch 2.11): the step size `eta` and averaging
//! coefficient `mu` are scalar state, each step uses the values the previous step stored.

use super::ops::{add_scaled, l2_grad};
use crate::element::Float;
use crate::rule::{Rule, ScalarState};

/// ASGD hyperparameters; `Default` gives torch.optim.ASGD's defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Asgd {
    /// Learning rate γ (default 1e-2); the caller initialises the `eta` state with it.
    pub lr: f64,
    /// λ, the decay term (default 1e-4).
    pub lambd: f64,
    /// α, the power of the `eta` schedule (default 0.75).
    pub alpha: f64,
    /// t₀, the step at which averaging starts (default 1e6).
    pub t0: f64,
    /// Weight decay, added to the gradient as `weight_decay·θ` (default 0).
    pub weight_decay: f64,
    /// Maximize the objective instead of minimizing it (default false).
    pub maximize: bool,
}

impl Default for Asgd {
    fn default() -> Self {
        Asgd {
            lr: 1e-2,
            lambd: 1e-4,
            alpha: 0.75,
            t0: 1e6,
            weight_decay: 0.0,
            maximize: false,
        }
    }
}

/// Per-parameter, per-step scalars of [`Asgd`].
#[derive(Debug, Clone, Copy)]
pub struct AsgdScalars {
    decay: f64,
    neg_eta: f64,
    mu: f64,
    copy: bool,
    weight_decay: f64,
    maximize: bool,
}

impl Rule for Asgd {
    type Scalars = AsgdScalars;

    /// `ax`, the running average of the parameter.
    fn state_names(&self) -> &'static [&'static str] {
        &["ax"]
    }

    /// `step`, `eta` (initially `lr`) and `mu` (initially 1).
    fn scalar_state_names(&self) -> &'static [&'static str] {
        &["step", "eta", "mu"]
    }

    fn scalars(&self, scalar_state: &mut [ScalarState], _fresh: bool) -> AsgdScalars {
        let step = scalar_state[0].increment();
        let (eta, mu) = (scalar_state[1].get(), scalar_state[2].get());
        // The next step's η_t = γ/(1 + λγt)^α and μ_t = 1/max(1, t − t₀). torch stores them
        // through `torch.as_tensor(value)`, a float32 tensor (the default dtype), so they are
        // float32 values even in a float64 state tensor (e.g. after `load_state_dict`).
        let as_tensor = |v: f64| f64::from(v as f32);
        let next_eta = self.lr / (1.0 + self.lambd * self.lr * step).powf(self.alpha);
        scalar_state[1].set(as_tensor(next_eta));
        scalar_state[2].set(as_tensor(1.0 / (step - self.t0).max(1.0)));
        AsgdScalars {
            decay: 1.0 - self.lambd * eta,
            neg_eta: -eta,
            mu,
            copy: mu == 1.0,
            weight_decay: self.weight_decay,
            maximize: self.maximize,
        }
    }

    #[inline(always)]
    fn update<F: Float>(s: &AsgdScalars, param: F, grad: F, state: &mut [F]) -> F {
        let g = l2_grad(grad, param, s.maximize, s.weight_decay);
        // θ ← θ(1 − λη) − ηg;  ax ← ax + μ(θ − ax)  (a copy of θ while μ = 1)
        let p = add_scaled(param * F::from_f64(s.decay), s.neg_eta, g);
        state[0] = if s.copy {
            p
        } else {
            state[0] + (p - state[0]) * F::from_f64(s.mu)
        };
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::testing::{close, run_with};

    #[test]
    fn eta_and_mu_follow_the_schedule() {
        let cfg = Asgd {
            lr: 0.1,
            lambd: 0.5,
            t0: 1.0,
            ..Asgd::default()
        };
        let ((p, st), scalar) = run_with(&cfg, 1.0, &[0.0], &[0.0, 0.1, 1.0], &[1.0, 1.0, 1.0]);
        // step 1: η = 0.1, μ = 1 → θ₁ = 0.95 − 0.1, ax = θ₁
        let p1 = 1.0 * (1.0 - 0.05) - 0.1;
        // stored for step 2: η = 0.1/(1 + 0.05)^0.75, μ = 1/max(1, 0) = 1
        let eta2 = f64::from((0.1 / 1.05f64.powf(0.75)) as f32);
        let p2 = p1 * (1.0 - 0.5 * eta2) - eta2;
        // stored for step 3: η = 0.1/(1.1)^0.75, μ = 1/max(1, 1) = 1
        let eta3 = f64::from((0.1 / 1.1f64.powf(0.75)) as f32);
        let p3 = p2 * (1.0 - 0.5 * eta3) - eta3;
        close(p, p3);
        close(st[0], p3);
        assert_eq!(scalar[1], f64::from((0.1 / 1.15f64.powf(0.75)) as f32));
        close(scalar[2], 0.5); // 1/max(1, 3 − 1)
    }

    #[test]
    fn averaging_once_mu_is_below_one() {
        let cfg = Asgd {
            lambd: 0.0,
            ..Asgd::default()
        };
        // η = 0.01, μ = 0.25 stored: θ = 1 − 0.01·2 = 0.98, ax = 0.5 + 0.25(0.98 − 0.5)
        let ((p, st), _) = run_with(&cfg, 1.0, &[0.5], &[4.0, 0.01, 0.25], &[2.0]);
        close(p, 0.98);
        close(st[0], 0.5 + 0.25 * (0.98 - 0.5));
    }
}
