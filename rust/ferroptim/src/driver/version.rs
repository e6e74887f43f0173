//! Version counters of the tensors the fused kernel writes (`csrc/version.cpp`).
//!
//! An in-place ATen op bumps the version counter of each tensor it writes, and autograd
//! raises if a tensor it saved for backward has changed version since. The kernel writes
//! through raw pointers, so the driver bumps the counters of everything it wrote in place,
//! once per step (torch's AdamW bumps a parameter twice; only the change matters).

use super::kernel::parallel;
use crate::error::{Error, Result};
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, Ordering};
use tch::{TchError, Tensor};

extern "C" {
    fn ferroptim_inplace_allowed(t: *const c_void) -> i32;
    fn ferroptim_bump_versions(ts: *const *const c_void, n: usize) -> i32;
}

/// True if `t` may be updated in place on this thread, as an in-place ATen op checks it: it
/// has a version counter (it is not an inference tensor), or `torch.inference_mode` is on
/// (which is thread-local: call this on the caller's thread).
pub(crate) fn inplace_allowed(t: &Tensor) -> bool {
    // SAFETY: `t.as_ptr()` is a live `at::Tensor*` (tch's `C_tensor`) borrowed for the call;
    // the function only reads it and catches every exception.
    unsafe { ferroptim_inplace_allowed(t.as_ptr() as *const c_void) == 1 }
}

/// Bumps the version counter of each tensor in `tensors`, given as the addresses of their
/// `at::Tensor`s (`Tensor::as_ptr`), which the caller keeps alive for the call; undefined
/// tensors and tensors without a counter (admitted by [`inplace_allowed`] only inside
/// inference mode, where a bump does nothing) are skipped. Any thread may call it.
///
/// # Errors
/// [`Error::Torch`] if libtorch throws, which nothing validation admits is known to cause.
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
        Err(refused())
    }
}

fn refused() -> Error {
    Error::Torch(TchError::Torch(
        "cannot bump the version counter of a tensor updated in place".into(),
    ))
}

/// [`bump`] with `tensors` cut into `threads` contiguous parts, bumped at the same time on
/// libtorch's threads. Pass the number of threads that validated the step
/// (`metadata::check_all` splits the parameters in the same order): each thread then bumps
/// about the counters it prefetched, whose lines are in its own cache, instead of one thread
/// taking every line from the other cores one atomic increment at a time.
///
/// # Errors
/// As [`bump`] (if it fails on any part; the others are bumped).
pub(crate) fn bump_split(tensors: &[usize], threads: usize) -> Result<()> {
    if threads <= 1 || tensors.is_empty() {
        return bump(tensors);
    }
    let per = tensors.len().div_ceil(threads);
    let failed = AtomicBool::new(false);
    parallel(threads, &|t| {
        let part = tensors.chunks(per).nth(t).unwrap_or_default();
        if bump(part).is_err() {
            failed.store(true, Ordering::Relaxed);
        }
    })?;
    if failed.into_inner() {
        return Err(refused());
    }
    Ok(())
}
