//! `_core.aten_step`: one step of the ATen device path (core `ferroptim::device::aten`) over
//! all groups that take it; group dicts as for the CPU step functions, plus `lr_tensor`.

use crate::error::CoreError;
use crate::groups::TensorArgs;
use crate::plan::FromGroup;
use crate::tensor::PyTensor;
use ferroptim::device::aten::{self, AtenOptions, AtenRule, DeviceGroup};
use ferroptim::device::nvrtc::launch as nvrtc;
use ferroptim::device::nvrtc::scalars::DeviceScalars;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// One device-path step of the rule named `rule` (`"sgd"`, `"adam"`, `"adagrad"`,
/// `"adamax"`, `"rmsprop"`, `"rprop"`, `"adadelta"`, `"nadam"`, `"radam"`, `"asgd"`,
/// `"lion"`, `"adopt"`, `"adan"`, `"ademamix"`, `"schedule_free_adamw"`, `"lamb"`,
/// `"lars"`) over `groups` (dicts: the rule's hyperparameters, `params`, `grads`, `states`, `scalar_states`, `fresh`, and `lr_tensor`:
/// torch's tensor `lr` or None); `grad_scale`/`found_inf`: GradScaler's hand-over (fused
/// kernels only); `prefer_foreach`: torch's foreach composition even where ATen has a fused
/// kernel. Extracts with the GIL held, then releases it for the step.
#[pyfunction]
#[pyo3(signature = (rule, groups, grad_scale = None, found_inf = None, prefer_foreach = false))]
pub fn aten_step(
    py: Python<'_>,
    rule: &str,
    groups: Vec<Bound<'_, PyDict>>,
    grad_scale: Option<PyTensor>,
    found_inf: Option<PyTensor>,
    prefer_foreach: bool,
) -> PyResult<()> {
    let amp = (grad_scale.map(|t| t.0), found_inf.map(|t| t.0));
    let options = AtenOptions { prefer_foreach };
    match rule {
        "sgd" => run::<ferroptim::Sgd>(py, groups, amp, options),
        "adam" => run::<ferroptim::Adam>(py, groups, amp, options),
        "adagrad" => run::<ferroptim::Adagrad>(py, groups, amp, options),
        "adamax" => run::<ferroptim::Adamax>(py, groups, amp, options),
        "rmsprop" => run::<ferroptim::RMSprop>(py, groups, amp, options),
        "rprop" => run::<ferroptim::Rprop>(py, groups, amp, options),
        "adadelta" => run::<ferroptim::Adadelta>(py, groups, amp, options),
        "nadam" => run::<ferroptim::NAdam>(py, groups, amp, options),
        "radam" => run::<ferroptim::RAdam>(py, groups, amp, options),
        "asgd" => run::<ferroptim::Asgd>(py, groups, amp, options),
        "lion" => run::<ferroptim::Lion>(py, groups, amp, options),
        "adopt" => run::<ferroptim::Adopt>(py, groups, amp, options),
        "adan" => run::<ferroptim::Adan>(py, groups, amp, options),
        "ademamix" => run::<ferroptim::AdEMAMix>(py, groups, amp, options),
        "schedule_free_adamw" => run::<ferroptim::ScheduleFreeAdamW>(py, groups, amp, options),
        "lamb" => run::<ferroptim::Lamb>(py, groups, amp, options),
        "lars" => run::<ferroptim::Lars>(py, groups, amp, options),
        other => Err(PyValueError::new_err(format!(
            "no ATen device path for rule '{other}'"
        ))),
    }
}

fn run<R: FromGroup + AtenRule>(
    py: Python<'_>,
    groups: Vec<Bound<'_, PyDict>>,
    (grad_scale, found_inf): (Option<tch::Tensor>, Option<tch::Tensor>),
    options: AtenOptions,
) -> PyResult<()> {
    let mut core = Vec::with_capacity(groups.len());
    for d in &groups {
        let rule = R::from_group(d)?;
        let lr = match d.get_item("lr_tensor")? {
            Some(v) if !v.is_none() => Some(v.extract::<PyTensor>()?.0),
            _ => None,
        };
        let group = d
            .extract::<TensorArgs>()?
            .into_group(rule)
            .map_err(PyErr::from)?;
        core.push(DeviceGroup {
            rule: group.rule,
            lr,
            params: group.params,
        });
    }
    py.detach(move || aten::step(&core, grad_scale.as_ref(), found_inf.as_ref(), options))
        .map_err(|e| PyErr::from(CoreError::from(e)))
}

/// One step with ferroptim's own NVRTC kernels (core `ferroptim::device::nvrtc`; opt-in,
/// untested on a GPU) of the rule named `rule` (as for `aten_step`) over `groups` (dicts as
/// for the CPU step functions: contiguous CUDA tensors, scalar state on the CPU), launched on
/// `stream` (`torch.cuda.current_stream().cuda_stream`). `nvrtc_dirs`: folders that may hold
/// `libnvrtc.so.13`. Extracts with the GIL held, then releases it.
/// With `capturable` (Adam/AdamW, Adamax, NAdam, Adadelta, RMSprop, Rprop), the scalar state
/// (`step`, NAdam's `mu_product`) is float32 tensors on the parameter's device, advanced and
/// read by the kernels (torch's `capturable=True`): nothing is read on the host. A group's
/// `lr_tensor` (a one-element float32/float64 tensor on the parameters' CUDA device; Adam and
/// AdamW only) is then read by the kernels at every step, its `lr` unused.
#[pyfunction]
#[pyo3(signature = (rule, groups, stream, nvrtc_dirs, grad_scale = None, found_inf = None, capturable = false))]
#[allow(clippy::too_many_arguments)]
pub fn nvrtc_step(
    py: Python<'_>,
    rule: &str,
    groups: Vec<Bound<'_, PyDict>>,
    stream: u64,
    nvrtc_dirs: Vec<String>,
    grad_scale: Option<PyTensor>,
    found_inf: Option<PyTensor>,
    capturable: bool,
) -> PyResult<()> {
    let amp = (grad_scale.map(|t| t.0), found_inf.map(|t| t.0));
    let dirs: Vec<std::path::PathBuf> = nvrtc_dirs.into_iter().map(Into::into).collect();
    let call = NvrtcCall { stream, dirs, amp };
    if capturable {
        return match rule {
            "adam" => call.capturable::<ferroptim::Adam>(py, groups),
            "adamax" => call.capturable::<ferroptim::Adamax>(py, groups),
            "nadam" => call.capturable::<ferroptim::NAdam>(py, groups),
            "adadelta" => call.capturable::<ferroptim::Adadelta>(py, groups),
            "rmsprop" => call.capturable::<ferroptim::RMSprop>(py, groups),
            "rprop" => call.capturable::<ferroptim::Rprop>(py, groups),
            other => Err(PyValueError::new_err(format!(
                "no capturable NVRTC kernel for rule '{other}' (Adam/AdamW, Adamax, NAdam, \
                 Adadelta, RMSprop, Rprop only)"
            ))),
        };
    }
    match rule {
        "sgd" => call.run::<ferroptim::Sgd>(py, groups),
        "adam" => call.run::<ferroptim::Adam>(py, groups),
        "adagrad" => call.run::<ferroptim::Adagrad>(py, groups),
        "adamax" => call.run::<ferroptim::Adamax>(py, groups),
        "rmsprop" => call.run::<ferroptim::RMSprop>(py, groups),
        "rprop" => call.run::<ferroptim::Rprop>(py, groups),
        "adadelta" => call.run::<ferroptim::Adadelta>(py, groups),
        "nadam" => call.run::<ferroptim::NAdam>(py, groups),
        "radam" => call.run::<ferroptim::RAdam>(py, groups),
        "asgd" => call.run::<ferroptim::Asgd>(py, groups),
        "lion" => call.run::<ferroptim::Lion>(py, groups),
        "adopt" => call.run::<ferroptim::Adopt>(py, groups),
        "adan" => call.run::<ferroptim::Adan>(py, groups),
        "ademamix" => call.run::<ferroptim::AdEMAMix>(py, groups),
        "schedule_free_adamw" => call.run::<ferroptim::ScheduleFreeAdamW>(py, groups),
        "lamb" => call.run_norms::<ferroptim::Lamb>(py, groups),
        "lars" => call.run_norms::<ferroptim::Lars>(py, groups),
        other => Err(PyValueError::new_err(format!(
            "no NVRTC kernel for rule '{other}'"
        ))),
    }
}

struct NvrtcCall {
    stream: u64,
    dirs: Vec<std::path::PathBuf>,
    amp: (Option<tch::Tensor>, Option<tch::Tensor>),
}

type NvrtcStep<R> = fn(
    &[nvrtc::NvrtcGroup<R>],
    u64,
    Option<&tch::Tensor>,
    Option<&tch::Tensor>,
    &[std::path::PathBuf],
) -> ferroptim::Result<()>;

impl NvrtcCall {
    fn run<R: FromGroup + ferroptim::Rule + Send>(
        self,
        py: Python<'_>,
        groups: Vec<Bound<'_, PyDict>>,
    ) -> PyResult<()> {
        self.call(py, groups, nvrtc::step::<R>)
    }

    fn run_norms<R: FromGroup + ferroptim::device::nvrtc::norms::DeviceNorms + Send>(
        self,
        py: Python<'_>,
        groups: Vec<Bound<'_, PyDict>>,
    ) -> PyResult<()> {
        self.call(py, groups, nvrtc::step_with_norms::<R>)
    }

    /// A capturable step: each group's `lr_tensor` (a CUDA tensor, or None) is read on the
    /// device (Adam/AdamW only; an error for the other rules).
    fn capturable<R: FromGroup + DeviceScalars + Send>(
        self,
        py: Python<'_>,
        groups: Vec<Bound<'_, PyDict>>,
    ) -> PyResult<()> {
        let mut core = Vec::with_capacity(groups.len());
        let mut lrs = Vec::with_capacity(groups.len());
        for d in &groups {
            let rule = R::from_group(d)?;
            lrs.push(match d.get_item("lr_tensor")? {
                Some(v) if !v.is_none() => Some(v.extract::<PyTensor>()?.0),
                _ => None,
            });
            core.push(nvrtc_group(d, rule)?);
        }
        let NvrtcCall { stream, dirs, amp } = self;
        py.detach(move || {
            let (gs, fi) = (amp.0.as_ref(), amp.1.as_ref());
            nvrtc::step_capturable_with_lr(&core, &lrs, stream, gs, fi, &dirs)
        })
        .map_err(|e| PyErr::from(CoreError::from(e)))
    }

    fn call<R: FromGroup + ferroptim::Rule + Send>(
        self,
        py: Python<'_>,
        groups: Vec<Bound<'_, PyDict>>,
        step: NvrtcStep<R>,
    ) -> PyResult<()> {
        let mut core = Vec::with_capacity(groups.len());
        for d in &groups {
            let rule = R::from_group(d)?;
            core.push(nvrtc_group(d, rule)?);
        }
        let NvrtcCall { stream, dirs, amp } = self;
        py.detach(move || step(&core, stream, amp.0.as_ref(), amp.1.as_ref(), &dirs))
            .map_err(|e| PyErr::from(CoreError::from(e)))
    }
}

/// Adds `aten_step` and `nvrtc_step` to the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(aten_step, m)?)?;
    m.add_function(wrap_pyfunction!(nvrtc_step, m)?)
}

/// One group dict's tensors as the core's NVRTC group with `rule`.
fn nvrtc_group<R: ferroptim::Rule>(
    d: &Bound<'_, PyDict>,
    rule: R,
) -> PyResult<nvrtc::NvrtcGroup<R>> {
    let group = d
        .extract::<TensorArgs>()?
        .into_group(rule)
        .map_err(PyErr::from)?;
    Ok(nvrtc::NvrtcGroup {
        rule: group.rule,
        params: group.params,
    })
}
