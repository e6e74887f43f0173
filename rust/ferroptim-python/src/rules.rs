//! One Python-facing step function per core rule: its hyperparameters, extracted from a group
//! dict whose keys are the rule's field names (floats and bools; the Python classes convert
//! torch's group entries, e.g. `betas` → `beta1`, `beta2`).

use crate::error::CoreError;
use crate::groups::TensorArgs;
use crate::plan::{FromGroup, Plan};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

/// One step of rule `R` over all groups (dicts: see `python/ferroptim/_core.pyi`): extract
/// everything with the GIL held, then release it for the whole update. With `grad_scale`,
/// gradients are unscaled in the fused pass and written back (torch's fused `grad_scale`).
pub(crate) fn run<R: FromGroup>(
    py: Python<'_>,
    groups: Vec<Bound<'_, PyDict>>,
    grad_scale: Option<f64>,
) -> PyResult<()> {
    let mut core = Vec::with_capacity(groups.len());
    for d in &groups {
        let r = R::from_group(d)?;
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
pub(crate) fn get<'py, T: for<'a> FromPyObject<'a, 'py>>(
    d: &Bound<'py, PyDict>,
    key: &str,
) -> PyResult<T> {
    match d.get_item(key)? {
        Some(v) => v.extract::<T>().map_err(Into::into),
        None => Err(pyo3::exceptions::PyKeyError::new_err(key.to_string())),
    }
}

/// For the core rule `$rule`, built from a group dict's `$field` entries, defines
/// `#[pyfunction] $fn(groups, grad_scale=None)` (one step) and `#[pyfunction] $plan(state,
/// param_groups, names)` (a cached [`Plan`] of the optimizer's steps).
///
/// A trailing `split: $splits, $split_rule` gives the plan's [`FromGroup::splits`] and
/// [`FromGroup::split_rule`] (LARS).
macro_rules! step_fn {
    ($fn:ident, $plan:ident, $rule:ident, $doc:literal, { $($field:ident),* $(,)? }
     $(, split: $splits:path, $split_rule:path)?) => {
        impl FromGroup for ferroptim::$rule {
            fn from_group(d: &Bound<'_, PyDict>) -> PyResult<Self> {
                Ok(ferroptim::$rule {
                    $($field: get(d, stringify!($field))?,)*
                })
            }
            $(
                const SPLITS: bool = true;
                fn splits(param: &tch::Tensor) -> bool {
                    $splits(param)
                }
                fn split_rule(&self) -> Self {
                    $split_rule(self)
                }
            )?
        }

        #[doc = $doc]
        #[pyfunction]
        #[pyo3(signature = (groups, grad_scale = None))]
        pub fn $fn(
            py: Python<'_>,
            groups: Vec<Bound<'_, PyDict>>,
            grad_scale: Option<f64>,
        ) -> PyResult<()> {
            run::<ferroptim::$rule>(py, groups, grad_scale)
        }

        /// A cached plan of this rule's steps over an optimizer's `state` and `param_groups`
        /// (`names[i]`: group i's state names and scalar state names).
        #[pyfunction]
        pub fn $plan(
            py: Python<'_>,
            state: &Bound<'_, PyDict>,
            param_groups: &Bound<'_, PyList>,
            names: Vec<(Vec<String>, Vec<String>)>,
        ) -> PyResult<Plan> {
            Plan::new::<ferroptim::$rule>(py, state, param_groups, names)
        }
    };
}

step_fn!(sgd_step, sgd_plan, Sgd, "One SGD step over all groups.", {
    lr, momentum, dampening, weight_decay, nesterov, maximize
});
step_fn!(adam_step, adam_plan, Adam, "One Adam/AdamW step over all groups.", {
    lr, beta1, beta2, eps, weight_decay, amsgrad, maximize, decoupled_weight_decay
});
step_fn!(adagrad_step, adagrad_plan, Adagrad, "One Adagrad step over all groups.", {
    lr, lr_decay, weight_decay, eps, initial_accumulator_value, maximize
});
step_fn!(adamax_step, adamax_plan, Adamax, "One Adamax step over all groups.", {
    lr, beta1, beta2, eps, weight_decay, maximize
});
step_fn!(nadam_step, nadam_plan, NAdam, "One NAdam step over all groups.", {
    lr, beta1, beta2, eps, weight_decay, momentum_decay, decoupled_weight_decay, maximize
});
step_fn!(radam_step, radam_plan, RAdam, "One RAdam step over all groups.", {
    lr, beta1, beta2, eps, weight_decay, decoupled_weight_decay, maximize
});
step_fn!(rmsprop_step, rmsprop_plan, RMSprop, "One RMSprop step over all groups.", {
    lr, alpha, eps, weight_decay, momentum, centered, maximize
});
step_fn!(rprop_step, rprop_plan, Rprop, "One Rprop step over all groups.", {
    lr, etaminus, etaplus, step_size_min, step_size_max, maximize
});
step_fn!(adadelta_step, adadelta_plan, Adadelta, "One Adadelta step over all groups.", {
    lr, rho, eps, weight_decay, maximize
});
step_fn!(asgd_step, asgd_plan, Asgd, "One ASGD step over all groups.", {
    lr, lambd, alpha, t0, weight_decay, maximize
});
step_fn!(lion_step, lion_plan, Lion, "One Lion step over all groups.", {
    lr, beta1, beta2, weight_decay, maximize
});
step_fn!(adopt_step, adopt_plan, Adopt, "One ADOPT step over all groups.", {
    lr, beta1, beta2, eps, clip_exponent, weight_decay, decouple, maximize
});
step_fn!(adan_step, adan_plan, Adan, "One Adan step over all groups.", {
    lr, beta1, beta2, beta3, eps, weight_decay, no_prox, maximize
});
step_fn!(ademamix_step, ademamix_plan, AdEMAMix, "One AdEMAMix step over all groups.", {
    lr, beta1, beta2, beta3, alpha, beta3_warmup, alpha_warmup, eps, weight_decay, maximize
});
step_fn!(schedule_free_adamw_step, schedule_free_adamw_plan, ScheduleFreeAdamW, "One Schedule-Free AdamW step over all groups.", {
    lr, beta1, beta2, eps, weight_decay, ckp1, step, maximize
});
step_fn!(lamb_step, lamb_plan, Lamb, "One LAMB step over all groups.", {
    lr, beta1, beta2, eps, weight_decay, weight_decouple, grad_averaging, adam, maximize
});
step_fn!(lars_step, lars_plan, Lars, "One LARS step over all groups.", {
    lr, momentum, dampening, weight_decay, trust_coefficient, nesterov, trust, maximize
}, split: lars_excluded, lars_without_trust);

/// The tensors LARS steps without weight decay or trust ratio: those of one dimension or
/// fewer (biases, norm weights), as the Python class splits its groups.
fn lars_excluded(param: &tch::Tensor) -> bool {
    param.dim() <= 1
}

/// The group's rule for [`lars_excluded`] tensors.
fn lars_without_trust(rule: &ferroptim::Lars) -> ferroptim::Lars {
    ferroptim::Lars {
        trust: false,
        ..*rule
    }
}

/// Adds every step function to the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Plan>()?;
    m.add_function(wrap_pyfunction!(sgd_step, m)?)?;
    m.add_function(wrap_pyfunction!(sgd_plan, m)?)?;
    m.add_function(wrap_pyfunction!(adam_step, m)?)?;
    m.add_function(wrap_pyfunction!(adam_plan, m)?)?;
    m.add_function(wrap_pyfunction!(adagrad_step, m)?)?;
    m.add_function(wrap_pyfunction!(adagrad_plan, m)?)?;
    m.add_function(wrap_pyfunction!(adamax_step, m)?)?;
    m.add_function(wrap_pyfunction!(adamax_plan, m)?)?;
    m.add_function(wrap_pyfunction!(nadam_step, m)?)?;
    m.add_function(wrap_pyfunction!(nadam_plan, m)?)?;
    m.add_function(wrap_pyfunction!(radam_step, m)?)?;
    m.add_function(wrap_pyfunction!(radam_plan, m)?)?;
    m.add_function(wrap_pyfunction!(rmsprop_step, m)?)?;
    m.add_function(wrap_pyfunction!(rmsprop_plan, m)?)?;
    m.add_function(wrap_pyfunction!(rprop_step, m)?)?;
    m.add_function(wrap_pyfunction!(rprop_plan, m)?)?;
    m.add_function(wrap_pyfunction!(adadelta_step, m)?)?;
    m.add_function(wrap_pyfunction!(adadelta_plan, m)?)?;
    m.add_function(wrap_pyfunction!(asgd_step, m)?)?;
    m.add_function(wrap_pyfunction!(asgd_plan, m)?)?;
    m.add_function(wrap_pyfunction!(lion_step, m)?)?;
    m.add_function(wrap_pyfunction!(lion_plan, m)?)?;
    m.add_function(wrap_pyfunction!(adopt_step, m)?)?;
    m.add_function(wrap_pyfunction!(adopt_plan, m)?)?;
    m.add_function(wrap_pyfunction!(adan_step, m)?)?;
    m.add_function(wrap_pyfunction!(adan_plan, m)?)?;
    m.add_function(wrap_pyfunction!(ademamix_step, m)?)?;
    m.add_function(wrap_pyfunction!(ademamix_plan, m)?)?;
    m.add_function(wrap_pyfunction!(schedule_free_adamw_step, m)?)?;
    m.add_function(wrap_pyfunction!(schedule_free_adamw_plan, m)?)?;
    m.add_function(wrap_pyfunction!(lamb_step, m)?)?;
    m.add_function(wrap_pyfunction!(lamb_plan, m)?)?;
    m.add_function(wrap_pyfunction!(lars_step, m)?)?;
    m.add_function(wrap_pyfunction!(lars_plan, m)?)?;
    Ok(())
}
