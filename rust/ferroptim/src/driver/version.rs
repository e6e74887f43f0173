//! Version counters of the tensors the fused kernel writes (`csrc/version.cpp`).
//!
//! An in-place ATen op bumps the version counter of each tensor it writes, and autograd
//! raises if a tensor it saved for backward has changed version since. The kernel writes
//! through raw pointers, so the driver bumps the counters of everything it wrote in place,
//! once per step (torch's AdamW bumps a parameter twice; only the change matters).

use crate::error::{Error, Result};
use std::ffi::c_void;
use tch::{TchError, Tensor};

extern "C" {
    fn ferroptim_inplace_allowed(t: *const c_void) -> i32;
    fn ferroptim_bump_versions(ts: *const *const c_void, n: usize) -> i32;
}

/// True if `t` may be updated in place on this thread: it is not an inference tensor, or
/// `torch.inference_mode` is on (it is thread-local: call this on the caller's thread).
pub(crate) fn inplace_allowed(t: &Tensor) -> bool {
    // SAFETY: `t.as_ptr()` is a live `at::Tensor*` (tch's `C_tensor`) borrowed for the call;
    // the function only reads it and catches every exception.
    unsafe { ferroptim_inplace_allowed(t.as_ptr() as *const c_void) == 1 }
}

/// Bumps the version counter of each tensor in `tensors`, given as the addresses of their
/// `at::Tensor`s (`Tensor::as_ptr`), which the caller keeps alive for the call; undefined
/// tensors are skipped.
///
/// # Errors
/// [`Error::Torch`] if libtorch refuses a bump, which validation rules out beforehand (see
/// [`inplace_allowed`]).
pub(crate) fn bump(tensors: &[usize]) -> Result<()> {
    // SAFETY: every address is a live `at::Tensor*` borrowed by the caller for this call, and a
    // `usize` has a pointer's size and alignment, so the slice reads as `n` pointers; the
    // function only bumps their version counters (atomic increments) and catches every
    // exception.
    let ok =
        unsafe { ferroptim_bump_versions(tensors.as_ptr() as *const *const c_void, tensors.len()) };
    if ok == 1 {
        Ok(())
    } else {
        Err(Error::Torch(TchError::Torch(
            "cannot bump the version counter of a tensor updated in place".into(),
        )))
    }
}
