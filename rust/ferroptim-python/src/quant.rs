//! 8-bit block-wise state (`ferroptim::quant`): one step function for every rule, and the
//! conversions between fp32 and 8-bit state.

use crate::error::CoreError;
use crate::groups::TensorArgs;
use crate::lbfgs::wrap;
use crate::plan::FromGroup;
use crate::rules::get;
use crate::tensor::PyTensor;
use ferroptim::quant::{self, QuantGroup, QuantParam};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// One step of rule `R` over groups with 8-bit state (see `_core.pyi`, `step_8bit`).
fn run<R: FromGroup>(
    py: Python<'_>,
    groups: &[Bound<'_, PyDict>],
    fp32_groups: &[Bound<'_, PyDict>],
    grad_scale: Option<f64>,
) -> PyResult<()> {
    let mut fp32 = Vec::with_capacity(fp32_groups.len());
    for d in fp32_groups {
        let rule = R::from_group(d)?;
        fp32.push(d.extract::<TensorArgs>()?.into_group(rule)?);
    }
    let mut core = Vec::with_capacity(groups.len());
    for d in groups {
        let rule = R::from_group(d)?;
        let n_state = ferroptim::Rule::state_names(&rule).len();
        let n_scalar = ferroptim::Rule::scalar_state_names(&rule).len();
        let params: Vec<PyTensor> = get(d, "params")?;
        let grads: Vec<PyTensor> = get(d, "grads")?;
        let codes: Vec<PyTensor> = get(d, "codes")?;
        // Unquantized state (bfloat16 parameters with stochastic rounding): `states`.
        let states: Vec<PyTensor> = match d.get_item("states")? {
            Some(v) => v.extract()?,
            None => Vec::new(),
        };
        let sr: Option<u64> = match d.get_item("bf16_stochastic_round")? {
            Some(v) => v.extract()?,
            None => None,
        };
        let absmax: Vec<PyTensor> = get(d, "absmax")?;
        let scalars: Vec<PyTensor> = get(d, "scalar_states")?;
        let fresh: Vec<bool> = get(d, "fresh")?;
        let n = params.len();
        let lists = [
            ("grads", grads.len(), n),
            ("codes", codes.len(), n * n_state),
            ("absmax", absmax.len(), n * n_state),
            ("scalar_states", scalars.len(), n * n_scalar),
            ("fresh", fresh.len(), n),
        ];
        let plain = codes.is_empty() && !states.is_empty();
        let lists = lists.map(|(name, len, want)| match (name, plain) {
            ("codes" | "absmax", true) => (name, len, 0),
            _ => (name, len, want),
        });
        if plain && states.len() != n * n_state {
            return Err(PyErr::from(CoreError::from(
                ferroptim::Error::StateMismatch {
                    what: "group list 'states'".into(),
                    expected: format!("{} entries for {n} parameters", n * n_state),
                    got: states.len().to_string(),
                },
            )));
        }
        for (name, len, want) in lists {
            if len != want {
                return Err(PyErr::from(CoreError::from(
                    ferroptim::Error::StateMismatch {
                        what: format!("group list '{name}'"),
                        expected: format!("{want} entries for {n} parameters"),
                        got: len.to_string(),
                    },
                )));
            }
        }
        let (mut codes, mut absmax) = (codes.into_iter(), absmax.into_iter());
        let mut scalars = scalars.into_iter();
        let mut states = states.into_iter();
        let params = params
            .into_iter()
            .zip(grads)
            .zip(fresh)
            .map(|((p, g), fresh)| QuantParam {
                param: p.0,
                grad: g.0,
                codes: codes.by_ref().take(n_state).map(|t| t.0).collect(),
                absmax: absmax.by_ref().take(n_state).map(|t| t.0).collect(),
                scalar_state: scalars.by_ref().take(n_scalar).map(|t| t.0).collect(),
                state: states
                    .by_ref()
                    .take(if plain { n_state } else { 0 })
                    .map(|t| t.0)
                    .collect(),
                fresh,
            })
            .collect();
        let block_size: usize = get(d, "block_size")?;
        core.push(QuantGroup {
            rule,
            block_size,
            params,
            bf16_stochastic_round: sr,
        });
    }
    py.detach(move || quant::step_8bit_mixed(&core, &fp32, grad_scale))
        .map_err(|e| PyErr::from(CoreError::from(e)))
}

/// One step of the elementwise rule `rule` (`"adam"`, `"sgd"`, `"lion"`, `"rmsprop"`,
/// `"adagrad"`, `"adan"`, `"ademamix"`, `"adamax"`, `"nadam"`, `"radam"`, `"adadelta"`,
/// `"adopt"`) over groups with 8-bit state and, in the same call, over `fp32_groups` (the
/// rule's fp32 step function's groups): both are validated before either is modified.
#[pyfunction]
#[pyo3(signature = (rule, groups, grad_scale = None, fp32_groups = Vec::new()))]
pub fn step_8bit(
    py: Python<'_>,
    rule: &str,
    groups: Vec<Bound<'_, PyDict>>,
    grad_scale: Option<f64>,
    fp32_groups: Vec<Bound<'_, PyDict>>,
) -> PyResult<()> {
    use ferroptim as f;
    let (groups, fp32) = (&groups[..], &fp32_groups[..]);
    match rule {
        "adam" => run::<f::Adam>(py, groups, fp32, grad_scale),
        "sgd" => run::<f::Sgd>(py, groups, fp32, grad_scale),
        "lion" => run::<f::Lion>(py, groups, fp32, grad_scale),
        "rmsprop" => run::<f::RMSprop>(py, groups, fp32, grad_scale),
        "adagrad" => run::<f::Adagrad>(py, groups, fp32, grad_scale),
        "adan" => run::<f::Adan>(py, groups, fp32, grad_scale),
        "ademamix" => run::<f::AdEMAMix>(py, groups, fp32, grad_scale),
        "adamax" => run::<f::Adamax>(py, groups, fp32, grad_scale),
        "nadam" => run::<f::NAdam>(py, groups, fp32, grad_scale),
        "radam" => run::<f::RAdam>(py, groups, fp32, grad_scale),
        "adadelta" => run::<f::Adadelta>(py, groups, fp32, grad_scale),
        "adopt" => run::<f::Adopt>(py, groups, fp32, grad_scale),
        _ => Err(PyValueError::new_err(format!(
            "Invalid rule value: {rule:?}"
        ))),
    }
}

/// `(codes, absmax)` of the state tensor `t` named `name` (see `ferroptim::quant::quantize`).
#[pyfunction]
pub fn quantize_8bit<'py>(
    py: Python<'py>,
    t: PyTensor,
    name: &str,
    block_size: usize,
) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
    let (c, a) = py
        .detach(move || quant::quantize(&t.0, name, block_size))
        .map_err(|e| PyErr::from(CoreError::from(e)))?;
    Ok((wrap(py, &c)?, wrap(py, &a)?))
}

/// The float32 values of 8-bit state (see `ferroptim::quant::dequantize`).
#[pyfunction]
pub fn dequantize_8bit<'py>(
    py: Python<'py>,
    codes: PyTensor,
    absmax: PyTensor,
    name: &str,
    block_size: usize,
) -> PyResult<Bound<'py, PyAny>> {
    let t = py
        .detach(move || quant::dequantize(&codes.0, &absmax.0, name, block_size, tch::Kind::Float))
        .map_err(|e| PyErr::from(CoreError::from(e)))?;
    wrap(py, &t)
}

/// Adds the 8-bit functions to the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(step_8bit, m)?)?;
    m.add_function(wrap_pyfunction!(quantize_8bit, m)?)?;
    m.add_function(wrap_pyfunction!(dequantize_8bit, m)?)
}
