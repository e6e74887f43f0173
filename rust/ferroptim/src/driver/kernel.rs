//! The fused elementwise loops and their split over threads.

use crate::element::{Float, Storage};
use crate::error::{Error, Result};
use crate::rule::{Rule, MAX_STATE};
use half::{bf16, f16};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use tch::Kind;

/// Below this many elements in a whole step, one thread does all the work: forking costs more
/// than it saves.
pub(crate) const MIN_PARALLEL_ELEMENTS: usize = 1 << 15;
/// Chunks start on multiples of this many elements (a cache line even for f16).
const SPLIT_ALIGN: usize = 64;
/// Chunks per thread a step is cut into, if that keeps them within the bounds below.
const CHUNKS_PER_THREAD: usize = 8;
/// Chunk size bounds, in elements: 16 KiB to 1 MiB of each float32 tensor.
const MIN_CHUNK: usize = 1 << 12;
const MAX_CHUNK: usize = 1 << 18;

/// One parameter's update: its per-step scalars and the addresses of its tensors, which are
/// all CPU, contiguous, of dtype `kind` and `numel` elements long.
pub(crate) struct Job<S> {
    pub scalars: S,
    pub kind: Kind,
    pub numel: usize,
    pub n_state: usize,
    pub param: *mut u8,
    /// Read, and written only when `grad_scale` is set (then checked writable and
    /// non-overlapping like the parameter).
    pub grad: *mut u8,
    /// Divide each gradient element by this and store the result back (loss scaling).
    pub grad_scale: Option<f64>,
    pub state: [*mut u8; MAX_STATE],
}

// SAFETY: a `Job` only carries addresses. `run` dereferences them while the tensors they point
// into are kept alive by the caller, no written range overlaps another tensor (checked by
// `validate::check_overlaps` before any job is built), and every thread touches a disjoint
// element range of each job.
unsafe impl<S: Send> Send for Job<S> {}
// SAFETY: as for `Send`: shared `&Job`s are only used to derive disjoint element ranges.
unsafe impl<S: Sync> Sync for Job<S> {}

/// Runs `jobs` with the rule `R` on up to `threads` threads.
///
/// The concatenation of all jobs' elements is cut into chunks of a fixed size, which the
/// threads claim in order as they finish the previous one: a thread slowed down (another
/// process on its core, a busier memory channel) takes fewer chunks instead of holding up the
/// step. Which thread computes a chunk does not change the arithmetic, which is per element:
/// results are bit-identical for any thread count.
pub(crate) fn run<R: Rule>(jobs: &[Job<R::Scalars>], threads: usize) -> Result<()> {
    let total: usize = jobs.iter().map(|j| j.numel).sum();
    let n = if total < MIN_PARALLEL_ELEMENTS {
        1
    } else {
        threads.clamp(1, total / 4096)
    };
    if n == 1 {
        run_range::<R>(jobs, 0, total, &mut Cursor::default());
        return Ok(());
    }
    let chunk = chunk_elements(total, n);
    let chunks = total.div_ceil(chunk);
    let next = AtomicUsize::new(0);
    parallel(n, &|_| {
        // Chunks claimed by one thread come in increasing order: its cursor only moves on.
        let mut cursor = Cursor::default();
        loop {
            let c = next.fetch_add(1, Ordering::Relaxed);
            if c >= chunks {
                break;
            }
            let start = c * chunk;
            run_range::<R>(jobs, start, (start + chunk).min(total), &mut cursor);
        }
    })
}

/// The elements per chunk of a step of `total` elements on `n` threads: about
/// `CHUNKS_PER_THREAD` chunks per thread, each large enough that claiming it costs nothing
/// next to streaming it, starting on multiples of `SPLIT_ALIGN`.
pub(crate) fn chunk_elements(total: usize, n: usize) -> usize {
    (total / (n.max(1) * CHUNKS_PER_THREAD))
        .clamp(MIN_CHUNK, MAX_CHUNK)
        .div_ceil(SPLIT_ALIGN)
        * SPLIT_ALIGN
}

/// A position in the concatenation of the jobs: a job's index and the offset of its first
/// element.
#[derive(Clone, Copy, Default)]
struct Cursor {
    job: usize,
    offset: usize,
}

/// Updates the elements `[start, end)` of the concatenation of all jobs, looking for the first
/// job from `cursor` (at or before `start`). `cursor` is left at the job holding element `end`
/// (or past the last job), where the next chunk of the same thread starts looking.
fn run_range<R: Rule>(jobs: &[Job<R::Scalars>], start: usize, end: usize, cursor: &mut Cursor) {
    let Cursor {
        mut job,
        mut offset,
    } = *cursor;
    while job < jobs.len() && offset + jobs[job].numel <= start {
        offset += jobs[job].numel;
        job += 1;
    }
    while job < jobs.len() && offset < end {
        let numel = jobs[job].numel;
        let (lo, hi) = (start.max(offset), end.min(offset + numel));
        if lo < hi {
            run_piece::<R>(&jobs[job], lo - offset, hi - lo);
        }
        if offset + numel > end {
            break; // the job goes on in a later chunk
        }
        offset += numel;
        job += 1;
    }
    *cursor = Cursor { job, offset };
}

/// Dispatches one piece of a job on its dtype and state count.
fn run_piece<R: Rule>(job: &Job<R::Scalars>, start: usize, len: usize) {
    macro_rules! by_state {
        ($t:ty) => {
            match job.n_state {
                0 => piece::<R, $t, 0>(job, start, len),
                1 => piece::<R, $t, 1>(job, start, len),
                2 => piece::<R, $t, 2>(job, start, len),
                3 => piece::<R, $t, 3>(job, start, len),
                _ => piece::<R, $t, MAX_STATE>(job, start, len),
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

/// Instruction sets the fused loop is compiled for; the best one the CPU has is chosen once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Isa {
    Baseline,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
    /// AVX-512 plus AVX512_BF16: bfloat16 results are rounded by `vcvtneps2bf16`
    /// (`driver/avx512bf16.rs`); other dtypes run the `Avx512` loop.
    #[cfg(target_arch = "x86_64")]
    Avx512Bf16,
}

/// The instruction set the fused loops use in this process: the best the CPU supports, or the
/// one `FERROPTIM_ISA` names (`baseline`, `avx2`, `avx512`, `avx512bf16`) when the CPU supports
/// it (a name it does not support, or an unknown name, is ignored). `FERROPTIM_NO_SIMD` (any
/// value) forces `baseline`. Every variant gives bit-identical results; forcing one is for
/// tests and measurements.
pub(crate) fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        if std::env::var_os("FERROPTIM_NO_SIMD").is_some() {
            return Isa::Baseline;
        }
        let supported = supported_isas();
        let forced = std::env::var("FERROPTIM_ISA").ok().and_then(|name| {
            supported
                .iter()
                .copied()
                .find(|isa| isa.name().eq_ignore_ascii_case(name.trim()))
        });
        forced.unwrap_or_else(|| supported.last().copied().unwrap_or(Isa::Baseline))
    })
}

impl Isa {
    /// The name `FERROPTIM_ISA` takes.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Isa::Baseline => "baseline",
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => "avx2",
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => "avx512",
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Bf16 => "avx512bf16",
        }
    }
}

/// The variants this CPU can run, worst to best.
pub(crate) fn supported_isas() -> Vec<Isa> {
    #[allow(unused_mut)] // only x86-64 has more than the baseline
    let mut isas = vec![Isa::Baseline];
    #[cfg(target_arch = "x86_64")]
    {
        let fma = is_x86_feature_detected!("fma");
        if is_x86_feature_detected!("avx2") && fma {
            isas.push(Isa::Avx2);
        }
        if is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && fma
        {
            isas.push(Isa::Avx512);
            if is_x86_feature_detected!("avx512dq") && super::avx512bf16::detected() {
                isas.push(Isa::Avx512Bf16);
            }
        }
    }
    isas
}

/// The fused loop, compiled for the best instruction set available. Every variant performs
/// the same IEEE operations in the same order (Rust never contracts `a * b + c` into an FMA),
/// so results are bit-identical whichever runs.
fn piece<R: Rule, S: Storage, const N: usize>(job: &Job<R::Scalars>, start: usize, len: usize) {
    // SAFETY: `isa()` only returns variants the CPU supports.
    unsafe { piece_isa::<R, S, N>(isa(), job, start, len) }
}

/// `piece` with the variant `isa`.
///
/// # Safety
/// The CPU supports `isa` (one of `supported_isas()`); the job satisfies `piece_loop`'s
/// requirements for `[start, start + len)`.
pub(super) unsafe fn piece_isa<R: Rule, S: Storage, const N: usize>(
    isa: Isa,
    job: &Job<R::Scalars>,
    start: usize,
    len: usize,
) {
    match isa {
        // SAFETY: the caller guarantees the CPU supports this variant; the job's tensors are
        // bfloat16, as `piece_bf16` requires.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Bf16 if S::KIND == Kind::BFloat16 && !R::UPDATES_SLICES => unsafe {
            super::avx512bf16::piece_bf16::<R, N>(job, start, len)
        },
        // SAFETY: the caller guarantees the CPU supports this variant.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 | Isa::Avx512Bf16 => unsafe { piece_avx512::<R, S, N>(job, start, len) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { piece_avx2::<R, S, N>(job, start, len) },
        Isa::Baseline => piece_loop::<R, S, N>(job, start, len),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn piece_avx512<R: Rule, S: Storage, const N: usize>(
    job: &Job<R::Scalars>,
    start: usize,
    len: usize,
) {
    piece_loop::<R, S, N>(job, start, len)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn piece_avx2<R: Rule, S: Storage, const N: usize>(
    job: &Job<R::Scalars>,
    start: usize,
    len: usize,
) {
    piece_loop::<R, S, N>(job, start, len)
}

/// The fused loop: reads param, grad and `N` state values once, writes param and state once.
#[inline(always)]
pub(super) fn piece_loop<R: Rule, S: Storage, const N: usize>(
    job: &Job<R::Scalars>,
    start: usize,
    len: usize,
) {
    // SAFETY: the driver only builds jobs whose tensors are CPU, contiguous, of the storage type
    // `S` (dispatched on `job.kind`) with `job.numel` elements and `N == job.n_state` state
    // tensors; `start + len <= job.numel`; the written tensors (the gradient too when
    // `grad_scale` is set) do not overlap each other or any read tensor, and no other thread
    // touches `[start, start + len)` of this job.
    let (param, grad, mut state) = unsafe {
        let param = std::slice::from_raw_parts_mut((job.param as *mut S).add(start), len);
        let grad = std::slice::from_raw_parts_mut((job.grad as *mut S).add(start), len);
        let state: [&mut [S]; N] = std::array::from_fn(|k| {
            std::slice::from_raw_parts_mut((job.state[k] as *mut S).add(start), len)
        });
        (param, grad, state)
    };
    if R::UPDATES_SLICES
        && R::update_slice::<S>(&job.scalars, job.grad_scale, param, grad, &mut state)
    {
        return;
    }
    match job.grad_scale {
        None => {
            for i in 0..len {
                let g = grad[i].load();
                update_element::<R, S, N>(&job.scalars, &mut param[i], g, &mut state, i);
            }
        }
        Some(scale) => {
            let scale = <S::Compute as Float>::from_f64(scale);
            for i in 0..len {
                let g = grad[i].load() / scale;
                grad[i] = S::store(g);
                update_element::<R, S, N>(&job.scalars, &mut param[i], g, &mut state, i);
            }
        }
    }
}

/// Loads element `i`'s state, applies the rule, stores the parameter and state.
#[inline(always)]
fn update_element<R: Rule, S: Storage, const N: usize>(
    scalars: &R::Scalars,
    param: &mut S,
    grad: S::Compute,
    state: &mut [&mut [S]; N],
    i: usize,
) {
    let mut s = [<S::Compute as Float>::ZERO; N];
    for k in 0..N {
        s[k] = state[k][i].load();
    }
    *param = S::store(R::update(scalars, param.load(), grad, &mut s));
    for k in 0..N {
        state[k][i] = S::store(s[k]);
    }
}

/// Calls `body(r)` for every `r` in `0..n`, in parallel, on libtorch's own OpenMP thread pool.
///
/// The torch wheel's libtorch runs its parallel regions on GNU OpenMP (`libgomp.so.1`, which
/// our extension resolves to the same loaded library). Using that pool rather than a second
/// one matters on small machines: after a torch parallel region (e.g. the backward pass) its
/// threads spin-wait for a while, and a second pool's threads would compete with them for
/// the cores (measured: 1.15–1.35x the bandwidth floor with a separate pool, 1.0x with
/// `OMP_WAIT_POLICY=passive`).
#[cfg(target_os = "linux")]
pub(crate) fn parallel<F: Fn(usize) + Sync>(n: usize, body: &F) -> Result<()> {
    use std::ffi::{c_int, c_uint, c_void};

    #[link(name = "gomp")]
    extern "C" {
        fn GOMP_parallel(
            f: unsafe extern "C" fn(*mut c_void),
            data: *mut c_void,
            num_threads: c_uint,
            flags: c_uint,
        );
        fn omp_get_thread_num() -> c_int;
        fn omp_get_num_threads() -> c_int;
    }

    struct Team<'a, F> {
        n: usize,
        body: &'a F,
    }

    unsafe extern "C" fn member<F: Fn(usize) + Sync>(data: *mut c_void) {
        // SAFETY: `data` is the `Team` below, alive until `GOMP_parallel` returns, which is
        // after every team member has returned.
        let team = unsafe { &*(data as *const Team<'_, F>) };
        // SAFETY: plain OpenMP queries, valid inside a parallel region.
        let (me, size) = unsafe { (omp_get_thread_num(), omp_get_num_threads()) };
        // The team may be smaller than asked (nested regions, thread limits): each member
        // takes every `size`-th range, so all ranges run whatever the team size.
        let (me, size) = (me.max(0) as usize, size.max(1) as usize);
        for range in (me..team.n).step_by(size) {
            (team.body)(range);
        }
    }

    let team = Team { n, body };
    let threads = c_uint::try_from(n).map_err(|e| Error::Threads(e.to_string()))?;
    // SAFETY: `member::<F>` matches the callback signature GOMP_parallel expects and only reads
    // `team` through the pointer; `F: Sync` makes sharing `body` across the team sound.
    unsafe {
        GOMP_parallel(
            member::<F>,
            &team as *const Team<'_, F> as *mut c_void,
            threads,
            0,
        )
    };
    Ok(())
}

/// Portable fallback: scoped OS threads (other platforms' torch builds use other runtimes).
#[cfg(not(target_os = "linux"))]
pub(crate) fn parallel<F: Fn(usize) + Sync>(n: usize, body: &F) -> Result<()> {
    std::thread::scope(|s| {
        for range in 1..n {
            s.spawn(move || body(range));
        }
        body(0);
    });
    Ok(())
}
