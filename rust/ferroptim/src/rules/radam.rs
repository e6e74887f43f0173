//! RAdam: Adam with a rectified adaptive learning rate.
//!
//! Liu et al., "On the Variance of the Adaptive Learning Rate and Beyond", ICLR 2020. The order
//! of operations matches `torch.optim.radam._single_tensor_radam` (torch 2.11).

use super::ops::AdamMoments;
use crate::element::Float;
use crate::rule::{Rule, ScalarState};

/// RAdam hyperparameters; `Default` gives torch.optim.RAdam's defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RAdam {
    /// Learning rate γ (default 1e-3).
    pub lr: f64,
    /// β₁ (default 0.9).
    pub beta1: f64,
    /// β₂ (default 0.999).
    pub beta2: f64,
    /// ε added to the denominator (default 1e-8).
    pub eps: f64,
    /// Weight decay λ (default 0).
    pub weight_decay: f64,
    /// Apply weight decay as `θ ← θ(1 − γλ)` instead of adding `λθ` to the gradient
    /// (default false).
    pub decoupled_weight_decay: bool,
    /// Maximize the objective instead of minimizing it (default false).
    pub maximize: bool,
}

impl Default for RAdam {
    fn default() -> Self {
        RAdam {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            decoupled_weight_decay: false,
            maximize: false,
        }
    }
}

/// Per-parameter, per-step scalars of [`RAdam`].
#[derive(Debug, Clone, Copy)]
pub struct RAdamScalars {
    moments: AdamMoments,
    bias_correction1: f64,
    lr: f64,
    /// `Some((√(1 − β₂ᵗ), r_t))` when the variance is tractable (ρ_t > 5).
    rectified: Option<(f64, f64)>,
    eps: f64,
}

impl Rule for RAdam {
    type Scalars = RAdamScalars;

    fn state_names(&self) -> &'static [&'static str] {
        &["exp_avg", "exp_avg_sq"]
    }

    fn scalars(&self, scalar_state: &mut [ScalarState], _fresh: bool) -> RAdamScalars {
        let step = scalar_state[0].increment();
        let bias_correction1 = 1.0 - self.beta1.powf(step);
        let bias_correction2 = 1.0 - self.beta2.powf(step);
        // ρ_∞ = 2/(1 − β₂) − 1;  ρ_t = ρ_∞ − 2tβ₂ᵗ/(1 − β₂ᵗ)
        let rho_inf = 2.0 / (1.0 - self.beta2) - 1.0;
        let rho_t = rho_inf - 2.0 * step * self.beta2.powf(step) / bias_correction2;
        let rectified = (rho_t > 5.0).then(|| {
            let rect = ((rho_t - 4.0) * (rho_t - 2.0) * rho_inf
                / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t))
                .powf(0.5);
            (bias_correction2.powf(0.5), rect)
        });
        RAdamScalars {
            moments: AdamMoments::new(
                self.lr,
                (self.beta1, self.beta2),
                self.weight_decay,
                self.decoupled_weight_decay,
                self.maximize,
            ),
            bias_correction1,
            lr: self.lr,
            rectified,
            eps: self.eps,
        }
    }

    #[inline(always)]
    fn update<F: Float>(s: &RAdamScalars, param: F, grad: F, state: &mut [F]) -> F {
        let (p, _, m, v) = s.moments.update(param, grad, state);
        let step = m / F::from_f64(s.bias_correction1) * F::from_f64(s.lr);
        match s.rectified {
            // θ ← θ − γ m̂ · √(1 − β₂ᵗ)/(√v + ε) · r_t  (torch: (1/(√v + ε))·√(1 − β₂ᵗ))
            Some((bc2_sqrt, rect)) => {
                let one = F::from_f64(1.0);
                let adaptive = one / (v.sqrt() + F::from_f64(s.eps)) * F::from_f64(bc2_sqrt);
                p - step * adaptive * F::from_f64(rect)
            }
            // θ ← θ − γ m̂
            None => p - step,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::testing::{close, run};

    #[test]
    fn early_steps_are_sgd_with_momentum() {
        // ρ_t ≤ 5 for the first steps with β₂ = 0.999: θ ← θ − γ m̂.
        let cfg = RAdam {
            lr: 0.1,
            ..RAdam::default()
        };
        let (p, st) = run(&cfg, 1.0, &[0.0, 0.0], &[0.5, 0.5]);
        // m̂₁ = 0.5, m̂₂ = (0.09·0.5·… ) = 0.5 since the gradient is constant
        close(st[0], 0.095);
        close(p, 1.0 - 0.1 * 0.5 - 0.1 * 0.5);
    }

    #[test]
    fn rectified_step_by_hand() {
        // β₂ = 0.5: ρ_∞ = 3 … never tractable; β₂ = 0.9: ρ_∞ = 19, ρ₁ = 19 − 2·0.9/0.1 = 1,
        // ρ₆ > 5. Check step 6 against the formula.
        let cfg = RAdam {
            lr: 0.01,
            beta2: 0.9,
            ..RAdam::default()
        };
        let grads = [1.0; 6];
        let (p5, st5) = run(&cfg, 0.0, &[0.0, 0.0], &grads[..5]);
        let (p6, st6) = run(&cfg, 0.0, &[0.0, 0.0], &grads);
        let (b1, b2, t) = (0.9f64, 0.9f64, 6.0);
        let rho_inf = 2.0 / (1.0 - b2) - 1.0;
        let rho_t = rho_inf - 2.0 * t * b2.powf(t) / (1.0 - b2.powf(t));
        assert!(rho_t > 5.0);
        let rect = ((rho_t - 4.0) * (rho_t - 2.0) * rho_inf
            / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t))
            .sqrt();
        let m_hat = st6[0] / (1.0 - b1.powf(t));
        let adaptive = (1.0 - b2.powf(t)).sqrt() / (st6[1].sqrt() + 1e-8);
        assert!(st5[0] < st6[0]);
        close(p6, p5 - 0.01 * m_hat * adaptive * rect);
    }
}
