//! Muon: momentum orthogonalized by a Newton–Schulz iteration, for 2-D parameters.
//!
//! Jordan et al., "Muon: An optimizer for hidden layers in neural networks" (2024,
//! <https://kellerjordan.github.io/posts/muon/>) and, for the `match_rms_adamw` learning-rate
//! scaling, Liu et al., "Muon is Scalable for LLM Training" (arXiv:2502.16982), in the variant
//! of `torch.optim.Muon` (torch 2.11): momentum `B ← B + (1 − μ)(g − B)` (a `lerp`), Nesterov
//! `g + μ(B − g)`, a quintic Newton–Schulz iteration computed in bfloat16 on the wide
//! orientation of the matrix, decoupled weight decay `θ ← θ(1 − lr·λ)` and
//! `θ ← θ − lr'·O` with `lr'` adjusted to the matrix's shape.
//!
//! The operations are ATen's, in the order of torch's `_single_tensor_muon`, so results are
//! bit-identical to torch's. Like torch, a bfloat16 parameter without Nesterov momentum has
//! its momentum buffer normalized in place by the iteration (torch's `.bfloat16()` returns
//! the buffer itself).

use super::{
    add_alpha_, addmm, check_like, check_param, inv_scale, label, unscale_, vector_norm, Lr,
};
use crate::error::{Error, Result};
use tch::{Kind, Tensor};

/// How the learning rate is scaled for an `A × B` parameter (`adjust_lr_fn` in torch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AdjustLr {
    /// `None` or `"original"` (Keller Jordan's): `lr·√max(1, A/B)`.
    #[default]
    Original,
    /// `"match_rms_adamw"` (Moonshot's): `lr·0.2·√max(A, B)`.
    MatchRmsAdamw,
    /// Any other value torch's step meets (its constructor rejects them): `lr` unchanged.
    Unscaled,
}

/// Muon hyperparameters, named as in `torch.optim.Muon`; `Default` gives torch's defaults.
#[derive(Debug, Clone)]
pub struct Muon {
    /// Learning rate (default 1e-3).
    pub lr: Lr,
    /// Decoupled weight decay λ (default 0.1).
    pub weight_decay: f64,
    /// Momentum μ (default 0.95).
    pub momentum: f64,
    /// Nesterov momentum (default true).
    pub nesterov: bool,
    /// Newton–Schulz coefficients (a, b, c) (default (3.4445, −4.7750, 2.0315)).
    pub ns_coefficients: (f64, f64, f64),
    /// Floor of the Frobenius norm the iteration's input is divided by (default 1e-7).
    pub eps: f64,
    /// Newton–Schulz iterations (default 5; fewer than 100).
    pub ns_steps: usize,
    /// Learning-rate adjustment (default [`AdjustLr::Original`]).
    pub adjust_lr_fn: AdjustLr,
}

impl Default for Muon {
    fn default() -> Self {
        Muon {
            lr: Lr::Float(1e-3),
            weight_decay: 0.1,
            momentum: 0.95,
            nesterov: true,
            ns_coefficients: (3.4445, -4.7750, 2.0315),
            eps: 1e-7,
            ns_steps: 5,
            adjust_lr_fn: AdjustLr::Original,
        }
    }
}

/// One parameter's tensors: updated in place.
#[derive(Debug)]
pub struct MuonParam {
    /// The parameter θ: a 2-D float tensor (float16, bfloat16, float32, float64; any device).
    pub param: Tensor,
    /// Its dense gradient (same shape, dtype, device).
    pub grad: Tensor,
    /// `momentum_buffer` (like the gradient).
    pub momentum_buffer: Tensor,
}

/// A parameter group: hyperparameters and the parameters that have a gradient.
#[derive(Debug)]
pub struct MuonGroup {
    /// The group's hyperparameters.
    pub hyper: Muon,
    /// Its parameters.
    pub params: Vec<MuonParam>,
}

fn validate(groups: &[MuonGroup]) -> Result<()> {
    for (g, group) in groups.iter().enumerate() {
        if group.hyper.ns_steps >= 100 {
            return Err(Error::InvalidArgument {
                name: "ns_steps",
                value: format!("{} (must be less than 100)", group.hyper.ns_steps),
            });
        }
        for (i, p) in group.params.iter().enumerate() {
            check_param(&p.param, g, i)?;
            let shape = p.param.size();
            if shape.len() != 2 {
                return Err(Error::StateMismatch {
                    what: label("", g, i),
                    expected: "a 2-D parameter (Muon orthogonalizes matrices)".into(),
                    got: format!("shape {shape:?}"),
                });
            }
            check_like(&p.grad, &p.param, &shape, false, "grad", g, i)?;
            check_like(
                &p.momentum_buffer,
                &p.param,
                &shape,
                false,
                "momentum_buffer",
                g,
                i,
            )?;
        }
    }
    Ok(())
}

/// The factor torch's `_adjust_lr` multiplies the learning rate by for an `a × b`
/// parameter.
pub fn lr_ratio(adjust: AdjustLr, a: i64, b: i64) -> f64 {
    match adjust {
        AdjustLr::Original => {
            let r = a as f64 / b as f64;
            if r > 1.0 {
                r.sqrt()
            } else {
                1.0
            }
        }
        AdjustLr::MatchRmsAdamw => 0.2 * (a.max(b) as f64).sqrt(),
        AdjustLr::Unscaled => 1.0,
    }
}

/// The quintic Newton–Schulz iteration (torch's `_zeropower_via_newtonschulz`): `update` in
/// bfloat16, transposed to be wide, divided by `max(‖·‖_F, eps)`, then `ns_steps` times
/// `X ← aX + (bA + cA²)X` with `A = XXᵀ`; returned in `update`'s orientation, bfloat16.
pub fn newton_schulz(update: &Tensor, h: &Muon) -> Result<Tensor> {
    let (a, b, c) = h.ns_coefficients;
    let size = update.size();
    let tall = size[0] > size[1];
    let mut x = update.f_to_dtype(Kind::BFloat16, false, false)?;
    if tall {
        x = x.f_tr()?;
    }
    let norm = vector_norm(&x, 2.0, None, false)?.f_clamp_min(h.eps)?;
    let _ = x.f_div_(&norm)?;
    for _ in 0..h.ns_steps {
        let gram = x.f_matmul(&x.f_tr()?)?;
        let gram_update = addmm(&gram, &gram, &gram, b, c)?;
        x = addmm(&x, &gram_update, &x, a, 1.0)?;
    }
    if tall {
        x = x.f_tr()?;
    }
    Ok(x)
}

/// One Muon step for every parameter of every group, as `torch.optim.Muon.step()` does;
/// momentum buffers and parameters are updated in place.
///
/// # Errors
/// Before anything is modified: `ns_steps ≥ 100` ([`Error::InvalidArgument`]); a parameter
/// that is sparse, not a float tensor or not 2-D; a gradient or momentum buffer whose shape,
/// dtype or device differs from the parameter's. Errors from libtorch during the update are
/// returned as [`Error::Torch`].
pub fn step(groups: &mut [MuonGroup]) -> Result<()> {
    validate(groups)?;
    update_all(groups)
}

/// [`step`] with gradients multiplied by a loss scale `grad_scale` (mixed precision with
/// `torch.amp.GradScaler`): after validation every gradient is multiplied in place by
/// `float32(1 / grad_scale)` with `torch._amp_foreach_non_finite_check_and_unscale_`, the
/// operation `GradScaler.unscale_` applies, and the step then uses it. Parameters, momentum
/// buffers and the unscaled gradients left in the gradient tensors are bit-identical to
/// `torch.optim.Muon` stepped after GradScaler unscaled the gradients itself. Skipping a step
/// whose gradients are not finite (`found_inf`) is the caller's decision: then call neither
/// function.
///
/// # Errors
/// As [`step`], and [`Error::InvalidArgument`] if `grad_scale` is not finite or is zero; all
/// before anything (gradients included) is modified.
pub fn step_unscaling(groups: &mut [MuonGroup], grad_scale: f64) -> Result<()> {
    let inv = inv_scale(grad_scale)?;
    validate(groups)?;
    for p in groups.iter().flat_map(|g| &g.params) {
        unscale_(&p.grad, inv)?;
    }
    update_all(groups)
}

/// The update of every parameter of validated groups.
fn update_all(groups: &mut [MuonGroup]) -> Result<()> {
    for group in groups.iter_mut() {
        let h = &group.hyper;
        for p in &mut group.params {
            let _ = p.momentum_buffer.f_lerp_(&p.grad, 1.0 - h.momentum)?;
            let update = if h.nesterov {
                p.grad.f_lerp(&p.momentum_buffer, h.momentum)?
            } else {
                p.momentum_buffer.shallow_clone()
            };
            let ortho = newton_schulz(&update, h)?;
            let size = p.param.size();
            let lr = h.lr.times(lr_ratio(h.adjust_lr_fn, size[0], size[1]))?;
            h.lr.decay_(&p.param, h.weight_decay)?;
            add_alpha_(&p.param, &ortho, -lr)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn lr_ratio_follows_the_shape() {
        assert_eq!(lr_ratio(AdjustLr::Original, 4, 16), 1.0);
        assert_eq!(lr_ratio(AdjustLr::Original, 16, 4), 2.0);
        assert_eq!(lr_ratio(AdjustLr::MatchRmsAdamw, 16, 4), 0.2 * 4.0);
        assert_eq!(lr_ratio(AdjustLr::Unscaled, 16, 4), 1.0);
    }

    #[test]
    fn newton_schulz_of_a_scaled_identity_follows_the_quintic() {
        // 3·I₄ is normalized to I/2; each iteration maps every singular value s to
        // a·s + b·s³ + c·s⁵ and keeps the matrix diagonal.
        let eye = Tensor::eye(4, (Kind::Float, Device::Cpu)) * 3.0;
        let (a, b, c) = Muon::default().ns_coefficients;
        let one = Muon {
            ns_steps: 1,
            ..Muon::default()
        };
        let o = newton_schulz(&eye, &one).expect("valid input");
        assert_eq!(o.kind(), Kind::BFloat16);
        let d = o.to_kind(Kind::Double);
        let s1 = a * 0.5 + b * 0.125 + c * 0.03125; // 1.1889
                                                    // bfloat16 keeps 8 significant bits.
        assert!(
            (d.double_value(&[1, 1]) - s1).abs() < 0.02,
            "{}",
            d.double_value(&[1, 1])
        );
        assert_eq!(d.double_value(&[0, 1]), 0.0);
        // Five iterations land in the band the coefficients are tuned for (about 0.7–1.2).
        let o5 = newton_schulz(&eye, &Muon::default()).expect("valid input");
        let v = o5.to_kind(Kind::Double).double_value(&[2, 2]);
        assert!((0.6..1.3).contains(&v), "{v}");
    }

    #[test]
    fn a_vector_is_rejected_before_anything_changes() {
        let param = Tensor::ones([3], (Kind::Float, Device::Cpu));
        let buf = param.zeros_like();
        let mut groups = [MuonGroup {
            hyper: Muon::default(),
            params: vec![MuonParam {
                param: param.shallow_clone(),
                grad: param.ones_like(),
                momentum_buffer: buf.shallow_clone(),
            }],
        }];
        assert!(matches!(
            step(&mut groups),
            Err(Error::StateMismatch { .. })
        ));
        assert_eq!(buf.abs().sum(Kind::Double).double_value(&[]), 0.0);
        assert_eq!(param.sum(Kind::Double).double_value(&[]), 3.0);
    }

    #[test]
    fn step_unscaling_multiplies_by_the_float32_reciprocal_then_steps() {
        // GradScaler's factor for a scale of 3 is float32(1/3); the gradient is multiplied by
        // it in place (not divided by 3), then stepped as an unscaled gradient would be.
        let grad = Tensor::from_slice(&[0.3f32, -1.7, 2.2, 0.1, -0.4, 5.0]).reshape([2, 3]);
        let scaled_grad = &grad * 3.0;
        let unscaled = &scaled_grad * f64::from((1.0f64 / 3.0) as f32);
        let group = |g: Tensor| MuonGroup {
            hyper: Muon::default(),
            params: vec![MuonParam {
                param: Tensor::ones([2, 3], (Kind::Float, Device::Cpu)),
                momentum_buffer: g.zeros_like(),
                grad: g,
            }],
        };
        let mut plain = [group(unscaled.copy())];
        step(&mut plain).expect("valid inputs");
        let mut scaled = [group(scaled_grad.shallow_clone())];
        step_unscaling(&mut scaled, 3.0).expect("valid inputs");
        assert!(scaled_grad.equal(&unscaled));
        assert!(
            !unscaled.equal(&(&grad * 3.0 / 3.0)),
            "multiplying, not dividing, matters"
        );
        let (a, b) = (&plain[0].params[0], &scaled[0].params[0]);
        assert!(a.param.equal(&b.param));
        assert!(a.momentum_buffer.equal(&b.momentum_buffer));
        assert!(matches!(
            step_unscaling(&mut scaled, f64::INFINITY),
            Err(Error::InvalidArgument {
                name: "grad_scale",
                ..
            })
        ));
    }
}
