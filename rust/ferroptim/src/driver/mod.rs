//! The generic driver: one fused, multi-threaded pass over every parameter of every group.

mod fast;
mod kernel;
mod norms;
mod validate;

use crate::error::{Error, Result};
use crate::rule::{Rule, ScalarState, MAX_SCALAR_STATE, MAX_STATE};
use kernel::Job;
use tch::{Device, Kind, Tensor};
use validate::{check_overlaps, check_param, Extent, Meta, ParamMeta, Who};

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
/// not depend on it.
///
/// # Errors
/// Every input is checked before anything is modified; on error no tensor has changed.
/// [`Error::Sparse`] for sparse tensors, [`Error::ShapeMismatch`] / [`Error::DeviceMismatch`] /
/// [`Error::UnsupportedDtype`] for tensors that do not match their parameter,
/// [`Error::StateMismatch`] for a wrong number of state tensors or an invalid scalar state
/// tensor, [`Error::Overlap`] if written tensors share memory with other tensors.
///
/// [`Error::Sparse`]: crate::Error::Sparse
/// [`Error::ShapeMismatch`]: crate::Error::ShapeMismatch
/// [`Error::DeviceMismatch`]: crate::Error::DeviceMismatch
/// [`Error::UnsupportedDtype`]: crate::Error::UnsupportedDtype
/// [`Error::StateMismatch`]: crate::Error::StateMismatch
/// [`Error::Overlap`]: crate::Error::Overlap
pub fn step<R: Rule>(groups: &mut [Group<R>]) -> Result<()> {
    run(groups, None)
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
    if !grad_scale.is_finite() || grad_scale == 0.0 {
        return Err(Error::InvalidArgument {
            name: "grad_scale",
            value: grad_scale.to_string(),
        });
    }
    run(groups, Some(grad_scale))
}

fn run<R: Rule>(groups: &mut [Group<R>], grad_scale: Option<f64>) -> Result<()> {
    let unscale = grad_scale.is_some();
    let mut metas = Vec::new();
    let mut extents = Vec::new();
    for (gi, group) in groups.iter().enumerate() {
        for (pi, pt) in group.params.iter().enumerate() {
            let meta = check_param(&group.rule, pt, gi, pi, unscale)?;
            let at = |what| Who {
                what,
                group: gi,
                index: pi,
            };
            extents.extend(Extent::of(&meta.param, true, at("")));
            extents.extend(Extent::of(&meta.grad, unscale, at("grad")));
            for (m, name) in meta.state.iter().zip(group.rule.state_names()) {
                extents.extend(Extent::of(m, true, at(name)));
            }
            metas.push(meta);
        }
    }
    check_overlaps(extents)?;

    // Stage what the kernel cannot update in place. Still nothing has been modified, so an
    // allocation failure here leaves every input untouched.
    let mut staged: Vec<Option<Staged>> = Vec::with_capacity(metas.len());
    let mut scalar_states = Vec::with_capacity(metas.len());
    let mut meta = metas.iter();
    for group in groups.iter() {
        for pt in &group.params {
            let Some(m) = meta.next() else { break };
            staged.push(if m.is_direct() {
                None
            } else {
                Some(Staged::new(pt)?)
            });
            scalar_states.push(read_scalar_state(pt, m)?);
        }
    }

    // From here on, tensors are modified.
    let mut jobs = Vec::with_capacity(staged.len());
    let mut slots = staged.iter().zip(&metas).zip(scalar_states.iter_mut());
    for group in groups.iter_mut() {
        for pt in group.params.iter_mut() {
            let Some(((staged, meta), values)) = slots.next() else {
                break;
            };
            let n = pt.scalar_state.len();
            let scalars = group.rule.scalars(&mut values[..n], pt.fresh);
            write_scalar_state(pt, meta, &values[..n])?;
            let m = staged.as_ref().map_or(meta, |s| &s.meta);
            jobs.push(job(scalars, m, grad_scale));
        }
    }
    let threads = tch::get_num_threads().max(1) as usize;
    norms::reduce::<R>(&mut jobs, threads)?; // per-tensor norms (LAMB, LARS); else a no-op
    kernel::run::<R>(&jobs, threads)?;
    drop(jobs);

    let mut slot = staged.iter();
    for group in groups.iter_mut() {
        for pt in group.params.iter_mut() {
            if let Some(Some(s)) = slot.next() {
                s.copy_back(pt, unscale)?;
            }
        }
    }
    Ok(())
}

fn job<S>(scalars: S, m: &ParamMeta, grad_scale: Option<f64>) -> Job<S> {
    let mut state = [std::ptr::null_mut(); MAX_STATE];
    for (ptr, s) in state.iter_mut().zip(&m.state) {
        *ptr = s.ptr as *mut u8;
    }
    Job {
        scalars,
        kind: m.param.kind,
        numel: m.param.numel,
        n_state: m.state.len(),
        param: m.param.ptr as *mut u8,
        grad: m.grad.ptr as *mut u8,
        grad_scale,
        state,
    }
}

/// Reads a parameter's scalar state tensors (validated one-element real tensors).
fn read_scalar_state(pt: &ParamTensors, m: &ParamMeta) -> Result<[ScalarState; MAX_SCALAR_STATE]> {
    let mut values = [ScalarState::new(0.0, Kind::Double); MAX_SCALAR_STATE];
    for ((v, t), meta) in values.iter_mut().zip(&pt.scalar_state).zip(&m.scalar_state) {
        *v = match meta.filter(|m| m.device == Device::Cpu && m.kind == Kind::Float) {
            // SAFETY: validation found the tensor to be a dense one-element float32 CPU tensor
            // whose element is at `m.ptr`; the tensor is alive (borrowed by the caller).
            Some(m) => ScalarState::new(f64::from(unsafe { *(m.ptr as *const f32) }), m.kind),
            None => ScalarState::new(t.f_double_value(&[])?, t.kind()),
        };
    }
    Ok(values)
}

/// Writes the scalar state back, each in its own dtype.
fn write_scalar_state(pt: &mut ParamTensors, m: &ParamMeta, values: &[ScalarState]) -> Result<()> {
    for ((t, meta), v) in pt.scalar_state.iter_mut().zip(&m.scalar_state).zip(values) {
        match meta.filter(|m| m.device == Device::Cpu && m.kind == Kind::Float) {
            // SAFETY: as in `read_scalar_state`; the element address is mutable (copy-on-write
            // materialised by validation) and no other tensor of this step overlaps it.
            Some(m) => unsafe { *(m.ptr as *mut f32) = v.get() as f32 },
            None => {
                let _ = t.f_fill_(v.get())?;
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
    fn new(pt: &ParamTensors) -> Result<Staged> {
        let any_f64 = std::iter::once(&pt.param)
            .chain(&pt.state)
            .chain(std::iter::once(&pt.grad))
            .any(|t| t.kind() == Kind::Double);
        let kind = if any_f64 { Kind::Double } else { Kind::Float };
        let stage = |t: &Tensor| -> Result<Tensor> {
            Ok(t.f_to_device_(Device::Cpu, kind, false, false)?
                .f_contiguous()?)
        };
        let param = stage(&pt.param)?;
        let grad = stage(&pt.grad)?;
        let state: Vec<Tensor> = pt.state.iter().map(stage).collect::<Result<_>>()?;
        let meta = |t: &Tensor| Meta {
            kind,
            device: Device::Cpu,
            contiguous: true,
            ptr: t.data_ptr() as usize,
            numel: t.numel(),
            span: t.numel() * kind.elt_size_in_bytes(),
        };
        let meta = ParamMeta {
            param: meta(&param),
            grad: meta(&grad),
            state: state.iter().map(meta).collect(),
            scalar_state: [None; MAX_SCALAR_STATE], // never staged: see `read_scalar_state`
        };
        Ok(Staged {
            param,
            grad,
            state,
            meta,
        })
    }

    fn copy_back(&self, pt: &mut ParamTensors, grad: bool) -> Result<()> {
        let pairs = std::iter::once((&mut pt.param, &self.param))
            .chain(pt.state.iter_mut().zip(&self.state))
            .chain(grad.then_some((&mut pt.grad, &self.grad)));
        for (dst, src) in pairs {
            if dst.data_ptr() != src.data_ptr() {
                dst.f_copy_(src)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
