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
    let (scalar_type, m) = inspect(t, like, writable)?;
    Some(Meta {
        kind: meta_kind(scalar_type)?,
        ..m
    })
}

/// As [`meta`], for a tensor that must be of dtype `kind`, `uint8` (8-bit codes) or one of
/// the supported floating dtypes; `None` for any other dtype.
pub(crate) fn meta_of_kind(
    t: &Tensor,
    like: Option<&Tensor>,
    writable: bool,
    kind: Kind,
) -> Option<Meta> {
    let (scalar_type, m) = inspect(t, like, writable)?;
    let ok = match kind {
        // c10::ScalarType::Byte
        Kind::Uint8 => scalar_type == 0,
        _ => meta_kind(scalar_type) == Some(kind),
    };
    ok.then_some(Meta { kind, ..m })
}

/// The supported dtype of a c10::ScalarType value.
fn meta_kind(scalar_type: i32) -> Option<Kind> {
    match scalar_type {
        5 => Some(Kind::Half),
        6 => Some(Kind::Float),
        7 => Some(Kind::Double),
        15 => Some(Kind::BFloat16),
        _ => None,
    }
}

/// One `ferroptim_inspect` call: the c10 scalar type and the metadata (its `kind` a
/// placeholder), or `None` unless `t` is a plain strided tensor like `like`.
fn inspect(t: &Tensor, like: Option<&Tensor>, writable: bool) -> Option<(i32, Meta)> {
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
    let device = match (out.device_type, out.device_index) {
        (0, _) => Device::Cpu,
        (1, i) if i >= 0 => Device::Cuda(i as usize),
        _ => return None,
    };
    let meta = Meta {
        kind: Kind::Float,
        device,
        contiguous: out.contiguous == 1,
        ptr: out.ptr as usize,
        numel: usize::try_from(out.numel).ok()?,
        span: out.span as usize,
    };
    Some((out.scalar_type, meta))
}

extern "C" {
    fn ferroptim_prefetch(ts: *const *const c_void, n: usize);
    fn ferroptim_grads(params: *const *const c_void, n: usize, out: *mut *mut c_void) -> i32;
}

/// Parameters per batch of [`prefetch`]: enough tensors for their cache misses to overlap,
/// few enough that the lines are still cached when the batch is inspected.
pub(crate) const PREFETCH_BATCH: usize = 16;

/// Brings the metadata of `tensors` (handle, TensorImpl, StorageImpl, first data line) into
/// the cache, the misses of all of them overlapping (`csrc/prefetch.cpp`). Only a hint: it
/// changes nothing and cannot fail.
pub(crate) fn prefetch<'a>(tensors: impl IntoIterator<Item = &'a Tensor>) {
    let mut ptrs = [std::ptr::null::<c_void>(); 64];
    let mut n = 0;
    for t in tensors {
        if n == ptrs.len() {
            flush(&ptrs[..n]);
            n = 0;
        }
        ptrs[n] = t.as_ptr() as *const c_void;
        n += 1;
    }
    flush(&ptrs[..n]);

    fn flush(ptrs: &[*const c_void]) {
        // SAFETY: every pointer is a live `at::Tensor*` (tch's `C_tensor`) borrowed for this
        // call; the function only reads metadata through them and catches every exception.
        unsafe { ferroptim_prefetch(ptrs.as_ptr(), ptrs.len()) }
    }
}

/// The gradients of `params` (undefined tensors where there is none), read in one batch with
/// their metadata prefetched. `None` if libtorch reported an error (then take the per-tensor
/// path, which reports it).
pub(crate) fn grads(params: &[&Tensor]) -> Option<Vec<Tensor>> {
    let ptrs: Vec<*const c_void> = params.iter().map(|t| t.as_ptr() as *const c_void).collect();
    let mut out = vec![std::ptr::null_mut::<c_void>(); ptrs.len()];
    // SAFETY: `ptrs` are live `at::Tensor*`s borrowed for the call and `out` has room for one
    // pointer each; on success every `out[i]` is a new heap `at::Tensor` owned by nobody else,
    // on failure all are null (the C++ side frees what it allocated).
    let ok = unsafe { ferroptim_grads(ptrs.as_ptr(), ptrs.len(), out.as_mut_ptr()) };
    if ok != 1 {
        return None;
    }
    // SAFETY: each pointer is a new `at::Tensor*` (see above), which `Tensor` now owns and
    // frees on drop, as for tensors tch's own functions return.
    Some(
        out.into_iter()
            .map(|p| unsafe { Tensor::from_ptr(p as *mut torch_sys::C_tensor) })
            .collect(),
    )
}
