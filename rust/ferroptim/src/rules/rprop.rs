//! Rprop, resilient backpropagation.
//!
//! Riedmiller & Braun, "A Direct Adaptive Method for Faster Backpropagation Learning: The RPROP
//! Algorithm", ICNN 1993 (torch's variant: the gradient is zeroed where its sign flipped). The
//! order of operations matches `torch.optim.rprop._single_tensor_rprop` (torch 2.11).

use super::ops::{clamp, sign};
use crate::element::Float;
use crate::rule::{Rule, ScalarState};

/// Rprop hyperparameters; `Default` gives torch.optim.Rprop's defaults.
///
/// The learning rate only sets the initial `step_size` state (`full_like(param, lr)`, created
/// by the caller, e.g. [`crate::optim::Algorithm::init_state`]); a step does not read it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rprop {
    /// Learning rate: the initial value of every element of `step_size` (default 1e-2).
    pub lr: f64,
    /// η⁻, the step-size factor after a sign change (default 0.5; torch's `etas[0]`).
    pub etaminus: f64,
    /// η⁺, the step-size factor while the sign holds (default 1.2; torch's `etas[1]`).
    pub etaplus: f64,
    /// Smallest step size (default 1e-6; torch's `step_sizes[0]`).
    pub step_size_min: f64,
    /// Largest step size (default 50; torch's `step_sizes[1]`).
    pub step_size_max: f64,
    /// Maximize the objective instead of minimizing it (default false).
    pub maximize: bool,
}

impl Default for Rprop {
    fn default() -> Self {
        Rprop {
            lr: 1e-2,
            etaminus: 0.5,
            etaplus: 1.2,
            step_size_min: 1e-6,
            step_size_max: 50.0,
            maximize: false,
        }
    }
}

/// Per-parameter, per-step scalars of [`Rprop`] (its hyperparameters: nothing depends on the
/// step).
pub type RpropScalars = Rprop;

impl Rule for Rprop {
    type Scalars = RpropScalars;

    /// `prev` (the previous step's gradient, zero where its sign flipped) and `step_size`.
    fn state_names(&self) -> &'static [&'static str] {
        &["prev", "step_size"]
    }

    fn scalars(&self, scalar_state: &mut [ScalarState], _fresh: bool) -> Rprop {
        scalar_state[0].increment();
        *self
    }

    #[inline(always)]
    fn update<F: Float>(s: &Rprop, param: F, grad: F, state: &mut [F]) -> F {
        let g = if s.maximize { -grad } else { grad };
        let direction = sign(g * state[0]);
        let factor = if direction > F::ZERO {
            F::from_f64(s.etaplus)
        } else if direction < F::ZERO {
            F::from_f64(s.etaminus)
        } else {
            F::from_f64(1.0)
        };
        let step_size = clamp(
            state[1] * factor,
            F::from_f64(s.step_size_min),
            F::from_f64(s.step_size_max),
        );
        // Where the sign flipped, skip this step and forget the gradient.
        let g = if direction < F::ZERO { F::ZERO } else { g };
        state[0] = g;
        state[1] = step_size;
        param + F::from_f64(-1.0) * sign(g) * step_size
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::testing::{close, run};

    #[test]
    fn step_size_grows_shrinks_and_skips_on_sign_change() {
        let cfg = Rprop::default();
        // step_size starts at lr = 0.01
        let (p, st) = run(&cfg, 1.0, &[0.0, 0.01], &[2.0, 3.0, -1.0, -1.0]);
        // 1: no history → factor 1, θ −= 0.01; 2: same sign → 0.012, θ −= 0.012;
        // 3: flip → 0.006, gradient zeroed, θ unchanged; 4: prev 0 → factor 1, θ += 0.006
        close(p, 1.0 - 0.01 - 0.012 + 0.006);
        close(st[0], -1.0);
        close(st[1], 0.006);
    }

    #[test]
    fn step_size_is_clamped() {
        let cfg = Rprop {
            step_size_max: 0.011,
            ..Rprop::default()
        };
        let (_, st) = run(&cfg, 1.0, &[0.0, 0.01], &[1.0, 1.0]);
        close(st[1], 0.011);
    }
}
