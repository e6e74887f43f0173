//! Launching a rule with per-tensor norms (LAMB, LARS): reduction, trust ratio, update, in
//! stream order (`super::norms`). **Untested on a GPU.**

use super::kernel::{CHUNK, STEP_KERNEL};
use super::launch::{cuda_err, function, launch_all, plan, slot_words};
use super::norms::{
    NORM_KERNEL, NORM_THREADS, PARTIALS_PER_CHUNK, TRUST_KERNEL, TRUST_MAX_T, TRUST_THREADS,
};
use super::{NormKernel, StepKernel};
use crate::error::{Error, Result};
use cudarc::driver::{result as cu, sys};
use std::ffi::c_void;
use std::path::PathBuf;
use tch::{Device, Kind, Tensor};

/// Where and how one launch list runs.
pub(super) struct Ctx<'a> {
    pub ordinal: i32,
    pub arch: &'a str,
    pub nvrtc_dirs: &'a [PathBuf],
    /// `grad_scale` and `found_inf` device addresses (0: none).
    pub amp: (u64, u64),
    pub stream: sys::CUstream,
}

/// Launches `f` with `params` on `grid` blocks of `threads`.
///
/// # Safety
/// `params` must point to the kernel's arguments, in its order, each of its exact type and
/// size; every device address among them must be valid for what the kernel does with it.
unsafe fn go(
    f: sys::CUfunction,
    grid: usize,
    threads: usize,
    stream: sys::CUstream,
    params: &mut [*mut c_void],
) -> Result<()> {
    cu::launch_kernel(
        f,
        (grid as u32, 1, 1),
        (threads as u32, 1, 1),
        0,
        stream,
        params,
    )
    .map_err(|e| cuda_err("cuLaunchKernel", e))
}

/// One launch list of a norm rule: `members` (pointer lists and sizes) share the kernel `k`.
/// Temporary buffers (the block sums and the per-tensor slot rows) come from torch's caching
/// allocator on the current stream, which must be `ctx.stream`.
pub(super) fn launch(
    ctx: &Ctx<'_>,
    k: &StepKernel,
    norms: &NormKernel,
    members: &[(Vec<u64>, i64)],
) -> Result<()> {
    // Tensor `i` of the list is row `i` of the slot buffer: no empty tensors in between.
    let members: Vec<(Vec<u64>, i64)> = members.iter().filter(|m| m.1 > 0).cloned().collect();
    if members.is_empty() {
        return Ok(());
    }
    let get = |name: &str| function(&k.source, name, ctx.ordinal, ctx.arch, ctx.nvrtc_dirs);
    let (f_norms, f_trust, f_step) = (get(NORM_KERNEL)?, get(TRUST_KERNEL)?, get(STEP_KERNEL)?);
    let chunks: Vec<usize> = members
        .iter()
        .map(|m| (m.1 as usize).div_ceil(CHUNK))
        .collect();
    let total: usize = chunks.iter().sum();
    let as_i32 = |v: usize, what: &str| {
        i32::try_from(v).map_err(|_| Error::Cuda(format!("{what} {v} exceeds the kernels' int")))
    };
    let device = Device::Cuda(ctx.ordinal as usize);
    let partials = Tensor::f_empty(
        [(total * PARTIALS_PER_CHUNK) as i64],
        (Kind::Double, device),
    )?;
    let row_kind = if k.layout.dtype.f32_compute() {
        Kind::Float
    } else {
        Kind::Double
    };
    let tslots = Tensor::f_empty(
        [(members.len() * k.layout.slots) as i64],
        (row_kind, device),
    )?;
    let mut partials_ptr = partials.data_ptr() as u64;
    let mut tslots_ptr = tslots.data_ptr() as u64;

    // 1. Block sums of the norm terms.
    let mut term_words = slot_words(norms.term_layout, &norms.term_slots);
    let mut grad_scale = ctx.amp.0;
    let mut block_base = 0usize;
    for args in plan(norms.term_layout, &members) {
        let mut words = args.words();
        let mut base = as_i32(block_base, "chunk count")?;
        let mut params: [*mut c_void; 5] = [
            words.as_mut_ptr() as *mut c_void,
            term_words.as_mut_ptr() as *mut c_void,
            &mut partials_ptr as *mut u64 as *mut c_void,
            &mut base as *mut i32 as *mut c_void,
            &mut grad_scale as *mut u64 as *mut c_void,
        ];
        // SAFETY: `fo_norms(FoTensors, FoSlots, double*, int, const float*)`: `words` is
        // FoTensors byte for byte (size checked by the kernel's static_assert) for the term
        // layout, `term_words` holds its FoSlots; the plan visits every chunk once, in order,
        // so block `b` of this launch is chunk `block_base + b` of the list and writes
        // `partials[PARTIALS_PER_CHUNK · (block_base + b) ..]`, within the `total` chunks'
        // buffer; tensor addresses as in `launch_all` (checked by the caller, read only).
        unsafe { go(f_norms, args.blocks, NORM_THREADS, ctx.stream, &mut params)? };
        block_base += args.blocks;
    }

    // 2. Each tensor's slot row, from its block sums.
    let mut slots_words = slot_words(k.layout, &k.slots);
    let mut const_words: Vec<u64> = norms.constants.iter().map(|c| c.to_bits()).collect();
    if const_words.is_empty() {
        const_words.push(0);
    }
    let mut chunk_off = Vec::with_capacity(chunks.len());
    let mut acc = 0usize;
    for &c in &chunks {
        chunk_off.push(as_i32(acc, "chunk offset")?);
        acc += c;
    }
    for start in (0..members.len()).step_by(TRUST_MAX_T) {
        let count = TRUST_MAX_T.min(members.len() - start);
        let mut targs = vec![0i32; 2 * TRUST_MAX_T];
        for i in 0..count {
            targs[i] = chunk_off[start + i];
            targs[TRUST_MAX_T + i] = as_i32(chunks[start + i], "chunk count")?;
        }
        let (mut base, mut n) = (
            as_i32(start, "tensor index")?,
            as_i32(count, "tensor count")?,
        );
        let mut params: [*mut c_void; 7] = [
            targs.as_mut_ptr() as *mut c_void,
            slots_words.as_mut_ptr() as *mut c_void,
            const_words.as_mut_ptr() as *mut c_void,
            &mut partials_ptr as *mut u64 as *mut c_void,
            &mut tslots_ptr as *mut u64 as *mut c_void,
            &mut base as *mut i32 as *mut c_void,
            &mut n as *mut i32 as *mut c_void,
        ];
        // SAFETY: `fo_trust(FoTrustArgs, FoSlots, FoConsts, const double*, T*, int, int)`:
        // `targs` is FoTrustArgs (2·FO_TMAX ints), `slots_words` FoSlots, `const_words` the
        // FO_NCONST doubles; thread `i < count` reads its tensor's `4 · nchunks` block-sum
        // pairs at its chunk offset (within `partials`, written by step 1 earlier on the
        // stream) and writes row `start + i` of `tslots` (`members.len()` rows of FO_SLOTS).
        unsafe {
            go(
                f_trust,
                count.div_ceil(TRUST_THREADS),
                TRUST_THREADS,
                ctx.stream,
                &mut params,
            )?
        };
    }

    // 3. The update, each tensor reading its row.
    launch_all(
        f_step, k.layout, &members, &k.slots, ctx.amp, tslots_ptr, ctx.stream,
    )?;
    // `partials` and `tslots` go back to the caching allocator here; it hands their memory
    // out again only in this stream's order, after the kernels above.
    drop((partials, tslots));
    Ok(())
}
