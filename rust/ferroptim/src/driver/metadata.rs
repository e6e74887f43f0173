//! A whole step's validation, its metadata reads split over threads.
//!
//! After the previous step has streamed the model through the caches, reading each tensor's
//! metadata (handle, TensorImpl, StorageImpl, version counter, first data line) misses the
//! cache: for 500 AdamW parameters that is about 20 000 lines and 0.3–0.4 ms on one core of
//! the 2-core test machine, even with the misses of a batch overlapping (`fast::prefetch`);
//! 0.2–0.28 ms on two (`benches/RESULTS.md`). The reads are independent, so the threads the
//! kernel will use share them out.

use super::kernel::parallel;
use super::validate::{check_slow, fast_check, ParamMeta};
use super::{fast, Entry};
use crate::error::Result;
use crate::rule::Rule;
use std::sync::Mutex;

/// Fewest parameters per thread: below this, waking another thread costs more than its share
/// of the reads.
const MIN_PARAMS_PER_THREAD: usize = 64;

/// Most threads that share the reads: each already overlaps the misses of a batch of
/// parameters, so beyond a few threads the memory system, not the threads, sets the pace.
const MAX_THREADS: usize = 8;

/// A thread's share of the output: the metadata and fast-path flags of its parameters.
type Part<'a> = (&'a mut [ParamMeta], &'a mut [bool]);

/// Validates every parameter of `groups` (in order: group by group) into `metas`, which is
/// resized to one entry per parameter; `fast` is scratch. The fast path runs on up to
/// `threads` threads; the parameters it does not accept are then checked one by one on the
/// caller's thread, in order, so the error reported is the first parameter's in order, as
/// with a sequential check. Returns the number of parts the parameters were cut into (the
/// threads asked for; OpenMP may run them on fewer).
///
/// # Errors
/// As [`check_slow`].
pub(crate) fn check_all<R: Rule, E: Entry>(
    groups: &[(&R, &[E])],
    grad_writable: bool,
    threads: usize,
    metas: &mut Vec<ParamMeta>,
    fast: &mut Vec<bool>,
) -> Result<usize> {
    let count: usize = groups.iter().map(|(_, params)| params.len()).sum();
    metas.clear();
    metas.resize_with(count, || ParamMeta::EMPTY);
    fast.clear();
    fast.resize(count, false);
    let n = threads
        .min(MAX_THREADS)
        .min(count / MIN_PARAMS_PER_THREAD)
        .max(1);
    if n == 1 {
        fast_range(groups, 0, grad_writable, metas, fast);
    } else {
        // One part per thread, in an array: nothing is allocated per step.
        let per = count.div_ceil(n);
        let mut parts: [Option<Mutex<Part<'_>>>; MAX_THREADS] = Default::default();
        for (slot, part) in parts
            .iter_mut()
            .zip(metas.chunks_mut(per).zip(fast.chunks_mut(per)))
        {
            *slot = Some(Mutex::new(part));
        }
        let shared = Shared(groups);
        parallel(n, &|t| {
            // Each part is locked by its one thread: the lock is never contended.
            if let Some(Ok(mut part)) = parts[t].as_ref().map(Mutex::lock) {
                let (metas, fast) = &mut *part;
                fast_range(shared.groups(), t * per, grad_writable, metas, fast);
            }
        })?;
    }
    let mut k = 0;
    for (gi, (rule, params)) in groups.iter().enumerate() {
        for (pi, pt) in params.iter().enumerate() {
            if !fast[k] {
                check_slow(*rule, pt, gi, pi, grad_writable, &mut metas[k])?;
            }
            k += 1;
        }
    }
    Ok(n)
}

/// Runs [`fast_check`] on the parameters `start..start + metas.len()` (flat indices over all
/// groups), into `metas` and `fast`, prefetching each batch's metadata first.
fn fast_range<R: Rule, E: Entry>(
    groups: &[(&R, &[E])],
    start: usize,
    grad_writable: bool,
    metas: &mut [ParamMeta],
    fast: &mut [bool],
) {
    let end = start + metas.len();
    let mut next = 0; // flat index of the next group's first parameter
    for (rule, params) in groups {
        let first = next;
        next += params.len();
        if next <= start || first >= end {
            continue; // no parameter of this group is in the range
        }
        // The group's parameters in the range, and the first one's index into `metas`.
        let (lo, hi) = (start.max(first) - first, end.min(next) - first);
        let mut k = first + lo - start;
        for batch in params[lo..hi].chunks(fast::PREFETCH_BATCH) {
            // The batch's metadata, fetched with overlapping cache misses.
            fast::prefetch(batch.iter().flat_map(|pt| {
                [pt.param(), pt.grad()]
                    .into_iter()
                    .chain(pt.state())
                    .chain(pt.scalar_state())
            }));
            for pt in batch {
                fast[k] = fast_check(*rule, pt, grad_writable, &mut metas[k]);
                k += 1;
            }
        }
    }
}

/// The caller's parameters, shared with the threads of [`check_all`].
struct Shared<'a, 'b, R, E>(&'a [(&'b R, &'b [E])]);

impl<'a, 'b, R, E> Shared<'a, 'b, R, E> {
    /// The groups (a method, so that closures capture the whole `Shared`, not its field).
    fn groups(&self) -> &'a [(&'b R, &'b [E])] {
        self.0
    }
}

// SAFETY: tch's `Tensor` is not `Sync` because libtorch tensors may not be *modified*
// concurrently. The threads only run `fast::prefetch` and `fast_check`, which read TensorImpl
// and StorageImpl fields through `csrc/prefetch.cpp` and `csrc/inspect.cpp`: the reads are
// const, take no reference, and skip the two cases where a read is not plain (Python tensor
// subclasses, whose layout and sizes may call into Python, and copy-on-write storage, which
// `mutable_data_ptr()` would copy), which the caller's thread then checks. The caller borrows
// every tensor for the whole step, so none is freed or changed by the driver meanwhile. The
// rule is `Sync` (`Rule: Sync`).
unsafe impl<R: Sync, E> Sync for Shared<'_, '_, R, E> {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::ParamTensors;
    use crate::error::Error;
    use crate::rules::Adam;
    use tch::{Device, Kind, Tensor};

    /// `count` Adam parameters of assorted sizes; every 50th is a transposed matrix (not
    /// contiguous: staged), every 70th is float64, and every 60th parameter's `exp_avg` is a
    /// copy-on-write clone, which the fast path leaves to the slow one.
    fn params(count: usize) -> Vec<ParamTensors> {
        (0..count)
            .map(|i| {
                let kind = if i % 70 == 3 {
                    Kind::Double
                } else {
                    Kind::Float
                };
                let param = if i % 50 == 7 {
                    Tensor::randn([3, 4], (kind, Device::Cpu)).transpose(0, 1)
                } else {
                    Tensor::randn([1 + i as i64 % 7], (kind, Device::Cpu))
                };
                let exp_avg = param.zeros_like();
                let exp_avg = if i % 60 == 11 {
                    exp_avg.internal_lazy_clone()
                } else {
                    exp_avg
                };
                ParamTensors {
                    grad: param.randn_like(),
                    state: vec![exp_avg, param.zeros_like()],
                    scalar_state: vec![Tensor::zeros([], (Kind::Float, Device::Cpu))],
                    param,
                    fresh: false,
                }
            })
            .collect()
    }

    /// `check_all` over three groups (150 parameters, none, the rest), returning which
    /// parameters the fast path accepted.
    fn check(ps: &[ParamTensors], threads: usize, metas: &mut Vec<ParamMeta>) -> Result<Vec<bool>> {
        let rule = Adam::default();
        let groups = [(&rule, &ps[..150]), (&rule, &ps[..0]), (&rule, &ps[150..])];
        let mut fast = Vec::new();
        let parts = check_all(&groups, false, threads, metas, &mut fast)?;
        assert_eq!(parts, threads.min(ps.len() / MIN_PARAMS_PER_THREAD));
        Ok(fast)
    }

    #[test]
    fn any_split_gives_the_sequential_metadata_and_the_first_error_in_order() {
        let mut ps = params(400);
        let (mut sequential, mut split) = (Vec::new(), Vec::new());
        // Only the copy-on-write state is left to the slow path, which materialises it (so a
        // second check takes the fast path throughout).
        let plain: Vec<bool> = (0..400).map(|i| i % 60 != 11).collect();
        for threads in [1, 2, 3, 7] {
            for (i, pt) in ps.iter_mut().enumerate().filter(|(i, _)| i % 60 == 11) {
                pt.state[0] = pt.state[0].internal_lazy_clone();
                assert!(!plain[i]);
            }
            assert_eq!(check(&ps, threads, &mut split).unwrap(), plain);
            assert_eq!(check(&ps, 1, &mut sequential).unwrap(), vec![true; 400]);
            assert_eq!(sequential.len(), 400);
            assert_eq!(
                format!("{split:?}"),
                format!("{sequential:?}"),
                "{threads} threads"
            );
        }
        let mut expect_error = |ps: &[ParamTensors], what: &str| {
            for threads in [1, 2, 7] {
                match check(ps, threads, &mut split) {
                    Err(Error::ShapeMismatch { what: got, .. }) => assert_eq!(got, what),
                    other => panic!("{threads} threads: expected a shape error, got {other:?}"),
                }
            }
        };
        ps[320].state[1] = Tensor::zeros([9], (Kind::Float, Device::Cpu));
        expect_error(&ps, "exp_avg_sq of params[170] in group 2");
        ps[30].grad = Tensor::zeros([8], (Kind::Float, Device::Cpu));
        expect_error(&ps, "grad of params[30] in group 0");
    }
}
