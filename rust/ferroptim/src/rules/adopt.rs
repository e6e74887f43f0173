//! ADOPT: Adam with the current gradient left out of its own normalisation.
//!
//! Taniguchi et al., "ADOPT: Modified Adam Can Converge with Any β₂ with the Optimal Rate",
//! NeurIPS 2024, with the clipped momentum update of the authors' revised version. The order of
//! operations matches the authors' implementation, `torch-adopt` 0.1.0
//! (`_single_tensor_adopt`): the first step only initialises `exp_avg_sq = g²`; each later step
//! normalises the gradient by the previous `√exp_avg_sq`, clips it to `±step^¼`, and only then
//! updates `exp_avg_sq`.

use super::ops::{add_scaled, addcmul, clamp, ema_sq, lerp};
use crate::element::Float;
use crate::rule::{Rule, ScalarState};

/// ADOPT hyperparameters; `Default` gives `torch-adopt`'s defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Adopt {
    /// Learning rate γ (default 1e-3).
    pub lr: f64,
    /// β₁ (default 0.9).
    pub beta1: f64,
    /// β₂ (default 0.9999).
    pub beta2: f64,
    /// Lower bound of `√exp_avg_sq` in the normalisation (default 1e-6).
    pub eps: f64,
    /// Clip the normalised gradient to `±(t − 1)^e` at the `t`-th step (`torch-adopt`'s
    /// `clip_lambda = step**0.25` counts from 0 at the first step): `Some(0.25)` by default,
    /// `None` for the unclipped original algorithm.
    pub clip_exponent: Option<f64>,
    /// Weight decay λ (default 0).
    pub weight_decay: f64,
    /// Apply weight decay as `θ ← θ − γλθ` (AdamW style) instead of adding `λθ` to the
    /// gradient (default false; `torch-adopt`'s `decouple`).
    pub decouple: bool,
    /// Maximize the objective instead of minimizing it (default false).
    pub maximize: bool,
}

impl Default for Adopt {
    fn default() -> Self {
        Adopt {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.9999,
            eps: 1e-6,
            clip_exponent: Some(0.25),
            weight_decay: 0.0,
            decouple: false,
            maximize: false,
        }
    }
}

/// Per-parameter, per-step scalars of [`Adopt`].
#[derive(Debug, Clone, Copy)]
pub struct AdoptScalars {
    /// The first step: only `exp_avg_sq ← g²`.
    first: bool,
    clip: Option<f64>,
    lr: f64,
    lerp_weight: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    decouple: bool,
    maximize: bool,
}

impl Rule for Adopt {
    type Scalars = AdoptScalars;

    fn state_names(&self) -> &'static [&'static str] {
        &["exp_avg", "exp_avg_sq"]
    }

    fn scalars(&self, scalar_state: &mut [ScalarState], _fresh: bool) -> AdoptScalars {
        // torch-adopt reads the counter before incrementing it.
        let step = scalar_state[0].get();
        scalar_state[0].increment();
        AdoptScalars {
            first: step == 0.0,
            clip: self.clip_exponent.map(|e| step.powf(e)),
            lr: self.lr,
            lerp_weight: 1.0 - self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            weight_decay: self.weight_decay,
            decouple: self.decouple,
            maximize: self.maximize,
        }
    }

    #[inline(always)]
    fn update<F: Float>(s: &AdoptScalars, param: F, grad: F, state: &mut [F]) -> F {
        let mut g = if s.maximize { -grad } else { grad };
        if s.weight_decay != 0.0 && !s.decouple {
            g = add_scaled(g, s.weight_decay, param);
        }
        if s.first {
            state[1] = addcmul(state[1], 1.0, g, g);
            return param;
        }
        let mut p = param;
        if s.weight_decay != 0.0 && s.decouple {
            p = add_scaled(p, -s.lr * s.weight_decay, p);
        }
        // ĝ = clip(g / max(√v, ε), ±c_t);  m ← lerp(m, ĝ, 1 − β₁);  θ ← θ − γm;  v ← β₂v + (1 − β₂)g²
        let v = state[1];
        let eps = F::from_f64(s.eps);
        let root = v.sqrt();
        let denom = if root < eps { eps } else { root };
        let mut normed = g / denom;
        if let Some(c) = s.clip {
            normed = clamp(normed, F::from_f64(-c), F::from_f64(c));
        }
        let m = lerp(state[0], normed, F::from_f64(s.lerp_weight));
        state[0] = m;
        state[1] = ema_sq(v, g, s.beta2, 1.0 - s.beta2);
        add_scaled(p, -s.lr, m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::testing::{close, run_with};

    #[test]
    fn first_step_only_initialises_the_second_moment() {
        let ((p, st), scalar) = run_with(&Adopt::default(), 1.0, &[0.0, 0.0], &[0.0], &[3.0]);
        close(p, 1.0);
        close(st[1], 9.0);
        close(st[0], 0.0);
        assert_eq!(scalar, vec![1.0]);
    }

    #[test]
    fn second_step_normalises_by_the_previous_moment_and_clips() {
        let cfg = Adopt {
            lr: 0.1,
            beta2: 0.5,
            ..Adopt::default()
        };
        // step 2 (counter 1): ĝ = clip(4/√1, ±1^¼ = 1) = 1; m = 0.1; θ = 1 − 0.01; v = 0.5 + 8
        let ((p, st), _) = run_with(&cfg, 1.0, &[0.0, 0.0], &[0.0], &[1.0, 4.0]);
        close(st[0], 0.1);
        close(st[1], 0.5 + 0.5 * 16.0);
        close(p, 1.0 - 0.1 * 0.1);
        // without clipping ĝ = 4
        let unclipped = Adopt {
            clip_exponent: None,
            ..cfg
        };
        let ((p, st), _) = run_with(&unclipped, 1.0, &[0.0, 0.0], &[0.0], &[1.0, 4.0]);
        close(st[0], 0.4);
        close(p, 1.0 - 0.1 * 0.4);
    }
}
