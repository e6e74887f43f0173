//! LARS: layer-wise adaptive rate scaling.
//!
//! You, Gitman & Ginsburg, "Large Batch Training of Convolutional Networks", arXiv:1708.03888
//! (2017), Algorithm 1: the gradient plus weight decay, scaled per tensor by the local learning
//! rate `η‖θ‖/(‖g‖ + λ‖θ‖)`, then SGD with momentum. The variant and the order of operations
//! are those of `pytorch_optimizer.LARS` 4.1.0 (the tests' oracle): the global learning rate
//! multiplies the momentum buffer's output (as `torch.optim.SGD`), the buffer starts at zero,
//! and tensors for which [`Lars::trust`] is false (the Python class: those of one dimension or
//! fewer, biases and norm weights) take plain SGD steps without weight decay or scaling.
//!
//! Needs two per-tensor norms: the driver sums [`Rule::norm_terms`] over the tensor first
//! (`driver/norms.rs`).

use super::ops::add_scaled;
use crate::element::Float;
use crate::rule::{Rule, ScalarState, MAX_NORMS};

/// LARS hyperparameters; `Default` gives `pytorch_optimizer.LARS`'s defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lars {
    /// Learning rate γ (default 1e-3).
    pub lr: f64,
    /// Momentum μ; 0 keeps no `momentum_buffer` (default 0.9).
    pub momentum: f64,
    /// Dampening of the new gradient in the buffer (default 0).
    pub dampening: f64,
    /// Weight decay β (default 0).
    pub weight_decay: f64,
    /// Trust coefficient η (default 1e-3).
    pub trust_coefficient: f64,
    /// Nesterov momentum (default false).
    pub nesterov: bool,
    /// Apply the weight decay and the trust ratio (default true; false for the tensors the
    /// reference excludes).
    pub trust: bool,
    /// Maximize the objective instead of minimizing it (default false).
    pub maximize: bool,
}

impl Default for Lars {
    fn default() -> Self {
        Lars {
            lr: 1e-3,
            momentum: 0.9,
            dampening: 0.0,
            weight_decay: 0.0,
            trust_coefficient: 1e-3,
            nesterov: false,
            trust: true,
            maximize: false,
        }
    }
}

/// Per-parameter, per-step scalars of [`Lars`].
#[derive(Debug, Clone, Copy)]
pub struct LarsScalars {
    cfg: Lars,
    /// `η‖θ‖/(‖g‖ + β‖θ‖)` (1 if `‖θ‖` or the denominator is 0), set by [`Rule::with_norms`].
    trust_ratio: f64,
}

impl LarsScalars {
    /// `(weight_decay, trust_coefficient)`: what the trust ratio needs beside the norms (the
    /// device path's trust-ratio kernel, `device/nvrtc/norms.rs`).
    pub(crate) fn trust_constants(&self) -> (f64, f64) {
        (self.cfg.weight_decay, self.cfg.trust_coefficient)
    }
}

impl Rule for Lars {
    type Scalars = LarsScalars;

    fn state_names(&self) -> &'static [&'static str] {
        if self.momentum > 0.0 {
            &["momentum_buffer"]
        } else {
            &[]
        }
    }

    /// None: LARS keeps no step counter.
    fn scalar_state_names(&self) -> &'static [&'static str] {
        &[]
    }

    fn scalars(&self, _scalar_state: &mut [ScalarState], _fresh: bool) -> LarsScalars {
        LarsScalars {
            cfg: *self,
            trust_ratio: 1.0,
        }
    }

    /// ‖θ‖ and ‖g‖ where the trust ratio applies.
    fn norms(s: &LarsScalars) -> usize {
        if s.cfg.trust {
            2
        } else {
            0
        }
    }

    #[inline(always)]
    fn norm_terms<F: Float>(_s: &LarsScalars, param: F, grad: F, _state: &[F]) -> [F; MAX_NORMS] {
        [param, grad] // ‖−g‖ = ‖g‖: `maximize` does not matter here
    }

    fn with_norms(s: &mut LarsScalars, sums: [f64; MAX_NORMS]) {
        let (param_norm, grad_norm) = (sums[0].sqrt(), sums[1].sqrt());
        let denom = grad_norm + s.cfg.weight_decay * param_norm;
        s.trust_ratio = if param_norm > 0.0 && denom > 0.0 {
            s.cfg.trust_coefficient * param_norm / denom
        } else {
            1.0
        };
    }

    #[inline(always)]
    fn update<F: Float>(s: &LarsScalars, param: F, grad: F, state: &mut [F]) -> F {
        let c = &s.cfg;
        let mut g = if c.maximize { -grad } else { grad };
        if c.trust {
            // g ← (g + βθ) · trust
            g = add_scaled(g, c.weight_decay, param) * F::from_f64(s.trust_ratio);
        }
        if c.momentum > 0.0 {
            // b ← μb + (1 − dampening)g;  g ← g + μb (Nesterov) or b
            let b = add_scaled(state[0] * F::from_f64(c.momentum), 1.0 - c.dampening, g);
            state[0] = b;
            g = if c.nesterov {
                add_scaled(g, c.momentum, b)
            } else {
                b
            };
        }
        add_scaled(param, -c.lr, g)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::testing::close;

    #[test]
    fn trust_ratio_and_momentum_by_hand() {
        let cfg = Lars {
            lr: 0.1,
            weight_decay: 0.5,
            ..Lars::default()
        };
        let (params, grads) = ([3.0, 4.0], [0.0, 2.0]);
        let mut s = cfg.scalars(&mut [], true);
        // ‖θ‖ = 5, ‖g‖ = 2: trust = 1e-3·5/(2 + 2.5)
        Lars::with_norms(&mut s, [25.0, 4.0]);
        let trust = 1e-3 * 5.0 / 4.5;
        for k in 0..2 {
            let mut b = [1.0];
            let p = Lars::update(&s, params[k], grads[k], &mut b);
            let g = (grads[k] + 0.5 * params[k]) * trust;
            close(b[0], 0.9 + g);
            close(p, params[k] - 0.1 * (0.9 + g));
        }
        let flat = Lars {
            trust: false,
            ..cfg
        };
        let s = flat.scalars(&mut [], true);
        assert_eq!(Lars::norms(&s), 0);
        let mut b = [0.0];
        close(Lars::update(&s, 1.0, 2.0, &mut b), 1.0 - 0.1 * 2.0);
    }
}
