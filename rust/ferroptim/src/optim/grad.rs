//! Setting a gradient to undefined (`p.grad = None`) or to a given tensor (`p.grad = g`),
//! through `csrc/grad.cpp`.

use crate::error::Result;
use std::ffi::c_void;
use tch::{TchError, Tensor};

extern "C" {
    fn ferroptim_clear_grad(t: *const c_void) -> i32;
    fn ferroptim_set_grad(t: *const c_void, g: *const c_void) -> i32;
    fn ferroptim_zero_grads(params: *const *const c_void, n: i64, set_to_none: i32) -> i64;
}

/// Makes `p`'s gradient undefined (Python's `p.grad = None`).
///
/// # Errors
/// [`crate::Error::Torch`] if `p` is undefined or libtorch refused.
pub(crate) fn clear(p: &Tensor) -> Result<()> {
    // SAFETY: `p.as_ptr()` points to a live `at::Tensor` (tch's `C_tensor` is an `at::Tensor*`)
    // borrowed for the call; the C++ side catches every exception.
    let ok = unsafe { ferroptim_clear_grad(p.as_ptr() as *const c_void) };
    if ok == 1 {
        Ok(())
    } else {
        Err(TchError::Torch("cannot reset the gradient of an undefined tensor".into()).into())
    }
}

/// Sets the gradient of `param` to `grad` (Python's `p.grad = g`), e.g. a sparse COO gradient
/// for [`crate::tensor_rules::SparseAdam`], or gradients computed elsewhere. `grad` is
/// shared, not copied. As Python's setter, it checks that `grad` has `param`'s shape, dtype
/// and device (it may be sparse).
///
/// # Errors
/// [`crate::Error::ShapeMismatch`], [`crate::Error::StateMismatch`] (dtype) or
/// [`crate::Error::DeviceMismatch`] if `grad` does not match; [`crate::Error::Torch`] if a
/// tensor is undefined. Nothing changes on error.
pub fn set_grad(param: &Tensor, grad: &Tensor) -> Result<()> {
    let what = || "the gradient".to_string();
    if grad.size() != param.size() {
        return Err(crate::Error::ShapeMismatch {
            what: what(),
            expected: param.size(),
            got: grad.size(),
        });
    }
    let (kind, pkind) = (grad.f_kind()?, param.f_kind()?);
    if kind != pkind {
        return Err(crate::Error::StateMismatch {
            what: what(),
            expected: format!("dtype {pkind:?} (the parameter's)"),
            got: format!("{kind:?}"),
        });
    }
    if grad.device() != param.device() {
        return Err(crate::Error::DeviceMismatch {
            what: what(),
            expected: param.device(),
            got: grad.device(),
        });
    }
    // SAFETY: both pointers point to live `at::Tensor`s (tch's `C_tensor`) borrowed for the
    // call; the C++ side copies the handle and catches every exception.
    let ok = unsafe {
        ferroptim_set_grad(
            param.as_ptr() as *const c_void,
            grad.as_ptr() as *const c_void,
        )
    };
    if ok == 1 {
        Ok(())
    } else {
        Err(TchError::Torch("cannot set this gradient on this tensor".into()).into())
    }
}

/// Sets the gradients of `params` to none (Python's `p.grad = None`), as
/// [`Optimizer::zero_grad`](super::Optimizer::zero_grad) does; for closures that cannot
/// borrow the optimizer (LBFGS's).
///
/// # Errors
/// [`crate::Error::Torch`] if a tensor is undefined.
pub fn clear_grads(params: &[Tensor]) -> Result<()> {
    params.iter().try_for_each(clear)
}

/// Resets the gradients of `params` in one native call, as `torch.optim.Optimizer.zero_grad`
/// does: with `set_to_none` (torch's default) every defined gradient becomes undefined
/// (Python's `p.grad = None`); otherwise each defined gradient is detached in place if it has
/// a `grad_fn`, else marked not to require grad, and zeroed in place (dense or sparse).
/// Parameters without a gradient are left alone.
///
/// # Errors
/// [`crate::Error::InvalidArgument`] (name `params`, the value naming `params[i]`) if a
/// parameter is undefined or not a leaf tensor (torch.optim's parameters are leaves); nothing has changed then.
/// [`crate::Error::Torch`] if libtorch fails while zeroing (the parameters before the failing
/// one are done).
pub fn zero_grads(params: &[Tensor], set_to_none: bool) -> Result<()> {
    let ptrs: Vec<*const c_void> = params.iter().map(|p| p.as_ptr() as *const c_void).collect();
    // SAFETY: each pointer is tch's `C_tensor` of a tensor borrowed from `params`, which
    // outlives the call.
    unsafe { zero_grads_raw(&ptrs, set_to_none) }
}

/// [`zero_grads`] over `at::Tensor` pointers, for callers that hold tensors without a tch
/// handle (the Python binding borrows them from `torch.Tensor` objects).
///
/// # Safety
/// Every pointer must point to a live `at::Tensor` that stays alive, and is not moved, for
/// the whole call (dropping a gradient must not free a parameter).
///
/// # Errors
/// As [`zero_grads`].
pub unsafe fn zero_grads_raw(params: &[*const c_void], set_to_none: bool) -> Result<()> {
    let n = i64::try_from(params.len()).map_err(|_| crate::Error::InvalidArgument {
        name: "params",
        value: format!("{} tensors", params.len()),
    })?;
    // SAFETY: `params` holds `n` pointers to live `at::Tensor`s for the call (the caller's
    // contract); the C++ side reads only those `n` entries and catches every exception.
    let status = unsafe { ferroptim_zero_grads(params.as_ptr(), n, i32::from(set_to_none)) };
    match status {
        -1 => Ok(()),
        i if i >= 0 => Err(crate::Error::InvalidArgument {
            name: "params",
            value: format!("params[{i}] is undefined or not a leaf tensor"),
        }),
        _ => Err(TchError::Torch("zeroing a gradient failed".into()).into()),
    }
}
