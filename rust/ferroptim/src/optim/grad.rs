//! Setting a gradient to undefined (`p.grad = None`), through `csrc/grad.cpp`.

use crate::error::Result;
use std::ffi::c_void;
use tch::{TchError, Tensor};

extern "C" {
    fn ferroptim_clear_grad(t: *const c_void) -> i32;
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
