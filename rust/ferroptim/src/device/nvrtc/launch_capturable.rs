//! Launching a capturable step (`super::scalars`): per launch list, the per-tensor scalar
//! kernel (device `step` += 1 and the slot rows), then the update reading its row. Nothing is
//! read on, or written from, the host. **Untested on a GPU.**

use super::emit::Dtype;
use super::kernel::{Layout, STEP_KERNEL};
use super::launch::{
    amp_ptrs, check, cuda_err, dtype_of, enter, function, launch_all, slot_words, NvrtcGroup,
};
use super::scalars::{
    capturable_module, lr_step_slots, scalar_max_t, step_slots, DeviceScalars, LrKind, LrRead,
    SCALARS_KERNEL, SCALAR_THREADS,
};
use crate::error::{Error, Result};
use cudarc::driver::{result as cu, sys};
use std::ffi::c_void;
use std::path::PathBuf;
use tch::{Device, Kind, Tensor};

/// The module, layout, slots and constants of one (rule, dtype).
struct Capturable {
    source: String,
    layout: Layout,
    slots: Vec<f64>,
    constants: Vec<f64>,
}

fn kernel<R: DeviceScalars>(rule: &R, dtype: Dtype, lr: Option<&LrRead>) -> Result<Capturable> {
    let n_state = rule.state_names().len();
    let found = match lr {
        None => step_slots(rule, n_state, dtype),
        Some(_) => lr_step_slots(rule, n_state, dtype),
    };
    let (trace, dep) = found.map_err(|e| Error::InvalidArgument {
        name: "capturable",
        value: e,
    })?;
    let layout = Layout::new(n_state, trace.slots.len(), dtype);
    let constants = rule.step_constants();
    let counts = (constants.len(), rule.extra_initial().len());
    Ok(Capturable {
        source: capturable_module(&trace, &dep, R::STEP_SOURCE, counts, &layout, lr),
        layout,
        slots: trace.slots,
        constants,
    })
}

/// One capturable step of every group (torch's `capturable=True`): each parameter's scalar
/// state (its `step`, and NAdam's `mu_product`) is one-element float32 tensors on the
/// parameter's device, advanced by the kernels (not when `found_inf` is nonzero); the
/// step-dependent scalars are computed on the device. The launches read nothing from the host and can be captured in a CUDA
/// graph (after a warm-up step has compiled and loaded the kernels). Other arguments as
/// [`super::launch::step`]. Untested on a GPU.
///
/// # Errors
/// As [`super::launch::step`] (also when a rule's graph depends on its step), all before
/// anything is modified, except [`Error::Cuda`].
pub fn step_capturable<R: DeviceScalars>(
    groups: &[NvrtcGroup<R>],
    stream: u64,
    grad_scale: Option<&Tensor>,
    found_inf: Option<&Tensor>,
    nvrtc_dirs: &[PathBuf],
) -> Result<()> {
    let lrs: Vec<Option<Tensor>> = groups.iter().map(|_| None).collect();
    step_capturable_with_lr(groups, &lrs, stream, grad_scale, found_inf, nvrtc_dirs)
}

/// How the scalar kernel reads `lr` (a one-element float32 or float64 tensor on CUDA device
/// `ordinal`), for rule `R`.
fn lr_read<R: DeviceScalars>(lr: &Tensor, ordinal: i32, who: &str) -> Result<LrRead> {
    let bad = |why: String| Error::InvalidArgument {
        name: "lr",
        value: format!("{who}: {why}"),
    };
    let kind = match lr.kind() {
        Kind::Float => LrKind::F32,
        Kind::Double => LrKind::F64,
        k => return Err(bad(format!("a {k:?} tensor (float32 or float64 only)"))),
    };
    if lr.numel() != 1 {
        return Err(bad(format!(
            "Tensor lr must be 1-element (got {})",
            lr.numel()
        )));
    }
    if lr.device() != Device::Cuda(ordinal as usize) {
        return Err(bad(format!(
            "a tensor on {:?}, not on the parameters' device cuda:{ordinal}",
            lr.device()
        )));
    }
    LrRead::of::<R>(kind).ok_or_else(|| bad("this rule reads no tensor lr on the device".into()))
}

/// [`step_capturable`] with each group's learning rate `lrs[g]` (one per group): None, the
/// rule's `lr`; or a one-element float32 or float64 tensor on the parameters' CUDA device,
/// read by the scalar kernel at every step (the rule's `lr` is then not used), so that
/// changing it in place (`lr.fill_(…)`, as LR schedulers do with a tensor `lr`) takes effect
/// in a captured CUDA graph's replay. Rules with [`DeviceScalars::LR_CONST`] only (Adam,
/// AdamW). Untested on a GPU.
///
/// # Errors
/// As [`step_capturable`]; [`Error::InvalidArgument`] for an `lr` of another dtype, size or
/// device, or a rule that reads no tensor `lr`; all before anything is modified.
pub fn step_capturable_with_lr<R: DeviceScalars>(
    groups: &[NvrtcGroup<R>],
    lrs: &[Option<Tensor>],
    stream: u64,
    grad_scale: Option<&Tensor>,
    found_inf: Option<&Tensor>,
    nvrtc_dirs: &[PathBuf],
) -> Result<()> {
    if lrs.len() != groups.len() {
        return Err(Error::InvalidArgument {
            name: "lrs",
            value: format!("{} learning rates for {} groups", lrs.len(), groups.len()),
        });
    }
    let amp = amp_ptrs(grad_scale, found_inf)?;
    let stream = stream as usize as sys::CUstream;
    // (kernel, device, members, scalar state addresses: each tensor's `step` then the
    // others) per (group, device, dtype), built first.
    // The address of the group's `lr` tensor (0: none) last.
    type List = (Capturable, i32, Vec<(Vec<u64>, i64)>, Vec<u64>, u64);
    let mut lists: Vec<List> = Vec::new();
    for (gi, (g, lr)) in groups.iter().zip(lrs).enumerate() {
        let n_state = g.rule.state_names().len();
        let n_scalar = g.rule.scalar_state_names().len();
        let first = lists.len();
        for (i, pt) in g.params.iter().enumerate() {
            let who = format!("params[{i}] of group {gi}");
            let (ordinal, kind) = check(pt, n_state, n_scalar, &who, true)?;
            if pt.param.numel() == 0 {
                continue;
            }
            let dtype = dtype_of(kind).ok_or(Error::UnsupportedDtype {
                what: "param".into(),
                kind,
            })?;
            let mut ptrs = vec![pt.param.data_ptr() as u64, pt.grad.data_ptr() as u64];
            ptrs.extend(pt.state.iter().map(|t| t.data_ptr() as u64));
            let member = (ptrs, pt.param.numel() as i64);
            let scalar_ptrs = pt.scalar_state.iter().map(|t| t.data_ptr() as u64);
            let li = match lists[first..]
                .iter()
                .position(|l| l.1 == ordinal && l.0.layout.dtype == dtype)
            {
                Some(li) => first + li,
                None => {
                    let read = match lr {
                        Some(t) => Some(lr_read::<R>(t, ordinal, &format!("group {gi}"))?),
                        None => None,
                    };
                    let lr_ptr = lr.as_ref().map_or(0, |t| t.data_ptr() as u64);
                    let k = kernel(&g.rule, dtype, read.as_ref())?;
                    lists.push((k, ordinal, Vec::new(), Vec::new(), lr_ptr));
                    lists.len() - 1
                }
            };
            lists[li].2.push(member);
            lists[li].3.extend(scalar_ptrs);
        }
    }
    for (k, ordinal, members, scalars, lr_ptr) in &lists {
        let mut lr_ptr = *lr_ptr;
        let n_scalar = scalars.len() / members.len().max(1);
        let max_t = scalar_max_t(n_scalar);
        let (_, arch) = enter(*ordinal)?;
        let get = |name: &str| function(&k.source, name, *ordinal, &arch, nvrtc_dirs);
        let (f_scalars, f_step) = (get(SCALARS_KERNEL)?, get(STEP_KERNEL)?);
        let row_kind = if k.layout.dtype.f32_compute() {
            Kind::Float
        } else {
            Kind::Double
        };
        let tslots = Tensor::f_empty(
            [(members.len() * k.layout.slots) as i64],
            (row_kind, Device::Cuda(*ordinal as usize)),
        )?;
        let mut tslots_ptr = tslots.data_ptr() as u64;
        let mut slots = slot_words(k.layout, &k.slots);
        let mut consts: Vec<u64> = k.constants.iter().map(|c| c.to_bits()).collect();
        consts.push(0);
        let mut found_inf_ptr = amp.1;
        for start in (0..members.len()).step_by(max_t) {
            let count = max_t.min(members.len() - start);
            let mut step_ptrs = vec![0u64; max_t * n_scalar];
            step_ptrs[..count * n_scalar]
                .copy_from_slice(&scalars[start * n_scalar..(start + count) * n_scalar]);
            let to_i32 = |v: usize| {
                i32::try_from(v).map_err(|_| Error::Cuda(format!("{v} tensors exceed an int")))
            };
            let (mut base, mut n) = (to_i32(start)?, to_i32(count)?);
            let mut params: [*mut c_void; 8] = [
                step_ptrs.as_mut_ptr() as *mut c_void,
                slots.as_mut_ptr() as *mut c_void,
                consts.as_mut_ptr() as *mut c_void,
                &mut tslots_ptr as *mut u64 as *mut c_void,
                &mut base as *mut i32 as *mut c_void,
                &mut n as *mut i32 as *mut c_void,
                &mut found_inf_ptr as *mut u64 as *mut c_void,
                &mut lr_ptr as *mut u64 as *mut c_void,
            ];
            // SAFETY: `fo_scalars(FoStepArgs, FoSlots, FoConsts, T*, int, int, const float*,
            // const void*)`:
            // `step_ptrs` is FoStepArgs (FO_SMAX * FO_NSCALAR addresses, FO_SMAX = `max_t`,
            // FO_NSCALAR = `n_scalar`, the rule's scalar state count; the first
            // `count * n_scalar` are the float32 one-element scalar state tensors on this
            // device, checked above, tensor by tensor), `slots` FoSlots,
            // `consts` at least FO_NCONST doubles; thread `i < count` writes row `start + i`
            // of `tslots` (`members.len()` rows of FO_SLOTS); `found_inf` is null or a
            // float32 CUDA element; `lr` is null (module built without a tensor lr, not
            // read) or the group's one-element lr tensor of the module's LrKind on this
            // device (checked by `lr_read`).
            unsafe {
                cu::launch_kernel(
                    f_scalars,
                    (count.div_ceil(SCALAR_THREADS) as u32, 1, 1),
                    (SCALAR_THREADS as u32, 1, 1),
                    0,
                    stream,
                    &mut params,
                )
                .map_err(|e| cuda_err("cuLaunchKernel", e))?;
            }
        }
        // No empty tensors in `members`: tensor `i` reads row `i`.
        launch_all(f_step, k.layout, members, &k.slots, amp, tslots_ptr, stream)?;
        // Back to the caching allocator: reused only in this stream's order.
        drop(tslots);
    }
    Ok(())
}
