//! Launching the generated kernels on torch's CUDA tensors. **Untested on a GPU**: written and
//! compiled without one; `benches/gpu_check.sh` runs it against torch on the next device run.
//! Rules with per-tensor norms: [`step_with_norms`] (`launch_norms.rs`); capturable steps:
//! [`step_capturable`] (`launch_capturable.rs`).
//!
//! Per step: the rule's scalars are computed on the host from the CPU scalar state (torch's
//! `capturable=False` layout, exactly as the CPU kernel computes them) and traced into the
//! kernel source and its slot values ([`super::step_kernel`]); the source is compiled once per
//! (source, device) with NVRTC for the device's `sm_XY` and loaded with the driver API into
//! the device's primary context (the one torch's runtime uses); the multi-tensor-apply kernel
//! is launched on the caller's stream (Python: `torch.cuda.current_stream().cuda_stream`).
//! Nothing waits on the device: `grad_scale`/`found_inf` are read by the kernel.

use super::compile;
use super::emit::Dtype;
use super::kernel::{Layout, CHUNK, MAX_BLOCKS, STEP_KERNEL};
pub use super::launch_capturable::{step_capturable, step_capturable_with_lr};
use super::norms::DeviceNorms;
use super::StepKernel;
use crate::error::{Error, Result};
use crate::rule::{Rule, ScalarState};
use crate::ParamTensors;
use cudarc::driver::{result as cu, sys};
use std::collections::HashMap;
use std::ffi::{c_void, CString};
use std::path::PathBuf;
use std::sync::Mutex;
use tch::{Device, Kind, Tensor};

/// One parameter group: the rule and its parameters (contiguous CUDA tensors; scalar state
/// on the CPU).
pub struct NvrtcGroup<R> {
    /// The algorithm and its hyperparameters.
    pub rule: R,
    /// The parameters with gradient, state and scalar state in the rule's order.
    pub params: Vec<ParamTensors>,
}

pub(super) fn cuda_err(what: &str, e: impl std::fmt::Debug) -> Error {
    Error::Cuda(format!("{what}: {e:?}"))
}

/// Compiled modules: (source, device ordinal) → `CUmodule` (as an address; modules stay
/// loaded for the life of the process).
static CACHE: Mutex<Option<HashMap<(String, i32), usize>>> = Mutex::new(None);

pub(super) fn dtype_of(kind: Kind) -> Option<Dtype> {
    match kind {
        Kind::Float => Some(Dtype::F32),
        Kind::Double => Some(Dtype::F64),
        Kind::BFloat16 => Some(Dtype::Bf16),
        Kind::Half => Some(Dtype::F16),
        _ => None,
    }
}

/// Makes device `ordinal`'s primary context current on this thread; returns its `sm_XY`.
pub(super) fn enter(ordinal: i32) -> Result<(sys::CUdevice, String)> {
    // SAFETY: only checks whether libcuda can be opened.
    if !unsafe { sys::is_culib_present() } {
        return Err(Error::Cuda(
            "libcuda (the NVIDIA driver) is not available".into(),
        ));
    }
    cu::init().map_err(|e| cuda_err("cuInit", e))?;
    let dev = cu::device::get(ordinal).map_err(|e| cuda_err("cuDeviceGet", e))?;
    // SAFETY: `dev` comes from cuDeviceGet. The primary context is retained (torch's runtime
    // retains it too) and never released, so it outlives every module loaded into it.
    unsafe {
        let ctx =
            cu::primary_ctx::retain(dev).map_err(|e| cuda_err("cuDevicePrimaryCtxRetain", e))?;
        cu::ctx::set_current(ctx).map_err(|e| cuda_err("cuCtxSetCurrent", e))?;
        let attr = |a| cu::device::get_attribute(dev, a);
        let major = attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)
            .map_err(|e| cuda_err("compute capability", e))?;
        let minor = attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)
            .map_err(|e| cuda_err("compute capability", e))?;
        Ok((dev, format!("sm_{major}{minor}")))
    }
}

/// Kernel `name` of the module compiled from `source` on device `ordinal`, compiled and loaded
/// on first use.
pub(super) fn function(
    source: &str,
    name: &str,
    ordinal: i32,
    arch: &str,
    nvrtc_dirs: &[PathBuf],
) -> Result<sys::CUfunction> {
    let mut guard = CACHE
        .lock()
        .map_err(|_| Error::Cuda("kernel cache poisoned".into()))?;
    let cache = guard.get_or_insert_with(HashMap::new);
    let key = (source.to_string(), ordinal);
    let module = match cache.get(&key) {
        Some(&m) => m as sys::CUmodule,
        None => {
            compile::load(nvrtc_dirs).map_err(Error::Cuda)?;
            let out = compile::compile(source, "ferroptim_step", arch).map_err(Error::Cuda)?;
            // SAFETY: the CUBIN is a complete image NVRTC produced for this device's
            // architecture; the primary context is current (`enter`); the module is never
            // unloaded, so its function handles stay valid.
            let m = unsafe {
                cu::module::load_data(out.cubin.as_ptr() as *const c_void)
                    .map_err(|e| cuda_err("cuModuleLoadData", e))?
            };
            cache.insert(key, m as usize);
            m
        }
    };
    let cname = CString::new(name).map_err(|e| cuda_err("kernel name", e))?;
    // SAFETY: `module` is a loaded module of the current context (never unloaded).
    unsafe {
        cu::module::get_function(module, cname).map_err(|e| cuda_err("cuModuleGetFunction", e))
    }
}

/// The argument struct of one launch, laid out as `FoTensors` in the kernel (`kernel.rs`).
pub(super) struct Args {
    layout: Layout,
    bytes: Vec<u8>,
    tensors: usize,
    pub(super) blocks: usize,
    /// Index in the planned members of the tensor in slot 0.
    pub(super) first: usize,
}

impl Args {
    fn new(layout: Layout) -> Args {
        Args {
            layout,
            bytes: vec![0; layout.tensor_struct_bytes()],
            tensors: 0,
            blocks: 0,
            first: 0,
        }
    }
    fn put(&mut self, at: usize, v: &[u8]) {
        self.bytes[at..at + v.len()].copy_from_slice(v);
    }
    fn set_tensor(&mut self, slot: usize, ptrs: &[u64], numel: i64) {
        let t = self.layout.max_tensors;
        for (l, p) in ptrs.iter().enumerate() {
            self.put(8 * (l * t + slot), &p.to_le_bytes());
        }
        self.put(8 * (self.layout.lists * t + slot), &numel.to_le_bytes());
    }
    fn add_block(&mut self, tensor: usize, chunk: i32) {
        let base = 8 * (self.layout.lists + 1) * self.layout.max_tensors;
        self.put(base + 4 * self.blocks, &chunk.to_le_bytes());
        self.bytes[base + 4 * MAX_BLOCKS + self.blocks] = tensor as u8;
        self.blocks += 1;
    }
    /// The struct as 8-byte aligned words.
    pub(super) fn words(&self) -> Vec<u64> {
        self.bytes
            .chunks(8)
            .map(|c| {
                let mut b = [0u8; 8];
                b[..c.len()].copy_from_slice(c);
                u64::from_le_bytes(b)
            })
            .collect()
    }
}

/// The scalar slots as `FoSlots` words (`f32` pairs for f32 compute, else `f64`).
pub(super) fn slot_words(layout: Layout, slots: &[f64]) -> Vec<u64> {
    let mut slot_words: Vec<u64> = if layout.dtype.f32_compute() {
        let v: Vec<f32> = slots.iter().map(|&s| s as f32).collect();
        v.chunks(2)
            .map(|c| {
                u64::from(c[0].to_bits()) | (u64::from(c.get(1).map_or(0, |x| x.to_bits())) << 32)
            })
            .collect()
    } else {
        slots.iter().map(|s| s.to_bits()).collect()
    };
    if slot_words.is_empty() {
        slot_words.push(0);
    }
    slot_words
}

/// Launches the step kernel `f` over `members` (pointer lists and sizes) with the given slot
/// values; with `tslots` (a device address), tensor `i` of `members` reads its slots from row
/// `i` of that buffer instead.
pub(super) fn launch_all(
    f: sys::CUfunction,
    layout: Layout,
    members: &[(Vec<u64>, i64)],
    slots: &[f64],
    amp: (u64, u64),
    tslots: u64,
    stream: sys::CUstream,
) -> Result<()> {
    let mut slot_words = slot_words(layout, slots);
    let (mut gs, mut fi, mut ts) = (amp.0, amp.1, tslots);
    for args in plan(layout, members) {
        let mut words = args.words();
        let mut base = args.first as i32;
        let mut params: [*mut c_void; 6] = [
            words.as_mut_ptr() as *mut c_void,
            slot_words.as_mut_ptr() as *mut c_void,
            &mut gs as *mut u64 as *mut c_void,
            &mut fi as *mut u64 as *mut c_void,
            &mut ts as *mut u64 as *mut c_void,
            &mut base as *mut i32 as *mut c_void,
        ];
        // SAFETY: `f` is a loaded `fo_step` whose parameters are (FoTensors, FoSlots, const
        // float*, const float*, const T*, int): `words` holds FoTensors byte for byte (its size
        // is checked by the kernel's static_assert), `slot_words` at least FoSlots' bytes, the
        // three pointers are device addresses or null (`tslots`, when not null, holds a row
        // of FO_SLOTS values for each member, written earlier on `stream`). Every tensor address points to a contiguous
        // CUDA tensor of `numel` elements of the kernel's storage type on the current context's
        // device (checked by the caller), and every block stays within its chunk of its
        // tensor. The kernel runs after this returns: as for torch's own kernels, the tensors'
        // memory stays valid because torch's caching allocator reuses freed blocks only in
        // stream order. Aliasing written tensors is not checked (it would give wrong numbers,
        // not out-of-bounds accesses). cuLaunchKernel copies the parameters before returning.
        unsafe {
            cu::launch_kernel(
                f,
                (args.blocks as u32, 1, 1),
                (super::kernel::BLOCK as u32, 1, 1),
                0,
                stream,
                &mut params,
            )
            .map_err(|e| cuda_err("cuLaunchKernel", e))?;
        }
    }
    Ok(())
}

/// The launches that cover every chunk of `members` (pointer lists and sizes) once, in
/// order: each fills up to [`MAX_BLOCKS`] blocks and [`Layout::max_tensors`] tensors; a tensor
/// whose chunks do not all fit continues in the next launch from its first slot (as torch's
/// `multi_tensor_apply`).
pub(super) fn plan(layout: Layout, members: &[(Vec<u64>, i64)]) -> Vec<Args> {
    let mut out = Vec::new();
    let mut args = Args::new(layout);
    for (m, (ptrs, numel)) in members.iter().enumerate() {
        if *numel <= 0 {
            continue;
        }
        if args.tensors == 0 {
            args.first = m;
        }
        let mut slot = args.tensors;
        args.set_tensor(slot, ptrs, *numel);
        args.tensors += 1;
        let chunks = (*numel as usize).div_ceil(CHUNK);
        for c in 0..chunks {
            args.add_block(slot, c as i32);
            let tensor_done = c + 1 == chunks;
            if args.blocks == MAX_BLOCKS || (tensor_done && args.tensors == layout.max_tensors) {
                out.push(std::mem::replace(&mut args, Args::new(layout)));
                if !tensor_done {
                    slot = 0;
                    args.set_tensor(0, ptrs, *numel);
                    args.tensors = 1;
                    args.first = m;
                }
            }
        }
    }
    if args.blocks > 0 {
        out.push(args);
    }
    out
}

/// Checks one parameter's tensors for the kernels; scalar state on the CPU, or with
/// `capturable` float32 one-element tensors on the parameter's device.
pub(super) fn check(
    pt: &ParamTensors,
    n_state: usize,
    n_scalar: usize,
    who: &str,
    capturable: bool,
) -> Result<(i32, Kind)> {
    let p = &pt.param;
    let ordinal = match p.device() {
        Device::Cuda(i) => i as i32,
        d => {
            return Err(Error::DeviceMismatch {
                what: format!("param {who}"),
                expected: Device::Cuda(0),
                got: d,
            })
        }
    };
    let kind = p.kind();
    if dtype_of(kind).is_none() {
        return Err(Error::UnsupportedDtype {
            what: format!("param {who}"),
            kind,
        });
    }
    if pt.state.len() != n_state || pt.scalar_state.len() != n_scalar {
        return Err(Error::StateMismatch {
            what: format!("state of {who}"),
            expected: format!("{n_state} state and {n_scalar} scalar state tensors"),
            got: format!("{} and {}", pt.state.len(), pt.scalar_state.len()),
        });
    }
    for t in std::iter::once(p)
        .chain(std::iter::once(&pt.grad))
        .chain(&pt.state)
    {
        if t.device() != p.device()
            || t.kind() != kind
            || t.size() != p.size()
            || !t.is_contiguous()
        {
            return Err(Error::InvalidArgument {
                name: "tensors",
                value: format!(
                    "{who}: gradient and state must be contiguous, of the parameter's shape, \
                     dtype and device (got {:?} {:?} {:?})",
                    t.device(),
                    t.kind(),
                    t.size()
                ),
            });
        }
    }
    for s in &pt.scalar_state {
        let ok = if capturable {
            s.device() == p.device() && s.kind() == Kind::Float && s.numel() == 1
        } else {
            s.device() == Device::Cpu && s.numel() == 1
        };
        if !ok {
            return Err(Error::InvalidArgument {
                name: "scalar_state",
                value: if capturable {
                    format!(
                        "{who}: with capturable, scalar state must be one-element float32 \
                         tensors on the parameter's device (got {:?} {:?})",
                        s.device(),
                        s.kind()
                    )
                } else {
                    format!("{who}: scalar state must be one-element CPU tensors")
                },
            });
        }
    }
    Ok((ordinal, kind))
}

/// The last traced parameter: scalar state bits before the step, `fresh`, device, dtype, its
/// launch list's index and the scalar state after the step.
type Reuse = (Vec<u64>, bool, i32, Kind, usize, Vec<f64>);

/// The device addresses of GradScaler's `grad_scale` and `found_inf` (0 when absent).
pub(super) fn amp_ptrs(
    grad_scale: Option<&Tensor>,
    found_inf: Option<&Tensor>,
) -> Result<(u64, u64)> {
    let amp_ptr = |t: Option<&Tensor>, name: &'static str| -> Result<u64> {
        match t {
            None => Ok(0),
            Some(t) if t.kind() == Kind::Float && t.numel() == 1 && t.device().is_cuda() => {
                Ok(t.data_ptr() as u64)
            }
            Some(t) => Err(Error::InvalidArgument {
                name,
                value: format!(
                    "a {:?} tensor of {} elements on {:?} (must be one float32 element on CUDA)",
                    t.kind(),
                    t.numel(),
                    t.device()
                ),
            }),
        }
    };
    Ok((
        amp_ptr(grad_scale, "grad_scale")?,
        amp_ptr(found_inf, "found_inf")?,
    ))
}

/// One step of every group with the generated kernels, launched on `stream` (a `CUstream`;
/// 0 is the legacy default stream; it must be torch's current stream of the parameters'
/// device, whose caching allocator holds the step's temporary buffers). `grad_scale`/`found_inf`: optional float32 one-element
/// CUDA tensors (GradScaler's hand-over): gradients are divided by `grad_scale` in the kernel
/// and stored unscaled, and the kernel does nothing when `found_inf` is nonzero — the host
/// scalar state (`step`) still advances, so pass `found_inf` only where that is what you
/// want (the Python package lets GradScaler skip instead). `nvrtc_dirs`: folders that may
/// hold `libnvrtc.so.13`.
///
/// Untested on a GPU. Rules that reduce over whole tensors (LAMB, LARS with trust ratio) are
/// refused here: [`step_with_norms`] runs them.
///
/// # Errors
/// [`Error::InvalidArgument`], [`Error::DeviceMismatch`], [`Error::UnsupportedDtype`] or
/// [`Error::StateMismatch`] before anything is modified; [`Error::Cuda`] when NVRTC or the
/// driver fails (the scalar state of earlier groups may then have advanced).
pub fn step<R: Rule>(
    groups: &[NvrtcGroup<R>],
    stream: u64,
    grad_scale: Option<&Tensor>,
    found_inf: Option<&Tensor>,
    nvrtc_dirs: &[PathBuf],
) -> Result<()> {
    let make = |_: &R, s: &R::Scalars, n_state: usize, dtype: Dtype| -> Result<StepKernel> {
        if R::norms(s) > 0 {
            return Err(Error::InvalidArgument {
                name: "rule",
                value: "a rule with per-tensor norms (LAMB, LARS with trust ratio): use \
                        step_with_norms"
                    .into(),
            });
        }
        super::step_kernel::<R>(s, n_state, dtype).map_err(Error::Cuda)
    };
    run(groups, stream, (grad_scale, found_inf), nvrtc_dirs, &make)
}

/// [`step`] for rules with per-tensor norms (LAMB, LARS): per launch list a reduction pass,
/// the trust ratios computed on the device, then the update reading them (`super::norms`);
/// nothing waits on the host. Parameters whose scalars need no norms (LAMB with `adam`, LARS
/// without `trust`) take the elementwise kernel. Untested on a GPU.
///
/// # Errors
/// As [`step`].
pub fn step_with_norms<R: DeviceNorms>(
    groups: &[NvrtcGroup<R>],
    stream: u64,
    grad_scale: Option<&Tensor>,
    found_inf: Option<&Tensor>,
    nvrtc_dirs: &[PathBuf],
) -> Result<()> {
    let make = |rule: &R, s: &R::Scalars, n_state: usize, dtype: Dtype| -> Result<StepKernel> {
        if R::norms(s) == 0 {
            return super::step_kernel::<R>(s, n_state, dtype).map_err(Error::Cuda);
        }
        super::norm_step_kernel::<R>(rule, s, n_state, dtype).map_err(Error::Cuda)
    };
    run(groups, stream, (grad_scale, found_inf), nvrtc_dirs, &make)
}

type MakeKernel<'a, R> = dyn Fn(&R, &<R as Rule>::Scalars, usize, Dtype) -> Result<StepKernel> + 'a;

fn run<R: Rule>(
    groups: &[NvrtcGroup<R>],
    stream: u64,
    (grad_scale, found_inf): (Option<&Tensor>, Option<&Tensor>),
    nvrtc_dirs: &[PathBuf],
    make: &MakeKernel<'_, R>,
) -> Result<()> {
    let mut checked = Vec::new();
    for (gi, g) in groups.iter().enumerate() {
        let n_state = g.rule.state_names().len();
        let n_scalar = g.rule.scalar_state_names().len();
        for (i, pt) in g.params.iter().enumerate() {
            checked.push(check(
                pt,
                n_state,
                n_scalar,
                &format!("params[{i}] of group {gi}"),
                false,
            )?);
        }
    }
    let amp = amp_ptrs(grad_scale, found_inf)?;
    let stream = stream as usize as sys::CUstream;
    // First every kernel and the new scalar state, so that nothing is written on an error.
    type Launch = (StepKernel, i32, Vec<(Vec<u64>, i64)>);
    let mut plans: Vec<Vec<Launch>> = Vec::new();
    let mut new_scalars: Vec<(Tensor, f64)> = Vec::new();
    let mut at = 0;
    for g in groups {
        let rule = &g.rule;
        let n_state = rule.state_names().len();
        let mut launches: Vec<Launch> = Vec::new();
        // `Rule::scalars` is a pure function of the scalar state and `fresh`: consecutive
        // parameters with the same values (the common case: one `step` for all) share one
        // trace and one launch list.
        let mut last: Option<Reuse> = None;
        for pt in &g.params {
            let (ordinal, kind) = checked[at];
            at += 1;
            let mut ss = Vec::with_capacity(pt.scalar_state.len());
            for t in &pt.scalar_state {
                let v = t.f_double_value(&[0]).or_else(|_| t.f_double_value(&[]))?;
                ss.push(ScalarState::new(v, t.kind()));
            }
            let mut ptrs = vec![pt.param.data_ptr() as u64, pt.grad.data_ptr() as u64];
            ptrs.extend(pt.state.iter().map(|t| t.data_ptr() as u64));
            let member = (ptrs, pt.param.numel() as i64);
            let key: Vec<u64> = ss.iter().map(|v| v.get().to_bits()).collect();
            if let Some((k, fresh, o, kd, li, new)) = &last {
                if *k == key && *fresh == pt.fresh && *o == ordinal && *kd == kind {
                    for (t, v) in pt.scalar_state.iter().zip(new) {
                        new_scalars.push((t.shallow_clone(), *v));
                    }
                    launches[*li].2.push(member);
                    continue;
                }
            }
            let s = rule.scalars(&mut ss, pt.fresh);
            let dtype = dtype_of(kind).ok_or(Error::UnsupportedDtype {
                what: "param".into(),
                kind,
            })?;
            let k = make(rule, &s, n_state, dtype)?;
            let new: Vec<f64> = ss.iter().map(ScalarState::get).collect();
            for (t, v) in pt.scalar_state.iter().zip(&new) {
                new_scalars.push((t.shallow_clone(), *v));
            }
            let same = |l: &Launch| {
                l.1 == ordinal
                    && l.0.source == k.source
                    && l.0.slots == k.slots
                    && l.0.norms == k.norms
            };
            let li = match launches.iter().position(same) {
                Some(li) => li,
                None => {
                    launches.push((k, ordinal, Vec::new()));
                    launches.len() - 1
                }
            };
            launches[li].2.push(member);
            last = Some((key, pt.fresh, ordinal, kind, li, new));
        }
        plans.push(launches);
    }
    for (mut t, v) in new_scalars {
        let _ = t.f_fill_(v)?;
    }
    for launches in &plans {
        for (k, ordinal, members) in launches {
            let (_, arch) = enter(*ordinal)?;
            let ctx = super::launch_norms::Ctx {
                ordinal: *ordinal,
                arch: &arch,
                nvrtc_dirs,
                amp,
                stream,
            };
            match &k.norms {
                None => {
                    let f = function(&k.source, STEP_KERNEL, *ordinal, &arch, nvrtc_dirs)?;
                    launch_all(f, k.layout, members, &k.slots, amp, 0, stream)?;
                }
                Some(norms) => super::launch_norms::launch(&ctx, k, norms, members)?,
            }
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "tests_plan.rs"]
mod tests;
