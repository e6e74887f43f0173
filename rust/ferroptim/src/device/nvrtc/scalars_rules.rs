//! The device step scalars ([`DeviceScalars`]) of the rules other than Adam/AdamW, each the
//! C++ of its [`crate::Rule::scalars`] (`rules/*.rs`), checked against it bit for bit on the
//! CPU (`tests_scalars.rs`).

use super::scalars::{DeviceScalars, NO_STEP_SLOTS};
use crate::rules::{Adadelta, Adamax, NAdam, RMSprop, Rprop};

impl DeviceScalars for Adamax {
    // neg_clr = −lr/(1 − β₁ᵗ).
    const STEP_SOURCE: &'static str = r#"
FO_DEV void fo_step_slots(const double* c, const double step, float*, double* out) {
  out[0] = -fo_div(c[0], fo_sub(1.0, fo_pow(c[1], step)));
}
"#;
    const STEP_SLOTS: usize = 1;
    fn step_constants(&self) -> Vec<f64> {
        vec![self.lr, self.beta1]
    }
    fn step_probe(&self) -> Self {
        Adamax {
            lr: 1e-3,
            beta1: 0.9,
            ..*self
        }
    }
}

impl DeviceScalars for NAdam {
    // μ_t = β₁(1 − ½·0.96^(tψ)); mu_product ← round32(mu_product · round32(μ_t)) (the scalar
    // state's `mul`); slots: 1 − β₂ᵗ, −γ(1 − μ_t)/(1 − ∏μ), −γμ_{t+1}/(1 − ∏μ·μ_{t+1}).
    const STEP_SOURCE: &'static str = r#"
FO_DEV double fo_nadam_mu(const double* c, const double t) {
  return fo_mul(c[1], fo_sub(1.0, fo_mul(0.5, fo_pow(0.96, fo_mul(t, c[3])))));
}
FO_DEV void fo_step_slots(const double* c, const double step, float* st, double* out) {
  const double mu = fo_nadam_mu(c, step);
  const double mu_next = fo_nadam_mu(c, fo_add(step, 1.0));
  const float mu_product = (float)fo_mul((double)st[0], (double)(float)mu);
  st[0] = mu_product;
  const double mu_product_next = fo_mul((double)mu_product, mu_next);
  out[0] = fo_sub(1.0, fo_pow(c[2], step));
  out[1] = fo_div(fo_mul(-c[0], fo_sub(1.0, mu)), fo_sub(1.0, (double)mu_product));
  out[2] = fo_div(fo_mul(-c[0], mu_next), fo_sub(1.0, mu_product_next));
}
"#;
    const STEP_SLOTS: usize = 3;
    fn step_constants(&self) -> Vec<f64> {
        vec![self.lr, self.beta1, self.beta2, self.momentum_decay]
    }
    fn step_probe(&self) -> Self {
        NAdam {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            momentum_decay: 4e-3,
            ..*self
        }
    }
    fn extra_initial(&self) -> Vec<f64> {
        vec![1.0]
    }
}

/// Rules whose scalars do not depend on the step: the device only increments `step`.
macro_rules! step_only {
    ($($rule:ty),*) => {$(
        impl DeviceScalars for $rule {
            const STEP_SOURCE: &'static str = NO_STEP_SLOTS;
            const STEP_SLOTS: usize = 0;
            fn step_constants(&self) -> Vec<f64> {
                Vec::new()
            }
            fn step_probe(&self) -> Self {
                *self
            }
        }
    )*};
}

step_only!(Adadelta, RMSprop, Rprop);
