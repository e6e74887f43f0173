//! SparseAdam: Adam restricted to the entries a sparse gradient holds.
//!
//! Kingma & Ba, "Adam: A Method for Stochastic Optimization" (ICLR 2015), masked as in
//! `torch.optim.SparseAdam` (torch 2.11): for a dense parameter with a sparse COO gradient
//! (e.g. `nn.Embedding(sparse=True)`), only the entries present in the (coalesced) gradient
//! have their moments and parameter updated; the bias corrections use the parameter's step
//! count. The operations are ATen's, in the order of torch's `_functional.sparse_adam`, so
//! results are bit-identical to torch's.

use super::{check_like, check_param, inv_scale, label, scalar, scalar_, unscale_, Lr, ScalarOp};
use crate::error::{Error, Result};
use tch::Tensor;

/// SparseAdam hyperparameters, named as in `torch.optim.SparseAdam` (`betas` split);
/// `Default` gives torch's defaults.
#[derive(Debug, Clone)]
pub struct SparseAdam {
    /// Learning rate (default 1e-3).
    pub lr: Lr,
    /// β₁ (default 0.9).
    pub beta1: f64,
    /// β₂ (default 0.999).
    pub beta2: f64,
    /// ε added to the denominator (default 1e-8).
    pub eps: f64,
    /// Maximize the objective (default false).
    pub maximize: bool,
}

impl Default for SparseAdam {
    fn default() -> Self {
        SparseAdam {
            lr: Lr::Float(1e-3),
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            maximize: false,
        }
    }
}

/// One parameter's tensors: updated in place.
#[derive(Debug)]
pub struct SparseAdamParam {
    /// The dense parameter θ (float16, bfloat16, float32 or float64; any device).
    pub param: Tensor,
    /// Its sparse COO gradient (same shape, dtype, device); need not be coalesced.
    pub grad: Tensor,
    /// `exp_avg` (dense, like the parameter).
    pub exp_avg: Tensor,
    /// `exp_avg_sq` (dense, like the parameter).
    pub exp_avg_sq: Tensor,
    /// The step count *including* this step (torch increments its integer `state["step"]`
    /// before the update, also when the gradient holds no entries).
    pub step: i64,
}

/// A parameter group: hyperparameters and the parameters that have a gradient.
#[derive(Debug)]
pub struct SparseAdamGroup {
    /// The group's hyperparameters.
    pub hyper: SparseAdam,
    /// Its parameters.
    pub params: Vec<SparseAdamParam>,
}

fn validate(groups: &[SparseAdamGroup]) -> Result<()> {
    for (g, group) in groups.iter().enumerate() {
        for (i, p) in group.params.iter().enumerate() {
            check_param(&p.param, g, i)?;
            let shape = p.param.size();
            check_like(&p.grad, &p.param, &shape, true, "grad", g, i)?;
            check_like(&p.exp_avg, &p.param, &shape, false, "exp_avg", g, i)?;
            check_like(&p.exp_avg_sq, &p.param, &shape, false, "exp_avg_sq", g, i)?;
            if p.step < 1 {
                return Err(Error::StateMismatch {
                    what: label("step", g, i),
                    expected: "a step count of at least 1".into(),
                    got: p.step.to_string(),
                });
            }
        }
    }
    Ok(())
}

/// One SparseAdam step for every parameter of every group, as
/// `torch.optim.SparseAdam.step()` does after incrementing the step counts; moments and
/// parameters are updated in place at the gradient's indices. A gradient without entries
/// changes nothing.
///
/// # Errors
/// Before anything is modified: a sparse or non-float parameter, a dense gradient, a gradient
/// or moment whose shape, dtype or device differs from the parameter's, a step count below 1.
/// Errors from libtorch during the update are returned as [`Error::Torch`].
pub fn step(groups: &mut [SparseAdamGroup]) -> Result<()> {
    validate(groups)?;
    update_all(groups)
}

/// [`step`] with gradients multiplied by a loss scale `grad_scale` (mixed precision with
/// `torch.amp.GradScaler`): after validation the values of every sparse gradient (its
/// `_values()`, coalesced or not, as given) are multiplied in place by
/// `float32(1 / grad_scale)` with `torch._amp_foreach_non_finite_check_and_unscale_`, as
/// `GradScaler.unscale_` does, and the step then uses them. Parameters, moments and the
/// unscaled gradients left in the gradient tensors are bit-identical to
/// `torch.optim.SparseAdam` stepped after GradScaler unscaled the gradients itself (which
/// coalesces float16 gradients first: so does GradScaler before it hands over the scale).
/// Skipping a step whose gradients are not finite (`found_inf`) is the caller's decision:
/// then call neither function.
///
/// # Errors
/// As [`step`], and [`Error::InvalidArgument`] if `grad_scale` is not finite or is zero; all
/// before anything (gradients included) is modified.
pub fn step_unscaling(groups: &mut [SparseAdamGroup], grad_scale: f64) -> Result<()> {
    let inv = inv_scale(grad_scale)?;
    validate(groups)?;
    for p in groups.iter().flat_map(|g| &g.params) {
        unscale_(&p.grad.f_internal_values()?, inv)?;
    }
    update_all(groups)
}

/// The update of every parameter of validated groups.
fn update_all(groups: &mut [SparseAdamGroup]) -> Result<()> {
    for group in groups.iter() {
        for p in &group.params {
            update(&group.hyper, p)?;
        }
    }
    Ok(())
}

fn update(h: &SparseAdam, p: &SparseAdamParam) -> Result<()> {
    let grad = if h.maximize {
        p.grad.f_neg()?
    } else {
        p.grad.shallow_clone()
    };
    // The update is not linear: duplicate indices must be summed first.
    let grad = grad.f_coalesce()?;
    let indices = grad.f_internal_indices()?;
    let values = grad.f_internal_values()?;
    if values.numel() == 0 {
        return Ok(());
    }
    let size = grad.size();
    // `grad.new(indices, values, size)`: a sparse tensor at the gradient's (unique, sorted)
    // indices.
    let sparse = |v: &Tensor| -> Result<Tensor> {
        Ok(Tensor::f_sparse_coo_tensor_indices_size(
            &indices,
            v,
            size.as_slice(),
            (v.kind(), v.device()),
            true,
        )?)
    };
    // old ← β·old + (1 − β)·new, written as old += (1 − β)(new − old) at the indices.
    let old_exp_avg = p.exp_avg.f_sparse_mask(&grad)?.f_internal_values()?;
    let exp_avg_update = values.f_sub(&old_exp_avg)?;
    scalar_(&exp_avg_update, ScalarOp::Mul, 1.0 - h.beta1)?;
    let _ = p
        .exp_avg
        .shallow_clone()
        .f_add_(&sparse(&exp_avg_update)?)?;
    let old_exp_avg_sq = p.exp_avg_sq.f_sparse_mask(&grad)?.f_internal_values()?;
    let mut exp_avg_sq_update = values.f_pow_tensor_scalar(2i64)?;
    let _ = exp_avg_sq_update.f_sub_(&old_exp_avg_sq)?;
    scalar_(&exp_avg_sq_update, ScalarOp::Mul, 1.0 - h.beta2)?;
    let _ = p
        .exp_avg_sq
        .shallow_clone()
        .f_add_(&sparse(&exp_avg_sq_update)?)?;
    // The new moments' values at the indices, recomputed densely.
    let mut numer = exp_avg_update;
    let _ = numer.f_add_(&old_exp_avg)?;
    let mut denom = exp_avg_sq_update;
    let _ = denom.f_add_(&old_exp_avg_sq)?;
    let _ = denom.f_sqrt_()?;
    scalar_(&denom, ScalarOp::Add, h.eps)?;
    let step = p.step as f64;
    let bias_correction1 = 1.0 - h.beta1.powf(step);
    let bias_correction2 = 1.0 - h.beta2.powf(step);
    let _ = numer.f_div_(&denom)?;
    // `-step_size * numer`, step_size = lr·√(1 − β₂ᵗ)/(1 − β₁ᵗ) in `lr`'s arithmetic.
    let delta = match &h.lr {
        Lr::Float(lr) => {
            let step_size = lr * bias_correction2.sqrt() / bias_correction1;
            scalar(&numer, ScalarOp::Mul, -step_size)?
        }
        Lr::Tensor(lr) => {
            let step_size = scalar(lr, ScalarOp::Mul, bias_correction2.sqrt())?;
            scalar_(&step_size, ScalarOp::Div, bias_correction1)?;
            step_size.f_neg()?.f_mul(&numer)?
        }
    };
    let _ = p.param.shallow_clone().f_add_(&sparse(&delta)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn only_the_gradients_entries_move_and_the_first_step_is_lr_sized() {
        let opts = (Kind::Double, Device::Cpu);
        let param = Tensor::ones([4], opts);
        let indices = Tensor::from_slice(&[2i64, 0, 2]).reshape([1, 3]);
        let values = Tensor::from_slice(&[0.5f64, -3.0, 1.5]);
        let grad = Tensor::sparse_coo_tensor_indices_size(&indices, &values, [4], opts, false);
        let mut groups = [SparseAdamGroup {
            hyper: SparseAdam::default(),
            params: vec![SparseAdamParam {
                param: param.shallow_clone(),
                grad,
                exp_avg: param.zeros_like(),
                exp_avg_sq: param.zeros_like(),
                step: 1,
            }],
        }];
        step(&mut groups).expect("valid inputs");
        // Step 1: m̂ = g, v̂ = g², so θ ← θ − lr·g/(|g| + ε·√(1 − β₂)/(1 − β₂)…) ≈ θ − lr·sign(g).
        // Index 2 has g = 0.5 + 1.5 = 2 (duplicates summed), index 0 has g = −3.
        assert!((param.double_value(&[0]) - (1.0 + 1e-3)).abs() < 1e-9);
        assert!((param.double_value(&[2]) - (1.0 - 1e-3)).abs() < 1e-9);
        assert_eq!(param.double_value(&[1]), 1.0);
        assert_eq!(param.double_value(&[3]), 1.0);
        let m = &groups[0].params[0].exp_avg;
        assert!((m.double_value(&[2]) - 0.1 * 2.0).abs() < 1e-15);
        assert_eq!(m.double_value(&[1]), 0.0);
    }

    #[test]
    fn a_dense_gradient_is_rejected() {
        let param = Tensor::ones([4], (Kind::Float, Device::Cpu));
        let mut groups = [SparseAdamGroup {
            hyper: SparseAdam::default(),
            params: vec![SparseAdamParam {
                param: param.shallow_clone(),
                grad: param.ones_like(),
                exp_avg: param.zeros_like(),
                exp_avg_sq: param.zeros_like(),
                step: 1,
            }],
        }];
        assert!(matches!(
            step(&mut groups),
            Err(Error::StateMismatch { .. })
        ));
        assert_eq!(param.sum(Kind::Double).double_value(&[]), 4.0);
    }

    #[test]
    fn step_unscaling_unscales_the_values_of_an_uncoalesced_gradient() {
        let opts = (Kind::Double, Device::Cpu);
        let indices = Tensor::from_slice(&[2i64, 0, 2]).reshape([1, 3]);
        let values = Tensor::from_slice(&[0.5f64, -3.0, 1.5]);
        let sparse =
            |v: &Tensor| Tensor::sparse_coo_tensor_indices_size(&indices, v, [4], opts, false);
        let group = |grad: Tensor| SparseAdamGroup {
            hyper: SparseAdam::default(),
            params: vec![SparseAdamParam {
                param: Tensor::ones([4], opts),
                grad,
                exp_avg: Tensor::zeros([4], opts),
                exp_avg_sq: Tensor::zeros([4], opts),
                step: 1,
            }],
        };
        let mut plain = [group(sparse(&values))];
        step(&mut plain).expect("valid inputs");
        let scaled_grad = sparse(&(&values * 4.0));
        let mut scaled = [group(scaled_grad.shallow_clone())];
        step_unscaling(&mut scaled, 4.0).expect("valid inputs");
        let (a, b) = (&plain[0].params[0], &scaled[0].params[0]);
        assert!(a.param.equal(&b.param));
        assert!(a.exp_avg_sq.equal(&b.exp_avg_sq));
        // The gradient still holds its three (uncoalesced) entries, now unscaled.
        assert!(scaled_grad.internal_values().equal(&values));
    }
}
