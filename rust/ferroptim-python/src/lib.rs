//! `ferroptim._core`: the native module behind the `ferroptim` Python package.
//!
//! Thin by design (DESIGN.md §2): it converts arguments, releases the GIL around one call into
//! the core crate per optimizer step, and maps errors to Python exceptions. The Python classes
//! in `python/ferroptim/` own validation, `param_groups` and state.

mod error;
mod groups;
mod tensor;

use error::CoreError;
use groups::{AdamArgs, RuleArgs, SgdArgs, TensorArgs};
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// One step of the rule described by `A` over all groups (dicts: see
/// `python/ferroptim/_core.pyi`): extract everything with the GIL held, then release it for
/// the whole update.
fn run<A>(py: Python<'_>, groups: Vec<Bound<'_, PyDict>>) -> PyResult<()>
where
    A: RuleArgs + for<'a, 'py> FromPyObject<'a, 'py>,
{
    let mut core = Vec::with_capacity(groups.len());
    for d in &groups {
        let rule = d.extract::<A>().map_err(Into::into)?.rule();
        let tensors = d.extract::<TensorArgs>()?;
        core.push(tensors.into_group(rule).map_err(PyErr::from)?);
    }
    py.detach(|| ferroptim::step(&mut core))
        .map_err(|e| PyErr::from(CoreError::from(e)))
}

/// One SGD step over all groups.
#[pyfunction]
fn sgd_step(py: Python<'_>, groups: Vec<Bound<'_, PyDict>>) -> PyResult<()> {
    run::<SgdArgs>(py, groups)
}

/// One Adam/AdamW step over all groups.
#[pyfunction]
fn adam_step(py: Python<'_>, groups: Vec<Bound<'_, PyDict>>) -> PyResult<()> {
    run::<AdamArgs>(py, groups)
}

/// The native module.
#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(sgd_step, m)?)?;
    m.add_function(wrap_pyfunction!(adam_step, m)?)?;
    Ok(())
}
