//! ferroptim's own one-pass CUDA kernels, compiled at run time with NVRTC (DESIGN.md §3, "CUDA
//! in two tiers", tier 2). **Opt-in and untested on a GPU**: everything here that runs on the
//! CPU is tested (the generated math bit for bit against the Rust rules, NVRTC compiling every
//! kernel for sm_80 and sm_90); launching ([`launch`]) has never run on a device.
//!
//! One source for the math: a rule's CUDA element function is generated from the Rust rule
//! itself. [`sym`] runs the rule's generic `update::<Sym>` with a symbolic [`crate::element::Float`]
//! that records every operation (and enumerates every branch) into an expression graph; [`emit`]
//! writes that graph as C++ whose every operation is explicitly rounded (`prelude.h`), so the
//! same text compiles for the device and for the host check; [`kernel`] wraps it in a
//! multi-tensor-apply kernel; [`compile`] compiles it with NVRTC.
//!
//! The per-step scalars (bias corrections, step sizes, …) are the values the rule passes to
//! `Float::from_f64`: each call is a slot of the kernel's scalar argument, filled by tracing
//! the rule with this step's `Scalars` (computed on the host, in `f64`, exactly as for the CPU
//! kernel). Host-side branches on the scalars (`amsgrad`, `weight_decay != 0`, a first step)
//! select the graph; the compile cache is keyed by the generated source.
//!
//! Two kinds of slots are computed on the device instead, into a per-tensor row of slots that
//! the update kernel reads: LAMB's and LARS's norm-dependent ones ([`norms`]: a reduction pass
//! that sums as the CPU driver does, then the trust ratios), and, for capturable steps, the
//! step-dependent ones ([`scalars`]: Adam/AdamW, Adamax, NAdam, Adadelta, RMSprop, Rprop;
//! `step` a device tensor). Their C++ is written
//! per rule beside the Rust rule and checked against it bit for bit on the CPU
//! (`tests_norms.rs`, `tests_scalars.rs`; `tests_pipeline.rs` runs a whole LAMB/LARS step of
//! the generated code on the host against the CPU driver).

#[cfg(test)]
mod cases;
pub mod compile;
pub mod emit;
pub mod kernel;
pub mod launch;
mod launch_capturable;
mod launch_norms;
pub mod norms;
pub mod scalars;
mod scalars_rules;
pub mod sym;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_host;
#[cfg(test)]
mod tests_norms;
#[cfg(test)]
mod tests_pipeline;
#[cfg(test)]
mod tests_scalars;
#[cfg(test)]
mod tests_scalars_lr;

use crate::rule::{Rule, MAX_NORMS};
pub use emit::Dtype;
use sym::{Sym, Trace};

/// Traces rule `R`'s element update for one step's scalars `s`, for tensors of `dtype` with
/// `n_state` state tensors.
///
/// # Errors
/// A message when the rule does something a trace cannot represent (reads a value back,
/// calls `partial_cmp`, has more than 256 paths).
pub fn trace_update<R: Rule>(
    s: &R::Scalars,
    n_state: usize,
    dtype: Dtype,
) -> Result<Trace, String> {
    sym::trace(n_state, dtype.f32_compute(), |p, g, st| {
        R::update::<Sym>(s, p, g, st)
    })
}

/// Traces rule `R`'s [`Rule::norm_terms`] (LAMB's and LARS's per-tensor norms): a graph with
/// `n_state + MAX_NORMS` state slots whose last two outputs are the terms to square and sum
/// (the first `n_state` pass through unchanged).
///
/// # Errors
/// As [`trace_update`].
pub fn trace_norm_terms<R: Rule>(
    s: &R::Scalars,
    n_state: usize,
    dtype: Dtype,
) -> Result<Trace, String> {
    sym::trace(n_state + MAX_NORMS, dtype.f32_compute(), |p, g, st| {
        let terms = R::norm_terms::<Sym>(s, p, g, &st[..n_state]);
        st[n_state..].copy_from_slice(&terms);
        p
    })
}

/// The kernel source and its scalar arguments for one step of `R` on `dtype` tensors.
#[derive(Clone, Debug)]
pub struct StepKernel {
    /// Full CUDA source (also the compile-cache key, with the architecture).
    pub source: String,
    /// The argument struct's shape.
    pub layout: kernel::Layout,
    /// The scalar slots' values for this step, in `f64` (exactly representable in the compute
    /// type).
    pub slots: Vec<f64>,
    /// For a rule with per-tensor norms: the source holds the three kernels of
    /// [`norms::norm_module`], and the norm-dependent slots of `slots` are placeholders.
    pub norms: Option<NormKernel>,
}

/// What the reduction and trust-ratio kernels of a rule with per-tensor norms take beside
/// the update's arguments.
#[derive(Clone, Debug, PartialEq)]
pub struct NormKernel {
    /// The constants of the trust-ratio code ([`norms::DeviceNorms::trust_constants`]).
    pub constants: Vec<f64>,
    /// The scalar slots of the traced [`Rule::norm_terms`] (the reduction kernel's `FoSlots`).
    pub term_slots: Vec<f64>,
    /// The reduction kernel's argument layout (the update's, with its own slot count).
    pub term_layout: kernel::Layout,
}

/// Generates [`StepKernel`] for rule `R`, this step's scalars `s`, `n_state` state tensors.
///
/// # Errors
/// As [`trace_update`].
pub fn step_kernel<R: Rule>(
    s: &R::Scalars,
    n_state: usize,
    dtype: Dtype,
) -> Result<StepKernel, String> {
    let trace = trace_update::<R>(s, n_state, dtype)?;
    let layout = kernel::Layout::new(n_state, trace.slots.len(), dtype);
    Ok(StepKernel {
        source: kernel::step_source(&trace, &layout),
        layout,
        slots: trace.slots,
        norms: None,
    })
}

/// [`StepKernel`] of rule `rule` with per-tensor norms (`R::norms(s) > 0`; `s` its scalars
/// for this step): the module of [`norms::norm_module`] (reduction, trust ratio, update).
///
/// # Errors
/// As [`trace_update`], or when no slot, or the graph itself, depends on the norms.
pub fn norm_step_kernel<R: norms::DeviceNorms>(
    rule: &R,
    s: &R::Scalars,
    n_state: usize,
    dtype: Dtype,
) -> Result<StepKernel, String> {
    let (update, dep) = norms::dependent_slots::<R>(rule, s, n_state, dtype)?;
    let terms = trace_norm_terms::<R>(s, n_state, dtype)?;
    // One tensor capacity for both kernels (so that they share one launch plan), the one
    // that fits the larger slot struct.
    let widest = kernel::Layout::new(n_state, update.slots.len().max(terms.slots.len()), dtype);
    let layout = kernel::Layout {
        slots: update.slots.len().max(1),
        ..widest
    };
    let term_layout = kernel::Layout {
        slots: terms.slots.len().max(1),
        ..widest
    };
    let constants = R::trust_constants(s);
    Ok(StepKernel {
        source: norms::norm_module(
            &update,
            &terms,
            &dep,
            R::TRUST_SOURCE,
            constants.len(),
            (&layout, &term_layout),
        ),
        layout,
        slots: update.slots,
        norms: Some(NormKernel {
            constants,
            term_slots: terms.slots,
            term_layout,
        }),
    })
}
