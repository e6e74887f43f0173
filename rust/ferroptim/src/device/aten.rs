//! The ATen device path: one optimizer step over tensors on any device, through ATen's
//! multi-tensor kernels, with torch.optim's numbers bit for bit.
//!
//! Each group's parameters are split into buckets by (device, dtype) in order of first
//! appearance, as torch's `Optimizer._group_tensors_by_device_and_dtype` does, and each bucket
//! is handed to `csrc/aten_step.cpp` in one call, which runs, with the same arguments and in
//! the same order as torch 2.11:
//!
//! | rule | composition | torch implementation matched |
//! |---|---|---|
//! | [`Sgd`] | `at::_fused_sgd_` (any device) | `SGD(fused=True)` |
//! | [`Adam`] | `at::_fused_adam_` / `_fused_adamw_` (any device) | `Adam`/`AdamW(fused=True)` |
//! | [`Adagrad`] | `at::_fused_adagrad_` on the CPU, `_foreach_*` elsewhere | `Adagrad(fused=True)` / `(foreach=True)` |
//! | [`Adamax`], [`RMSprop`], [`Rprop`], [`Adadelta`], [`NAdam`], [`RAdam`], [`Asgd`] | `_foreach_*` | `<class>(foreach=True)` |
//! | [`Lion`], [`Adopt`], [`Adan`], [`AdEMAMix`], [`ScheduleFreeAdamW`], [`Lamb`], [`Lars`] | `_foreach_*` (`_foreach_norm` in float64 for LAMB's and LARS's per-tensor norms) | none: ferroptim's CPU rule, to rounding |
//!
//! `fused=True` kernels take `grad_scale` / `found_inf` (torch.amp.GradScaler's hand-over) as
//! tensors and skip the update on the device when `found_inf` is nonzero; step counters are
//! advanced with `_foreach_add_` and moved back with `_foreach_sub_(steps, found_inf)`, so no
//! device value is read on the host. torch's foreach implementations take no hand-over
//! (GradScaler unscales and skips for them): passing one to a foreach rule is an error.
//! Their per-tensor scalars (bias corrections, Adagrad's decayed `lr`) come from the step
//! counters, which torch keeps on the CPU (`capturable=False`) and reads on the host; so must
//! the caller — except ASGD's (`step`, `eta`, `mu`), which torch keeps on the parameter's
//! device and computes `eta` from with tensor operations. Capturable foreach compositions are
//! not implemented.
//!
//! torch has no implementation of the other rules to match: their compositions
//! (`csrc/aten_foreach_beyond.cpp`) are the CPU rule's arithmetic (`crate::rules`, which
//! follows each algorithm's reference implementation) as one `_foreach_*` pass per operation,
//! equal to the CPU rule to rounding (it fuses multiply-adds that they round twice); float16
//! and bfloat16 buckets are computed on float32 copies and rounded once when stored, as the
//! CPU rule computes them.

use crate::driver::version::inplace_allowed;
use crate::error::{Error, Result};
use crate::rules::{
    AdEMAMix, Adadelta, Adagrad, Adam, Adamax, Adan, Adopt, Asgd, Lamb, Lars, Lion, NAdam, RAdam,
    RMSprop, Rprop, ScheduleFreeAdamW, Sgd, LAMB_MAX_WEIGHT_NORM,
};
use crate::{ParamTensors, Rule};
use std::ffi::{c_char, c_void, CStr};
use tch::{Device, Kind, TchError, Tensor};

extern "C" {
    fn ferroptim_aten_step(
        algo: i32,
        tensors: *const *const c_void,
        n: i64,
        n_lists: i32,
        hyper: *const f64,
        n_hyper: i32,
        flags: u32,
        lr: *const c_void,
        grad_scale: *const c_void,
        found_inf: *const c_void,
        err: *mut c_char,
        cap: usize,
    ) -> i32;
}

/// `kFirst` in `csrc/aten_step.h`: the bucket's state was just created (SGD's first step).
const FIRST: u32 = 1 << 31;

/// How one bucket is computed: the `Algo` number of `csrc/aten_step.h`, the rule's
/// hyperparameters in that composition's order, and its flag bits.
#[derive(Clone, Debug)]
pub struct Spec {
    algo: i32,
    fused: bool,
    /// Scalar state on the parameter's device (fused kernels off the CPU, and ASGD's foreach
    /// composition, as torch places them), else on the CPU.
    scalar_on_device: bool,
    hyper: Vec<f64>,
    flags: u32,
}

/// A rule that the ATen device path can run. Implemented for the rules in the module table;
/// sealed.
pub trait AtenRule: Rule + sealed::Sealed {
    /// The composition for tensors on `device`: ATen's fused kernel if it has one there
    /// (unless `prefer_foreach` and a foreach composition exists), else torch's foreach one.
    fn spec(&self, device: Device, prefer_foreach: bool) -> Spec;
}

mod sealed {
    pub trait Sealed {}
}

fn flag(on: bool, bit: u32) -> u32 {
    if on {
        1 << bit
    } else {
        0
    }
}

macro_rules! aten_rule {
    ($rule:ident, |$r:ident, $device:ident, $foreach:ident| $body:expr) => {
        impl sealed::Sealed for $rule {}
        impl AtenRule for $rule {
            fn spec(&self, $device: Device, $foreach: bool) -> Spec {
                let $r = self;
                $body
            }
        }
    };
}

fn fused(algo: i32, hyper: Vec<f64>, flags: u32) -> Spec {
    Spec {
        algo,
        fused: true,
        scalar_on_device: true,
        hyper,
        flags,
    }
}

fn foreach(algo: i32, hyper: Vec<f64>, flags: u32) -> Spec {
    Spec {
        algo,
        fused: false,
        scalar_on_device: false,
        hyper,
        flags,
    }
}

aten_rule!(Sgd, |r, _device, _foreach| fused(
    0,
    vec![r.lr, r.momentum, r.dampening, r.weight_decay],
    flag(r.nesterov, 0) | flag(r.maximize, 1)
));
aten_rule!(Adam, |r, _device, _foreach| fused(
    1,
    vec![r.lr, r.beta1, r.beta2, r.eps, r.weight_decay],
    flag(r.amsgrad, 0) | flag(r.maximize, 1) | flag(r.decoupled_weight_decay, 2)
));
aten_rule!(Adagrad, |r, device, prefer_foreach| {
    let hyper = vec![r.lr, r.lr_decay, r.weight_decay, r.eps];
    // torch has a fused Adagrad kernel for the CPU only.
    if device == Device::Cpu && !prefer_foreach {
        fused(2, hyper, flag(r.maximize, 0))
    } else {
        foreach(3, hyper, flag(r.maximize, 0))
    }
});
aten_rule!(Adamax, |r, _device, _foreach| foreach(
    4,
    vec![r.lr, r.beta1, r.beta2, r.eps, r.weight_decay],
    flag(r.maximize, 0)
));
aten_rule!(RMSprop, |r, _device, _foreach| foreach(
    5,
    vec![r.lr, r.alpha, r.eps, r.weight_decay, r.momentum],
    flag(r.centered, 0) | flag(r.maximize, 1)
));
aten_rule!(Rprop, |r, _device, _foreach| foreach(
    6,
    vec![
        r.lr,
        r.etaminus,
        r.etaplus,
        r.step_size_min,
        r.step_size_max
    ],
    flag(r.maximize, 0)
));
aten_rule!(Adadelta, |r, _device, _foreach| foreach(
    7,
    vec![r.lr, r.rho, r.eps, r.weight_decay],
    flag(r.maximize, 0)
));
aten_rule!(NAdam, |r, _device, _foreach| foreach(
    8,
    vec![
        r.lr,
        r.beta1,
        r.beta2,
        r.eps,
        r.weight_decay,
        r.momentum_decay
    ],
    flag(r.decoupled_weight_decay, 0) | flag(r.maximize, 1)
));
aten_rule!(RAdam, |r, _device, _foreach| foreach(
    9,
    vec![r.lr, r.beta1, r.beta2, r.eps, r.weight_decay],
    flag(r.decoupled_weight_decay, 0) | flag(r.maximize, 1)
));
aten_rule!(Asgd, |r, _device, _foreach| Spec {
    scalar_on_device: true,
    ..foreach(
        10,
        vec![r.lr, r.lambd, r.alpha, r.t0, r.weight_decay],
        flag(r.maximize, 0),
    )
});
aten_rule!(Lion, |r, _device, _foreach| foreach(
    11,
    vec![r.lr, r.beta1, r.beta2, r.weight_decay],
    flag(r.maximize, 0)
));
aten_rule!(Adopt, |r, _device, _foreach| foreach(
    12,
    vec![
        r.lr,
        r.beta1,
        r.beta2,
        r.eps,
        r.weight_decay,
        r.clip_exponent.unwrap_or(0.0)
    ],
    flag(r.clip_exponent.is_some(), 0) | flag(r.decouple, 1) | flag(r.maximize, 2)
));
aten_rule!(Adan, |r, _device, _foreach| foreach(
    13,
    vec![r.lr, r.beta1, r.beta2, r.beta3, r.eps, r.weight_decay],
    flag(r.no_prox, 0) | flag(r.maximize, 1)
));
aten_rule!(AdEMAMix, |r, _device, _foreach| foreach(
    14,
    vec![
        r.lr,
        r.beta1,
        r.beta2,
        r.beta3,
        r.alpha,
        r.beta3_warmup.unwrap_or(0.0),
        r.alpha_warmup.unwrap_or(0.0),
        r.eps,
        r.weight_decay,
    ],
    flag(r.beta3_warmup.is_some(), 0) | flag(r.alpha_warmup.is_some(), 1) | flag(r.maximize, 2)
));
aten_rule!(ScheduleFreeAdamW, |r, _device, _foreach| foreach(
    15,
    vec![
        r.lr,
        r.beta1,
        r.beta2,
        r.eps,
        r.weight_decay,
        r.ckp1,
        r.step
    ],
    flag(r.maximize, 0)
));
aten_rule!(Lamb, |r, _device, _foreach| foreach(
    16,
    vec![
        r.lr,
        r.beta1,
        r.beta2,
        r.eps,
        r.weight_decay,
        LAMB_MAX_WEIGHT_NORM
    ],
    flag(r.weight_decouple, 0) | flag(r.grad_averaging, 1) | flag(r.adam, 2) | flag(r.maximize, 3)
));
aten_rule!(Lars, |r, _device, _foreach| foreach(
    17,
    vec![
        r.lr,
        r.weight_decay,
        r.momentum,
        r.dampening,
        r.trust_coefficient
    ],
    flag(r.nesterov, 0) | flag(r.trust, 1) | flag(r.maximize, 2)
));

/// One parameter group for [`step`]: the rule (its `lr` is used unless `lr` is given), an
/// optional tensor learning rate, and the parameters that have a gradient.
pub struct DeviceGroup<R> {
    /// The algorithm and its hyperparameters.
    pub rule: R,
    /// torch's tensor `lr` (one element, any device), passed to the kernels as torch passes
    /// it; `None`: `rule.lr`.
    pub lr: Option<Tensor>,
    /// The parameters, each with its gradient and state in the rule's order (as for the CPU
    /// driver; `fresh` marks state created for this step, which SGD's first step needs).
    pub params: Vec<ParamTensors>,
}

/// Options of [`step`].
#[derive(Clone, Copy, Debug, Default)]
pub struct AtenOptions {
    /// Use torch's foreach composition where ferroptim has one even if ATen has a fused
    /// kernel for the device (Adagrad on the CPU), e.g. to test it without a GPU.
    pub prefer_foreach: bool,
}

/// One optimizer step over every group through ATen's multi-tensor kernels (see the module
/// docs for which kernel each rule uses and which torch implementation it reproduces).
///
/// Tensors may be on any device ATen supports (the path is the default for CUDA tensors in
/// the Python package, and is forced for CPU tensors by `ferroptim.force_device_path()`).
/// Requirements, checked for every tensor before anything is modified: parameters of dtype
/// float32, float64, bfloat16 or float16; gradients and state dense, of the parameter's
/// shape, dtype and device; scalar state (`step`, …) of one element — on the parameter's
/// device for fused kernels on a non-CPU device (torch's fused state) and for ASGD, on the
/// CPU for the other foreach compositions (torch's `capturable=False` state);
/// `grad_scale`/`found_inf` (float32, one element) only for rules that use a fused kernel
/// there.
///
/// # Errors
/// [`Error::StateMismatch`], [`Error::ShapeMismatch`], [`Error::DeviceMismatch`],
/// [`Error::UnsupportedDtype`], [`Error::Sparse`], [`Error::InferenceTensor`] or
/// [`Error::InvalidArgument`] (a hand-over to a foreach composition) before any tensor is
/// modified; [`Error::Torch`] if ATen itself fails.
pub fn step<R: AtenRule>(
    groups: &[DeviceGroup<R>],
    grad_scale: Option<&Tensor>,
    found_inf: Option<&Tensor>,
    options: AtenOptions,
) -> Result<()> {
    let mut plans = Vec::with_capacity(groups.len());
    for (gi, group) in groups.iter().enumerate() {
        let buckets = buckets(group, gi, options)?;
        for (spec, _) in &buckets {
            if !spec.fused && (grad_scale.is_some() || found_inf.is_some()) {
                return Err(Error::InvalidArgument {
                    name: "grad_scale",
                    value: "a GradScaler hand-over to a foreach composition (torch's foreach \
                            optimizers take none: let GradScaler unscale)"
                        .into(),
                });
            }
        }
        plans.push(buckets);
    }
    for (group, buckets) in groups.iter().zip(&plans) {
        for (spec, members) in buckets {
            run_bucket(group, spec, members, grad_scale, found_inf)?;
        }
    }
    Ok(())
}

/// The group's buckets: (device, dtype[, fresh for SGD]) in order of first appearance, each
/// with the composition to run; every tensor checked.
fn buckets<R: AtenRule>(
    group: &DeviceGroup<R>,
    gi: usize,
    options: AtenOptions,
) -> Result<Vec<(Spec, Vec<usize>)>> {
    let rule = &group.rule;
    let n_state = rule.state_names().len();
    let n_scalar = rule.scalar_state_names().len();
    let mut keys: Vec<(Device, Kind, bool)> = Vec::new();
    let mut out: Vec<(Spec, Vec<usize>)> = Vec::new();
    for (i, pt) in group.params.iter().enumerate() {
        let who = |what: &str| format!("{what} of params[{i}] in group {gi}");
        let (device, kind) = check_param(pt, n_state, n_scalar, &who)?;
        let mut spec = rule.spec(device, options.prefer_foreach);
        for (k, s) in pt.scalar_state.iter().enumerate() {
            let name = rule
                .scalar_state_names()
                .get(k)
                .copied()
                .unwrap_or("scalar state");
            let want = if spec.scalar_on_device {
                device
            } else {
                Device::Cpu
            };
            if s.device() != want {
                return Err(Error::DeviceMismatch {
                    what: who(name),
                    expected: want,
                    got: s.device(),
                });
            }
        }
        let key = (device, kind, pt.fresh);
        match keys.iter().position(|k| *k == key) {
            Some(b) => out[b].1.push(i),
            None => {
                if pt.fresh {
                    spec.flags |= FIRST;
                }
                keys.push(key);
                out.push((spec, vec![i]));
            }
        }
    }
    if let Some(lr) = &group.lr {
        if lr.numel() != 1 {
            return Err(Error::InvalidArgument {
                name: "lr",
                value: format!("a tensor of shape {:?} (must be 1-element)", lr.size()),
            });
        }
    }
    Ok(out)
}

/// Checks one parameter's tensors; returns its device and dtype.
fn check_param(
    pt: &ParamTensors,
    n_state: usize,
    n_scalar: usize,
    who: &dyn Fn(&str) -> String,
) -> Result<(Device, Kind)> {
    let p = &pt.param;
    let kind = dense_float(p, &who("param"))?;
    let device = p.device();
    if pt.state.len() != n_state || pt.scalar_state.len() != n_scalar {
        return Err(Error::StateMismatch {
            what: who("state"),
            expected: format!("{n_state} state and {n_scalar} scalar state tensors"),
            got: format!("{} and {}", pt.state.len(), pt.scalar_state.len()),
        });
    }
    let written = std::iter::once(("param", p)).chain(pt.state.iter().map(|s| ("state", s)));
    for (what, t) in
        std::iter::once(("grad", &pt.grad)).chain(pt.state.iter().map(|s| ("state", s)))
    {
        if dense_float(t, &who(what))? != kind {
            return Err(Error::StateMismatch {
                what: who(what),
                expected: format!("dtype {kind:?} (the parameter's)"),
                got: format!("{:?}", t.kind()),
            });
        }
        if t.size() != p.size() {
            return Err(Error::ShapeMismatch {
                what: who(what),
                expected: p.size(),
                got: t.size(),
            });
        }
        if t.device() != device {
            return Err(Error::DeviceMismatch {
                what: who(what),
                expected: device,
                got: t.device(),
            });
        }
    }
    for (what, t) in written.chain(pt.scalar_state.iter().map(|s| ("scalar state", s))) {
        if !inplace_allowed(t) {
            return Err(Error::InferenceTensor { what: who(what) });
        }
    }
    for s in &pt.scalar_state {
        if !s.defined() || s.is_sparse() || s.numel() != 1 {
            return Err(Error::StateMismatch {
                what: who("scalar state"),
                expected: "a one-element dense tensor".into(),
                got: if s.defined() {
                    format!("shape {:?}", s.size())
                } else {
                    "an undefined tensor".into()
                },
            });
        }
    }
    Ok((device, kind))
}

/// `t`'s dtype if it is a defined dense tensor of a floating dtype the kernels take.
fn dense_float(t: &Tensor, what: &str) -> Result<Kind> {
    if !t.defined() {
        return Err(Error::StateMismatch {
            what: what.to_string(),
            expected: "a defined tensor".into(),
            got: "an undefined tensor".into(),
        });
    }
    if t.is_sparse() {
        return Err(Error::Sparse {
            what: what.to_string(),
        });
    }
    match t.kind() {
        k @ (Kind::Float | Kind::Double | Kind::BFloat16 | Kind::Half) => Ok(k),
        kind => Err(Error::UnsupportedDtype {
            what: what.to_string(),
            kind,
        }),
    }
}

/// Hands one bucket to `csrc/aten_step.cpp`.
fn run_bucket<R: AtenRule>(
    group: &DeviceGroup<R>,
    spec: &Spec,
    members: &[usize],
    grad_scale: Option<&Tensor>,
    found_inf: Option<&Tensor>,
) -> Result<()> {
    let ps: Vec<&ParamTensors> = members.iter().map(|&i| &group.params[i]).collect();
    let n_state = group.rule.state_names().len();
    let n_scalar = group.rule.scalar_state_names().len();
    let n_lists = 2 + n_state + n_scalar;
    let mut ptrs: Vec<*const c_void> = Vec::with_capacity(n_lists * ps.len());
    let ptr = |t: &Tensor| t.as_ptr() as *const c_void;
    ptrs.extend(ps.iter().map(|p| ptr(&p.param)));
    ptrs.extend(ps.iter().map(|p| ptr(&p.grad)));
    for k in 0..n_state {
        ptrs.extend(ps.iter().map(|p| ptr(&p.state[k])));
    }
    for k in 0..n_scalar {
        ptrs.extend(ps.iter().map(|p| ptr(&p.scalar_state[k])));
    }
    let opt = |t: Option<&Tensor>| t.map_or(std::ptr::null(), ptr);
    let mut err: [c_char; ERR_CAP] = [0; ERR_CAP];
    // SAFETY: every pointer in `ptrs` (and `lr`, `grad_scale`, `found_inf` when not null) is
    // the `at::Tensor*` of a tch tensor borrowed from `group` or the caller for the whole
    // call; `ptrs` holds exactly `n_lists * ps.len()` of them, list-major; `hyper` holds
    // `spec.hyper.len()` doubles; `err` is a writable buffer of `ERR_CAP` bytes. The C++
    // side catches every exception.
    let ok = unsafe {
        ferroptim_aten_step(
            spec.algo,
            ptrs.as_ptr(),
            ps.len() as i64,
            n_lists as i32,
            spec.hyper.as_ptr(),
            spec.hyper.len() as i32,
            spec.flags,
            opt(group.lr.as_ref()),
            opt(grad_scale),
            opt(found_inf),
            err.as_mut_ptr(),
            ERR_CAP,
        )
    };
    if ok == 1 {
        Ok(())
    } else {
        // SAFETY: the C++ side NUL-terminates `err` within `ERR_CAP` bytes before returning 0.
        let msg = unsafe { CStr::from_ptr(err.as_ptr()) };
        Err(Error::Torch(TchError::Torch(
            msg.to_string_lossy().into_owned(),
        )))
    }
}

const ERR_CAP: usize = 1024;

#[cfg(test)]
mod tests;
