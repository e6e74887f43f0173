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

/// Bumps the version counter of each of `tensors` (undefined ones are skipped), in calls of
/// up to 64 tensors.
///
/// # Errors
/// [`Error::Torch`] if libtorch refuses a bump, which validation rules out beforehand (see
/// [`inplace_allowed`]).
pub(crate) fn bump<'a>(tensors: impl IntoIterator<Item = &'a Tensor>) -> Result<()> {
    let mut ptrs = [std::ptr::null::<c_void>(); 64];
    let mut n = 0;
    for t in tensors {
        if n == ptrs.len() {
            flush(&ptrs[..n])?;
            n = 0;
        }
        ptrs[n] = t.as_ptr() as *const c_void;
        n += 1;
    }
    return flush(&ptrs[..n]);

    fn flush(ptrs: &[*const c_void]) -> Result<()> {
        // SAFETY: every pointer is a live `at::Tensor*` borrowed for this call; the function
        // only bumps their version counters (atomic increments) and catches every exception.
        if unsafe { ferroptim_bump_versions(ptrs.as_ptr(), ptrs.len()) } == 1 {
            Ok(())
        } else {
            Err(Error::Torch(TchError::Torch(
                "cannot bump the version counter of a tensor updated in place".into(),
            )))
        }
    }
}
