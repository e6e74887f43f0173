//! Optimizers that are not elementwise: per-tensor reductions, matrix products, sparse
//! gradients, or (L-BFGS) a closure evaluated inside the step. Each is written with tch (ATen) operations in exactly the order of
//! torch.optim's single-tensor (for-loop) implementation, so that its results are
//! bit-identical to torch's on every dtype and device ATen supports.
//!
//! Each module has a hyperparameter struct, a per-parameter tensor struct (parameter,
//! gradient, state under torch's names) and a `step` function over groups. Every input is
//! checked before any tensor is modified. Adafactor, Muon and SparseAdam also have
//! `step_unscaling(groups, grad_scale)` for gradients multiplied by a loss scale (mixed
//! precision with `torch.amp.GradScaler`): the gradients are unscaled in place with
//! GradScaler's own operation and rounding, then stepped, so results equal torch's class
//! stepped after `GradScaler.unscale_`.

pub mod adafactor;
pub mod lbfgs;
mod line_search;
pub mod muon;
mod num;
pub mod sparse_adam;

use crate::error::{Error, Result};
use std::ffi::{c_char, c_void, CStr};
use tch::{Kind, TchError, Tensor};

pub use adafactor::{Adafactor, AdafactorGroup, AdafactorParam};
pub use lbfgs::{Lbfgs, LbfgsState};
pub use muon::{Muon, MuonGroup, MuonParam};
pub use num::Num;
pub use sparse_adam::{SparseAdam, SparseAdamGroup, SparseAdamParam};

extern "C" {
    fn ferroptim_add_alpha_(
        t: *const c_void,
        other: *const c_void,
        alpha: f64,
        err: *mut c_char,
        cap: usize,
    ) -> i32;
    fn ferroptim_vector_norm(
        t: *const c_void,
        ord: f64,
        dim: i64,
        all: i32,
        keepdim: i32,
        out: *mut *mut c_void,
        err: *mut c_char,
        cap: usize,
    ) -> i32;
    fn ferroptim_scalar_op(
        t: *const c_void,
        op: i32,
        value: f64,
        inplace: i32,
        out: *mut *mut c_void,
        err: *mut c_char,
        cap: usize,
    ) -> i32;
    fn ferroptim_amp_unscale_(
        t: *const c_void,
        inv_scale: f32,
        err: *mut c_char,
        cap: usize,
    ) -> i32;
    fn ferroptim_addmm(
        t: *const c_void,
        mat1: *const c_void,
        mat2: *const c_void,
        beta: f64,
        alpha: f64,
        out: *mut *mut c_void,
        err: *mut c_char,
        cap: usize,
    ) -> i32;
}

const ERR_CAP: usize = 1024;

fn torch_error(buf: &[c_char; ERR_CAP]) -> Error {
    // SAFETY: the C++ side always NUL-terminates within `ERR_CAP` bytes before returning 0.
    let msg = unsafe { CStr::from_ptr(buf.as_ptr()) };
    Error::Torch(TchError::Torch(msg.to_string_lossy().into_owned()))
}

/// `t.add_(other, alpha=alpha)`: ATen's in-place add with its fused `alpha` multiply (tch's
/// `add_` has no `alpha`).
pub(crate) fn add_alpha_(t: &Tensor, other: &Tensor, alpha: f64) -> Result<()> {
    let mut err: [c_char; ERR_CAP] = [0; ERR_CAP];
    // SAFETY: `t` and `other` are live tch tensors (`C_tensor` is an `at::Tensor*`), borrowed
    // for the call; `err` is a writable buffer of `ERR_CAP` bytes.
    let ok = unsafe {
        ferroptim_add_alpha_(
            t.as_ptr() as *const c_void,
            other.as_ptr() as *const c_void,
            alpha,
            err.as_mut_ptr(),
            ERR_CAP,
        )
    };
    if ok == 1 {
        Ok(())
    } else {
        Err(torch_error(&err))
    }
}

/// The factor `torch.amp.GradScaler.unscale_` multiplies gradients by for a loss scale
/// `grad_scale`: its reciprocal computed in float64 and rounded to float32
/// (`scale.double().reciprocal().float()`).
///
/// # Errors
/// [`Error::InvalidArgument`] if `grad_scale` is not finite or is zero.
pub(crate) fn inv_scale(grad_scale: f64) -> Result<f32> {
    crate::driver::check_grad_scale(grad_scale)?;
    Ok((1.0 / grad_scale) as f32)
}

/// `t *= inv_scale` in place, by `torch._amp_foreach_non_finite_check_and_unscale_` — the
/// operation `GradScaler.unscale_` applies to each dense gradient (and to the values of a
/// sparse one) — so that unscaled gradients are bit-identical to GradScaler's own.
pub(crate) fn unscale_(t: &Tensor, inv_scale: f32) -> Result<()> {
    let mut err: [c_char; ERR_CAP] = [0; ERR_CAP];
    // SAFETY: `t` is a live tch tensor borrowed for the call; `err` is a writable buffer of
    // `ERR_CAP` bytes.
    let ok = unsafe {
        ferroptim_amp_unscale_(
            t.as_ptr() as *const c_void,
            inv_scale,
            err.as_mut_ptr(),
            ERR_CAP,
        )
    };
    if ok == 1 {
        Ok(())
    } else {
        Err(torch_error(&err))
    }
}

/// A binary operation with a Python float, as Python calls it (see [`scalar_`]).
#[derive(Clone, Copy, Debug)]
pub(crate) enum ScalarOp {
    Mul = 0,
    Add = 1,
    Div = 2,
    Sub = 3,
    Gt = 4,
    Lt = 5,
    Ge = 6,
    Le = 7,
}

/// `t.mul_(value)` / `t.add_(value)` / `t.div_(value)` with a Python float `value`: torch's
/// argument parser passes it to the Tensor overload as a wrapped-number tensor, which for
/// float16/bfloat16 rounds differently from the Scalar overload that tch's `mul_scalar_`
/// calls.
pub(crate) fn scalar_(t: &Tensor, op: ScalarOp, value: f64) -> Result<()> {
    let (ok, _, err) = scalar_op(t, op, value, true);
    if ok == 1 {
        Ok(())
    } else {
        Err(torch_error(&err))
    }
}

/// `t * value` (etc.) with a Python float `value`, out of place (see [`scalar_`]).
pub(crate) fn scalar(t: &Tensor, op: ScalarOp, value: f64) -> Result<Tensor> {
    let (ok, out, err) = scalar_op(t, op, value, false);
    owned(ok, out, &err)
}

/// The shim call behind [`scalar_`] and [`scalar`]: its status, the new tensor (out of place
/// only) and the error message buffer.
fn scalar_op(
    t: &Tensor,
    op: ScalarOp,
    value: f64,
    in_place: bool,
) -> (i32, *mut c_void, [c_char; ERR_CAP]) {
    let mut err: [c_char; ERR_CAP] = [0; ERR_CAP];
    let mut out: *mut c_void = std::ptr::null_mut();
    // SAFETY: `t` is a live tch tensor borrowed for the call; `out` is only written out of
    // place (a heap tensor handle, see `owned`); `err` is a writable buffer of `ERR_CAP` bytes.
    let ok = unsafe {
        ferroptim_scalar_op(
            t.as_ptr() as *const c_void,
            op as i32,
            value,
            i32::from(in_place),
            &mut out,
            err.as_mut_ptr(),
            ERR_CAP,
        )
    };
    (ok, out, err)
}

/// `torch.addmm(t, mat1, mat2, beta=beta, alpha=alpha)` (tch's `addmm` has neither).
pub(crate) fn addmm(
    t: &Tensor,
    mat1: &Tensor,
    mat2: &Tensor,
    beta: f64,
    alpha: f64,
) -> Result<Tensor> {
    let mut err: [c_char; ERR_CAP] = [0; ERR_CAP];
    let mut out: *mut c_void = std::ptr::null_mut();
    // SAFETY: the three tensors are live tch tensors borrowed for the call; `out` receives a
    // heap `at::Tensor*` allocated with `new`, which is what tch's `Tensor` owns and frees.
    let ok = unsafe {
        ferroptim_addmm(
            t.as_ptr() as *const c_void,
            mat1.as_ptr() as *const c_void,
            mat2.as_ptr() as *const c_void,
            beta,
            alpha,
            &mut out,
            err.as_mut_ptr(),
            ERR_CAP,
        )
    };
    owned(ok, out, &err)
}

/// The tensor a shim function returned through `out`, or its error.
fn owned(ok: i32, out: *mut c_void, err: &[c_char; ERR_CAP]) -> Result<Tensor> {
    if ok == 1 && !out.is_null() {
        // SAFETY: `out` is a fresh heap `at::Tensor*` (allocated with `new`) that nobody else
        // owns; tch's `Tensor` takes ownership and frees it with `delete`.
        Ok(unsafe { Tensor::from_ptr(out as *mut torch_sys::C_tensor) })
    } else {
        Err(torch_error(err))
    }
}

/// `torch.linalg.vector_norm(t, ord)` over all elements (`dim = None`), or over `dim` with
/// `keepdim` — what `t.norm(2)` and `torch.norm(t, dim=…, keepdim=…)` call (tch lacks it).
pub(crate) fn vector_norm(t: &Tensor, ord: f64, dim: Option<i64>, keepdim: bool) -> Result<Tensor> {
    let mut err: [c_char; ERR_CAP] = [0; ERR_CAP];
    let mut out: *mut c_void = std::ptr::null_mut();
    // SAFETY: `t` is a live tch tensor borrowed for the call; `out` receives a heap tensor
    // handle (see `owned`); `err` is a writable buffer of `ERR_CAP` bytes.
    let ok = unsafe {
        ferroptim_vector_norm(
            t.as_ptr() as *const c_void,
            ord,
            dim.unwrap_or(0),
            i32::from(dim.is_none()),
            i32::from(keepdim),
            &mut out,
            err.as_mut_ptr(),
            ERR_CAP,
        )
    };
    owned(ok, out, &err)
}

/// A learning rate as torch.optim's step holds it (`_to_scalar(group["lr"])`): a Python
/// float, or a 0-d tensor, with which torch computes in the tensor's dtype (e.g. `1 − lr·λ` in
/// float32 for a float32 `lr`). Results follow whichever torch would use.
#[derive(Debug)]
pub enum Lr {
    /// A float learning rate.
    Float(f64),
    /// A 0-d tensor learning rate (torch squeezes one-element tensors to 0-d).
    Tensor(Tensor),
}

impl Clone for Lr {
    fn clone(&self) -> Self {
        match self {
            Lr::Float(v) => Lr::Float(*v),
            Lr::Tensor(t) => Lr::Tensor(t.shallow_clone()),
        }
    }
}

impl From<f64> for Lr {
    fn from(v: f64) -> Self {
        Lr::Float(v)
    }
}

impl Lr {
    /// `param.mul_(1 - lr * weight_decay)` as torch evaluates it.
    pub(crate) fn decay_(&self, param: &Tensor, weight_decay: f64) -> Result<()> {
        match self {
            Lr::Float(lr) => scalar_(param, ScalarOp::Mul, 1.0 - lr * weight_decay),
            Lr::Tensor(lr) => {
                // `1 - x` (`x.__rsub__(1)`) rounds as `-x + 1`.
                let factor = scalar(lr, ScalarOp::Mul, weight_decay)?.f_neg()?;
                scalar_(&factor, ScalarOp::Add, 1.0)?;
                let _ = param.shallow_clone().f_mul_(&factor)?;
                Ok(())
            }
        }
    }

    /// `float(lr * factor)`: the product in `lr`'s arithmetic, as a float.
    pub(crate) fn times(&self, factor: f64) -> Result<f64> {
        match self {
            Lr::Float(lr) => Ok(lr * factor),
            Lr::Tensor(lr) => Ok(scalar(lr, ScalarOp::Mul, factor)?.f_double_value(&[])?),
        }
    }
}

/// `group g, params[i]` naming for errors.
pub(crate) fn label(what: &str, group: usize, index: usize) -> String {
    if what.is_empty() {
        format!("params[{index}] in group {group}")
    } else {
        format!("{what} of params[{index}] in group {group}")
    }
}

/// A parameter must be a dense tensor of a real floating dtype.
pub(crate) fn check_param(param: &Tensor, group: usize, index: usize) -> Result<()> {
    let what = || label("", group, index);
    if param.is_sparse() {
        return Err(Error::Sparse { what: what() });
    }
    let kind = param.f_kind()?;
    if !matches!(
        kind,
        Kind::Half | Kind::BFloat16 | Kind::Float | Kind::Double
    ) {
        return Err(Error::UnsupportedDtype { what: what(), kind });
    }
    Ok(())
}

/// `t` (a gradient or state tensor) must have `param`'s dtype and device, and `shape`;
/// `sparse` says whether it must be a sparse (true) or a dense (false) tensor.
pub(crate) fn check_like(
    t: &Tensor,
    param: &Tensor,
    shape: &[i64],
    sparse: bool,
    what: &str,
    group: usize,
    index: usize,
) -> Result<()> {
    let who = || label(what, group, index);
    if t.is_sparse() != sparse {
        return Err(if sparse {
            Error::StateMismatch {
                what: who(),
                expected: "a sparse tensor".into(),
                got: "a dense tensor".into(),
            }
        } else {
            Error::Sparse { what: who() }
        });
    }
    let (kind, pkind) = (t.f_kind()?, param.f_kind()?);
    if kind != pkind {
        return Err(Error::StateMismatch {
            what: who(),
            expected: format!("dtype {pkind:?} (the parameter's)"),
            got: format!("{kind:?}"),
        });
    }
    let (device, pdevice) = (t.device(), param.device());
    if device != pdevice {
        return Err(Error::DeviceMismatch {
            what: who(),
            expected: pdevice,
            got: device,
        });
    }
    let got = t.size();
    if got != shape {
        return Err(Error::ShapeMismatch {
            what: who(),
            expected: shape.to_vec(),
            got,
        });
    }
    Ok(())
}

/// A scalar state tensor (`step`) must hold exactly one element.
pub(crate) fn check_scalar(t: &Tensor, what: &str, group: usize, index: usize) -> Result<()> {
    if t.is_sparse() || t.numel() != 1 {
        return Err(Error::StateMismatch {
            what: label(what, group, index),
            expected: "a dense one-element tensor".into(),
            got: format!("a tensor of shape {:?}", t.size()),
        });
    }
    Ok(())
}
