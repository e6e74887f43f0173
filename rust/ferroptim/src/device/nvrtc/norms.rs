//! Rules with per-tensor norms (LAMB, LARS) on the device: three kernels per step, in stream
//! order and without a host synchronisation.
//!
//! 1. `fo_norms` (reduction pass): Σ term₀² and Σ term₁² of the traced [`Rule::norm_terms`]
//!    (gradients unscaled as in the update), summed **exactly as the CPU driver sums them**
//!    (`driver/norms.rs`): each tensor is cut into blocks of [`SUB`] elements; in a block,
//!    element `i` goes to lane `i % 16` (sequential `f64` sums), and the lanes are added in
//!    order. One CUDA block of 64 threads handles one chunk ([`CHUNK`] = 4 such blocks: thread
//!    `16·b + lane`), and writes the 4 block sums to `partials` — no atomics, so the sums are
//!    the CPU's bit for bit and do not vary between runs.
//! 2. `fo_trust` (one thread per tensor): adds its block sums in block order (as the CPU
//!    driver), then computes the scalar slots that depend on the norms (the trust ratio and
//!    what the rule derives from it) with [`DeviceNorms::TRUST_SOURCE`], and writes the
//!    tensor's full slot row to `tslots`.
//! 3. `fo_step` with per-tensor slots (`kernel::step_body_with`): the update, reading its
//!    tensor's row of `tslots`.
//!
//! The trust-ratio code is C++ written per rule beside its Rust [`Rule::with_norms`] (the one
//! part not generated from the Rust rule); `tests.rs` checks it bit for bit against the Rust
//! rule (`with_norms`, then a trace of the update) on the CPU, over random and special sums.

use super::emit::{element_function, Dtype};
use super::kernel::{types, Layout, CHUNK, MAX_BLOCKS};
use super::sym::Trace;
use crate::rule::{Rule, ScalarState, MAX_NORMS};
use crate::rules::{Lamb, Lars};
use std::fmt::Write;

/// Elements per block of the CPU driver's reduction (`driver/norms.rs`); [`CHUNK`] is a
/// multiple.
pub const SUB: usize = 1 << 14;
/// Threads per block of the reduction kernel: 16 lanes for each of `CHUNK / SUB` blocks.
pub const NORM_THREADS: usize = 16 * (CHUNK / SUB);
/// Threads per block of the trust-ratio kernel.
pub const TRUST_THREADS: usize = 128;
/// Tensors per trust-ratio launch (its argument struct holds two `int`s per tensor).
pub const TRUST_MAX_T: usize = 256;
/// `f64` values the reduction writes per chunk: two sums for each of its blocks.
pub const PARTIALS_PER_CHUNK: usize = 2 * (CHUNK / SUB);

/// Names of the three kernels in a norm rule's module.
pub const NORM_KERNEL: &str = "fo_norms";
/// See [`NORM_KERNEL`].
pub const TRUST_KERNEL: &str = "fo_trust";

/// A rule whose norm-dependent scalars have a device implementation.
pub trait DeviceNorms: Rule {
    /// C++ of `FO_DEV void fo_trust_slots(const double* c, double s0, double s1, double* out)`
    /// (in `double`, with `prelude.h`'s explicitly rounded operations): from the sums of
    /// squares `s0`, `s1` and the constants `c` ([`DeviceNorms::trust_constants`]), the values
    /// of the norm-dependent scalar slots, in increasing slot order, exactly as
    /// [`Rule::with_norms`] and then [`Rule::update`]'s `from_f64` calls compute them.
    const TRUST_SOURCE: &'static str;
    /// The constants `c` of [`DeviceNorms::TRUST_SOURCE`], from this step's scalars.
    fn trust_constants(s: &Self::Scalars) -> Vec<f64>;
    /// A copy of the rule, with the same graph, whose norm-dependent slots do change with the
    /// norms (e.g. `lr ≠ 0`): where they are is found by tracing it with two sets of sums
    /// (with `lr = 0`, LAMB's slot is a constant −0, but still written).
    fn norm_probe(&self) -> Self;
}

impl DeviceNorms for Lamb {
    // weight_norm = min(√s0, 10); direction_norm = √s1;
    // trust = 1 if either is 0, else weight_norm / (direction_norm + ε);
    // slot = −step_size · trust (add_scaled's α in the update).
    const TRUST_SOURCE: &'static str = r#"
FO_DEV void fo_trust_slots(const double* c, const double s0, const double s1, double* out) {
  const double wn = fo_min_num(fo_sqrt(s0), 10.0);
  const double dn = fo_sqrt(s1);
  const double trust = (wn == 0.0 || dn == 0.0) ? 1.0 : fo_div(wn, fo_add(dn, c[0]));
  out[0] = fo_mul(-c[1], trust);
}
"#;
    fn trust_constants(s: &Self::Scalars) -> Vec<f64> {
        let (eps, step_size) = s.trust_constants();
        vec![eps, step_size]
    }
    fn norm_probe(&self) -> Self {
        Lamb {
            lr: 1e-3,
            beta1: 0.9,
            ..*self
        }
    }
}

impl DeviceNorms for Lars {
    // param_norm = √s0; grad_norm = √s1; denom = grad_norm + β·param_norm;
    // slot = trust = η·param_norm / denom if param_norm > 0 and denom > 0, else 1.
    const TRUST_SOURCE: &'static str = r#"
FO_DEV void fo_trust_slots(const double* c, const double s0, const double s1, double* out) {
  const double pn = fo_sqrt(s0), gn = fo_sqrt(s1);
  const double denom = fo_add(gn, fo_mul(c[0], pn));
  out[0] = (pn > 0.0 && denom > 0.0) ? fo_div(fo_mul(c[1], pn), denom) : 1.0;
}
"#;
    fn trust_constants(s: &Self::Scalars) -> Vec<f64> {
        let (weight_decay, trust_coefficient) = s.trust_constants();
        vec![weight_decay, trust_coefficient]
    }
    fn norm_probe(&self) -> Self {
        Lars {
            trust_coefficient: 1e-3,
            ..*self
        }
    }
}

/// `R`'s update traced with scalars `s` (completed with placeholder norms), and the slots
/// whose values depend on the norms: those of the rule's [`DeviceNorms::norm_probe`] (at its
/// first step) that differ between traces after two different [`Rule::with_norms`] calls.
/// The graph must be the same for both sums and for the probe.
///
/// # Errors
/// When the traces fail, their graphs differ, or not exactly one slot depends on the norms.
pub fn dependent_slots<R: DeviceNorms>(
    rule: &R,
    s: &R::Scalars,
    n_state: usize,
    dtype: Dtype,
) -> Result<(Trace, Vec<usize>), String> {
    let traced = |s: &R::Scalars, sums: [f64; MAX_NORMS]| {
        let mut s2 = *s;
        R::with_norms(&mut s2, sums);
        super::trace_update::<R>(&s2, n_state, dtype)
    };
    let probe = rule.norm_probe();
    let mut ss: Vec<ScalarState> = (0..probe.scalar_state_names().len())
        .map(|_| ScalarState::new(0.0, tch::Kind::Float))
        .collect();
    let ps = probe.scalars(&mut ss, false);
    let a = traced(&ps, [4.0, 9.0])?;
    let b = traced(&ps, [16.0, 1.0])?;
    let actual = traced(s, [4.0, 9.0])?;
    for t in [&b, &actual] {
        if a.nodes != t.nodes || a.tree != t.tree || a.slots.len() != t.slots.len() {
            return Err("the update's graph depends on the norms or the probe".into());
        }
    }
    let dep: Vec<usize> = (0..a.slots.len())
        .filter(|&k| a.slots[k].to_bits() != b.slots[k].to_bits())
        .collect();
    // LAMB's and LARS's `TRUST_SOURCE` write one value, for their one norm-dependent slot (a
    // rule whose norm-dependent `from_f64` call sat on several graph paths would need the
    // grouping of `scalars::step_slots`).
    if dep.len() != 1 {
        return Err(format!(
            "{} norm-dependent slots found ({dep:?}); the trust-ratio code writes one",
            dep.len()
        ));
    }
    Ok((actual, dep))
}

/// The module of one norm rule's step: prelude, then the reduction, trust-ratio and update
/// kernels (named [`NORM_KERNEL`], [`TRUST_KERNEL`] and `kernel::STEP_KERNEL`).
/// `update`/`terms`: traces of [`super::trace_update`] and [`super::trace_norm_terms`];
/// `dep`: [`dependent_slots`]; `n_consts`: the length of the rule's constants; the layouts:
/// the update's and the reduction's (the same but for their slot counts).
pub fn norm_module(
    update: &Trace,
    terms: &Trace,
    dep: &[usize],
    trust_source: &str,
    n_consts: usize,
    layouts: (&Layout, &Layout),
) -> String {
    let mut s = String::from("// generated by ferroptim::device::nvrtc from the Rust rule\n");
    s.push_str(super::emit::PRELUDE);
    s.push_str(&norm_module_body(
        update,
        terms,
        dep,
        trust_source,
        n_consts,
        layouts,
    ));
    s
}

/// [`norm_module`] without the prelude.
pub fn norm_module_body(
    update: &Trace,
    terms: &Trace,
    dep: &[usize],
    trust_source: &str,
    n_consts: usize,
    (layout, term_layout): (&Layout, &Layout),
) -> String {
    let mut s = String::from("namespace fo_u {\n");
    s.push_str(&super::kernel::step_body_with(
        update,
        layout,
        super::kernel::STEP_KERNEL,
        true,
    ));
    s.push_str("}\nnamespace fo_n {\n");
    s.push_str(&norm_body(terms, term_layout));
    s.push_str("}\nnamespace fo_t {\n");
    s.push_str(&trust_body(dep, trust_source, n_consts, layout));
    s.push_str("}\n");
    s
}

/// The reduction kernel [`NORM_KERNEL`]: `partials[PARTIALS_PER_CHUNK · (block_base +
/// blockIdx.x) ..]` receives the chunk's block sums (0 for blocks past the tensor's end, which
/// leave the CPU's running sum unchanged: it is never −0).
pub(crate) fn norm_body(trace: &Trace, layout: &Layout) -> String {
    let n_state = layout.lists - 2;
    let mut s = types(layout.dtype, n_state);
    let consts = [
        ("FO_LISTS", layout.lists),
        ("FO_SLOTS", layout.slots),
        ("FO_MAX_T", layout.max_tensors),
        ("FO_MAX_B", MAX_BLOCKS),
        ("FO_CHUNK", CHUNK),
        ("FO_SUB", SUB),
        ("FO_THREADS", NORM_THREADS),
        ("FO_PER_CHUNK", PARTIALS_PER_CHUNK),
        ("FO_TENSOR_BYTES", layout.tensor_struct_bytes()),
    ];
    for (k, v) in consts {
        let _ = writeln!(s, "constexpr int {k} = {v};");
    }
    s.push_str(&element_function(trace, n_state + MAX_NORMS));
    s.push_str(NORM_PARTS);
    s.push_str(NORM_KERNEL_SRC);
    s
}

/// The reduction's arithmetic, shared by the kernel and the host check of the whole pipeline.
pub(crate) const NORM_PARTS: &str = r#"
// One thread: lane `lane` of the CPU driver's block [first, last) — Σ term² of its elements
// first + lane, first + lane + 16, … in order, in double.
FO_DEV void fo_norm_lane(const T* __restrict__ sc, const S* p, const S* g, const S* const* st,
                         const long long first, const long long last, const int lane,
                         const bool scaled, const T scale, double* acc) {
  double acc0 = 0.0, acc1 = 0.0;
  for (long long i = first + lane; i < last; i += 16) {
    T stc[FO_NSTATE + 2];
    for (int k = 0; k < FO_NSTATE; ++k) stc[k] = fo_load(st[k][i]);
    stc[FO_NSTATE] = (T)0;
    stc[FO_NSTATE + 1] = (T)0;
    T gv = fo_load(g[i]);
    if (scaled) gv = fo_div(gv, scale);
    (void)fo_update(sc, fo_load(p[i]), gv, stc);
    const double x = (double)stc[FO_NSTATE], y = (double)stc[FO_NSTATE + 1];
    acc0 = fo_add(acc0, fo_mul(x, x));
    acc1 = fo_add(acc1, fo_mul(y, y));
  }
  acc[0] = acc0;
  acc[1] = acc1;
}
// One block's sums: its 16 lanes added in order (the CPU driver's `iter().sum()`).
FO_DEV void fo_norm_combine(const double* lanes0, const double* lanes1, double* out) {
  double r0 = 0.0, r1 = 0.0;
  for (int l = 0; l < 16; ++l) {
    r0 = fo_add(r0, lanes0[l]);
    r1 = fo_add(r1, lanes1[l]);
  }
  out[0] = r0;
  out[1] = r1;
}
"#;

const NORM_KERNEL_SRC: &str = r#"
#ifdef __CUDACC_RTC__
struct FoTensors {
  void* ptr[FO_LISTS][FO_MAX_T];
  long long numel[FO_MAX_T];
  int block_chunk[FO_MAX_B];
  unsigned char block_tensor[FO_MAX_B];
};
static_assert(sizeof(FoTensors) == FO_TENSOR_BYTES, "FoTensors layout");
struct FoSlots { T v[FO_SLOTS]; };

extern "C" __global__ void __launch_bounds__(FO_THREADS)
fo_norms(const FoTensors a, const FoSlots sl, double* __restrict__ partials, const int block_base,
         const float* __restrict__ grad_scale) {
  __shared__ double lanes[2][FO_THREADS];
  const int t = a.block_tensor[blockIdx.x];
  const int sub = threadIdx.x >> 4, lane = threadIdx.x & 15;
  const long long n = a.numel[t];
  const long long first = (long long)a.block_chunk[blockIdx.x] * FO_CHUNK + (long long)sub * FO_SUB;
  const long long last = (n - first < FO_SUB) ? n : first + FO_SUB;
  const S* st[FO_NSTATE + 1];
  for (int k = 0; k < FO_NSTATE; ++k) st[k] = (const S*)a.ptr[2 + k][t];
  const bool scaled = grad_scale != nullptr;
  double acc[2];
  fo_norm_lane(sl.v, (const S*)a.ptr[0][t], (const S*)a.ptr[1][t], st, first, last, lane, scaled,
               scaled ? (T)(*grad_scale) : (T)1, acc);
  lanes[0][threadIdx.x] = acc[0];
  lanes[1][threadIdx.x] = acc[1];
  __syncthreads();
  if (threadIdx.x < FO_THREADS / 16) {
    fo_norm_combine(&lanes[0][16 * threadIdx.x], &lanes[1][16 * threadIdx.x],
                    partials + (long long)FO_PER_CHUNK * ((long long)block_base + blockIdx.x)
                        + 2 * threadIdx.x);
  }
}
#endif
"#;

/// The trust-ratio kernel [`TRUST_KERNEL`] of a rule whose norm-dependent slots are `dep`.
pub(crate) fn trust_body(
    dep: &[usize],
    trust_source: &str,
    n_consts: usize,
    layout: &Layout,
) -> String {
    let mut s = format!("typedef {} T;\n", layout.dtype.compute());
    let consts = [
        ("FO_SLOTS", layout.slots),
        ("FO_NDEP", dep.len()),
        ("FO_NCONST", n_consts.max(1)),
        ("FO_TMAX", TRUST_MAX_T),
        ("FO_PER_CHUNK", PARTIALS_PER_CHUNK),
    ];
    for (k, v) in consts {
        let _ = writeln!(s, "constexpr int {k} = {v};");
    }
    let list: Vec<String> = dep.iter().map(usize::to_string).collect();
    let _ = writeln!(
        s,
        "constexpr int fo_dep[FO_NDEP] = {{{}}};",
        list.join(", ")
    );
    s.push_str(trust_source);
    s.push_str(TRUST_FINISH);
    s.push_str(TRUST_KERNEL_SRC);
    s
}

/// One tensor's slot row from its block sums: shared by the kernel and the host check.
pub(crate) const TRUST_FINISH: &str = r#"
FO_DEV void fo_trust_row(const T* base, const double* c, const double* part, const int nchunks,
                         T* row) {
  double s0 = 0.0, s1 = 0.0;
  for (int k = 0; k < nchunks * (FO_PER_CHUNK / 2); ++k) {
    s0 = fo_add(s0, part[2 * k]);
    s1 = fo_add(s1, part[2 * k + 1]);
  }
  double dep[FO_NDEP] = {};
  fo_trust_slots(c, s0, s1, dep);
  for (int k = 0; k < FO_SLOTS; ++k) row[k] = base[k];
  for (int j = 0; j < FO_NDEP; ++j) row[fo_dep[j]] = (T)dep[j];
}
"#;

const TRUST_KERNEL_SRC: &str = r#"
#ifdef __CUDACC_RTC__
struct FoTrustArgs { int chunk_off[FO_TMAX]; int nchunks[FO_TMAX]; };
struct FoSlots { T v[FO_SLOTS]; };
struct FoConsts { double v[FO_NCONST]; };

extern "C" __global__ void fo_trust(const FoTrustArgs a, const FoSlots sl, const FoConsts cs,
                                    const double* __restrict__ partials, T* __restrict__ tslots,
                                    const int tensor_base, const int count) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= count) return;
  fo_trust_row(sl.v, cs.v, partials + (long long)FO_PER_CHUNK * a.chunk_off[i], a.nchunks[i],
               tslots + (long long)(tensor_base + i) * FO_SLOTS);
}
#endif
"#;
