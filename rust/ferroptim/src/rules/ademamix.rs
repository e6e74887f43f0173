//! AdEMAMix: Adam with a mixture of a fast and a slow gradient EMA.
//!
//! Pagliardini, Ablin & Grangier, "The AdEMAMix Optimizer: Better, Faster, Older",
//! arXiv:2409.03113 (2024), Algorithm 1, with decoupled (AdamW-style) weight decay and the
//! warmup schedulers of α (linear) and β₃ (linear in the half-life) of the authors' reference
//! implementation (github.com/apple/ml-ademamix, `pytorch/ademamix.py`: names, defaults and
//! schedules). The order of the elementwise operations matches `pytorch_optimizer.AdEMAMix`
//! 4.1.0 with `weight_decouple=True` (the tests' oracle).

use super::ops::{add_scaled, ema_sq, lerp};
use crate::element::Float;
use crate::rule::{Rule, ScalarState};

/// AdEMAMix hyperparameters; `Default` gives the reference implementation's defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdEMAMix {
    /// Learning rate η (default 1e-3).
    pub lr: f64,
    /// β₁, decay of the fast EMA `exp_avg_fast` (default 0.9).
    pub beta1: f64,
    /// β₂, decay of the second moment `exp_avg_sq` (default 0.999).
    pub beta2: f64,
    /// β₃, final decay of the slow EMA `exp_avg_slow` (default 0.9999).
    pub beta3: f64,
    /// α, final weight of the slow EMA (default 2).
    pub alpha: f64,
    /// Steps over which β₃ rises from β₁ to [`AdEMAMix::beta3`], linearly in the EMA's
    /// half-life (default `None`: no warmup).
    pub beta3_warmup: Option<f64>,
    /// Steps over which α rises linearly from 0 to [`AdEMAMix::alpha`] (default `None`).
    pub alpha_warmup: Option<f64>,
    /// ε added to the denominator (default 1e-8).
    pub eps: f64,
    /// Decoupled weight decay λ: `θ ← θ(1 − ηλ)` (default 0).
    pub weight_decay: f64,
    /// Maximize the objective instead of minimizing it (default false).
    pub maximize: bool,
}

impl Default for AdEMAMix {
    fn default() -> Self {
        AdEMAMix {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            beta3: 0.9999,
            alpha: 2.0,
            beta3_warmup: None,
            alpha_warmup: None,
            eps: 1e-8,
            weight_decay: 0.0,
            maximize: false,
        }
    }
}

impl AdEMAMix {
    /// α at (1-based) step `step`: `α·step/T` during the warmup of `T` steps, then α.
    pub fn alpha_at(&self, step: f64) -> f64 {
        match self.alpha_warmup {
            Some(t) if step < t => step / t * self.alpha,
            _ => self.alpha,
        }
    }

    /// β₃ at (1-based) step `step`: during the warmup of `T` steps, the β whose half-life
    /// `ln ½ / ln β − 1` interpolates linearly (weight `step/T`) between those of β₁ and β₃
    /// (`ln(β + 10⁻⁸)` as in the reference); then β₃.
    pub fn beta3_at(&self, step: f64) -> f64 {
        let half_life = |beta: f64| 0.5f64.ln() / (beta + 1e-8).ln() - 1.0;
        match self.beta3_warmup {
            Some(t) if step < t => {
                let a = step / t;
                let h = (1.0 - a) * half_life(self.beta1) + a * half_life(self.beta3);
                0.5f64.powf(1.0 / (h + 1.0))
            }
            _ => self.beta3,
        }
    }
}

/// Per-parameter, per-step scalars of [`AdEMAMix`].
#[derive(Debug, Clone, Copy)]
pub struct AdEMAMixScalars {
    lerp_fast: f64,
    lerp_slow: f64,
    beta2: f64,
    bias_correction1: f64,
    bias_correction2_sqrt: f64,
    alpha: f64,
    eps: f64,
    neg_lr: f64,
    decay_factor: f64,
    decays: bool,
    maximize: bool,
}

impl Rule for AdEMAMix {
    type Scalars = AdEMAMixScalars;

    fn state_names(&self) -> &'static [&'static str] {
        &["exp_avg_fast", "exp_avg_slow", "exp_avg_sq"]
    }

    fn scalars(&self, scalar_state: &mut [ScalarState], _fresh: bool) -> AdEMAMixScalars {
        let step = scalar_state[0].increment();
        AdEMAMixScalars {
            lerp_fast: 1.0 - self.beta1,
            lerp_slow: 1.0 - self.beta3_at(step),
            beta2: self.beta2,
            bias_correction1: 1.0 - self.beta1.powf(step),
            bias_correction2_sqrt: (1.0 - self.beta2.powf(step)).sqrt(),
            alpha: self.alpha_at(step),
            eps: self.eps,
            neg_lr: -self.lr,
            decay_factor: 1.0 - self.weight_decay * self.lr,
            decays: self.weight_decay != 0.0,
            maximize: self.maximize,
        }
    }

    #[inline(always)]
    fn update<F: Float>(s: &AdEMAMixScalars, param: F, grad: F, state: &mut [F]) -> F {
        let g = if s.maximize { -grad } else { grad };
        let p = if s.decays {
            param * F::from_f64(s.decay_factor)
        } else {
            param
        };
        // m₁ ← lerp(m₁, g, 1 − β₁);  m₂ ← lerp(m₂, g, 1 − β₃(t));  ν ← β₂ν + (1 − β₂)g²
        let m1 = lerp(state[0], g, F::from_f64(s.lerp_fast));
        let m2 = lerp(state[1], g, F::from_f64(s.lerp_slow));
        let nu = ema_sq(state[2], g, s.beta2, 1.0 - s.beta2);
        state[0] = m1;
        state[1] = m2;
        state[2] = nu;
        // θ ← θ − η (m₁/(1 − β₁ᵗ) + α(t)·m₂) / (√ν / √(1 − β₂ᵗ) + ε)
        let denom = nu.sqrt_div(F::from_f64(s.bias_correction2_sqrt)) + F::from_f64(s.eps);
        let u = add_scaled(m1 / F::from_f64(s.bias_correction1), s.alpha, m2);
        p + F::from_f64(s.neg_lr) * u / denom
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::testing::{close, run};

    #[test]
    fn two_steps_by_hand() {
        let cfg = AdEMAMix {
            lr: 0.1,
            alpha: 5.0,
            beta3: 0.99,
            weight_decay: 0.5,
            ..AdEMAMix::default()
        };
        let (p, st) = run(&cfg, 1.0, &[0.0; 3], &[2.0, -1.0]);
        // step 1: m₁ = 0.2, m₂ = 0.02, ν = 0.004; denom = √0.004/√0.001 + ε = 2 + ε
        let p1 = 0.95 - 0.1 * (0.2 / 0.1 + 5.0 * 0.02) / (2.0 + 1e-8);
        let (m1, m2) = (0.9 * 0.2 - 0.1, 0.99 * 0.02 - 0.01);
        let nu = 0.999 * 0.004 + 0.001;
        let denom = nu.sqrt() / (1.0 - 0.999f64.powi(2)).sqrt() + 1e-8;
        let p2 = p1 * 0.95 - 0.1 * (m1 / (1.0 - 0.81) + 5.0 * m2) / denom;
        close(st[0], m1);
        close(st[1], m2);
        close(st[2], nu);
        close(p, p2);
    }

    #[test]
    fn warmups_follow_the_reference_schedules() {
        let cfg = AdEMAMix {
            alpha: 8.0,
            alpha_warmup: Some(100.0),
            beta3_warmup: Some(100.0),
            ..AdEMAMix::default()
        };
        close(cfg.alpha_at(25.0), 2.0);
        close(cfg.alpha_at(100.0), 8.0);
        close(cfg.alpha_at(1000.0), 8.0);
        // half-lives (ln ½/ln β − 1) of β₁ = 0.9 and β₃ = 0.9999, halfway between at step 50
        let h = |b: f64| 0.5f64.ln() / (b + 1e-8).ln() - 1.0;
        let mid = 0.5 * h(0.9) + 0.5 * h(0.9999);
        close(cfg.beta3_at(50.0), 0.5f64.powf(1.0 / (mid + 1.0)));
        assert!((cfg.beta3_at(0.0) - 0.9).abs() < 1e-7);
        close(cfg.beta3_at(100.0), 0.9999);
    }
}
