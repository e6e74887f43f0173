//! Step functions of the core crate's tensor rules (`ferroptim::tensor_rules`): Adafactor,
//! Muon and SparseAdam. Each takes a list of group dicts (see `python/ferroptim/_core.pyi`)
//! and an optional loss scale `grad_scale` (GradScaler's: the gradients are unscaled as
//! `GradScaler.unscale_` does before the update, see the core crate's `step_unscaling`),
//! extracts everything with the GIL held, then releases it for the whole update.

use crate::error::CoreError;
use crate::rules::get;
use crate::tensor::PyTensor;
use ferroptim::tensor_rules::{adafactor, muon, sparse_adam, Lr};
use pyo3::exceptions::{PyKeyError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use tch::Tensor;

fn tensors(d: &Bound<'_, PyDict>, key: &str) -> PyResult<Vec<Tensor>> {
    Ok(get::<Vec<PyTensor>>(d, key)?
        .into_iter()
        .map(|t| t.0)
        .collect())
}

fn optional_tensors(d: &Bound<'_, PyDict>, key: &str) -> PyResult<Vec<Option<Tensor>>> {
    Ok(get::<Vec<Option<PyTensor>>>(d, key)?
        .into_iter()
        .map(|t| t.map(|t| t.0))
        .collect())
}

/// `d["lr"]`: a float, or a 0-d tensor (torch's `_to_scalar` keeps tensor learning rates, and
/// computes with them in their dtype).
fn lr(d: &Bound<'_, PyDict>) -> PyResult<Lr> {
    let v = d.get_item("lr")?.ok_or_else(|| PyKeyError::new_err("lr"))?;
    if let Ok(t) = v.extract::<PyTensor>() {
        return Ok(Lr::Tensor(t.0));
    }
    Ok(Lr::Float(v.extract::<f64>()?))
}

/// Checks that every per-parameter list of a group has one entry per parameter.
fn check_lengths(n: usize, lists: &[(&str, usize)]) -> PyResult<()> {
    for (name, len) in lists {
        if *len != n {
            return Err(PyValueError::new_err(format!(
                "group list '{name}' has {len} entries for {n} parameters"
            )));
        }
    }
    Ok(())
}

/// A core step over `groups` with the GIL released: `step`, or `step_unscaling` when
/// `grad_scale` is set.
fn run<G: Send>(
    py: Python<'_>,
    mut groups: Vec<G>,
    grad_scale: Option<f64>,
    step: fn(&mut [G]) -> ferroptim::Result<()>,
    step_unscaling: fn(&mut [G], f64) -> ferroptim::Result<()>,
) -> PyResult<()> {
    py.detach(|| match grad_scale {
        None => step(&mut groups),
        Some(scale) => step_unscaling(&mut groups, scale),
    })
    .map_err(|e| PyErr::from(CoreError::from(e)))
}

/// One Adafactor step over all groups (torch.optim.Adafactor's for-loop implementation);
/// with `grad_scale`, the gradients are unscaled first, as `GradScaler.unscale_` does.
#[pyfunction]
#[pyo3(signature = (groups, grad_scale = None))]
pub fn adafactor_step(
    py: Python<'_>,
    groups: Vec<Bound<'_, PyDict>>,
    grad_scale: Option<f64>,
) -> PyResult<()> {
    let mut core = Vec::with_capacity(groups.len());
    for d in &groups {
        let hyper = adafactor::Adafactor {
            lr: lr(d)?,
            beta2_decay: get(d, "beta2_decay")?,
            eps1: get(d, "eps1")?,
            eps2: get(d, "eps2")?,
            d: get(d, "d")?,
            weight_decay: get(d, "weight_decay")?,
            maximize: get(d, "maximize")?,
        };
        let params = tensors(d, "params")?;
        let (grads, steps) = (tensors(d, "grads")?, tensors(d, "steps")?);
        let (rows, cols) = (
            optional_tensors(d, "row_vars")?,
            optional_tensors(d, "col_vars")?,
        );
        let variances = optional_tensors(d, "variances")?;
        let lists = [
            ("grads", grads.len()),
            ("steps", steps.len()),
            ("row_vars", rows.len()),
            ("col_vars", cols.len()),
            ("variances", variances.len()),
        ];
        check_lengths(params.len(), &lists)?;
        let mut rest = grads
            .into_iter()
            .zip(steps)
            .zip(rows)
            .zip(cols)
            .zip(variances);
        let params = params
            .into_iter()
            .zip(rest.by_ref())
            .map(|(param, ((((grad, step), row_var), col_var), variance))| {
                adafactor::AdafactorParam {
                    param,
                    grad,
                    step,
                    row_var,
                    col_var,
                    variance,
                }
            })
            .collect();
        core.push(adafactor::AdafactorGroup { hyper, params });
    }
    run(
        py,
        core,
        grad_scale,
        adafactor::step,
        adafactor::step_unscaling,
    )
}

/// One Muon step over all groups (torch.optim.Muon's implementation); with `grad_scale`,
/// the gradients are unscaled first, as `GradScaler.unscale_` does.
#[pyfunction]
#[pyo3(signature = (groups, grad_scale = None))]
pub fn muon_step(
    py: Python<'_>,
    groups: Vec<Bound<'_, PyDict>>,
    grad_scale: Option<f64>,
) -> PyResult<()> {
    let mut core = Vec::with_capacity(groups.len());
    for d in &groups {
        let adjust: Option<String> = get(d, "adjust_lr_fn")?;
        let hyper = muon::Muon {
            lr: lr(d)?,
            weight_decay: get(d, "weight_decay")?,
            momentum: get(d, "momentum")?,
            nesterov: get(d, "nesterov")?,
            ns_coefficients: get(d, "ns_coefficients")?,
            eps: get(d, "eps")?,
            ns_steps: get(d, "ns_steps")?,
            adjust_lr_fn: match adjust.as_deref() {
                None | Some("original") => muon::AdjustLr::Original,
                Some("match_rms_adamw") => muon::AdjustLr::MatchRmsAdamw,
                Some(_) => muon::AdjustLr::Unscaled,
            },
        };
        let params = tensors(d, "params")?;
        let (grads, bufs) = (tensors(d, "grads")?, tensors(d, "momentum_buffers")?);
        check_lengths(
            params.len(),
            &[("grads", grads.len()), ("momentum_buffers", bufs.len())],
        )?;
        let params = params
            .into_iter()
            .zip(grads.into_iter().zip(bufs))
            .map(|(param, (grad, momentum_buffer))| muon::MuonParam {
                param,
                grad,
                momentum_buffer,
            })
            .collect();
        core.push(muon::MuonGroup { hyper, params });
    }
    run(py, core, grad_scale, muon::step, muon::step_unscaling)
}

/// One SparseAdam step over all groups (torch.optim.SparseAdam's implementation); `steps`
/// are the step counts including this step. With `grad_scale`, the gradients' values are
/// unscaled first, as `GradScaler.unscale_` does.
#[pyfunction]
#[pyo3(signature = (groups, grad_scale = None))]
pub fn sparse_adam_step(
    py: Python<'_>,
    groups: Vec<Bound<'_, PyDict>>,
    grad_scale: Option<f64>,
) -> PyResult<()> {
    let mut core = Vec::with_capacity(groups.len());
    for d in &groups {
        let hyper = sparse_adam::SparseAdam {
            lr: lr(d)?,
            beta1: get(d, "beta1")?,
            beta2: get(d, "beta2")?,
            eps: get(d, "eps")?,
            maximize: get(d, "maximize")?,
        };
        let params = tensors(d, "params")?;
        let grads = tensors(d, "grads")?;
        let (exp_avgs, exp_avg_sqs) = (tensors(d, "exp_avgs")?, tensors(d, "exp_avg_sqs")?);
        let steps: Vec<i64> = get(d, "steps")?;
        let lists = [
            ("grads", grads.len()),
            ("exp_avgs", exp_avgs.len()),
            ("exp_avg_sqs", exp_avg_sqs.len()),
            ("steps", steps.len()),
        ];
        check_lengths(params.len(), &lists)?;
        let params = params
            .into_iter()
            .zip(grads.into_iter().zip(exp_avgs).zip(exp_avg_sqs).zip(steps))
            .map(
                |(param, (((grad, exp_avg), exp_avg_sq), step))| sparse_adam::SparseAdamParam {
                    param,
                    grad,
                    exp_avg,
                    exp_avg_sq,
                    step,
                },
            )
            .collect();
        core.push(sparse_adam::SparseAdamGroup { hyper, params });
    }
    run(
        py,
        core,
        grad_scale,
        sparse_adam::step,
        sparse_adam::step_unscaling,
    )
}

/// Adds the tensor-rule step functions to the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(adafactor_step, m)?)?;
    m.add_function(wrap_pyfunction!(muon_step, m)?)?;
    m.add_function(wrap_pyfunction!(sparse_adam_step, m)?)?;
    m.add_function(wrap_pyfunction!(crate::lbfgs::lbfgs_step, m)?)?;
    Ok(())
}
