//! Capturable steps (torch's `capturable=True`): the step count lives on the device and the
//! per-step scalars that depend on it are computed there, so a step never reads the host and
//! replays unchanged in a CUDA graph.
//!
//! Per launch list, before the update: `fo_scalars`, one thread per tensor, reads the tensor's
//! float32 `step` (a device tensor), adds 1 (rounded to float32, as [`ScalarState::increment`]
//! for a float32 tensor; not when `found_inf` is nonzero, as torch's fused kernels undo the
//! increment), advances the rule's other scalar states (NAdam's `mu_product`, also float32
//! device tensors; kept when `found_inf` is nonzero), and writes the tensor's slot row: the
//! traced slots that do not depend on the step, and those that do computed in `double` by
//! [`DeviceScalars::STEP_SOURCE`]; the update kernel then reads its row
//! (`kernel::step_body_with`, as for LAMB's trust ratio).
//!
//! The per-rule C++ of [`DeviceScalars::STEP_SOURCE`] is written beside the Rust rule's
//! [`Rule::scalars`] and checked against it bit for bit on the CPU (`tests_scalars.rs`: host
//! C++ over many steps and hyperparameters). On the device, `pow` is CUDA's (within 2 ulp in
//! `double`, not always glibc's correctly rounded-looking result): a slot rounded to float32
//! can then differ from the host's in rare cases (about 2⁻²⁸ per value). Covered: Adam/AdamW
//! (here), Adamax, NAdam, Adadelta, RMSprop and Rprop (`scalars_rules.rs`); the last three
//! have no step-dependent scalar (only the increment). Not covered: the rules whose update
//! graph itself changes with the step or a scalar state (RAdam's ρ_t > 5 branch, ASGD's
//! `mu == 1` copy, ADOPT's and SGD's first step), which would need the graph chosen on the
//! device.

use super::emit::Dtype;
use super::kernel::Layout;
use super::sym::Trace;
use crate::rule::{Rule, ScalarState};
use crate::rules::Adam;
use std::fmt::Write;

/// Name of the per-tensor scalar kernel.
pub const SCALARS_KERNEL: &str = "fo_scalars";
/// Threads per block of [`SCALARS_KERNEL`].
pub const SCALAR_THREADS: usize = 128;
/// Pointers in a [`SCALARS_KERNEL`] argument struct (one per tensor and scalar state).
pub const SCALAR_MAX_T: usize = 256;

/// A rule whose step-dependent scalars have a device implementation: its scalar state is
/// `step`, then [`DeviceScalars::extra_initial`]`.len()` more float32 values (NAdam's
/// `mu_product`), all on the device.
pub trait DeviceScalars: Rule {
    /// C++ of `FO_DEV void fo_step_slots(const double* c, const double step, float* st,
    /// double* out)` (in `double`, with `prelude.h`'s explicitly rounded operations and
    /// `fo_pow`): the values of the step-dependent scalar slots, in increasing slot order, for
    /// the incremented `step`, exactly as [`Rule::scalars`] and the update's `from_f64` calls
    /// compute them; `st` holds the other scalar states (after `step`), which it advances in
    /// place as [`Rule::scalars`] does (rounded to float32, as
    /// [`ScalarState`] of a float32 tensor).
    const STEP_SOURCE: &'static str;
    /// How many values [`DeviceScalars::STEP_SOURCE`] writes (0: the scalars do not depend
    /// on the step; the device only increments it).
    const STEP_SLOTS: usize;
    /// The constants `c` of [`DeviceScalars::STEP_SOURCE`].
    fn step_constants(&self) -> Vec<f64>;
    /// A copy of the rule, with the same graph, whose [`DeviceScalars::STEP_SLOTS`] slots all
    /// change with the step (e.g. β₁ ≠ 0): where they are, found by tracing it at several
    /// steps (with β₁ = 0 a slot of the rule itself is constant, but still written).
    fn step_probe(&self) -> Self;
    /// The initial values of the scalar states after `step` (as torch creates them), used
    /// to trace the rule. Default: none.
    fn extra_initial(&self) -> Vec<f64> {
        Vec::new()
    }
}

/// No step-dependent slot: the device only increments `step`.
pub(crate) const NO_STEP_SLOTS: &str =
    "\nFO_DEV void fo_step_slots(const double*, const double, float*, double*) {}\n";

impl DeviceScalars for Adam {
    // bias_correction1 = 1 − β₁ᵗ, bias_correction2 = 1 − β₂ᵗ;
    // slots: √bias_correction2 (as powf(0.5)), then −lr/bias_correction1.
    const STEP_SOURCE: &'static str = r#"
FO_DEV void fo_step_slots(const double* c, const double step, float*, double* out) {
  const double bias_correction1 = fo_sub(1.0, fo_pow(c[1], step));
  const double bias_correction2 = fo_sub(1.0, fo_pow(c[2], step));
  out[0] = fo_pow(bias_correction2, 0.5);
  out[1] = -fo_div(c[0], bias_correction1);
}
"#;
    const STEP_SLOTS: usize = 2;
    fn step_constants(&self) -> Vec<f64> {
        vec![self.lr, self.beta1, self.beta2]
    }
    fn step_probe(&self) -> Self {
        Adam {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            ..*self
        }
    }
}

/// The scalars of `rule` after the step count went from `before` to `before + 1`, with the
/// other scalar states at `extra` before the step (all float32).
pub(crate) fn scalars_at<R: DeviceScalars>(rule: &R, before: f64, extra: &[f64]) -> R::Scalars {
    let mut ss: Vec<ScalarState> = std::iter::once(before)
        .chain(extra.iter().copied())
        .map(|v| ScalarState::new(v, tch::Kind::Float))
        .collect();
    rule.scalars(&mut ss, false)
}

/// The update's trace (at step 1) and its step-dependent slots, as (slot, output of
/// [`DeviceScalars::STEP_SOURCE`]) pairs: the slots of the rule's
/// [`DeviceScalars::step_probe`] that differ between steps 1, 2, 3 and 1000, grouped by their
/// values (a `from_f64` call on several paths of the graph is one slot per path, all with the
/// same value), the groups in the order of their first slot. The graph must be the same at
/// every step and for the probe, and the rule's scalar state must be `step` followed by
/// [`DeviceScalars::extra_initial`]'s.
///
/// # Errors
/// When a trace fails, the graph depends on the step, the rule keeps other scalar state, or
/// the groups found are not [`DeviceScalars::STEP_SLOTS`].
pub fn step_slots<R: DeviceScalars>(
    rule: &R,
    n_state: usize,
    dtype: Dtype,
) -> Result<(Trace, Vec<(usize, usize)>), String> {
    step_slots_checked(rule, n_state, dtype, R::STEP_SLOTS)
}

/// [`step_slots`], expecting `n_slots` step-dependent values.
pub(crate) fn step_slots_checked<R: DeviceScalars>(
    rule: &R,
    n_state: usize,
    dtype: Dtype,
    n_slots: usize,
) -> Result<(Trace, Vec<(usize, usize)>), String> {
    let extra = rule.extra_initial();
    let names = rule.scalar_state_names();
    if names.first() != Some(&"step") || names.len() != 1 + extra.len() {
        return Err(format!(
            "capturable steps need a rule whose scalar state is `step` and {} more (got {names:?})",
            extra.len()
        ));
    }
    let base = super::trace_update::<R>(&scalars_at(rule, 0.0, &extra), n_state, dtype)?;
    let probe = rule.step_probe();
    let mut probed: Vec<Trace> = Vec::new();
    for (r, before) in [
        (rule, 999.0),
        (&probe, 0.0),
        (&probe, 1.0),
        (&probe, 2.0),
        (&probe, 999.0),
    ] {
        let t = super::trace_update::<R>(&scalars_at(r, before, &extra), n_state, dtype)?;
        if t.nodes != base.nodes || t.tree != base.tree || t.slots.len() != base.slots.len() {
            return Err("the update's graph depends on the step".into());
        }
        if std::ptr::eq(r, &probe) {
            probed.push(t);
        }
    }
    // Each slot's values over the probed steps; the varying ones, grouped by those values.
    let values = |k: usize| -> Vec<u64> { probed.iter().map(|t| t.slots[k].to_bits()).collect() };
    let mut groups: Vec<Vec<u64>> = Vec::new();
    let mut dep = Vec::new();
    for k in 0..base.slots.len() {
        let v = values(k);
        if v.iter().all(|&x| x == v[0]) {
            continue;
        }
        let out = match groups.iter().position(|g| *g == v) {
            Some(o) => o,
            None => {
                groups.push(v);
                groups.len() - 1
            }
        };
        dep.push((k, out));
    }
    if groups.len() != n_slots {
        return Err(format!(
            "{} step-dependent values found (slots {dep:?}), the device code writes {n_slots}",
            groups.len(),
        ));
    }
    Ok((base, dep))
}

/// Tensors per [`SCALARS_KERNEL`] launch for a rule with `n_scalar` scalar states (its
/// argument struct holds one pointer per scalar state and tensor).
pub fn scalar_max_t(n_scalar: usize) -> usize {
    SCALAR_MAX_T / n_scalar.max(1)
}

/// The per-tensor scalar kernel's source (without the prelude): `fo_step_row` (shared with
/// the host check) and, for NVRTC, the kernel [`SCALARS_KERNEL`]; `n_extra` scalar states
/// after `step`.
pub fn scalars_body(
    dep: &[(usize, usize)],
    step_source: &str,
    (n_consts, n_extra): (usize, usize),
    layout: &Layout,
) -> String {
    let mut s = format!("typedef {} T;\n", layout.dtype.compute());
    let n_out = dep.iter().map(|d| d.1 + 1).max().unwrap_or(1);
    let consts = [
        ("FO_SLOTS", layout.slots),
        ("FO_NDEP", dep.len().max(1)),
        ("FO_NOUT", n_out),
        ("FO_NCONST", n_consts.max(1)),
        ("FO_NEXTRA", n_extra.max(1)),
        ("fo_nextra", n_extra),
        ("FO_NSCALAR", 1 + n_extra),
        ("FO_SMAX", scalar_max_t(1 + n_extra)),
    ];
    for (k, v) in consts {
        let _ = writeln!(s, "constexpr int {k} = {v};");
    }
    let list = |f: fn(&(usize, usize)) -> usize| -> String {
        let v: Vec<String> = dep.iter().map(|d| f(d).to_string()).collect();
        if v.is_empty() {
            "0".into()
        } else {
            v.join(", ")
        }
    };
    let _ = writeln!(
        s,
        "constexpr int fo_ndep = {};\nconstexpr int fo_dep[FO_NDEP] = {{{}}};\n\
         constexpr int fo_out[FO_NDEP] = {{{}}};",
        dep.len(),
        list(|d| d.0),
        list(|d| d.1)
    );
    s.push_str(step_source);
    s.push_str(SCALARS_SRC);
    s
}

const SCALARS_SRC: &str = r#"
// The step count after this step (float32, as the CPU's ScalarState::increment), the other
// scalar states advanced in place (kept when `skip`), and the row.
FO_DEV float fo_step_row(const T* base, const double* c, const float before, const bool skip,
                         float* extra, T* row) {
  const float step = skip ? before : fo_add(before, 1.0f);
  float st[FO_NEXTRA];
  for (int k = 0; k < FO_NEXTRA; ++k) st[k] = k < fo_nextra ? extra[k] : 0.0f;
  double out[FO_NOUT] = {};
  fo_step_slots(c, (double)step, st, out);
  if (!skip)
    for (int k = 0; k < fo_nextra; ++k) extra[k] = st[k];
  for (int k = 0; k < FO_SLOTS; ++k) row[k] = base[k];
  for (int j = 0; j < fo_ndep; ++j) row[fo_dep[j]] = (T)out[fo_out[j]];
  return step;
}

#ifdef __CUDACC_RTC__
// Tensor i's scalar states: s[i * FO_NSCALAR] is its `step`, then the others.
struct FoStepArgs { float* s[FO_SMAX * FO_NSCALAR]; };
struct FoSlots { T v[FO_SLOTS]; };
struct FoConsts { double v[FO_NCONST]; };

extern "C" __global__ void fo_scalars(const FoStepArgs a, const FoSlots sl, const FoConsts cs,
                                      T* __restrict__ tslots, const int tensor_base,
                                      const int count, const float* __restrict__ found_inf) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= count) return;
  const bool skip = found_inf != nullptr && *found_inf != 0.0f;
  float* const* s = a.s + (long long)i * FO_NSCALAR;
  float extra[FO_NEXTRA] = {};
  for (int k = 0; k < fo_nextra; ++k) extra[k] = *s[1 + k];
  *s[0] = fo_step_row(sl.v, cs.v, *s[0], skip, extra,
                      tslots + (long long)(tensor_base + i) * FO_SLOTS);
  for (int k = 0; k < fo_nextra; ++k) *s[1 + k] = extra[k];
}
#endif
"#;

/// The module of a capturable step: prelude, the scalar kernel and the update kernel with
/// per-tensor slots (`kernel::STEP_KERNEL`).
pub fn capturable_module(
    update: &Trace,
    dep: &[(usize, usize)],
    step_source: &str,
    counts: (usize, usize),
    layout: &Layout,
) -> String {
    let mut s = String::from("// generated by ferroptim::device::nvrtc from the Rust rule\n");
    s.push_str(super::emit::PRELUDE);
    s.push_str("namespace fo_u {\n");
    s.push_str(&super::kernel::step_body_with(
        update,
        layout,
        super::kernel::STEP_KERNEL,
        true,
    ));
    s.push_str("}\nnamespace fo_s {\n");
    s.push_str(&scalars_body(dep, step_source, counts, layout));
    s.push_str("}\n");
    s
}
