//! The generic driver: one fused, multi-threaded pass over every parameter of every group.

#[cfg(target_arch = "x86_64")]
mod avx512bf16;
pub(crate) mod fast;
mod kernel;
mod metadata;
mod norms;
mod validate;
pub(crate) mod version;

use crate::error::{Error, Result};
use crate::rule::{Rule, ScalarState, MAX_SCALAR_STATE, MAX_STATE};
use tch::{Device, Kind, Tensor};
pub(crate) use validate::Meta;
pub use validate::StepCache;
use validate::{Extent, ParamMeta, Who};

// Shared with `crate::quant` (8-bit state): the thread pool and the instruction-set choice.
pub(crate) use kernel::{chunk_elements, isa, parallel, Isa, Job, MIN_PARALLEL_ELEMENTS};

/// True if the fused loops run their AVX-512 variant (see `kernel::isa`).
pub(crate) fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        matches!(kernel::isa(), kernel::Isa::Avx512 | kernel::Isa::Avx512Bf16)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// One parameter and the tensors a step reads and writes for it.
///
/// All tensors are handles (e.g. [`Tensor::shallow_clone`]) to the caller's storage: the step
/// updates `param`, `state` and `step` in place.
#[derive(Debug)]
pub struct ParamTensors {
    /// The parameter θ; any shape, dtype float32/float64/bfloat16/float16, any device.
    pub param: Tensor,
    /// Its gradient: dense, same shape and device as `param`.
    pub grad: Tensor,
    /// The rule's state tensors, in the order of [`Rule::state_names`]: same shape and device as
    /// `param` (torch.optim creates them with `zeros_like(param)`).
    pub state: Vec<Tensor>,
    /// The rule's scalar state tensors, in the order of [`Rule::scalar_state_names`] (usually
    /// just `step`): one-element tensors of any real dtype and device (torch.optim: float32 0-d
    /// CPU tensors), updated in their own dtype.
    pub scalar_state: Vec<Tensor>,
    /// True when `state` was just created and holds no history (see [`Rule::scalars`]).
    pub fresh: bool,
}

/// A parameter group: one set of hyperparameters (the rule) and its parameters.
#[derive(Debug)]
pub struct Group<R> {
    /// The algorithm and its hyperparameters for this group.
    pub rule: R,
    /// The parameters that have a gradient this step.
    pub params: Vec<ParamTensors>,
}

/// Performs one optimizer step over all groups, in one parallel region.
///
/// Parameters whose tensors are all contiguous CPU tensors of the parameter's dtype are updated
/// in place by the fused kernel. Others — non-contiguous, another device (e.g. CUDA), or state
/// of another dtype — take the *staged* path: they are copied to contiguous CPU tensors of the
/// compute dtype (float64 if any of them is float64, else float32), updated by the same kernel,
/// and copied back. That path is slower but gives the same arithmetic.
///
/// The number of threads is libtorch's intra-op setting (`torch.get_num_threads()`); results do
/// not depend on it. Like torch's in-place ops, the step bumps the version counter of every
/// tensor it writes (parameters, state, and gradients when unscaling), so autograd notices it.
/// It runs its own ATen calls (staging, copying back) without recording them for autograd,
/// whatever the caller's grad mode.
///
/// # Errors
/// Every input is checked before anything is modified; on error no tensor has changed.
/// [`Error::Sparse`] for sparse tensors, [`Error::ShapeMismatch`] / [`Error::DeviceMismatch`] /
/// [`Error::UnsupportedDtype`] for tensors that do not match their parameter,
/// [`Error::StateMismatch`] for a wrong number of state tensors or an invalid scalar state
/// tensor, [`Error::Overlap`] if written tensors share memory with other tensors,
/// [`Error::InferenceTensor`] for an inference tensor to be written outside inference mode.
/// [`Error::Torch`] if libtorch fails: while staging copies (e.g. out of memory), before
/// anything is modified; while copying staged tensors back, after the update.
///
/// [`Error::Sparse`]: crate::Error::Sparse
/// [`Error::ShapeMismatch`]: crate::Error::ShapeMismatch
/// [`Error::DeviceMismatch`]: crate::Error::DeviceMismatch
/// [`Error::UnsupportedDtype`]: crate::Error::UnsupportedDtype
/// [`Error::StateMismatch`]: crate::Error::StateMismatch
/// [`Error::Overlap`]: crate::Error::Overlap
/// [`Error::InferenceTensor`]: crate::Error::InferenceTensor
/// [`Error::Torch`]: crate::Error::Torch
pub fn step<R: Rule>(groups: &mut [Group<R>]) -> Result<()> {
    step_groups(groups, None, &mut StepCache::default())
}

/// [`step`] with gradients scaled by `grad_scale` (mixed precision with a loss scaler, e.g.
/// `torch.amp.GradScaler`): each gradient element is divided by `grad_scale` (rounded to the
/// compute type, float32 for half and float32 tensors) inside the fused pass, the unscaled
/// gradient is written back to the gradient tensor, and the step uses it. This is what torch's
/// fused kernels do with their `grad_scale` argument. Skipping a step whose gradients are not
/// finite (`found_inf`) is the caller's decision: then call neither function.
///
/// # Errors
/// As [`step`]; also [`Error::InvalidArgument`] if `grad_scale` is not finite or is zero.
///
/// [`Error::InvalidArgument`]: crate::Error::InvalidArgument
pub fn step_unscaling<R: Rule>(groups: &mut [Group<R>], grad_scale: f64) -> Result<()> {
    step_groups(groups, Some(grad_scale), &mut StepCache::default())
}

/// [`step`] (or [`step_unscaling`]) with a [`StepCache`] kept by the caller (the stateful
/// optimizers): the overlap check is not redone for tensors that have not moved, and the
/// scratch buffers are reused.
pub(crate) fn step_groups<R: Rule>(
    groups: &[Group<R>],
    grad_scale: Option<f64>,
    cache: &mut StepCache,
) -> Result<()> {
    if let Some(scale) = grad_scale {
        check_grad_scale(scale)?;
    }
    run(&views(groups), grad_scale, cache)
}

/// Checks `groups` as [`step`] (with `grad_scale`: [`step_unscaling`]) would, modifying
/// nothing: for callers that must validate more than one call before the first one runs
/// (`quant::step_8bit_mixed`).
pub(crate) fn check_groups<R: Rule>(groups: &[Group<R>], grad_scale: Option<f64>) -> Result<()> {
    if let Some(scale) = grad_scale {
        check_grad_scale(scale)?;
    }
    let threads = tch::get_num_threads().max(1) as usize;
    let mut cache = StepCache::default();
    let mut metas = Vec::new();
    check(
        &views(groups),
        grad_scale.is_some(),
        threads,
        &mut metas,
        &mut cache,
    )
    .map(|_| ())
}

/// The groups as the driver reads them: rule and parameters.
fn views<R: Rule>(groups: &[Group<R>]) -> Vec<(&R, &[ParamTensors])> {
    groups.iter().map(|g| (&g.rule, &g.params[..])).collect()
}

/// A parameter and its state, kept by the caller across steps (a stateful optimizer, the Python
/// binding's cached plans). Its gradient is not stored here: [`step_params`] reads it from the
/// parameter (`param.grad()`, as autograd left it) at each step.
#[derive(Debug)]
pub struct ParamState {
    /// The parameter θ (as in [`ParamTensors`]); usually a leaf with `requires_grad`.
    pub param: Tensor,
    /// The rule's state tensors, in the order of [`Rule::state_names`] (as in [`ParamTensors`]).
    pub state: Vec<Tensor>,
    /// The rule's scalar state tensors, in the order of [`Rule::scalar_state_names`] (as in
    /// [`ParamTensors`]).
    pub scalar_state: Vec<Tensor>,
}

/// [`step`] (or, with `grad_scale`, [`step_unscaling`]) over parameters whose state already
/// exists, taking each gradient from the parameter itself (`param.grad()`, as autograd left
/// it): parameters without a gradient (undefined `grad`) are skipped. Each group is its rule
/// and its parameters.
///
/// This is the cheap way to step the same parameters again and again: nothing per parameter
/// is allocated or converted by the caller, only the gradients are looked up, and `cache`
/// (pass the same one at every step) spares re-checking that the parameters and state do not
/// share memory when they have not moved.
///
/// # Errors
/// As [`step_unscaling`] (or [`step`] when `grad_scale` is `None`); on error no tensor has
/// changed.
pub fn step_params<R: Rule>(
    groups: &[(R, &[ParamState])],
    grad_scale: Option<f64>,
    cache: &mut StepCache,
) -> Result<()> {
    let grads = groups
        .iter()
        .map(|(_, params)| read_grads(params.iter().map(|ps| &ps.param)))
        .collect::<Result<Vec<Vec<Tensor>>>>()?;
    let with: Vec<_> = groups
        .iter()
        .zip(&grads)
        .map(|((rule, params), grads)| (rule, &params[..], &grads[..]))
        .collect();
    step_with_grads(&with, grad_scale, cache)
}

/// [`step_params`] with the gradients given: `grads[i]` is the gradient of `params[i]`, and
/// parameters whose gradient is undefined ([`Tensor::defined`] false) are skipped. For callers
/// that must read the gradients themselves, e.g. under a lock.
///
/// # Errors
/// As [`step_params`]; also [`Error::StateMismatch`] if a group has not one gradient per
/// parameter.
///
/// [`Error::StateMismatch`]: crate::Error::StateMismatch
pub fn step_with_grads<R: Rule>(
    groups: &[(&R, &[ParamState], &[Tensor])],
    grad_scale: Option<f64>,
    cache: &mut StepCache,
) -> Result<()> {
    if let Some(scale) = grad_scale {
        check_grad_scale(scale)?;
    }
    let mut with_grads = Vec::with_capacity(groups.len());
    for (gi, (rule, params, grads)) in groups.iter().enumerate() {
        if grads.len() != params.len() {
            return Err(Error::StateMismatch {
                what: format!("gradients of group {gi}"),
                expected: format!("{} gradients", params.len()),
                got: grads.len().to_string(),
            });
        }
        let entries: Vec<WithGrad<'_>> = params
            .iter()
            .zip(grads.iter())
            .filter(|(_, grad)| grad.defined())
            .map(|(ps, grad)| WithGrad { ps, grad })
            .collect();
        with_grads.push((*rule, entries));
    }
    let views: Vec<(&R, &[WithGrad<'_>])> = with_grads.iter().map(|(r, e)| (*r, &e[..])).collect();
    run(&views, grad_scale, cache)
}

/// The gradients of `params` (`param.grad()`: undefined tensors where there is none), as
/// [`Tensor::f_grad`] gives them one at a time, but read in one batch whose memory accesses
/// overlap: for many parameters whose metadata is not in the cache (after the previous step
/// streamed the model through it) this is several times faster.
///
/// # Errors
/// [`Error::Torch`] if libtorch fails to read a gradient.
///
/// [`Error::Torch`]: crate::Error::Torch
pub fn read_grads<'a>(params: impl IntoIterator<Item = &'a Tensor>) -> Result<Vec<Tensor>> {
    let params: Vec<&Tensor> = params.into_iter().collect();
    match fast::grads(&params) {
        Some(grads) => Ok(grads),
        None => Ok(params
            .iter()
            .map(|p| p.f_grad())
            .collect::<std::result::Result<_, _>>()?),
    }
}

/// A loss scale must be finite and nonzero.
pub(crate) fn check_grad_scale(grad_scale: f64) -> Result<()> {
    if !grad_scale.is_finite() || grad_scale == 0.0 {
        return Err(Error::InvalidArgument {
            name: "grad_scale",
            value: grad_scale.to_string(),
        });
    }
    Ok(())
}

/// What the driver reads of one parameter, however the caller holds it.
pub(crate) trait Entry {
    fn param(&self) -> &Tensor;
    fn grad(&self) -> &Tensor;
    fn state(&self) -> &[Tensor];
    fn scalar_state(&self) -> &[Tensor];
    fn fresh(&self) -> bool;
}

impl Entry for ParamTensors {
    fn param(&self) -> &Tensor {
        &self.param
    }
    fn grad(&self) -> &Tensor {
        &self.grad
    }
    fn state(&self) -> &[Tensor] {
        &self.state
    }
    fn scalar_state(&self) -> &[Tensor] {
        &self.scalar_state
    }
    fn fresh(&self) -> bool {
        self.fresh
    }
}

/// A [`ParamState`] and the gradient read from its parameter for this step.
struct WithGrad<'a> {
    ps: &'a ParamState,
    grad: &'a Tensor,
}

impl Entry for WithGrad<'_> {
    fn param(&self) -> &Tensor {
        &self.ps.param
    }
    fn grad(&self) -> &Tensor {
        self.grad
    }
    fn state(&self) -> &[Tensor] {
        &self.ps.state
    }
    fn scalar_state(&self) -> &[Tensor] {
        &self.ps.scalar_state
    }
    fn fresh(&self) -> bool {
        false
    }
}

fn run<R: Rule, E: Entry>(
    groups: &[(&R, &[E])],
    grad_scale: Option<f64>,
    cache: &mut StepCache,
) -> Result<()> {
    let threads = tch::get_num_threads().max(1) as usize;
    // Scratch buffers kept by the cache: no allocation per step once they have grown.
    let mut metas = std::mem::take(&mut cache.metas);
    let mut bumps = std::mem::take(&mut cache.bumps);
    let result = check(groups, grad_scale.is_some(), threads, &mut metas, cache)
        .and_then(|split| update(groups, &metas, grad_scale, threads, split, &mut bumps));
    (cache.metas, cache.bumps) = (metas, bumps);
    result
}

/// The first half of [`run`]: validates every input into `metas` (one per parameter, in
/// order), then checks that no written tensor overlaps another. Returns the number of parts
/// the metadata reads were split into (see `metadata::check_all`).
fn check<R: Rule, E: Entry>(
    groups: &[(&R, &[E])],
    unscale: bool,
    threads: usize,
    metas: &mut Vec<ParamMeta>,
    cache: &mut StepCache,
) -> Result<usize> {
    let split = metadata::check_all(groups, unscale, threads, metas, &mut cache.fast)?;
    let (written, read) = (&mut cache.written, &mut cache.read);
    written.clear();
    read.clear();
    let mut metas = metas.iter();
    for (gi, (rule, params)) in groups.iter().enumerate() {
        for (pi, meta) in (0..params.len()).zip(&mut metas) {
            let at = |what| Who {
                what,
                group: gi,
                index: pi,
            };
            written.extend(Extent::of(&meta.param, at("")));
            let grads = if unscale { &mut *written } else { &mut *read };
            grads.extend(Extent::of(&meta.grad, at("grad")));
            for (m, name) in meta.state().iter().zip(rule.state_names()) {
                written.extend(Extent::of(m, at(name)));
            }
        }
    }
    cache.check_overlaps()?;
    Ok(split)
}

/// The second half of [`run`], once every input is validated (`metas`, in order, read in
/// `split` parts, which the version bumps follow).
fn update<R: Rule, E: Entry>(
    groups: &[(&R, &[E])],
    metas: &[ParamMeta],
    grad_scale: Option<f64>,
    threads: usize,
    split: usize,
    bumps: &mut Vec<usize>,
) -> Result<()> {
    let unscale = grad_scale.is_some();
    // Staging, copying back and filling scalar state are ATen ops on leaves that may require
    // grad: like any optimizer step they must not be recorded, whatever the caller's grad
    // mode (the Python classes only enter `no_grad` on their general path).
    let _no_grad = tch::no_grad_guard();

    // Stage what the kernel cannot update in place. Still nothing has been modified, so an
    // allocation failure here leaves every input untouched.
    // Only the (usually no) staged parameters, by index: no per-parameter slot to fill.
    let mut staged: Vec<(usize, Staged)> = Vec::new();
    let mut scalar_states = Vec::with_capacity(metas.len());
    let entries = || {
        groups
            .iter()
            .flat_map(|(rule, params)| params.iter().map(move |pt| (*rule, pt)))
    };
    for (i, ((_, pt), m)) in entries().zip(metas).enumerate() {
        if !m.is_direct() {
            staged.push((i, Staged::new(pt)?));
        }
        scalar_states.push(read_scalar_state(pt, m)?);
    }
    let staged_at = |i: usize| {
        staged
            .binary_search_by_key(&i, |(j, _)| *j)
            .ok()
            .map(|k| &staged[k].1)
    };

    // From here on, tensors are modified.
    let mut jobs = Vec::with_capacity(metas.len());
    bumps.clear();
    let slots = (0..metas.len())
        .map(staged_at)
        .zip(metas)
        .zip(scalar_states.iter_mut());
    // Consecutive parameters of a group usually share their scalar state's values (the same
    // `step`): `Rule::scalars` is pure, so its result (e.g. two `powf`s) is reused.
    let mut memo: Option<(&R, bool, [ScalarState; MAX_SCALAR_STATE], Memo<R>)> = None;
    for ((rule, pt), ((staged, meta), values)) in entries().zip(slots) {
        let n = pt.scalar_state().len();
        let (input, fresh) = (*values, pt.fresh());
        let scalars = match &memo {
            Some((r, f, inp, (out, s)))
                if std::ptr::eq(*r, rule) && *f == fresh && *inp == input =>
            {
                *values = *out;
                *s
            }
            _ => {
                let s = rule.scalars(&mut values[..n], fresh);
                memo = Some((rule, fresh, input, (*values, s)));
                s
            }
        };
        write_scalar_state(pt, meta, &values[..n])?;
        written_in_place(pt, meta, staged.is_none(), unscale, bumps);
        let m = staged.map_or(meta, |s| &s.meta);
        jobs.push(job(scalars, m, grad_scale));
    }
    // What the kernel writes in place (and the scalar state written above) gets its version
    // counter bumped, as torch's in-place ops do; staged copies are bumped by `copy_back`.
    version::bump_split(bumps, split)?;
    norms::reduce::<R>(&mut jobs, threads)?; // per-tensor norms (LAMB, LARS); else a no-op
    kernel::run::<R>(&jobs, threads)?;
    drop(jobs);

    let mut staged = staged.iter().peekable();
    for (i, (_, pt)) in entries().enumerate() {
        if let Some((_, s)) = staged.next_if(|(j, _)| *j == i) {
            s.copy_back(pt, unscale)?;
        }
    }
    Ok(())
}

/// Appends the addresses of the tensors of one parameter that the step writes through raw
/// pointers to `out` (for [`version::bump`]):
/// its scalar state tensors written directly (see `write_scalar_state`) and, unless it is
/// staged (`direct` false), the parameter, its state and (when unscaling) its gradient.
fn written_in_place(
    pt: &impl Entry,
    m: &ParamMeta,
    direct: bool,
    unscale: bool,
    out: &mut Vec<usize>,
) {
    let address = |t: &Tensor| t.as_ptr() as usize;
    for (t, meta) in pt.scalar_state().iter().zip(m.scalar_state) {
        if meta.is_some_and(is_raw_scalar) {
            out.push(address(t));
        }
    }
    if direct {
        out.push(address(pt.param()));
        out.extend(pt.state().iter().map(address));
        if unscale {
            out.push(address(pt.grad()));
        }
    }
}

/// True if a validated scalar state tensor is read and written through its address.
fn is_raw_scalar(m: Meta) -> bool {
    m.device == Device::Cpu && m.kind == Kind::Float
}

/// A rule's advanced scalar state and scalars, for reuse (see `run`).
type Memo<R> = ([ScalarState; MAX_SCALAR_STATE], <R as Rule>::Scalars);

fn job<S>(scalars: S, m: &ParamMeta, grad_scale: Option<f64>) -> Job<S> {
    let mut state = [std::ptr::null_mut(); MAX_STATE];
    for (ptr, s) in state.iter_mut().zip(m.state()) {
        *ptr = s.ptr as *mut u8;
    }
    Job {
        scalars,
        kind: m.param.kind,
        numel: m.param.numel,
        n_state: m.state().len(),
        param: m.param.ptr as *mut u8,
        grad: m.grad.ptr as *mut u8,
        grad_scale,
        state,
    }
}

/// Reads a parameter's scalar state tensors (validated one-element real tensors).
fn read_scalar_state(pt: &impl Entry, m: &ParamMeta) -> Result<[ScalarState; MAX_SCALAR_STATE]> {
    let mut values = [ScalarState::new(0.0, Kind::Double); MAX_SCALAR_STATE];
    for ((v, t), meta) in values
        .iter_mut()
        .zip(pt.scalar_state())
        .zip(&m.scalar_state)
    {
        *v = match meta.filter(|m| is_raw_scalar(*m)) {
            // SAFETY: validation found the tensor to be a dense one-element float32 CPU tensor
            // whose element is at `m.ptr`; the tensor is alive (borrowed by the caller).
            Some(m) => ScalarState::new(f64::from(unsafe { *(m.ptr as *const f32) }), m.kind),
            None => ScalarState::new(t.f_double_value(&[])?, t.kind()),
        };
    }
    Ok(values)
}

/// Writes the scalar state back, each in its own dtype.
fn write_scalar_state(pt: &impl Entry, m: &ParamMeta, values: &[ScalarState]) -> Result<()> {
    for ((t, meta), v) in pt.scalar_state().iter().zip(&m.scalar_state).zip(values) {
        match meta.filter(|m| is_raw_scalar(*m)) {
            // SAFETY: as in `read_scalar_state`; the element address is mutable (copy-on-write
            // materialised by validation) and no other tensor of this step overlaps it.
            Some(m) => unsafe { *(m.ptr as *mut f32) = v.get() as f32 },
            // A second handle to the same tensor: tch's in-place ops take `&mut`.
            None => {
                let _ = t.shallow_clone().f_fill_(v.get())?;
            }
        }
    }
    Ok(())
}

/// Contiguous CPU copies of a parameter's tensors in the compute dtype.
struct Staged {
    param: Tensor,
    /// Read by the kernel through `meta.grad.ptr` (and written when unscaling).
    grad: Tensor,
    state: Vec<Tensor>,
    /// Metadata of the staged (contiguous CPU) tensors, for the kernel.
    meta: ParamMeta,
}

impl Staged {
    fn new(pt: &impl Entry) -> Result<Staged> {
        let any_f64 = std::iter::once(pt.param())
            .chain(pt.state())
            .chain(std::iter::once(pt.grad()))
            .any(|t| t.kind() == Kind::Double);
        let kind = if any_f64 { Kind::Double } else { Kind::Float };
        let stage = |t: &Tensor| -> Result<Tensor> {
            Ok(t.f_to_device_(Device::Cpu, kind, false, false)?
                .f_contiguous()?)
        };
        let param = stage(pt.param())?;
        let grad = stage(pt.grad())?;
        let state: Vec<Tensor> = pt.state().iter().map(stage).collect::<Result<_>>()?;
        let meta = |t: &Tensor| Meta {
            kind,
            device: Device::Cpu,
            contiguous: true,
            ptr: t.data_ptr() as usize,
            numel: t.numel(),
            span: t.numel() * kind.elt_size_in_bytes(),
        };
        // Scalar state is never staged: see `read_scalar_state`.
        let meta = ParamMeta::staged(meta(&param), meta(&grad), state.iter().map(meta));
        Ok(Staged {
            param,
            grad,
            state,
            meta,
        })
    }

    fn copy_back(&self, pt: &impl Entry, grad: bool) -> Result<()> {
        let pairs = std::iter::once((pt.param(), &self.param))
            .chain(pt.state().iter().zip(&self.state))
            .chain(grad.then_some((pt.grad(), &self.grad)));
        for (dst, src) in pairs {
            if dst.data_ptr() != src.data_ptr() {
                // A second handle to the caller's tensor: tch's in-place ops take `&mut`.
                // `copy_` bumps its version counter.
                dst.shallow_clone().f_copy_(src)?;
            } else {
                // Staging kept this tensor: the kernel wrote it in place.
                version::bump(&[dst.as_ptr() as usize])?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_isa;
