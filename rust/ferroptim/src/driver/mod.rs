//! The generic driver: one fused, multi-threaded pass over every parameter of every group.

mod fast;
mod kernel;
mod validate;

use crate::error::Result;
use crate::rule::{Rule, MAX_STATE};
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
    /// The step counter, a one-element tensor (torch.optim: a float32 0-d CPU tensor), for rules
    /// whose [`Rule::uses_step`] is true; incremented by one in its own dtype.
    pub step: Option<Tensor>,
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
/// [`Error::StateMismatch`] for a wrong number of state tensors or a missing/invalid `step`,
/// [`Error::Overlap`] if written tensors share memory with other tensors.
pub fn step<R: Rule>(groups: &mut [Group<R>]) -> Result<()> {
    let mut metas = Vec::new();
    let mut extents = Vec::new();
    for (gi, group) in groups.iter().enumerate() {
        for (pi, pt) in group.params.iter().enumerate() {
            let meta = check_param(&group.rule, pt, gi, pi)?;
            let at = |what| Who {
                what,
                group: gi,
                index: pi,
            };
            extents.extend(Extent::of(&meta.param, true, at("")));
            extents.extend(Extent::of(&meta.grad, false, at("grad")));
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
    let mut meta = metas.iter();
    for group in groups.iter() {
        for pt in &group.params {
            let direct = meta.next().is_some_and(ParamMeta::is_direct);
            staged.push(if direct { None } else { Some(Staged::new(pt)?) });
        }
    }

    // From here on, tensors are modified.
    let mut jobs = Vec::with_capacity(staged.len());
    let mut slots = staged.iter().zip(&metas);
    for group in groups.iter_mut() {
        for pt in group.params.iter_mut() {
            let Some((staged, meta)) = slots.next() else {
                break;
            };
            let step = match (&mut pt.step, group.rule.uses_step()) {
                (Some(t), true) => increment(t, meta.step)?,
                _ => 0.0,
            };
            let scalars = group.rule.scalars(step, pt.fresh);
            jobs.push(match staged {
                Some(s) => job(scalars, &s.meta),
                None => job(scalars, meta),
            });
        }
    }
    kernel::run::<R>(&jobs, tch::get_num_threads().max(1) as usize)?;
    drop(jobs);

    let mut slot = staged.iter();
    for group in groups.iter_mut() {
        for pt in group.params.iter_mut() {
            if let Some(Some(s)) = slot.next() {
                s.copy_back(pt)?;
            }
        }
    }
    Ok(())
}

fn job<S>(scalars: S, m: &ParamMeta) -> Job<S> {
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
        grad: m.grad.ptr as *const u8,
        state,
    }
}

/// `step += 1` in the counter's own dtype (as torch's `step_t += 1`); returns the new value.
fn increment(step: &mut Tensor, meta: Option<Meta>) -> Result<f64> {
    if let Some(m) = meta.filter(|m| m.device == Device::Cpu && m.kind == Kind::Float) {
        let ptr = m.ptr as *mut f32;
        // SAFETY: validation found `step` to be a dense one-element float32 CPU tensor and
        // `m.ptr` is its element's (mutable, copy-on-write materialised) address; the tensor is
        // alive (borrowed by the caller) and no other tensor of this step overlaps it.
        unsafe {
            *ptr += 1.0;
            return Ok(f64::from(*ptr));
        }
    }
    let _ = step.f_add_scalar_(1.0)?;
    Ok(step.f_double_value(&[])?)
}

/// Contiguous CPU copies of a parameter's tensors in the compute dtype.
struct Staged {
    param: Tensor,
    /// Kept alive for the kernel, which reads it through `meta.grad.ptr`.
    _grad: Tensor,
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
            step: None, // counters are never staged: see `increment`
        };
        Ok(Staged {
            param,
            _grad: grad,
            state,
            meta,
        })
    }

    fn copy_back(&self, pt: &mut ParamTensors) -> Result<()> {
        let pairs = std::iter::once((&mut pt.param, &self.param))
            .chain(pt.state.iter_mut().zip(&self.state));
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
