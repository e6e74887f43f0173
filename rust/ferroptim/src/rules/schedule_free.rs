//! Schedule-Free AdamW.
//!
//! Defazio et al., "The Road Less Scheduled", NeurIPS 2024, Algorithm 1 (AdamW variant), as
//! the authors' reference implementation computes it (github.com/facebookresearch/schedule_free,
//! `AdamWScheduleFree`, for-loop branch): the parameter holds the gradient-evaluation point
//! `y`, the state `z` the base iterate, and the evaluation average `x` is never stored
//! (`x = (y − (1 − β₁)z)/β₁`, recovered by the Python class's `eval()`).
//!
//! The average's weights (`c_{t+1} = w_t / Σ w`, with `w_t = t^r · lr_max^p`) and the warmed-up
//! learning rate depend on the whole group's history, not on one parameter; the caller
//! computes them once per group and step (as the reference does in Python) and passes them as
//! [`ScheduleFreeAdamW::lr`], [`ScheduleFreeAdamW::ckp1`] and [`ScheduleFreeAdamW::step`].

use super::ops::{add_scaled, ema_sq, lerp};
use crate::element::Float;
use crate::rule::{Rule, ScalarState};

/// Schedule-Free AdamW's hyperparameters for one step; `Default` gives the reference's
/// defaults at its first step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScheduleFreeAdamW {
    /// Learning rate γ of this step, warmup applied (reference default 0.0025).
    pub lr: f64,
    /// β₁, the interpolation between `z` and `x` that gives `y` (default 0.9).
    pub beta1: f64,
    /// β₂, decay of the second moment `exp_avg_sq` (default 0.999).
    pub beta2: f64,
    /// ε added to the denominator (default 1e-8).
    pub eps: f64,
    /// Weight decay λ, applied at `y` (default 0).
    pub weight_decay: f64,
    /// `c_{t+1}`, the weight of this step's `z` in the average `x` (1 at the first step).
    pub ckp1: f64,
    /// The 1-based step number `t`, for the bias correction `1 − β₂ᵗ`.
    pub step: f64,
    /// Maximize the objective instead of minimizing it (default false).
    pub maximize: bool,
}

impl Default for ScheduleFreeAdamW {
    fn default() -> Self {
        ScheduleFreeAdamW {
            lr: 0.0025,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            ckp1: 1.0,
            step: 1.0,
            maximize: false,
        }
    }
}

/// Per-step scalars of [`ScheduleFreeAdamW`].
#[derive(Debug, Clone, Copy)]
pub struct ScheduleFreeAdamWScalars {
    beta2: f64,
    bias_correction2: f64,
    eps: f64,
    weight_decay: f64,
    ckp1: f64,
    y_step: f64,
    neg_lr: f64,
    maximize: bool,
}

impl Rule for ScheduleFreeAdamW {
    type Scalars = ScheduleFreeAdamWScalars;

    fn state_names(&self) -> &'static [&'static str] {
        &["z", "exp_avg_sq"]
    }

    /// None: the step count and the average's weights are the group's (see the module docs).
    fn scalar_state_names(&self) -> &'static [&'static str] {
        &[]
    }

    fn scalars(&self, _scalar_state: &mut [ScalarState], _fresh: bool) -> Self::Scalars {
        ScheduleFreeAdamWScalars {
            beta2: self.beta2,
            bias_correction2: 1.0 - self.beta2.powf(self.step),
            eps: self.eps,
            weight_decay: self.weight_decay,
            ckp1: self.ckp1,
            y_step: self.lr * (self.beta1 * (1.0 - self.ckp1) - 1.0),
            neg_lr: -self.lr,
            maximize: self.maximize,
        }
    }

    #[inline(always)]
    fn update<F: Float>(s: &Self::Scalars, param: F, grad: F, state: &mut [F]) -> F {
        let g = if s.maximize { -grad } else { grad };
        // v ← β₂v + (1 − β₂)g²;  ĝ = g / (√(v / (1 − β₂ᵗ)) + ε) + λy
        let v = ema_sq(state[1], g, s.beta2, 1.0 - s.beta2);
        state[1] = v;
        let denom = (v / F::from_f64(s.bias_correction2)).sqrt() + F::from_f64(s.eps);
        let mut normed = g / denom;
        if s.weight_decay != 0.0 {
            normed = add_scaled(normed, s.weight_decay, param);
        }
        // y ← lerp(y, z, c) + γ(β₁(1 − c) − 1)ĝ;  z ← z − γĝ
        let z = state[0];
        let y = lerp(param, z, F::from_f64(s.ckp1));
        state[0] = add_scaled(z, s.neg_lr, normed);
        add_scaled(y, s.y_step, normed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::testing::{close, run};

    #[test]
    fn first_step_from_z_equal_to_y() {
        // t = 1, c = 1: y ← z − γ ĝ and z ← z − γ ĝ, with ĝ = g/(|g| + ε) + λy
        let cfg = ScheduleFreeAdamW {
            lr: 0.1,
            weight_decay: 0.5,
            ..ScheduleFreeAdamW::default()
        };
        let (p, st) = run(&cfg, 1.0, &[1.0, 0.0], &[2.0]);
        let normed = 2.0 / (2.0 + 1e-8) + 0.5;
        close(p, 1.0 - 0.1 * normed);
        close(st[0], 1.0 - 0.1 * normed);
        close(st[1], 0.004);
    }

    #[test]
    fn later_step_interpolates_towards_z() {
        let cfg = ScheduleFreeAdamW {
            lr: 0.1,
            ckp1: 0.25,
            step: 2.0,
            ..ScheduleFreeAdamW::default()
        };
        let (p, st) = run(&cfg, 1.0, &[3.0, 0.004], &[-1.0]);
        let v = 0.999 * 0.004 + 0.001;
        let normed = -1.0 / ((v / (1.0 - 0.999f64.powi(2))).sqrt() + 1e-8);
        close(st[1], v);
        close(st[0], 3.0 - 0.1 * normed);
        close(p, 1.5 + 0.1 * (0.9 * 0.75 - 1.0) * normed);
    }
}
