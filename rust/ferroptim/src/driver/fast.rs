//! Tensor metadata in one FFI call (`csrc/inspect.cpp`) instead of one tch call per property.

use super::validate::Meta;
use std::ffi::c_void;
use tch::{Device, Kind, Tensor};

#[repr(C)]
#[derive(Default)]
struct Inspect {
    scalar_type: i32,
    device_type: i32,
    device_index: i32,
    contiguous: i32,
    same_shape: i32,
    same_device: i32,
    numel: i64,
    ptr: u64,
    span: u64,
}

extern "C" {
    fn ferroptim_inspect(
        t: *const c_void,
        like: *const c_void,
        writable: i32,
        out: *mut Inspect,
    ) -> i32;
}

/// The metadata of `t` if it is a defined dense tensor of a supported dtype with the same
/// shape and device as `like` (when given); `None` means "take the slow, precise path".
pub(crate) fn meta(t: &Tensor, like: Option<&Tensor>, writable: bool) -> Option<Meta> {
    let mut out = Inspect::default();
    let like = like.map_or(std::ptr::null(), |l| l.as_ptr() as *const c_void);
    // SAFETY: `t.as_ptr()` and `like` point to live `at::Tensor`s (tch's `C_tensor` is an
    // `at::Tensor*`) or `like` is null; `out` is a valid, exclusively borrowed struct of the
    // layout the C++ side writes. The function catches every exception.
    let ok =
        unsafe { ferroptim_inspect(t.as_ptr() as *const c_void, like, writable.into(), &mut out) };
    if ok != 1 || out.same_shape != 1 || out.same_device != 1 {
        return None;
    }
    // c10::ScalarType values of the supported dtypes.
    let kind = match out.scalar_type {
        5 => Kind::Half,
        6 => Kind::Float,
        7 => Kind::Double,
        15 => Kind::BFloat16,
        _ => return None,
    };
    let device = match (out.device_type, out.device_index) {
        (0, _) => Device::Cpu,
        (1, i) if i >= 0 => Device::Cuda(i as usize),
        _ => return None,
    };
    Some(Meta {
        kind,
        device,
        contiguous: out.contiguous == 1,
        ptr: out.ptr as usize,
        numel: usize::try_from(out.numel).ok()?,
        span: out.span as usize,
    })
}
