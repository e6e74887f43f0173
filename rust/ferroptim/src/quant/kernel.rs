//! The fused 8-bit loop: per block, decode the state, run the rule, re-encode.

use super::codec::Codec;
use crate::driver::{chunk_elements, Job, MIN_PARALLEL_ELEMENTS};
use crate::element::{Float, Storage};
use crate::error::Result;
use crate::rule::{Rule, MAX_STATE};
use half::{bf16, f16};
use std::sync::atomic::{AtomicUsize, Ordering};
use tch::Kind;

/// One parameter's quantized update. All addresses are of contiguous CPU tensors: `base`
/// as the fp32 driver's job (its `state` holds the unquantized state tensors when `quantized`
/// is false: of the parameter's dtype, bfloat16 only, see `step.rs`), `codes[k]` of `numel`
/// bytes, `absmax[k]` of `numel.div_ceil(block)` float32 values.
pub(crate) struct QJob<S> {
    /// Scalars, dtype, size, parameter, gradient, grad scale (and unquantized state).
    pub base: Job<S>,
    pub codes: [*mut u8; MAX_STATE],
    pub absmax: [*mut f32; MAX_STATE],
    pub codecs: [&'static Codec; MAX_STATE],
    pub quantized: bool,
    /// Stochastic rounding of the bfloat16 parameter: the Philox key and the parameter's id.
    pub sr: Option<([u32; 2], u32)>,
    /// First block of this job in the step's concatenation of all jobs' blocks.
    pub first_block: usize,
}

// SAFETY: a `QJob` only carries addresses; `run` dereferences them while the caller keeps the
// tensors alive, after checking that no written tensor overlaps another, and each block (its
// elements, its codes and its absmax entry) is updated by exactly one thread.
unsafe impl<S: Send> Send for QJob<S> {}
// SAFETY: as for `Send`.
unsafe impl<S: Sync> Sync for QJob<S> {}

/// Runs `jobs` (blocks of `block` elements) with rule `R` on up to `threads` threads. Work
/// is cut on block boundaries, so each block is decoded, updated and encoded by one thread
/// in one piece: results are bit-identical for any thread count.
pub(crate) fn run<R: Rule>(jobs: &[QJob<R::Scalars>], block: usize, threads: usize) -> Result<()> {
    let total_elements: usize = jobs.iter().map(|j| j.base.numel).sum();
    let total_blocks = jobs
        .last()
        .map_or(0, |j| j.first_block + j.base.numel.div_ceil(block));
    let n = if total_elements < MIN_PARALLEL_ELEMENTS {
        1
    } else {
        threads.clamp(1, total_blocks.max(1))
    };
    // The fp32 driver's chunk size, in whole blocks.
    let per_chunk = chunk_elements(total_elements, n).div_ceil(block).max(1);
    let chunks = total_blocks.div_ceil(per_chunk);
    let work = |c: usize, scratch: &mut Scratch| {
        let (lo, hi) = (c * per_chunk, ((c + 1) * per_chunk).min(total_blocks));
        // The job holding block `lo`: the last whose first block is at or before it.
        let mut j = jobs
            .partition_point(|job| job.first_block <= lo)
            .saturating_sub(1);
        let mut b = lo;
        while b < hi && j < jobs.len() {
            let job = &jobs[j];
            let end = (job.first_block + job.base.numel.div_ceil(block)).min(hi);
            if b < end {
                run_blocks::<R>(
                    job,
                    b - job.first_block,
                    end - job.first_block,
                    block,
                    scratch,
                );
                b = end;
            }
            j += 1;
        }
    };
    if n == 1 {
        let mut scratch = Scratch::new(block);
        for c in 0..chunks {
            work(c, &mut scratch);
        }
        return Ok(());
    }
    let next = AtomicUsize::new(0);
    crate::driver::parallel(n, &|_| {
        let mut scratch = Scratch::new(block);
        loop {
            let c = next.fetch_add(1, Ordering::Relaxed);
            if c >= chunks {
                break;
            }
            work(c, &mut scratch);
        }
    })
}

/// A thread's buffers: one block of decoded state per slot.
struct Scratch {
    state: Vec<f32>,
    /// The updated parameter values, when they are rounded stochastically.
    param: Vec<f32>,
}

impl Scratch {
    fn new(block: usize) -> Scratch {
        Scratch {
            state: vec![0.0; block * MAX_STATE],
            param: vec![0.0; block],
        }
    }
}

/// Dispatches the blocks `[b0, b1)` of one job on its dtype and state count.
fn run_blocks<R: Rule>(
    job: &QJob<R::Scalars>,
    b0: usize,
    b1: usize,
    block: usize,
    s: &mut Scratch,
) {
    macro_rules! by_state {
        ($t:ty) => {
            match job.base.n_state {
                0 => blocks::<R, $t, 0>(job, b0, b1, block, s),
                1 => blocks::<R, $t, 1>(job, b0, b1, block, s),
                2 => blocks::<R, $t, 2>(job, b0, b1, block, s),
                3 => blocks::<R, $t, 3>(job, b0, b1, block, s),
                _ => blocks::<R, $t, MAX_STATE>(job, b0, b1, block, s),
            }
        };
    }
    match job.base.kind {
        Kind::Double => by_state!(f64),
        Kind::BFloat16 => by_state!(bf16),
        Kind::Half => by_state!(f16),
        _ => by_state!(f32),
    }
}

/// The blocks loop, compiled for the instruction set the driver chose (`driver::isa`; every
/// variant computes the same IEEE operations: results do not depend on it).
fn blocks<R: Rule, S: Storage, const N: usize>(
    job: &QJob<R::Scalars>,
    b0: usize,
    b1: usize,
    block: usize,
    s: &mut Scratch,
) {
    use crate::driver::Isa;
    match crate::driver::isa() {
        // SAFETY: `isa()` only returns variants the CPU supports.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 | Isa::Avx512Bf16 => unsafe { blocks_avx512::<R, S, N>(job, b0, b1, block, s) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { blocks_avx2::<R, S, N>(job, b0, b1, block, s) },
        Isa::Baseline => blocks_loop::<R, S, N>(job, b0, b1, block, s),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
unsafe fn blocks_avx512<R: Rule, S: Storage, const N: usize>(
    job: &QJob<R::Scalars>,
    b0: usize,
    b1: usize,
    block: usize,
    s: &mut Scratch,
) {
    blocks_loop::<R, S, N>(job, b0, b1, block, s)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn blocks_avx2<R: Rule, S: Storage, const N: usize>(
    job: &QJob<R::Scalars>,
    b0: usize,
    b1: usize,
    block: usize,
    s: &mut Scratch,
) {
    blocks_loop::<R, S, N>(job, b0, b1, block, s)
}

#[inline(always)]
fn blocks_loop<R: Rule, S: Storage, const N: usize>(
    job: &QJob<R::Scalars>,
    b0: usize,
    b1: usize,
    block: usize,
    s: &mut Scratch,
) {
    let (bufs, pbuf) = (&mut s.state, &mut s.param);
    let scale = job.base.grad_scale.map(<S::Compute as Float>::from_f64);
    for b in b0..b1 {
        let start = b * block;
        let len = block.min(job.base.numel - start);
        // SAFETY: the driver built the job from validated contiguous CPU tensors of the
        // stated dtypes and sizes; `start + len <= numel` and `b < numel.div_ceil(block)`;
        // written tensors overlap nothing else, and this thread alone owns block `b`.
        let (param, grad, codes, mut absmax) = unsafe {
            let param = std::slice::from_raw_parts_mut((job.base.param as *mut S).add(start), len);
            let grad = std::slice::from_raw_parts_mut((job.base.grad as *mut S).add(start), len);
            let codes: [&mut [u8]; N] = std::array::from_fn(|k| match job.quantized {
                true => std::slice::from_raw_parts_mut(job.codes[k].add(start), len),
                false => &mut [][..],
            });
            let absmax: [Option<&mut f32>; N] =
                std::array::from_fn(|k| job.quantized.then(|| &mut *job.absmax[k].add(b)));
            (param, grad, codes, absmax)
        };
        let mut bufs: [&mut [f32]; N] = {
            let mut rest = &mut bufs[..];
            std::array::from_fn(|_| {
                let (head, tail) = std::mem::take(&mut rest).split_at_mut(block);
                rest = tail;
                &mut head[..len]
            })
        };
        // SAFETY: as above; `base.state[k]` (when not quantized) holds `numel` elements of `S`.
        let plain: [&mut [S]; N] = std::array::from_fn(|k| unsafe {
            let ptr = if job.quantized {
                job.base.param
            } else {
                job.base.state[k]
            };
            std::slice::from_raw_parts_mut(
                (ptr as *mut S).add(start),
                if job.quantized { 0 } else { len },
            )
        });
        for k in 0..N {
            if let Some(a) = &absmax[k] {
                job.codecs[k].decode_block(codes[k], **a, bufs[k]);
            } else {
                for (b, x) in bufs[k].iter_mut().zip(plain[k].iter()) {
                    *b = x.load().to_f64() as f32;
                }
            }
        }
        // The branches are taken outside the loop, so that each variant vectorises.
        let pbuf = &mut pbuf[..len];
        let max_bits = match (scale, job.sr.is_some()) {
            (None, false) => {
                update::<R, S, N, false, false>(job, param, grad, &mut bufs, pbuf, None)
            }
            (None, true) => update::<R, S, N, false, true>(job, param, grad, &mut bufs, pbuf, None),
            (s, false) => update::<R, S, N, true, false>(job, param, grad, &mut bufs, pbuf, s),
            (s, true) => update::<R, S, N, true, true>(job, param, grad, &mut bufs, pbuf, s),
        };
        if let Some((key, id)) = job.sr {
            // Blocks start on multiples of 4 (block sizes are powers of two ≥ 16), so each
            // Philox call serves four consecutive elements.
            for (q, (ps, vs)) in param.chunks_mut(4).zip(pbuf[..len].chunks(4)).enumerate() {
                let quad = ((start / 4) + q) as u64;
                let words =
                    super::philox::philox4x32([quad as u32, (quad >> 32) as u32, id, 0], key);
                for ((p, v), w) in ps.iter_mut().zip(vs).zip(words) {
                    let rounded = super::philox::round_bf16(*v, w).to_f64();
                    *p = S::store(<S::Compute as Float>::from_f64(rounded));
                }
            }
        }
        for k in 0..N {
            if let Some(a) = absmax[k].as_deref_mut() {
                *a = job.codecs[k].encode_block_max(bufs[k], &mut *codes[k], max_bits[k]);
            } else {
                for (x, b) in plain[k].iter_mut().zip(bufs[k].iter()) {
                    *x = S::store(<S::Compute as Float>::from_f64(f64::from(*b)));
                }
            }
        }
    }
}

/// The rule over one block's elements: `bufs` holds the decoded state (updated in place);
/// the new parameter goes to `param` (or, with stochastic rounding `SR`, to `pbuf`); with
/// `SCALED`, gradients are divided by `scale` and written back. Returns, per state, the
/// largest `|x|` bits of the new values (the block's absmax for the encoder, found in the same
/// pass).
#[inline(always)]
fn update<R: Rule, S: Storage, const N: usize, const SCALED: bool, const SR: bool>(
    job: &QJob<R::Scalars>,
    param: &mut [S],
    grad: &mut [S],
    bufs: &mut [&mut [f32]; N],
    pbuf: &mut [f32],
    scale: Option<S::Compute>,
) -> [u32; N] {
    let len = param.len().min(grad.len()).min(pbuf.len());
    let (param, grad, pbuf) = (&mut param[..len], &mut grad[..len], &mut pbuf[..len]);
    let bufs: [&mut [f32]; N] = {
        let mut it = bufs.iter_mut();
        std::array::from_fn(|_| match it.next() {
            Some(b) => &mut b[..len],
            None => &mut [][..],
        })
    };
    let one = <S::Compute as Float>::from_f64(1.0);
    let scale = scale.unwrap_or(one);
    let mut max_bits = [0u32; N];

    for i in 0..len {
        let mut g = grad[i].load();
        if SCALED {
            g = g / scale;
            grad[i] = S::store(g);
        }
        let mut st = [<S::Compute as Float>::ZERO; N];
        for k in 0..N {
            st[k] = <S::Compute as Float>::from_f64(f64::from(bufs[k][i]));
        }
        let p = R::update(&job.base.scalars, param[i].load(), g, &mut st);
        if SR {
            pbuf[i] = p.to_f64() as f32;
        } else {
            param[i] = S::store(p);
        }
        for k in 0..N {
            let v = st[k].to_f64() as f32;
            bufs[k][i] = v;
            max_bits[k] = max_bits[k].max(v.to_bits() & 0x7FFF_FFFF);
        }
    }
    max_bits
}
