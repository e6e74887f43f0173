//! The fused loop for bfloat16 tensors on CPUs with AVX512_BF16 (Intel Cooper Lake, Sapphire
//! Rapids and later; AMD Zen 4 and later).
//!
//! Rounding f32 results to bfloat16 in software (`Storage::store` for `bf16`: add the rounding
//! bias, shift, select the NaN, narrow) costs about ten vector instructions per 16 elements
//! and output tensor; on AVX-512 those compete for the two ports that also run the rule's
//! arithmetic, so bfloat16 Adam is bound by instruction throughput rather than by memory.
//! `vcvtneps2bf16` rounds 16 lanes in one instruction, to nearest-even like the software path,
//! with two exceptions (Intel SDM, VCVTNEPS2BF16): it flushes subnormal inputs to zero and keeps
//! a NaN's sign and payload, where `Storage::store` rounds subnormals and writes the canonical
//! NaN `0x7FC0`. So each chunk of 16 elements is rounded by the hardware, `vfpclassps` flags the
//! lanes that are NaN or subnormal, and a chunk with any flagged lane (rare: NaN or values below
//! 2^-126 in a result) is stored again in software. The stored bits are those of the software
//! path on every input; the rule's arithmetic is the same generic code, in `f32`, as in the
//! other loops.

use super::kernel::{piece_loop, Job};
use crate::element::{Float, Storage};
use crate::rule::Rule;
use core::arch::x86_64::{__cpuid_count, __get_cpuid_max, __m512};
use half::bf16;

/// Elements per chunk: one 512-bit vector of f32.
const LANES: usize = 16;

/// Whether the CPU reports AVX512_BF16: CPUID leaf 7, sub-leaf 1, EAX bit 5 (Intel SDM vol. 2A,
/// CPUID). The caller checks AVX-512F first, which includes the OS's support for the vector
/// state.
pub(super) fn detected() -> bool {
    // `cpuid` intrinsics are safe functions in recent Rust and `unsafe` ones before.
    #[allow(unused_unsafe)]
    // SAFETY: `cpuid` exists on every x86-64 CPU; leaf 7 is read only when the CPU reports it.
    unsafe {
        __get_cpuid_max(0).0 >= 7 && (__cpuid_count(7, 1).eax >> 5) & 1 == 1
    }
}

/// Rounds 16 f32 to bfloat16 with `vcvtneps2bf16`, writing them to `dst`; returns the mask of
/// lanes whose hardware result may differ from `Storage::store` (NaN or subnormal inputs).
///
/// # Safety
/// The CPU supports AVX-512F/BW/VL/DQ and AVX512_BF16, and `dst` is valid for writing 16
/// `u16`s.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
#[inline]
unsafe fn round16(v: [f32; LANES], dst: *mut bf16) -> u32 {
    // SAFETY: `[f32; 16]` and `__m512` have the same size and every bit pattern is valid.
    let v: __m512 = unsafe { core::mem::transmute::<[f32; LANES], __m512>(v) };
    let special: u32;
    // SAFETY: the instructions need the features the caller guarantees; the only memory
    // written is the 32 bytes at `dst`, which the caller guarantees writable. 0xA1 selects
    // quiet NaN (0x01), subnormal (0x20) and signalling NaN (0x80).
    unsafe {
        core::arch::asm!(
            "vcvtneps2bf16 ymm29, {v}",
            "vfpclassps k1, {v}, 0xA1",
            "vmovdqu16 ymmword ptr [{dst}], ymm29",
            "kmovw {m:e}, k1",
            v = in(zmm_reg) v,
            dst = in(reg) dst,
            m = out(reg) special,
            out("zmm29") _,
            out("k1") _,
            options(nostack, preserves_flags),
        );
    }
    special
}

/// The fused loop (as `kernel::piece_loop`) for a job whose tensors are bfloat16.
///
/// # Safety
/// The CPU supports AVX-512F/BW/VL/DQ, AVX512_BF16 and FMA (`Isa::Avx512Bf16`); the job's
/// tensors are bfloat16 and satisfy `kernel::piece_loop`'s requirements for
/// `[start, start + len)`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
pub(super) unsafe fn piece_bf16<R: Rule, const N: usize>(
    job: &Job<R::Scalars>,
    start: usize,
    len: usize,
) {
    let whole = len / LANES * LANES;
    // SAFETY: forwarded from the caller.
    unsafe {
        match job.grad_scale {
            None => chunks::<R, N, false>(job, start, whole),
            Some(_) => chunks::<R, N, true>(job, start, whole),
        }
    }
    // The last `len % 16` elements: the software-rounding loop.
    piece_loop::<R, bf16, N>(job, start + whole, len - whole);
}

/// `len / 16` chunks of 16 elements from `start`; `SCALED` when the job has a `grad_scale`.
///
/// # Safety
/// As `piece_bf16`, with `len` a multiple of 16.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
unsafe fn chunks<R: Rule, const N: usize, const SCALED: bool>(
    job: &Job<R::Scalars>,
    start: usize,
    len: usize,
) {
    // SAFETY (for every access below): the job's tensors are bfloat16 with at least
    // `start + len` elements (caller), written ranges do not overlap each other or any read
    // range, and no other thread touches `[start, start + len)` of this job.
    let at = |ptr: *mut u8| unsafe { (ptr as *mut bf16).add(start) };
    let (param, grad) = (at(job.param), at(job.grad));
    let state: [*mut bf16; N] = std::array::from_fn(|k| at(job.state[k]));
    let scale = <f32 as Float>::from_f64(job.grad_scale.unwrap_or(1.0));
    for chunk in (0..len).step_by(LANES) {
        let mut p = [0f32; LANES];
        let mut g = [0f32; LANES];
        let mut s = [[0f32; LANES]; N];
        for j in 0..LANES {
            let i = chunk + j;
            // SAFETY: see above; `i < len`.
            unsafe {
                g[j] = (*grad.add(i)).load();
                if SCALED {
                    g[j] /= scale;
                }
                let mut e = [0f32; N];
                for k in 0..N {
                    e[k] = (*state[k].add(i)).load();
                }
                p[j] = R::update(&job.scalars, (*param.add(i)).load(), g[j], &mut e);
                for k in 0..N {
                    s[k][j] = e[k];
                }
            }
        }
        // SAFETY: see above; the 16 elements from `chunk` are in range.
        unsafe {
            let mut special = round16(p, param.add(chunk));
            for k in 0..N {
                special |= round16(s[k], state[k].add(chunk));
            }
            if SCALED {
                special |= round16(g, grad.add(chunk));
            }
            if special != 0 {
                for j in 0..LANES {
                    *param.add(chunk + j) = bf16::store(p[j]);
                    for k in 0..N {
                        *state[k].add(chunk + j) = bf16::store(s[k][j]);
                    }
                    if SCALED {
                        *grad.add(chunk + j) = bf16::store(g[j]);
                    }
                }
            }
        }
    }
}
