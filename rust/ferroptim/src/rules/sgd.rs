//! Stochastic gradient descent with momentum, dampening, Nesterov momentum and weight decay.
//!
//! Momentum as formulated by Sutskever et al., "On the importance of initialization and
//! momentum in deep learning", ICML 2013. The order of operations matches
//! `torch.optim.sgd._single_tensor_sgd` (torch 2.11), including that the first step initialises
//! `momentum_buffer` with the gradient.

use super::ops::add_scaled;
use crate::element::Float;
use crate::rule::{Rule, ScalarState};

/// SGD hyperparameters; `Default` gives torch.optim.SGD's defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sgd {
    /// Learning rate γ (default 1e-3).
    pub lr: f64,
    /// Momentum factor μ (default 0: no `momentum_buffer` is kept).
    pub momentum: f64,
    /// Dampening τ for momentum (default 0).
    pub dampening: f64,
    /// Weight decay λ, added to the gradient as `λθ` (default 0).
    pub weight_decay: f64,
    /// Use Nesterov momentum (default false).
    pub nesterov: bool,
    /// Maximize the objective instead of minimizing it (default false).
    pub maximize: bool,
}

impl Default for Sgd {
    fn default() -> Self {
        Sgd {
            lr: 1e-3,
            momentum: 0.0,
            dampening: 0.0,
            weight_decay: 0.0,
            nesterov: false,
            maximize: false,
        }
    }
}

/// Per-parameter, per-step scalars of [`Sgd`].
#[derive(Debug, Clone, Copy)]
pub struct SgdScalars {
    neg_lr: f64,
    momentum: f64,
    one_minus_dampening: f64,
    weight_decay: f64,
    nesterov: bool,
    maximize: bool,
    fresh: bool,
}

impl Rule for Sgd {
    type Scalars = SgdScalars;

    fn state_names(&self) -> &'static [&'static str] {
        if self.momentum != 0.0 {
            &["momentum_buffer"]
        } else {
            &[]
        }
    }

    fn scalar_state_names(&self) -> &'static [&'static str] {
        &[]
    }

    fn scalars(&self, _scalar_state: &mut [ScalarState], fresh: bool) -> SgdScalars {
        SgdScalars {
            neg_lr: -self.lr,
            momentum: self.momentum,
            one_minus_dampening: 1.0 - self.dampening,
            weight_decay: self.weight_decay,
            nesterov: self.nesterov,
            maximize: self.maximize,
            fresh,
        }
    }

    #[inline(always)]
    fn update<F: Float>(s: &SgdScalars, param: F, grad: F, state: &mut [F]) -> F {
        let mut g = if s.maximize { -grad } else { grad };
        if s.weight_decay != 0.0 {
            g = add_scaled(g, s.weight_decay, param);
        }
        if s.momentum != 0.0 {
            // b ← g on the first step, else b ← μb + (1 − τ)g
            let buf = if s.fresh {
                g
            } else {
                add_scaled(state[0] * F::from_f64(s.momentum), s.one_minus_dampening, g)
            };
            state[0] = buf;
            g = if s.nesterov {
                add_scaled(g, s.momentum, buf)
            } else {
                buf
            };
        }
        add_scaled(param, s.neg_lr, g)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(cfg: Sgd, p0: f64, grads: &[f64]) -> (f64, Vec<f64>) {
        let mut p = p0;
        let mut state = vec![0.0; cfg.state_names().len()];
        for (t, &g) in grads.iter().enumerate() {
            p = Sgd::update(&cfg.scalars(&mut [], t == 0), p, g, &mut state);
        }
        (p, state)
    }

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() <= 1e-12 * b.abs().max(1.0), "{a} != {b}");
    }

    #[test]
    fn plain_sgd() {
        let (p, st) = run(
            Sgd {
                lr: 0.1,
                ..Sgd::default()
            },
            1.0,
            &[0.5, 0.25],
        );
        assert!(st.is_empty());
        close(p, 1.0 - 0.05 - 0.025);
    }

    #[test]
    fn momentum_with_dampening() {
        let cfg = Sgd {
            lr: 0.1,
            momentum: 0.9,
            dampening: 0.5,
            ..Sgd::default()
        };
        let (p, st) = run(cfg, 1.0, &[1.0, 2.0]);
        // b1 = g1 = 1 (no dampening on the first step); b2 = 0.9 + 0.5·2 = 1.9
        close(st[0], 1.9);
        close(p, 1.0 - 0.1 * 1.0 - 0.1 * 1.9);
    }

    #[test]
    fn nesterov_with_weight_decay_and_maximize() {
        let cfg = Sgd {
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 0.1,
            nesterov: true,
            maximize: true,
            ..Sgd::default()
        };
        let (p, st) = run(cfg, 1.0, &[1.0, 1.0]);
        // step 1: g = −1 + 0.1·1 = −0.9; b = −0.9; g_n = −0.9 + 0.9·(−0.9) = −1.71; p = 1.171
        let p1 = 1.0 + 0.1 * 1.71;
        // step 2: g = −1 + 0.1·p1; b = 0.9·(−0.9) + g; g_n = g + 0.9 b
        let g2 = -1.0 + 0.1 * p1;
        let b2 = 0.9 * -0.9 + g2;
        close(st[0], b2);
        close(p, p1 - 0.1 * (g2 + 0.9 * b2));
    }
}
