//! [`step_8bit`]: validation, scalar state and jobs of a step over 8-bit state.

use super::checks;
use super::fast::{self, FastMeta};
use super::kernel::{self, QJob};
use super::{check_block_size, codec, num_blocks};
use crate::driver::{version, Group, Job, StepCache};
use crate::error::{Error, Result};
use crate::rule::{Rule, ScalarState, MAX_STATE};
use tch::{Kind, Tensor};

/// One parameter with 8-bit state: the tensors a step reads and writes (handles to the
/// caller's storage, updated in place).
#[derive(Debug)]
pub struct QuantParam {
    /// The parameter θ: a dense CPU tensor of dtype float32/float64/bfloat16/float16.
    pub param: Tensor,
    /// Its gradient: same shape; converted to the parameter's dtype if it differs.
    pub grad: Tensor,
    /// Per state tensor of the rule ([`Rule::state_names`] order): the codes, a contiguous
    /// `uint8` CPU tensor with one element per element of `param`.
    pub codes: Vec<Tensor>,
    /// Per state tensor: the block scales (absmax), a contiguous `float32` CPU tensor of
    /// `numel.div_ceil(block_size)` elements.
    pub absmax: Vec<Tensor>,
    /// Instead of `codes` and `absmax` (both empty): the state tensors themselves, contiguous
    /// CPU tensors shaped like `param` and of its dtype, which must then be bfloat16 (small
    /// tensors of a group with [`QuantGroup::bf16_stochastic_round`]).
    pub state: Vec<Tensor>,
    /// The rule's scalar state tensors ([`Rule::scalar_state_names`] order), as in
    /// [`crate::ParamTensors`].
    pub scalar_state: Vec<Tensor>,
    /// True when the state was just created and holds no history (see [`Rule::scalars`]).
    pub fresh: bool,
}

/// A parameter group with 8-bit state: the rule, the block size of its state and its
/// parameters.
#[derive(Debug)]
pub struct QuantGroup<R> {
    /// The algorithm and its hyperparameters.
    pub rule: R,
    /// Elements per block of the state (a power of two, 16 to 65536; default 256).
    pub block_size: usize,
    /// The parameters that have a gradient this step.
    pub params: Vec<QuantParam>,
    /// A seed for rounding bfloat16 parameters stochastically (see [`super::philox`]); `None`
    /// rounds to nearest. Element `i` of the `j`-th parameter of the call (counted through
    /// the groups) is rounded with Philox word `i % 4` of counter `(i / 4, j)` keyed by the
    /// seed's two 32-bit halves: draw a new seed for every step.
    pub bf16_stochastic_round: Option<u64>,
}

/// One optimizer step over parameters with 8-bit block-wise state (see the [module
/// documentation](super)); with `grad_scale`, gradients are divided by it in the pass and
/// written back (as [`crate::step_unscaling`]).
///
/// # Errors
/// Every input is checked before anything is modified; on error no tensor has changed.
/// [`Error::InvalidArgument`] for a bad `block_size` or `grad_scale`, or a rule that reduces
/// over whole tensors (LAMB, LARS: not supported with 8-bit state);
/// [`Error::StateMismatch`] for missing or malformed codes/absmax/scalar state;
/// [`Error::ShapeMismatch`], [`Error::DeviceMismatch`] (parameters must be on the CPU),
/// [`Error::UnsupportedDtype`], [`Error::Sparse`], [`Error::Overlap`],
/// [`Error::InferenceTensor`] as for [`crate::step`].
pub fn step_8bit<R: Rule>(groups: &[QuantGroup<R>], grad_scale: Option<f64>) -> Result<()> {
    step_8bit_mixed(groups, &[], grad_scale)
}

/// [`step_8bit`] over `groups` and, in the same call, [`crate::step`] (with `grad_scale`:
/// [`crate::step_unscaling`]) of the same rule over `fp32`: the parameters of an 8-bit
/// optimizer that keep full-precision state (tensors below the small-tensor size, or not on
/// the CPU). Both sets are validated before either is modified, so an invalid tensor in one
/// leaves the other untouched too.
///
/// The two sets must not share tensors (an optimizer holds each parameter once): overlaps
/// are checked within each set.
///
/// # Errors
/// As [`step_8bit`] and [`crate::step`]; on error no tensor has changed, except after a
/// libtorch failure (e.g. out of memory) while the fp32 set is staged or copied back, which
/// comes after the 8-bit set was updated.
pub fn step_8bit_mixed<R: Rule>(
    groups: &[QuantGroup<R>],
    fp32: &[Group<R>],
    grad_scale: Option<f64>,
) -> Result<()> {
    if let Some(scale) = grad_scale {
        crate::driver::check_grad_scale(scale)?;
    }
    let _no_grad = tch::no_grad_guard();
    let prepared = prepare(groups, grad_scale)?;
    if !fp32.is_empty() {
        crate::driver::check_groups(fp32, grad_scale)?;
    }
    // From here on, tensors are modified.
    execute(groups, &prepared, grad_scale)?;
    if !fp32.is_empty() {
        crate::driver::step_groups(fp32, grad_scale, &mut StepCache::default())?;
    }
    Ok(())
}

/// Validates every parameter of `groups` and computes its scalars; modifies nothing.
fn prepare<R: Rule>(
    groups: &[QuantGroup<R>],
    grad_scale: Option<f64>,
) -> Result<Vec<Vec<Prepared<R::Scalars>>>> {
    let mut prepared = Vec::with_capacity(groups.len());
    let mut extents: Vec<Extent> = Vec::new();
    for (gi, g) in groups.iter().enumerate() {
        check_block_size(g.block_size)?;
        let mut ps = Vec::with_capacity(g.params.len());
        for (pi, qp) in g.params.iter().enumerate() {
            let p = Prepared::new(&g.rule, qp, g.block_size, gi, pi, grad_scale.is_some())?;
            p.extents(qp, gi, pi, grad_scale.is_some(), &mut extents);
            ps.push(p);
        }
        prepared.push(ps);
    }
    check_overlaps(&mut extents)?;
    Ok(prepared)
}

/// Runs the validated step: scalar state, version bumps, the fused kernel, copies back.
fn execute<R: Rule>(
    groups: &[QuantGroup<R>],
    prepared: &[Vec<Prepared<R::Scalars>>],
    grad_scale: Option<f64>,
) -> Result<()> {
    let threads = tch::get_num_threads().max(1) as usize;
    let mut param_id = 0usize;
    for (g, ps) in groups.iter().zip(prepared) {
        let mut jobs = Vec::with_capacity(ps.len());
        let mut bumps = Vec::new();
        let mut first_block = 0;
        let key = g
            .bf16_stochastic_round
            .map(|seed| [seed as u32, (seed >> 32) as u32]);
        for (qp, p) in g.params.iter().zip(ps) {
            let id = param_id as u32;
            param_id += 1;
            match &p.fast {
                Some(f) => {
                    for (&ptr, v) in f.scalar.iter().zip(&p.scalar_values) {
                        // SAFETY: `fast::check` found a live dense one-element float32 CPU
                        // tensor (`qp`, held by the caller) with its element at `ptr`, not
                        // copy-on-write; no other tensor of this step overlaps a one-element
                        // scalar state the optimizer owns, and this thread alone writes it.
                        unsafe { *(ptr as *mut f32) = v.get() as f32 };
                    }
                    // `fill_` would bump their version counters: so does the step.
                    bumps.extend(qp.scalar_state.iter().map(|t| t.as_ptr() as usize));
                }
                None => {
                    for (t, v) in qp.scalar_state.iter().zip(&p.scalar_values) {
                        let _ = t.shallow_clone().f_fill_(v.get())?;
                    }
                }
            }
            let mut job = p.job(qp, grad_scale, first_block, g.rule.state_names());
            if job.base.kind == Kind::BFloat16 {
                job.sr = key.map(|k| (k, id));
            }
            first_block += num_blocks(job.base.numel, g.block_size);
            bumps.extend(
                std::iter::once(&qp.param)
                    .chain(&qp.codes)
                    .chain(&qp.absmax)
                    .chain(&qp.state)
                    .chain(grad_scale.map(|_| &qp.grad))
                    .map(|t| t.as_ptr() as usize),
            );
            jobs.push(job);
        }

        version::bump(&bumps)?;
        kernel::run::<R>(&jobs, g.block_size, threads)?;
        drop(jobs);
        for (qp, p) in g.params.iter().zip(ps) {
            p.copy_back(qp, grad_scale.is_some())?;
        }
    }
    Ok(())
}

/// One validated parameter: its scalars, the contiguous copies it needed (if any) and the
/// advanced scalar state.
struct Prepared<S> {
    scalars: S,
    scalar_values: Vec<ScalarState>,
    /// A contiguous copy of the parameter (written back after the step), if it was not.
    param: Option<Tensor>,
    /// A contiguous copy of the gradient in the parameter's dtype, if it was not.
    grad: Option<Tensor>,
    /// The metadata read by [`fast::check`], when it accepted the parameter (then there are
    /// no copies, and the scalar state is `float32` and written through its address).
    fast: Option<FastMeta>,
}

impl<S: Copy> Prepared<S> {
    fn new<R: Rule<Scalars = S>>(
        rule: &R,
        qp: &QuantParam,
        block_size: usize,
        gi: usize,
        pi: usize,
        unscale: bool,
    ) -> Result<Self> {
        let at = |what: &str| {
            if what.is_empty() {
                format!("params[{pi}] in group {gi}")
            } else {
                format!("{what} of params[{pi}] in group {gi}")
            }
        };
        let names = rule.state_names();
        let scalar_names = rule.scalar_state_names();
        let plain = !names.is_empty() && qp.codes.is_empty() && qp.absmax.is_empty();
        let (n_codes, n_plain) = if plain {
            (0, names.len())
        } else {
            (names.len(), 0)
        };
        if qp.codes.len() != n_codes
            || qp.absmax.len() != n_codes
            || qp.state.len() != n_plain
            || names.len() > MAX_STATE
        {
            return Err(Error::StateMismatch {
                what: at(""),
                expected: format!(
                    "codes and absmax of {} state tensors {names:?}",
                    names.len()
                ),
                got: format!(
                    "{} codes, {} absmax, {} state tensors",
                    qp.codes.len(),
                    qp.absmax.len(),
                    qp.state.len()
                ),
            });
        }
        if qp.scalar_state.len() != scalar_names.len() {
            return Err(Error::StateMismatch {
                what: at(""),
                expected: format!(
                    "{} scalar state tensors {scalar_names:?}",
                    scalar_names.len()
                ),
                got: format!("{} scalar state tensors", qp.scalar_state.len()),
            });
        }
        let (fast, mut scalar_values) =
            match fast::check(qp, names.len(), scalar_names.len(), block_size, unscale) {
                Some((m, values)) => (Some(m), values),
                None => (
                    None,
                    checks::slow_checks(qp, names, scalar_names, block_size, unscale, &at)?,
                ),
            };
        let scalars = rule.scalars(&mut scalar_values, qp.fresh);
        if R::norms(&scalars) > 0 {
            return Err(Error::InvalidArgument {
                name: "rule",
                value: "a rule with per-tensor norms (LAMB, LARS): not supported with 8-bit state"
                    .into(),
            });
        }
        if fast.is_some() {
            return Ok(Prepared {
                scalars,
                scalar_values,
                param: None,
                grad: None,
                fast,
            });
        }
        // Contiguous copies (rare: torch's parameters and gradients are contiguous).
        let (p, g) = (&qp.param, &qp.grad);
        let param = (!p.is_contiguous()).then(|| p.f_contiguous()).transpose()?;
        let grad = if g.is_contiguous() && g.kind() == p.kind() {
            None
        } else {
            Some(g.f_to_kind(p.kind())?.f_contiguous()?)
        };
        Ok(Prepared {
            scalars,
            scalar_values,
            param,
            grad,
            fast: None,
        })
    }

    /// Appends `(start, end, written, label)` of the tensors the step touches in place.
    fn extents(&self, qp: &QuantParam, gi: usize, pi: usize, unscale: bool, out: &mut Vec<Extent>) {
        let mut add = |span: (usize, usize), written: bool, what: &'static str| {
            if span.1 > 0 {
                out.push((span.0, span.0 + span.1, written, (what, gi, pi)));
            }
        };
        if let Some(f) = &self.fast {
            let span = |m: &crate::driver::Meta| (m.ptr, m.span);
            add(span(&f.param), true, "");
            add(span(&f.grad), unscale, "grad of ");
            let quantized = qp.state.is_empty();
            for (c, a) in f.codes.iter().zip(&f.absmax) {
                if let Some(c) = c {
                    add(
                        span(c),
                        true,
                        if quantized { "codes of " } else { "state of " },
                    );
                }
                if let Some(a) = a {
                    add(span(a), true, "absmax of ");
                }
            }
            return;
        }
        let span = |t: &Tensor| {
            (
                t.data_ptr() as usize,
                t.numel() * t.kind().elt_size_in_bytes(),
            )
        };
        let p = self.param.as_ref().unwrap_or(&qp.param);
        add(span(p), true, "");
        let g = self.grad.as_ref().unwrap_or(&qp.grad);
        add(span(g), unscale, "grad of ");
        for (c, a) in qp.codes.iter().zip(&qp.absmax) {
            add(span(c), true, "codes of ");
            add(span(a), true, "absmax of ");
        }
        for t in &qp.state {
            add(span(t), true, "state of ");
        }
    }

    /// The kernel's job for this parameter: addresses from the metadata [`fast::check`] read,
    /// else from the tensors (or their contiguous copies).
    fn job(
        &self,
        qp: &QuantParam,
        grad_scale: Option<f64>,
        first_block: usize,
        names: &[&str],
    ) -> QJob<S> {
        let n = names.len();
        let quantized = qp.state.is_empty();
        let addr = |t: &Tensor| t.data_ptr() as usize;
        // Per state tensor: the codes (or the unquantized state) and the absmax.
        let (kind, numel, param, grad, first, second): (
            _,
            _,
            _,
            _,
            [usize; MAX_STATE],
            [usize; MAX_STATE],
        ) = match &self.fast {
            Some(f) => {
                let ptr = |m: &Option<crate::driver::Meta>| m.map_or(0, |m| m.ptr);
                let (param, grad) = (f.param, f.grad);
                (
                    param.kind,
                    param.numel,
                    param.ptr,
                    grad.ptr,
                    std::array::from_fn(|k| ptr(&f.codes[k])),
                    std::array::from_fn(|k| ptr(&f.absmax[k])),
                )
            }
            None => {
                let p = self.param.as_ref().unwrap_or(&qp.param);
                let g = self.grad.as_ref().unwrap_or(&qp.grad);
                let at = |ts: &[Tensor], k: usize| ts.get(k).filter(|_| k < n).map_or(0, addr);
                let first = if quantized { &qp.codes } else { &qp.state };
                (
                    p.kind(),
                    p.numel(),
                    addr(p),
                    addr(g),
                    std::array::from_fn(|k| at(first, k)),
                    std::array::from_fn(|k| at(&qp.absmax, k)),
                )
            }
        };
        let mut codes = [std::ptr::null_mut(); MAX_STATE];
        let mut absmax = [std::ptr::null_mut(); MAX_STATE];
        let mut codecs = [codec::signed(); MAX_STATE];
        let mut plain = [std::ptr::null_mut(); MAX_STATE];
        for k in 0..n {
            if quantized {
                codes[k] = first[k] as *mut u8;
                absmax[k] = second[k] as *mut f32;
            } else {
                plain[k] = first[k] as *mut u8;
            }
            codecs[k] = codec::for_state(names[k]);
        }
        QJob {
            base: Job {
                scalars: self.scalars,
                kind,
                numel,
                n_state: n,
                param: param as *mut u8,
                grad: grad as *mut u8,
                grad_scale,
                state: plain,
            },
            codes,
            absmax,
            codecs,
            quantized,
            sr: None,
            first_block,
        }
    }

    /// Writes the contiguous copies back to the caller's tensors.
    fn copy_back(&self, qp: &QuantParam, unscale: bool) -> Result<()> {
        if let Some(p) = &self.param {
            qp.param.shallow_clone().f_copy_(p)?;
        }
        if let (Some(g), true) = (&self.grad, unscale) {
            qp.grad.shallow_clone().f_copy_(g)?;
        }
        Ok(())
    }
}

/// A byte range `[start, end)` the step reads (or writes, when the flag is set), and which
/// tensor it is: `(prefix, group, index)`, formatted only for an error (see [`label`]).
type Extent = (usize, usize, bool, (&'static str, usize, usize));

/// `codes of params[3] in group 1`.
fn label((what, gi, pi): (&'static str, usize, usize)) -> String {
    format!("{what}params[{pi}] in group {gi}")
}

/// Fails if a written byte range overlaps another range (read ranges may share memory).
fn check_overlaps(extents: &mut [Extent]) -> Result<()> {
    extents.sort_unstable_by_key(|e| e.0);
    // Sweep: the written extent reaching furthest so far, and the furthest of any extent.
    let mut last_any: Option<usize> = None;
    let mut last_written: Option<usize> = None;
    for i in 0..extents.len() {
        let (start, _, written, _) = &extents[i];
        let clash = if *written { last_any } else { last_written };
        if let Some(j) = clash.filter(|&j| extents[j].1 > *start) {
            return Err(Error::Overlap {
                first: label(extents[j].3),
                second: label(extents[i].3),
            });
        }
        if last_any.is_none_or(|j| extents[i].1 > extents[j].1) {
            last_any = Some(i);
        }
        if *written && last_written.is_none_or(|j| extents[i].1 > extents[j].1) {
            last_written = Some(i);
        }
    }
    Ok(())
}
