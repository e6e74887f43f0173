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
//!
//! A learning rate given as a one-element float32/float64 device tensor (Adam/AdamW:
//! [`DeviceScalars::LR_CONST`]) is read by `fo_scalars` at every step (`fo_consts`), and
//! every slot that depends on it is computed from it there: the step-dependent ones by
//! [`DeviceScalars::STEP_SOURCE`], the others (AdamW's 1 − lr·wd) by
//! [`DeviceScalars::LR_SOURCE`] ([`lr_step_slots`]); so changing the tensor in place takes
//! effect in a captured graph's replay. Checked against the rule on the CPU
//! (`tests_scalars_lr.rs`).

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
    /// Where the learning rate is in [`DeviceScalars::step_constants`], for a learning rate
    /// given as a device tensor (read by the scalar kernel at every step); None: not
    /// supported. Default: None.
    const LR_CONST: Option<usize> = None;
    /// C++ of `FO_DEV void fo_lr_slots(const double* c, double* out)`: the values of the
    /// slots that depend on the learning rate but not on the step (AdamW's 1 − lr·wd), in
    /// increasing slot order, as [`Rule::scalars`] computes them; its first
    /// [`DeviceScalars::lr_slots`] values are used. Default: none.
    const LR_SOURCE: &'static str = NO_LR_SLOTS;
    /// How many values [`DeviceScalars::LR_SOURCE`] writes.
    const LR_OUT: usize = 0;
    /// How many slots of this rule depend on the learning rate and not on the step.
    fn lr_slots(&self) -> usize {
        0
    }
    /// The rule with learning rate `lr` (to find the slots that depend on it); None when
    /// [`DeviceScalars::LR_CONST`] is None.
    fn with_lr(&self, _lr: f64) -> Option<Self>
    where
        Self: Sized,
    {
        None
    }
}

/// No learning-rate-only slot.
pub(crate) const NO_LR_SLOTS: &str = "\nFO_DEV void fo_lr_slots(const double*, double*) {}\n";

/// How the scalar kernel reads a learning rate given as a one-element device tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LrKind {
    /// A float32 tensor (its value widened to `double`, as `tensor.item()` gives).
    F32,
    /// A float64 tensor.
    F64,
}

/// The learning rate read on the device: its kind, and the rule's
/// [`DeviceScalars::LR_CONST`], [`DeviceScalars::LR_SOURCE`], [`DeviceScalars::STEP_SLOTS`]
/// and [`DeviceScalars::LR_OUT`].
#[derive(Debug, Clone, Copy)]
pub struct LrRead {
    /// The tensor's dtype.
    pub kind: LrKind,
    /// Index of the learning rate among the constants.
    pub index: usize,
    /// C++ of `fo_lr_slots`.
    pub source: &'static str,
    /// Where `fo_lr_slots` writes in the output array (after the step-dependent values).
    pub out_at: usize,
    /// How many values `fo_lr_slots` writes.
    pub n_out: usize,
}

impl LrRead {
    /// The learning rate of rule `R` read from a tensor of `kind`; None when `R` has no
    /// [`DeviceScalars::LR_CONST`].
    pub fn of<R: DeviceScalars>(kind: LrKind) -> Option<LrRead> {
        Some(LrRead {
            kind,
            index: R::LR_CONST?,
            source: R::LR_SOURCE,
            out_at: R::STEP_SLOTS,
            n_out: R::LR_OUT,
        })
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
        vec![self.lr, self.beta1, self.beta2, self.weight_decay]
    }
    const LR_CONST: Option<usize> = Some(0);
    // AdamW's decay factor 1 − lr·wd (`AdamMoments::new`).
    const LR_SOURCE: &'static str = r#"
FO_DEV void fo_lr_slots(const double* c, double* out) {
  out[0] = fo_sub(1.0, fo_mul(c[0], c[3]));
}
"#;
    const LR_OUT: usize = 1;
    fn lr_slots(&self) -> usize {
        usize::from(self.decoupled_weight_decay && self.weight_decay != 0.0)
    }
    fn with_lr(&self, lr: f64) -> Option<Self> {
        Some(Adam { lr, ..*self })
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

/// Learning rates of the probes that find the slots depending on it.
const LR_PROBES: [f64; 4] = [1e-3, 0.37, 2.5, 0.0];

/// [`step_slots`] for a learning rate read on the device (a tensor): also the slots that
/// depend on the learning rate but not on the step (those of the rule's
/// [`DeviceScalars::step_probe`] that differ between the learning rates of `LR_PROBES`, at
/// step 1), grouped by their values as in [`step_slots`], paired with the outputs
/// [`DeviceScalars::STEP_SLOTS`]`..` (written by [`DeviceScalars::LR_SOURCE`]); sorted by slot.
///
/// # Errors
/// As [`step_slots`]; also when the rule reads no learning rate on the device, its graph
/// depends on the learning rate, or the groups found are not [`DeviceScalars::lr_slots`].
pub fn lr_step_slots<R: DeviceScalars>(
    rule: &R,
    n_state: usize,
    dtype: Dtype,
) -> Result<(Trace, Vec<(usize, usize)>), String> {
    lr_step_slots_checked(rule, n_state, dtype, rule.lr_slots())
}

/// [`lr_step_slots`], expecting `n_lr` learning-rate-only values.
pub(crate) fn lr_step_slots_checked<R: DeviceScalars>(
    rule: &R,
    n_state: usize,
    dtype: Dtype,
    n_lr: usize,
) -> Result<(Trace, Vec<(usize, usize)>), String> {
    if R::LR_CONST.is_none() || n_lr > R::LR_OUT {
        return Err("this rule does not read its learning rate on the device".into());
    }
    let (base, mut dep) = step_slots(rule, n_state, dtype)?;
    let extra = rule.extra_initial();
    let probe = rule.step_probe();
    let mut probed: Vec<Trace> = Vec::new();
    for lr in LR_PROBES {
        for r in [rule.with_lr(lr), probe.with_lr(lr)] {
            let r = r.ok_or("this rule does not read its learning rate on the device")?;
            let t = super::trace_update::<R>(&scalars_at(&r, 0.0, &extra), n_state, dtype)?;
            if t.nodes != base.nodes || t.tree != base.tree || t.slots.len() != base.slots.len() {
                return Err("the update's graph depends on the learning rate".into());
            }
            probed.push(t);
        }
    }
    probed = probed.into_iter().skip(1).step_by(2).collect();
    let mut groups: Vec<Vec<u64>> = Vec::new();
    let mut found = Vec::new();
    for k in 0..base.slots.len() {
        let v: Vec<u64> = probed.iter().map(|t| t.slots[k].to_bits()).collect();
        if dep.iter().any(|d| d.0 == k) || v.iter().all(|&x| x == v[0]) {
            continue;
        }
        let out = match groups.iter().position(|g| *g == v) {
            Some(o) => o,
            None => {
                groups.push(v);
                groups.len() - 1
            }
        };
        found.push((k, R::STEP_SLOTS + out));
    }
    if groups.len() != n_lr {
        return Err(format!(
            "{} learning-rate-only values found (slots {found:?}), expected {n_lr}",
            groups.len(),
        ));
    }
    dep.extend(found);
    dep.sort_unstable();
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
    lr: Option<&LrRead>,
) -> String {
    let mut s = format!("typedef {} T;\n", layout.dtype.compute());
    let n_out = dep
        .iter()
        .map(|d| d.1 + 1)
        .chain(lr.map(|l| l.out_at + l.n_out))
        .max()
        .unwrap_or(1)
        .max(1);
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
    s.push_str(&lr_source(lr));
    s.push_str(SCALARS_SRC);
    s
}

/// `fo_consts` (the constants, with the learning rate read from its tensor when `lr` is
/// given) and `fo_lr_slots_at` (the learning-rate-only values, or nothing).
fn lr_source(lr: Option<&LrRead>) -> String {
    let copy = "  for (int k = 0; k < FO_NCONST; ++k) cc[k] = c[k];\n";
    match lr {
        None => format!(
            "\n// The constants (the learning rate is one of them).\n\
             FO_DEV void fo_consts(const double* c, const void*, double* cc) {{\n{copy}}}\n\
             FO_DEV void fo_lr_slots_at(const double*, double*) {{}}\n"
        ),
        Some(l) => {
            let read = match l.kind {
                LrKind::F32 => "(double)*static_cast<const float*>(lr)",
                LrKind::F64 => "*static_cast<const double*>(lr)",
            };
            format!(
                "{}\n// The constants, the learning rate read from its one-element tensor `lr`.\n\
                 FO_DEV void fo_consts(const double* c, const void* lr, double* cc) {{\n{copy}\
                 \x20 cc[{}] = {read};\n}}\n\
                 FO_DEV void fo_lr_slots_at(const double* c, double* out) {{\n\
                 \x20 fo_lr_slots(c, out + {});\n}}\n",
                l.source, l.index, l.out_at
            )
        }
    }
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
  fo_lr_slots_at(c, out);
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
                                      const int count, const float* __restrict__ found_inf,
                                      const void* __restrict__ lr) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= count) return;
  double c[FO_NCONST];
  fo_consts(cs.v, lr, c);
  const bool skip = found_inf != nullptr && *found_inf != 0.0f;
  float* const* s = a.s + (long long)i * FO_NSCALAR;
  float extra[FO_NEXTRA] = {};
  for (int k = 0; k < fo_nextra; ++k) extra[k] = *s[1 + k];
  *s[0] = fo_step_row(sl.v, c, *s[0], skip, extra,
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
    lr: Option<&LrRead>,
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
    s.push_str(&scalars_body(dep, step_source, counts, layout, lr));
    s.push_str("}\n");
    s
}
