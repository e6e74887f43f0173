//! One Python-facing step function per core rule: its hyperparameters, extracted from a group
//! dict whose keys are the rule's field names (floats and bools; the Python classes convert
//! torch's group entries, e.g. `betas` → `beta1`, `beta2`).

use crate::error::CoreError;
use crate::groups::TensorArgs;
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// One step of rule `R` over all groups (dicts: see `python/ferroptim/_core.pyi`): extract
/// everything with the GIL held, then release it for the whole update. With `grad_scale`,
/// gradients are unscaled in the fused pass and written back (torch's fused `grad_scale`).
fn run<R>(
    py: Python<'_>,
    groups: Vec<Bound<'_, PyDict>>,
    grad_scale: Option<f64>,
    rule: impl Fn(&Bound<'_, PyDict>) -> PyResult<R>,
) -> PyResult<()>
where
    R: ferroptim::Rule + Send,
{
    let mut core = Vec::with_capacity(groups.len());
    for d in &groups {
        let r = rule(d)?;
        let tensors = d.extract::<TensorArgs>()?;
        core.push(tensors.into_group(r).map_err(PyErr::from)?);
    }
    py.detach(|| match grad_scale {
        None => ferroptim::step(&mut core),
        Some(scale) => ferroptim::step_unscaling(&mut core, scale),
    })
    .map_err(|e| PyErr::from(CoreError::from(e)))
}

/// Reads `d[key]` as `T`, naming the key on failure.
fn get<'py, T: for<'a> FromPyObject<'a, 'py>>(d: &Bound<'py, PyDict>, key: &str) -> PyResult<T> {
    match d.get_item(key)? {
        Some(v) => v.extract::<T>().map_err(Into::into),
        None => Err(pyo3::exceptions::PyKeyError::new_err(key.to_string())),
    }
}

/// Defines `#[pyfunction] $fn(groups, grad_scale=None)` stepping the core rule `$rule`, built
/// from the group dict's `$field` entries.
macro_rules! step_fn {
    ($fn:ident, $rule:ident, $doc:literal, { $($field:ident),* $(,)? }) => {
        #[doc = $doc]
        #[pyfunction]
        #[pyo3(signature = (groups, grad_scale = None))]
        pub fn $fn(
            py: Python<'_>,
            groups: Vec<Bound<'_, PyDict>>,
            grad_scale: Option<f64>,
        ) -> PyResult<()> {
            run(py, groups, grad_scale, |d| {
                Ok(ferroptim::$rule {
                    $($field: get(d, stringify!($field))?,)*
                })
            })
        }
    };
}

step_fn!(sgd_step, Sgd, "One SGD step over all groups.", {
    lr, momentum, dampening, weight_decay, nesterov, maximize
});
step_fn!(adam_step, Adam, "One Adam/AdamW step over all groups.", {
    lr, beta1, beta2, eps, weight_decay, amsgrad, maximize, decoupled_weight_decay
});
step_fn!(adagrad_step, Adagrad, "One Adagrad step over all groups.", {
    lr, lr_decay, weight_decay, eps, initial_accumulator_value, maximize
});
step_fn!(adamax_step, Adamax, "One Adamax step over all groups.", {
    lr, beta1, beta2, eps, weight_decay, maximize
});
step_fn!(nadam_step, NAdam, "One NAdam step over all groups.", {
    lr, beta1, beta2, eps, weight_decay, momentum_decay, decoupled_weight_decay, maximize
});
step_fn!(radam_step, RAdam, "One RAdam step over all groups.", {
    lr, beta1, beta2, eps, weight_decay, decoupled_weight_decay, maximize
});
step_fn!(rmsprop_step, RMSprop, "One RMSprop step over all groups.", {
    lr, alpha, eps, weight_decay, momentum, centered, maximize
});
step_fn!(rprop_step, Rprop, "One Rprop step over all groups.", {
    lr, etaminus, etaplus, step_size_min, step_size_max, maximize
});
step_fn!(adadelta_step, Adadelta, "One Adadelta step over all groups.", {
    lr, rho, eps, weight_decay, maximize
});
step_fn!(asgd_step, Asgd, "One ASGD step over all groups.", {
    lr, lambd, alpha, t0, weight_decay, maximize
});
step_fn!(lion_step, Lion, "One Lion step over all groups.", {
    lr, beta1, beta2, weight_decay, maximize
});
step_fn!(adopt_step, Adopt, "One ADOPT step over all groups.", {
    lr, beta1, beta2, eps, clip_exponent, weight_decay, decouple, maximize
});

/// Adds every step function to the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(sgd_step, m)?)?;
    m.add_function(wrap_pyfunction!(adam_step, m)?)?;
    m.add_function(wrap_pyfunction!(adagrad_step, m)?)?;
    m.add_function(wrap_pyfunction!(adamax_step, m)?)?;
    m.add_function(wrap_pyfunction!(nadam_step, m)?)?;
    m.add_function(wrap_pyfunction!(radam_step, m)?)?;
    m.add_function(wrap_pyfunction!(rmsprop_step, m)?)?;
    m.add_function(wrap_pyfunction!(rprop_step, m)?)?;
    m.add_function(wrap_pyfunction!(adadelta_step, m)?)?;
    m.add_function(wrap_pyfunction!(asgd_step, m)?)?;
    m.add_function(wrap_pyfunction!(lion_step, m)?)?;
    m.add_function(wrap_pyfunction!(adopt_step, m)?)?;
    Ok(())
}
