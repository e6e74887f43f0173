//! Adafactor: second moments factored into row and column statistics.
//!
//! Shazeer & Stern, "Adafactor: Adaptive Learning Rates with Sublinear Memory Cost" (ICML
//! 2018), in the variant of `torch.optim.Adafactor` (torch 2.11): relative step size
//! `ρ_t = min(lr, 1/√t)`, decoupled weight decay `θ ← θ(1 − lr·λ)`, `β̂₂_t = 1 − t^τ`
//! (`τ = beta2_decay`), no first moment, update clipping by `d`, and `ε₁` applied to the
//! variance estimate rather than to the squared gradient. A parameter with more than one
//! dimension keeps the row means `row_var` (shape `[…, m, 1]`) and column means `col_var`
//! (shape `[…, 1, n]`) of its squared gradient over its last two dimensions; one with at most
//! one dimension keeps the full `variance` (its own shape).
//!
//! The operations are ATen's, in the order of torch's single-tensor implementation
//! (`_single_tensor_adafactor`), so results are bit-identical to torch's for any dtype and
//! device.

use super::{
    add_alpha_, check_like, check_param, check_scalar, inv_scale, scalar, scalar_, unscale_,
    vector_norm, Lr, ScalarOp,
};
use crate::error::{Error, Result};
use tch::{Kind, Tensor};

/// Adafactor hyperparameters, named as in `torch.optim.Adafactor`; `Default` gives torch's
/// defaults.
#[derive(Debug, Clone)]
pub struct Adafactor {
    /// Learning rate: the cap of the relative step size `ρ_t` and the weight-decay factor
    /// (default 1e-2).
    pub lr: Lr,
    /// τ in `β̂₂_t = 1 − t^τ` (default −0.8; must be ≤ 0).
    pub beta2_decay: f64,
    /// ε₁, the floor of the variance estimate's square root; `None` (default) takes the
    /// machine epsilon of the group's first parameter's dtype, as torch does.
    pub eps1: Option<f64>,
    /// ε₂, the floor of a parameter's RMS when scaling its step (default 1e-3).
    pub eps2: f64,
    /// Clipping threshold d of the update's RMS (default 1.0).
    pub d: f64,
    /// Decoupled weight decay λ (default 0).
    pub weight_decay: f64,
    /// Maximize the objective (default false).
    pub maximize: bool,
}

impl Default for Adafactor {
    fn default() -> Self {
        Adafactor {
            lr: Lr::Float(1e-2),
            beta2_decay: -0.8,
            eps1: None,
            eps2: 1e-3,
            d: 1.0,
            weight_decay: 0.0,
            maximize: false,
        }
    }
}

/// One parameter's tensors: updated in place.
#[derive(Debug)]
pub struct AdafactorParam {
    /// The parameter θ (float16, bfloat16, float32 or float64; any device).
    pub param: Tensor,
    /// Its dense gradient (same shape, dtype, device).
    pub grad: Tensor,
    /// `step`: the step count, a one-element tensor (torch: float32 0-d on the CPU).
    pub step: Tensor,
    /// `row_var`, shape `grad.shape` with the last dimension 1, when `grad.dim() > 1`.
    pub row_var: Option<Tensor>,
    /// `col_var`, shape `grad.shape` with the second-to-last dimension 1, when
    /// `grad.dim() > 1`.
    pub col_var: Option<Tensor>,
    /// `variance`, shape `grad.shape`, when `grad.dim() <= 1`.
    pub variance: Option<Tensor>,
}

/// A parameter group: hyperparameters and the parameters that have a gradient.
#[derive(Debug)]
pub struct AdafactorGroup {
    /// The group's hyperparameters.
    pub hyper: Adafactor,
    /// Its parameters.
    pub params: Vec<AdafactorParam>,
}

/// The state layout of a parameter whose gradient has `dims` dimensions: `true` when its
/// second moment is factored (`row_var`, `col_var`), `false` for a full `variance`.
pub fn is_factored(dims: usize) -> bool {
    dims > 1
}

/// `row_var`'s and `col_var`'s shapes for a gradient of shape `shape` (factored only).
pub fn factor_shapes(shape: &[i64]) -> (Vec<i64>, Vec<i64>) {
    let (mut row, mut col) = (shape.to_vec(), shape.to_vec());
    let n = shape.len();
    row[n - 1] = 1;
    col[n - 2] = 1;
    (row, col)
}

fn missing(what: &str, group: usize, index: usize, factored: bool) -> Error {
    Error::StateMismatch {
        what: super::label(what, group, index),
        expected: if factored {
            "row_var and col_var for a parameter of more than one dimension".into()
        } else {
            "variance for a parameter of at most one dimension".into()
        },
        got: "none".into(),
    }
}

fn validate(groups: &[AdafactorGroup]) -> Result<()> {
    for (g, group) in groups.iter().enumerate() {
        for (i, p) in group.params.iter().enumerate() {
            check_param(&p.param, g, i)?;
            let shape = p.param.size();
            check_like(&p.grad, &p.param, &shape, false, "grad", g, i)?;
            check_scalar(&p.step, "step", g, i)?;
            if is_factored(shape.len()) {
                let (row, col) = factor_shapes(&shape);
                let row_var = p
                    .row_var
                    .as_ref()
                    .ok_or_else(|| missing("row_var", g, i, true))?;
                let col_var = p
                    .col_var
                    .as_ref()
                    .ok_or_else(|| missing("col_var", g, i, true))?;
                check_like(row_var, &p.param, &row, false, "row_var", g, i)?;
                check_like(col_var, &p.param, &col, false, "col_var", g, i)?;
            } else {
                let variance = p
                    .variance
                    .as_ref()
                    .ok_or_else(|| missing("variance", g, i, false))?;
                check_like(variance, &p.param, &shape, false, "variance", g, i)?;
            }
        }
    }
    Ok(())
}

/// Machine epsilon of a floating dtype (`torch.finfo(dtype).eps`).
fn finfo_eps(kind: Kind) -> f64 {
    match kind {
        Kind::Half => 9.765625e-4,
        Kind::BFloat16 => 0.0078125,
        Kind::Float => f32::EPSILON as f64,
        _ => f64::EPSILON,
    }
}

/// `tensor.norm(2).item()`: torch's `norm` is `linalg.vector_norm(·, 2)` over all elements.
fn norm2(t: &Tensor) -> Result<f64> {
    Ok(vector_norm(t, 2.0, None, false)?.f_double_value(&[])?)
}

/// `torch.norm(grad, dim=dim, keepdim=True).square_().div_(grad.size(dim))`: the mean of
/// the squared gradient along `dim`.
fn mean_square(grad: &Tensor, dim: i64, len: i64) -> Result<Tensor> {
    let mut m = vector_norm(grad, 2.0, Some(dim), true)?;
    let _ = m.f_square_()?;
    scalar_(&m, ScalarOp::Div, len as f64)?;
    Ok(m)
}

/// One Adafactor step for every parameter of every group, as
/// `torch.optim.Adafactor.step()` (for-loop implementation) does; the step counters, the
/// moments and the parameters are updated in place.
///
/// # Errors
/// Before anything is modified: a sparse gradient or parameter, a non-float parameter, a
/// gradient or moment whose shape, dtype or device does not match (the layout above), a
/// missing moment, or a `step` that is not a one-element tensor. Errors from libtorch during
/// the update (e.g. out of memory) are returned as [`Error::Torch`].
pub fn step(groups: &mut [AdafactorGroup]) -> Result<()> {
    validate(groups)?;
    update_all(groups)
}

/// [`step`] with gradients multiplied by a loss scale `grad_scale` (mixed precision with
/// `torch.amp.GradScaler`): after validation every gradient is multiplied in place by
/// `float32(1 / grad_scale)` with `torch._amp_foreach_non_finite_check_and_unscale_`, the
/// operation `GradScaler.unscale_` applies, and the step then uses it. Parameters, state and
/// the unscaled gradients left in the gradient tensors are bit-identical to
/// `torch.optim.Adafactor` stepped after GradScaler unscaled the gradients itself. Skipping a
/// step whose gradients are not finite (`found_inf`) is the caller's decision: then call
/// neither function.
///
/// # Errors
/// As [`step`], and [`Error::InvalidArgument`] if `grad_scale` is not finite or is zero; all
/// before anything (gradients included) is modified.
pub fn step_unscaling(groups: &mut [AdafactorGroup], grad_scale: f64) -> Result<()> {
    let inv = inv_scale(grad_scale)?;
    validate(groups)?;
    for p in groups.iter().flat_map(|g| &g.params) {
        unscale_(&p.grad, inv)?;
    }
    update_all(groups)
}

/// The update of every parameter of validated groups.
fn update_all(groups: &mut [AdafactorGroup]) -> Result<()> {
    for group in groups.iter_mut() {
        let h = &group.hyper;
        // torch fills a missing ε₁ from the first parameter's dtype and keeps it for the
        // rest of the group.
        let mut eps1 = h.eps1;
        for p in &mut group.params {
            let eps1 = *eps1.get_or_insert_with(|| finfo_eps(p.param.kind()));
            update(h, eps1, p)?;
        }
    }
    Ok(())
}

fn update(h: &Adafactor, eps1: f64, p: &mut AdafactorParam) -> Result<()> {
    let param = &mut p.param;
    let grad = if h.maximize {
        p.grad.f_neg()?
    } else {
        p.grad.shallow_clone()
    };
    let _ = p.step.f_add_scalar_(1i64)?;
    let step = p.step.f_double_value(&[])?;
    let one_minus_beta2 = step.powf(h.beta2_decay);
    let rms = norm2(param)? / (param.numel() as f64).powf(0.5);
    // ρ = min(lr, 1/√t), α = max(ε₂, RMS(θ))·ρ: a tensor when ρ is the tensor lr.
    let inv_sqrt = 1.0 / step.powf(0.5);
    let alpha = match &h.lr {
        Lr::Float(lr) => Alpha::Float(max(h.eps2, rms) * min(*lr, inv_sqrt)),
        // Python's `min(lr, x)` is `x` only if `x < lr`, compared in `lr`'s dtype.
        Lr::Tensor(lr) if lr.f_gt(inv_sqrt)?.f_int64_value(&[])? != 0 => {
            Alpha::Float(max(h.eps2, rms) * inv_sqrt)
        }
        Lr::Tensor(lr) => Alpha::Tensor(scalar(lr, ScalarOp::Mul, max(h.eps2, rms))?),
    };
    if h.weight_decay != 0.0 {
        h.lr.decay_(param, h.weight_decay)?;
    }
    let mut var_estimate = match (&mut p.row_var, &mut p.col_var, &mut p.variance) {
        (Some(row_var), Some(col_var), _) if is_factored(grad.dim()) => {
            let size = grad.size();
            let n = size.len();
            let row_mean = mean_square(&grad, -1, size[n - 1])?;
            let _ = row_var.f_lerp_(&row_mean, one_minus_beta2)?;
            let col_mean = mean_square(&grad, -2, size[n - 2])?;
            let _ = col_var.f_lerp_(&col_mean, one_minus_beta2)?;
            let mut v = row_var.f_matmul(col_var)?;
            let mut row_mean_of_means =
                row_var.f_mean_dim([-2i64].as_slice(), true, None::<Kind>)?;
            let _ = row_mean_of_means.f_clamp_min_(eps1)?;
            let _ = v.f_div_(&row_mean_of_means)?;
            v
        }
        (_, _, Some(variance)) => {
            let grad_squared = grad.f_mul(&grad)?;
            let _ = variance.f_lerp_(&grad_squared, one_minus_beta2)?;
            // `variance.clone()`: the update must not write into the moment.
            let mut v = variance.f_empty_like()?;
            v.f_copy_(variance)?;
            v
        }
        _ => unreachable_layout()?,
    };
    let _ = var_estimate.f_clamp_min_(eps1 * eps1)?;
    let _ = var_estimate.f_rsqrt_()?;
    let mut update = var_estimate;
    let _ = update.f_mul_(&grad)?;
    let denom = max(
        1.0,
        norm2(&update)? / ((update.numel() as f64).powf(0.5) * h.d),
    );
    let step_size = match alpha {
        Alpha::Float(a) => -a / denom,
        Alpha::Tensor(a) => scalar(&a.f_neg()?, ScalarOp::Div, denom)?.f_double_value(&[])?,
    };
    add_alpha_(param, &update, step_size)
}

/// The step size factor α: a float, or a 0-d tensor when it derives from a tensor `lr`.
enum Alpha {
    Float(f64),
    Tensor(Tensor),
}

/// Validation guarantees the state layout; kept as an error rather than a panic.
fn unreachable_layout() -> Result<Tensor> {
    Err(Error::StateMismatch {
        what: "Adafactor state".into(),
        expected: "the layout checked by validation".into(),
        got: "another".into(),
    })
}

/// Python's `min(a, b)`: `a` unless `b < a`.
fn min(a: f64, b: f64) -> f64 {
    if b < a {
        b
    } else {
        a
    }
}

/// Python's `max(a, b)`: `a` unless `b > a`.
fn max(a: f64, b: f64) -> f64 {
    if b > a {
        b
    } else {
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn t(values: &[f64], shape: &[i64]) -> Tensor {
        Tensor::from_slice(values).reshape(shape)
    }

    #[test]
    fn first_step_of_a_vector_matches_the_formula() {
        // t = 1: β̂₂ = 0, so variance = g²; ρ = min(lr, 1) = lr; α = max(ε₂, RMS(θ))·ρ;
        // U = g/max(|g|, ε₁) = sign(g); RMS(U) = 1 ≤ d, so θ ← θ − α·sign(g).
        let param = t(&[1.0, -2.0, 2.0], &[3]);
        let grad = t(&[0.5, -0.25, 4.0], &[3]);
        let mut groups = [AdafactorGroup {
            hyper: Adafactor::default(),
            params: vec![AdafactorParam {
                param: param.shallow_clone(),
                grad: grad.shallow_clone(),
                step: Tensor::zeros([], (Kind::Float, Device::Cpu)),
                row_var: None,
                col_var: None,
                variance: Some(param.zeros_like()),
            }],
        }];
        step(&mut groups).expect("valid inputs");
        let rms = (9.0f64 / 3.0).sqrt();
        let alpha = rms * 1e-2;
        let want = [1.0 - alpha, -2.0 + alpha, 2.0 - alpha];
        for (k, w) in want.iter().enumerate() {
            assert!((param.double_value(&[k as i64]) - w).abs() < 1e-12);
        }
        let v = groups[0].params[0]
            .variance
            .as_ref()
            .map(|v| v.double_value(&[2]));
        assert_eq!(v, Some(16.0));
        assert_eq!(groups[0].params[0].step.double_value(&[]), 1.0);
    }

    #[test]
    fn factored_moments_are_row_and_column_means_of_the_squared_gradient() {
        let param = t(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]);
        let grad = t(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]);
        let (row, col) = factor_shapes(&[2, 3]);
        assert_eq!((row.clone(), col.clone()), (vec![2, 1], vec![1, 3]));
        let opts = (Kind::Double, Device::Cpu);
        let mut groups = [AdafactorGroup {
            hyper: Adafactor::default(),
            params: vec![AdafactorParam {
                param: param.shallow_clone(),
                grad,
                step: Tensor::zeros([], (Kind::Float, Device::Cpu)),
                row_var: Some(Tensor::zeros(row.as_slice(), opts)),
                col_var: Some(Tensor::zeros(col.as_slice(), opts)),
                variance: None,
            }],
        }];
        step(&mut groups).expect("valid inputs");
        let p = &groups[0].params[0];
        let row_var = p
            .row_var
            .as_ref()
            .map(|r| (r.double_value(&[0, 0]), r.double_value(&[1, 0])));
        // ‖row‖² / n: sqrt then square, so within a few ulps of the exact mean.
        let (r0, r1) = row_var.unwrap_or_default();
        assert!((r0 - 14.0 / 3.0).abs() < 1e-14 && (r1 - 77.0 / 3.0).abs() < 1e-13);
        let col_var = p.col_var.as_ref().map(|c| c.double_value(&[0, 1]));
        assert!((col_var.unwrap_or_default() - (4.0 + 25.0) / 2.0).abs() < 1e-13);
    }

    #[test]
    fn a_missing_moment_is_rejected_before_anything_changes() {
        let param = t(&[1.0, 2.0, 3.0, 4.0], &[2, 2]);
        let before = param.copy();
        let counter = Tensor::zeros([], (Kind::Float, Device::Cpu));
        let mut groups = [AdafactorGroup {
            hyper: Adafactor::default(),
            params: vec![AdafactorParam {
                param: param.shallow_clone(),
                grad: param.ones_like(),
                step: counter.shallow_clone(),
                row_var: None,
                col_var: None,
                variance: Some(param.zeros_like()),
            }],
        }];
        assert!(matches!(
            step(&mut groups),
            Err(Error::StateMismatch { .. })
        ));
        assert!(param.equal(&before));
        assert_eq!(counter.double_value(&[]), 0.0);
    }

    fn matrix_group(grad: &Tensor) -> AdafactorGroup {
        let opts = (Kind::Float, Device::Cpu);
        let (row, col) = factor_shapes(&[2, 3]);
        AdafactorGroup {
            hyper: Adafactor::default(),
            params: vec![AdafactorParam {
                param: Tensor::from_slice(&[1.0f32, -2.0, 3.0, 0.5, 2.0, -1.0]).reshape([2, 3]),
                grad: grad.shallow_clone(),
                step: Tensor::zeros([], opts),
                row_var: Some(Tensor::zeros(row.as_slice(), opts)),
                col_var: Some(Tensor::zeros(col.as_slice(), opts)),
                variance: None,
            }],
        }
    }

    #[test]
    fn step_unscaling_equals_a_step_on_the_unscaled_gradient() {
        let grad = Tensor::from_slice(&[0.3f32, -1.7, 2.2, 0.1, -0.4, 5.0]).reshape([2, 3]);
        let mut plain = [matrix_group(&grad.copy())];
        step(&mut plain).expect("valid inputs");
        let scaled_grad = &grad * 8.0;
        let mut scaled = [matrix_group(&scaled_grad)];
        step_unscaling(&mut scaled, 8.0).expect("valid inputs");
        let (a, b) = (&plain[0].params[0], &scaled[0].params[0]);
        assert!(a.param.equal(&b.param));
        assert!(b.grad.equal(&grad), "the unscaled gradient is written back");
        let rows = a.row_var.as_ref().zip(b.row_var.as_ref());
        assert!(rows.is_some_and(|(x, y)| x.equal(y)));
        assert_eq!(b.step.double_value(&[]), 1.0);
    }

    #[test]
    fn a_zero_grad_scale_is_rejected_before_anything_changes() {
        let grad = Tensor::ones([2, 3], (Kind::Float, Device::Cpu));
        let mut groups = [matrix_group(&grad)];
        let before = groups[0].params[0].param.copy();
        assert!(matches!(
            step_unscaling(&mut groups, 0.0),
            Err(Error::InvalidArgument {
                name: "grad_scale",
                ..
            })
        ));
        assert!(groups[0].params[0].param.equal(&before));
        assert_eq!(grad.sum(Kind::Double).double_value(&[]), 6.0);
        assert_eq!(groups[0].params[0].step.double_value(&[]), 0.0);
    }
}
