//! The first pass of rules that need per-tensor norms (LAMB's and LARS's trust ratios): sums
//! of squares of [`Rule::norm_terms`] over each parameter, before the update pass.
//!
//! Each tensor is cut into blocks of [`BLOCK`] elements; a block is summed sequentially in
//! `f64`, and a tensor's block sums are added in block order. Threads only decide who computes
//! which block, so the sums, and the step, are bit-identical for any thread count.

use super::kernel::{isa, parallel, Isa, Job};
use crate::element::{Float, Storage};
use crate::error::Result;
use crate::rule::{Rule, MAX_NORMS, MAX_STATE};
use half::{bf16, f16};
use std::sync::atomic::{AtomicU64, Ordering};
use tch::Kind;

/// Elements per block of the reduction (independent of the thread count).
const BLOCK: usize = 1 << 14;
/// Below this many elements in all, one thread sums everything (as in the update pass).
const MIN_PARALLEL_ELEMENTS: usize = 1 << 15;

/// Sums each job's [`Rule::norm_terms`]² over its elements and hands the sums to
/// [`Rule::with_norms`]. Jobs whose rule needs no norms are left alone (nothing to do for
/// elementwise rules). Reads the tensors only.
pub(crate) fn reduce<R: Rule>(jobs: &mut [Job<R::Scalars>], threads: usize) -> Result<()> {
    // (job, first element, length) of every block, jobs in order; empty tensors have none
    // (their sums are 0).
    let mut blocks = Vec::new();
    for (j, job) in jobs.iter().enumerate() {
        if R::norms(&job.scalars) == 0 {
            continue;
        }
        blocks.extend((0..job.numel).step_by(BLOCK).map(|start| {
            let len = BLOCK.min(job.numel - start);
            (j, start, len)
        }));
    }
    if blocks.is_empty() {
        return Ok(());
    }
    let sums: Vec<[AtomicU64; MAX_NORMS]> = blocks.iter().map(|_| Default::default()).collect();
    let shared: &[Job<R::Scalars>] = jobs;
    let sum_block = |b: usize| {
        let (j, start, len) = blocks[b];
        let values = block_sums::<R>(&shared[j], start, len);
        for (slot, v) in sums[b].iter().zip(values) {
            slot.store(v.to_bits(), Ordering::Relaxed);
        }
    };
    let total: usize = blocks.iter().map(|&(_, _, len)| len).sum();
    let n = if total < MIN_PARALLEL_ELEMENTS {
        1
    } else {
        threads.clamp(1, blocks.len())
    };
    if n == 1 {
        (0..blocks.len()).for_each(&sum_block);
    } else {
        // Block `b` goes to range `b % n`; the region's end orders these stores before the
        // loads below.
        parallel(n, &|range: usize| {
            (range..blocks.len()).step_by(n).for_each(&sum_block);
        })?;
    }
    let mut totals = vec![[0.0f64; MAX_NORMS]; jobs.len()];
    for (&(j, _, _), block) in blocks.iter().zip(&sums) {
        for (total, slot) in totals[j].iter_mut().zip(block) {
            *total += f64::from_bits(slot.load(Ordering::Relaxed));
        }
    }
    for (job, total) in jobs.iter_mut().zip(totals) {
        if R::norms(&job.scalars) != 0 {
            R::with_norms(&mut job.scalars, total);
        }
    }
    Ok(())
}

/// The sums of squares of one block, dispatched on the job's dtype and state count.
fn block_sums<R: Rule>(job: &Job<R::Scalars>, start: usize, len: usize) -> [f64; MAX_NORMS] {
    macro_rules! by_state {
        ($t:ty) => {
            match job.n_state {
                0 => block::<R, $t, 0>(job, start, len),
                1 => block::<R, $t, 1>(job, start, len),
                2 => block::<R, $t, 2>(job, start, len),
                3 => block::<R, $t, 3>(job, start, len),
                _ => block::<R, $t, MAX_STATE>(job, start, len),
            }
        };
    }
    match job.kind {
        Kind::Double => by_state!(f64),
        Kind::BFloat16 => by_state!(bf16),
        Kind::Half => by_state!(f16),
        _ => by_state!(f32),
    }
}

/// One block's sums, compiled for the best instruction set available (as the update pass).
/// Every variant does the same IEEE operations in the same order: the sums do not depend on
/// which runs.
fn block<R: Rule, S: Storage, const N: usize>(
    job: &Job<R::Scalars>,
    start: usize,
    len: usize,
) -> [f64; MAX_NORMS] {
    match isa() {
        // SAFETY: `isa()` returned this variant only after detecting the features it enables.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 | Isa::Avx512Bf16 => unsafe { block_avx512::<R, S, N>(job, start, len) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { block_avx2::<R, S, N>(job, start, len) },
        Isa::Baseline => block_loop::<R, S, N>(job, start, len),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn block_avx512<R: Rule, S: Storage, const N: usize>(
    job: &Job<R::Scalars>,
    start: usize,
    len: usize,
) -> [f64; MAX_NORMS] {
    block_loop::<R, S, N>(job, start, len)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn block_avx2<R: Rule, S: Storage, const N: usize>(
    job: &Job<R::Scalars>,
    start: usize,
    len: usize,
) -> [f64; MAX_NORMS] {
    block_loop::<R, S, N>(job, start, len)
}

/// Independent partial sums per norm (element `i` of a block goes to lane `i % LANES`), so
/// that the loop vectorises; the lanes are added in order at the end of the block.
const LANES: usize = 16;

#[inline(always)]
fn block_loop<R: Rule, S: Storage, const N: usize>(
    job: &Job<R::Scalars>,
    start: usize,
    len: usize,
) -> [f64; MAX_NORMS] {
    // SAFETY: as for the update pass (`kernel::piece_loop`): the job's tensors are alive,
    // CPU, contiguous, of storage type `S` with `job.numel >= start + len` elements and
    // `N == job.n_state` state tensors. This pass only reads, and no thread writes to any of
    // them until every block has been summed.
    let (param, grad, state) = unsafe {
        let param: &[S] = std::slice::from_raw_parts((job.param as *const S).add(start), len);
        let grad = std::slice::from_raw_parts((job.grad as *const S).add(start), len);
        let state: [&[S]; N] = std::array::from_fn(|k| {
            std::slice::from_raw_parts((job.state[k] as *const S).add(start), len)
        });
        (param, grad, state)
    };
    if R::UPDATES_SLICES {
        if let Some(sums) = slice_sums::<R, S>(job, param, grad, &state) {
            return sums;
        }
    }
    match job.grad_scale.map(<S::Compute as Float>::from_f64) {
        None => lane_sums::<R, S, N, false>(&job.scalars, param, grad, &state, Float::ZERO),
        Some(scale) => lane_sums::<R, S, N, true>(&job.scalars, param, grad, &state, scale),
    }
}

/// The sums of squares of a block's norm terms from [`Rule::norm_terms_slice`] (None if the
/// rule computes them per element): the same lanes, in the same order, as [`lane_sums`].
#[inline(always)]
fn slice_sums<R: Rule, S: Storage>(
    job: &Job<R::Scalars>,
    param: &[S],
    grad: &[S],
    state: &[&[S]],
) -> Option<[f64; MAX_NORMS]> {
    let mut lanes = [[0.0f64; LANES]; MAX_NORMS];
    let mut at = 0; // the block's elements summed so far
    let mut sink = |terms: &[&[S::Compute]]| {
        let base = at % LANES;
        for (acc, row) in lanes.iter_mut().zip(terms) {
            for (j, t) in row.iter().enumerate() {
                let t = t.to_f64();
                acc[(base + j) % LANES] += t * t;
            }
        }
        at += terms.first().map_or(0, |row| row.len());
    };
    if !R::norm_terms_slice::<S>(&job.scalars, job.grad_scale, param, grad, state, &mut sink) {
        return None;
    }
    let mut sums = [0.0f64; MAX_NORMS];
    for (sum, acc) in sums.iter_mut().zip(&lanes) {
        *sum = acc.iter().sum();
    }
    Some(sums)
}

/// The sums of squares of a block's norm terms: element `i` goes to lane `i % LANES`, and the
/// lanes are added in order at the end. The elements are copied `LANES` at a time into local
/// arrays, so that the lane loop has a constant trip count and no bounds checks and
/// vectorises (`perf`, LAMB on one 25M tensor: the earlier element-by-element form compiled to
/// scalar code and took 3x the update pass's time; this one takes about the same). The sums
/// are the same as element by element. With `UNSCALE`, gradients are divided by `scale` first,
/// as the update pass does.
#[inline(always)]
fn lane_sums<R: Rule, S: Storage, const N: usize, const UNSCALE: bool>(
    scalars: &R::Scalars,
    param: &[S],
    grad: &[S],
    state: &[&[S]; N],
    scale: S::Compute,
) -> [f64; MAX_NORMS] {
    let zero = <S::Compute as Float>::ZERO;
    let mut lanes = [[0.0f64; LANES]; MAX_NORMS];
    let len = param.len();
    // Every slice holds `len` elements: re-slicing tells the compiler, so that the indexing
    // below needs no bounds checks beyond these.
    let (param, grad) = (&param[..len], &grad[..len]);
    let state: [&[S]; N] = std::array::from_fn(|k| &state[k][..len]);
    // One block of `$count` elements from `$base`: copied into local arrays, then summed. The
    // full blocks use the constant `LANES`, so that copies and sums vectorise.
    macro_rules! block {
        ($base:expr, $count:expr) => {{
            let (base, count) = ($base, $count);
            let (mut p, mut g) = ([zero; LANES], [zero; LANES]);
            let mut st = [[zero; LANES]; N];
            for lane in 0..count {
                p[lane] = param[base + lane].load();
                let gv = grad[base + lane].load();
                g[lane] = if UNSCALE { gv / scale } else { gv };
                for k in 0..N {
                    st[k][lane] = state[k][base + lane].load();
                }
            }
            for lane in 0..count {
                let s: [S::Compute; N] = std::array::from_fn(|k| st[k][lane]);
                let terms = R::norm_terms(scalars, p[lane], g[lane], &s);
                for (acc, t) in lanes.iter_mut().zip(terms) {
                    let t = t.to_f64();
                    acc[lane] += t * t;
                }
            }
        }};
    }
    let full = len - len % LANES;
    for base in (0..full).step_by(LANES) {
        block!(base, LANES);
    }
    if full < len {
        block!(full, len - full);
    }
    let mut sums = [0.0f64; MAX_NORMS];
    for (sum, acc) in sums.iter_mut().zip(&lanes) {
        *sum = acc.iter().sum();
    }
    sums
}

#[cfg(test)]
mod tests {
    use crate::driver::{step, Group, ParamTensors};
    use crate::rules::Lars;
    use tch::{Device, Kind, Tensor};

    fn lars_group(params: &[Tensor], grads: &[Tensor]) -> Vec<Group<Lars>> {
        let rule = Lars {
            lr: 0.1,
            weight_decay: 0.01,
            ..Lars::default()
        };
        vec![Group {
            rule,
            params: params
                .iter()
                .zip(grads)
                .map(|(p, g)| ParamTensors {
                    param: p.shallow_clone(),
                    grad: g.shallow_clone(),
                    state: vec![p.zeros_like()],
                    scalar_state: vec![],
                    fresh: true,
                })
                .collect(),
        }]
    }

    /// Several tensors, one of many blocks: the trust ratio is the f64 norm ratio, and the
    /// result is bit-identical for 1 and 3 threads.
    #[test]
    fn norms_match_by_hand_and_do_not_depend_on_threads() {
        let shapes: [i64; 3] = [100_003, 7, 40_000];
        let make = |seed: i64| -> Vec<Tensor> {
            tch::manual_seed(seed);
            shapes
                .iter()
                .map(|&n| Tensor::randn([n], (Kind::Float, Device::Cpu)))
                .collect()
        };
        let (init, grads) = (make(1), make(2));
        let mut results = Vec::new();
        for threads in [1, 3] {
            tch::set_num_threads(threads);
            let params: Vec<Tensor> = init.iter().map(|t| t.copy()).collect();
            let mut groups = lars_group(&params, &grads);
            step(&mut groups).expect("step");
            results.push(params);
        }
        tch::set_num_threads(1);
        for ((a, b), (p0, g)) in results[0]
            .iter()
            .zip(&results[1])
            .zip(init.iter().zip(&grads))
        {
            assert!(a.equal(b), "thread count changed the result");
            let p64 = p0.to_kind(Kind::Double);
            let g64 = g.to_kind(Kind::Double);
            let (pn, gn) = (p64.norm().double_value(&[]), g64.norm().double_value(&[]));
            let trust = 1e-3 * pn / (gn + 0.01 * pn);
            // b = (g + λθ)·trust;  θ ← θ − 0.1·b
            let expected = &p64 - (&g64 + &p64 * 0.01) * (0.1 * trust);
            let err = (a.to_kind(Kind::Double) - expected)
                .abs()
                .max()
                .double_value(&[]);
            assert!(err < 1e-6, "max error {err}");
        }
    }
}
