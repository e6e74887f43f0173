//! Adam and AdamW.
//!
//! Adam: Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015. AdamW (decoupled
//! weight decay): Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019.
//! AMSGrad: Reddi et al., "On the Convergence of Adam and Beyond", ICLR 2018.
//! The order of operations matches `torch.optim.adam._single_tensor_adam` (torch 2.11).

use super::ops::AdamMoments;
use crate::element::Float;
use crate::rule::{Rule, ScalarState};

/// Adam / AdamW hyperparameters; `Default` gives torch.optim.Adam's defaults.
///
/// Use `decoupled_weight_decay: true` (and typically `weight_decay: 1e-2`) for AdamW, see
/// [`Adam::adamw`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Adam {
    /// Learning rate γ (default 1e-3).
    pub lr: f64,
    /// β₁, decay of the first moment `exp_avg` (default 0.9).
    pub beta1: f64,
    /// β₂, decay of the second moment `exp_avg_sq` (default 0.999).
    pub beta2: f64,
    /// ε added to the denominator (default 1e-8).
    pub eps: f64,
    /// Weight decay λ (default 0).
    pub weight_decay: f64,
    /// Keep `max_exp_avg_sq` and use the AMSGrad denominator (default false).
    pub amsgrad: bool,
    /// Maximize the objective instead of minimizing it (default false).
    pub maximize: bool,
    /// Apply weight decay as `θ ← θ(1 − γλ)` (AdamW) instead of adding `λθ` to the gradient.
    pub decoupled_weight_decay: bool,
}

impl Default for Adam {
    fn default() -> Self {
        Adam {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            amsgrad: false,
            maximize: false,
            decoupled_weight_decay: false,
        }
    }
}

impl Adam {
    /// torch.optim.AdamW's defaults: Adam with decoupled weight decay 1e-2.
    pub fn adamw() -> Self {
        Adam {
            weight_decay: 1e-2,
            decoupled_weight_decay: true,
            ..Adam::default()
        }
    }
}

/// Per-parameter, per-step scalars of [`Adam`].
#[derive(Debug, Clone, Copy)]
pub struct AdamScalars {
    moments: AdamMoments,
    neg_step_size: f64,
    bias_correction2_sqrt: f64,
    eps: f64,
    amsgrad: bool,
}

impl Rule for Adam {
    type Scalars = AdamScalars;

    fn state_names(&self) -> &'static [&'static str] {
        if self.amsgrad {
            &["exp_avg", "exp_avg_sq", "max_exp_avg_sq"]
        } else {
            &["exp_avg", "exp_avg_sq"]
        }
    }

    fn scalars(&self, scalar_state: &mut [ScalarState], _fresh: bool) -> AdamScalars {
        let step = scalar_state[0].increment();
        let bias_correction1 = 1.0 - self.beta1.powf(step);
        let bias_correction2 = 1.0 - self.beta2.powf(step);
        AdamScalars {
            moments: AdamMoments::new(
                self.lr,
                (self.beta1, self.beta2),
                self.weight_decay,
                self.decoupled_weight_decay,
                self.maximize,
            ),
            neg_step_size: -(self.lr / bias_correction1),
            bias_correction2_sqrt: bias_correction2.powf(0.5),
            eps: self.eps,
            amsgrad: self.amsgrad,
        }
    }

    #[inline(always)]
    fn update<F: Float>(s: &AdamScalars, param: F, grad: F, state: &mut [F]) -> F {
        // m ← lerp(m, g, 1 − β₁);  v ← β₂v + (1 − β₂)g²
        let (p, _, m, v) = s.moments.update(param, grad, state);
        let v_hat = if s.amsgrad {
            let v_max = state[2].max_nan(v);
            state[2] = v_max;
            v_max
        } else {
            v
        };
        // θ ← θ − (γ / (1 − β₁ᵗ)) · m / (√v̂ / √(1 − β₂ᵗ) + ε)
        let denom = v_hat.sqrt_div(F::from_f64(s.bias_correction2_sqrt)) + F::from_f64(s.eps);
        p + F::from_f64(s.neg_step_size) * m / denom
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `steps` updates of one element in f64, returning the parameter and state.
    fn run(cfg: Adam, p0: f64, grads: &[f64]) -> (f64, Vec<f64>) {
        let mut p = p0;
        let mut state = vec![0.0; cfg.state_names().len()];
        let mut step = [ScalarState::new(0.0, tch::Kind::Double)];
        for (t, &g) in grads.iter().enumerate() {
            let s = cfg.scalars(&mut step, t == 0);
            p = Adam::update(&s, p, g, &mut state);
        }
        (p, state)
    }

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() <= 1e-12 * b.abs().max(1.0), "{a} != {b}");
    }

    #[test]
    fn first_step_moves_by_lr_times_sign() {
        // Step 1: m = 0.1 g, v = 0.001 g², m̂ = g, v̂ = g² ⇒ Δθ = −lr·g/(|g| + ε).
        let (p, st) = run(Adam::default(), 1.0, &[0.5]);
        close(p, 1.0 - 1e-3 * 0.5 / (0.5 + 1e-8));
        close(st[0], 0.05);
        close(st[1], 0.001 * 0.25);
    }

    #[test]
    fn two_steps_by_hand() {
        let cfg = Adam {
            lr: 0.1,
            ..Adam::default()
        };
        let (p, st) = run(cfg, 1.0, &[0.5, -1.0]);
        // step 1: m1 = 0.05, v1 = 0.00025, p1 = 1 − 0.1·0.5/(0.5 + 1e-8)
        let p1 = 1.0 - 0.1 * 0.5 / (0.5 + 1e-8);
        // step 2: m2 = 0.05 + 0.1(−1 − 0.05) = −0.055; v2 = 0.999·0.00025 + 0.001 = 0.00124975
        let (m2, v2) = (-0.055, 0.999 * 0.00025 + 0.001);
        let step_size = 0.1 / (1.0 - 0.9f64.powi(2));
        let denom = v2.sqrt() / (1.0 - 0.999f64.powi(2)).sqrt() + 1e-8;
        close(st[0], m2);
        close(st[1], v2);
        close(p, p1 - step_size * m2 / denom);
    }

    #[test]
    fn amsgrad_keeps_the_running_maximum() {
        let cfg = Adam {
            amsgrad: true,
            lr: 0.1,
            ..Adam::default()
        };
        let (p, st) = run(cfg, 0.0, &[2.0, 0.0]);
        let v1 = 0.001 * 4.0;
        let v2 = 0.999 * v1;
        close(st[1], v2);
        close(st[2], v1);
        // step 2 uses max(v1, v2) = v1
        let p1 = -0.1 * 2.0 / (2.0 + 1e-8);
        let m2 = 0.2 * 0.9;
        let denom = v1.sqrt() / (1.0 - 0.999f64.powi(2)).sqrt() + 1e-8;
        close(p, p1 - 0.1 / (1.0 - 0.81) * m2 / denom);
    }

    #[test]
    fn maximize_negates_the_gradient() {
        let (p, _) = run(
            Adam {
                maximize: true,
                ..Adam::default()
            },
            1.0,
            &[0.5],
        );
        close(p, 1.0 + 1e-3 * 0.5 / (0.5 + 1e-8));
    }

    #[test]
    fn coupled_weight_decay_adds_to_the_gradient() {
        // g' = g + λθ = 0.5 + 0.1·2 = 0.7
        let cfg = Adam {
            weight_decay: 0.1,
            ..Adam::default()
        };
        let (p, st) = run(cfg, 2.0, &[0.5]);
        close(st[0], 0.07);
        close(p, 2.0 - 1e-3 * 0.7 / (0.7 + 1e-8));
    }

    #[test]
    fn decoupled_weight_decay_scales_the_parameter() {
        // AdamW: θ ← θ(1 − γλ) then the Adam step with the raw gradient.
        let cfg = Adam {
            lr: 0.01,
            ..Adam::adamw()
        };
        let (p, st) = run(cfg, 2.0, &[0.5]);
        close(st[0], 0.05);
        close(p, 2.0 * (1.0 - 0.01 * 0.01) - 0.01 * 0.5 / (0.5 + 1e-8));
    }
}
