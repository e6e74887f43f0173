//! LAMB: layer-wise adaptive moments.
//!
//! You et al., "Large Batch Optimization for Deep Learning: Training BERT in 76 minutes",
//! ICLR 2020, Algorithm 2: an Adam direction `r` per tensor, scaled by the trust ratio
//! `φ(‖θ‖)/‖r‖`. The variant and the order of operations are those of
//! `pytorch_optimizer.Lamb` 4.1.0 (the tests' oracle, after cybertronai/pytorch-lamb): the
//! first moment is bias-corrected through the step size and the second is not,
//! `φ(z) = min(z, 10)`, the ratio is `φ(‖θ‖)/(‖r‖ + ε)` (1 when either norm is 0), and by
//! default the weight decay is decoupled (`θ ← θ(1 − γλ)` before the norms); with
//! `weight_decouple: false` it is the paper's `r + λθ` inside the direction.
//!
//! Needs two per-tensor norms: the driver sums [`Rule::norm_terms`] over the tensor first
//! (`driver/norms.rs`).

use super::ops::{add_scaled, ema_sq};
use crate::element::Float;
use crate::rule::{Rule, ScalarState, MAX_NORMS};

/// `φ`'s bound on the parameter norm (`pytorch_optimizer`'s and pytorch-lamb's `clamp`).
pub const LAMB_MAX_WEIGHT_NORM: f64 = 10.0;

/// LAMB hyperparameters; `Default` gives `pytorch_optimizer.Lamb`'s defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lamb {
    /// Learning rate γ (default 1e-3).
    pub lr: f64,
    /// β₁, decay of the first moment `exp_avg` (default 0.9).
    pub beta1: f64,
    /// β₂, decay of the second moment `exp_avg_sq` (default 0.999).
    pub beta2: f64,
    /// ε added to `√v` and to `‖r‖` (default 1e-6).
    pub eps: f64,
    /// Weight decay λ (default 0).
    pub weight_decay: f64,
    /// Decoupled weight decay `θ ← θ(1 − γλ)` (default true); false: `r ← r + λθ`.
    pub weight_decouple: bool,
    /// Weight the new gradient by `1 − β₁` in the first moment (default true); false: by 1.
    pub grad_averaging: bool,
    /// Trust ratio 1: plain Adam-like steps (default false).
    pub adam: bool,
    /// Maximize the objective instead of minimizing it (default false).
    pub maximize: bool,
}

impl Default for Lamb {
    fn default() -> Self {
        Lamb {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-6,
            weight_decay: 0.0,
            weight_decouple: true,
            grad_averaging: true,
            adam: false,
            maximize: false,
        }
    }
}

/// Per-parameter, per-step scalars of [`Lamb`].
#[derive(Debug, Clone, Copy)]
pub struct LambScalars {
    beta1: f64,
    new_weight: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    decay_factor: f64,
    weight_decouple: bool,
    adam: bool,
    maximize: bool,
    step_size: f64,
    /// `φ(‖θ‖)/(‖r‖ + ε)`, set by [`Rule::with_norms`] (1 until then, and with `adam`).
    trust_ratio: f64,
}

impl LambScalars {
    /// `(ε, step_size)`: what the trust ratio and the update's `−step_size · trust` need beside
    /// the norms (the device path's trust-ratio kernel, `device/nvrtc/norms.rs`).
    pub(crate) fn trust_constants(&self) -> (f64, f64) {
        (self.eps, self.step_size)
    }

    /// The new moments, the (decayed) parameter and the direction `r`, from the old state.
    #[inline(always)]
    fn direction<F: Float>(&self, param: F, grad: F, state: &[F]) -> (F, F, F, F) {
        let g = if self.maximize { -grad } else { grad };
        // m ← β₁m + (1 − β₁)g;  v ← β₂v + (1 − β₂)g²
        let m = add_scaled(state[0] * F::from_f64(self.beta1), self.new_weight, g);
        let v = ema_sq(state[1], g, self.beta2, 1.0 - self.beta2);
        let decays = self.weight_decay != 0.0;
        let p = if decays && self.weight_decouple {
            param * F::from_f64(self.decay_factor)
        } else {
            param
        };
        // r = m / (√v + ε) (+ λθ)
        let mut r = m / (v.sqrt() + F::from_f64(self.eps));
        if decays && !self.weight_decouple {
            r = add_scaled(r, self.weight_decay, p);
        }
        (p, m, v, r)
    }
}

impl Rule for Lamb {
    type Scalars = LambScalars;

    fn state_names(&self) -> &'static [&'static str] {
        &["exp_avg", "exp_avg_sq"]
    }

    fn scalars(&self, scalar_state: &mut [ScalarState], _fresh: bool) -> LambScalars {
        let step = scalar_state[0].increment();
        LambScalars {
            beta1: self.beta1,
            new_weight: if self.grad_averaging {
                1.0 - self.beta1
            } else {
                1.0
            },
            beta2: self.beta2,
            eps: self.eps,
            weight_decay: self.weight_decay,
            decay_factor: 1.0 - self.weight_decay * self.lr,
            weight_decouple: self.weight_decouple,
            adam: self.adam,
            maximize: self.maximize,
            step_size: self.lr / (1.0 - self.beta1.powf(step)),
            trust_ratio: 1.0,
        }
    }

    /// ‖θ‖ and ‖r‖, unless `adam`.
    fn norms(s: &LambScalars) -> usize {
        if s.adam {
            0
        } else {
            2
        }
    }

    #[inline(always)]
    fn norm_terms<F: Float>(s: &LambScalars, param: F, grad: F, state: &[F]) -> [F; MAX_NORMS] {
        let (p, _, _, r) = s.direction(param, grad, state);
        [p, r]
    }

    fn with_norms(s: &mut LambScalars, sums: [f64; MAX_NORMS]) {
        let weight_norm = sums[0].sqrt().min(LAMB_MAX_WEIGHT_NORM);
        let direction_norm = sums[1].sqrt();
        s.trust_ratio = if weight_norm == 0.0 || direction_norm == 0.0 {
            1.0
        } else {
            weight_norm / (direction_norm + s.eps)
        };
    }

    #[inline(always)]
    fn update<F: Float>(s: &LambScalars, param: F, grad: F, state: &mut [F]) -> F {
        let (p, m, v, r) = s.direction(param, grad, state);
        state[0] = m;
        state[1] = v;
        // θ ← θ − (γ / (1 − β₁ᵗ)) · trust · r
        add_scaled(p, -s.step_size * s.trust_ratio, r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One step of a tensor by hand: returns the parameters.
    fn step(cfg: &Lamb, params: &[f64], grads: &[f64]) -> Vec<f64> {
        let mut scalar = [ScalarState::new(0.0, tch::Kind::Double)];
        let mut s = cfg.scalars(&mut scalar, true);
        let mut sums = [0.0; MAX_NORMS];
        for (&p, &g) in params.iter().zip(grads) {
            let t = Lamb::norm_terms(&s, p, g, &[0.0, 0.0]);
            sums[0] += t[0] * t[0];
            sums[1] += t[1] * t[1];
        }
        Lamb::with_norms(&mut s, sums);
        let mut st = [0.0, 0.0];
        params
            .iter()
            .zip(grads)
            .map(|(&p, &g)| {
                st = [0.0, 0.0];
                Lamb::update(&s, p, g, &mut st)
            })
            .collect()
    }

    #[test]
    fn first_step_scales_the_direction_by_the_trust_ratio() {
        let cfg = Lamb {
            lr: 0.1,
            ..Lamb::default()
        };
        // m = 0.1g, v = 0.001g², r = 0.1g/(√0.001|g| + ε); ‖θ‖ = 5
        let (params, grads) = ([3.0, 4.0], [1.0, -2.0]);
        let r: Vec<f64> = grads
            .iter()
            .map(|g: &f64| 0.1 * g / (0.001f64.sqrt() * g.abs() + 1e-6))
            .collect();
        let trust = 5.0 / ((r[0] * r[0] + r[1] * r[1]).sqrt() + 1e-6);
        let got = step(&cfg, &params, &grads);
        for k in 0..2 {
            crate::rules::testing::close(got[k], params[k] - 0.1 / 0.1 * trust * r[k]);
        }
    }

    #[test]
    fn coupled_decay_and_clamped_weight_norm() {
        let cfg = Lamb {
            lr: 0.1,
            weight_decay: 0.5,
            weight_decouple: false,
            ..Lamb::default()
        };
        // ‖θ‖ = 50 is clamped to 10; r = m/(√v + ε) + 0.5θ
        let (params, grads) = ([30.0, 40.0], [1.0, 1.0]);
        let r: Vec<f64> = params
            .iter()
            .map(|p| 0.1 / (0.001f64.sqrt() + 1e-6) + 0.5 * p)
            .collect();
        let trust = 10.0 / ((r[0] * r[0] + r[1] * r[1]).sqrt() + 1e-6);
        let got = step(&cfg, &params, &grads);
        for k in 0..2 {
            crate::rules::testing::close(got[k], params[k] - trust * r[k]);
        }
    }
}
