//! `ferroptim._core`: the native module behind the `ferroptim` Python package.
//!
//! Thin by design (DESIGN.md §2): it converts arguments, releases the GIL around one call into
//! the core crate per optimizer step, and maps errors to Python exceptions. The Python classes
//! in `python/ferroptim/` own validation, `param_groups` and state.

mod error;
mod groups;
mod tensor;

use error::CoreError;
use groups::{AdamArgs, SgdArgs, TensorArgs};
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// Runs one step of `rule` over the groups, with the GIL released.
fn run<R: ferroptim::Rule + Send>(
    py: Python<'_>,
    groups: Vec<(R, TensorArgs)>,
) -> Result<(), CoreError> {
    let mut groups: Vec<ferroptim::Group<R>> = groups
        .into_iter()
        .map(|(rule, tensors)| tensors.into_group(rule))
        .collect::<Result<_, _>>()?;
    py.detach(|| ferroptim::step(&mut groups))?;
    Ok(())
}

/// One SGD step over all groups (each a dict: see `python/ferroptim/_core.pyi`).
#[pyfunction]
fn sgd_step(py: Python<'_>, groups: Vec<Bound<'_, PyDict>>) -> PyResult<()> {
    let groups = groups
        .iter()
        .map(|d| Ok((d.extract::<SgdArgs>()?.rule(), d.extract::<TensorArgs>()?)))
        .collect::<PyResult<Vec<_>>>()?;
    Ok(run(py, groups)?)
}

/// One Adam/AdamW step over all groups (each a dict: see `python/ferroptim/_core.pyi`).
#[pyfunction]
fn adam_step(py: Python<'_>, groups: Vec<Bound<'_, PyDict>>) -> PyResult<()> {
    let groups = groups
        .iter()
        .map(|d| Ok((d.extract::<AdamArgs>()?.rule(), d.extract::<TensorArgs>()?)))
        .collect::<PyResult<Vec<_>>>()?;
    Ok(run(py, groups)?)
}

/// The native module.
#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(sgd_step, m)?)?;
    m.add_function(wrap_pyfunction!(adam_step, m)?)?;
    Ok(())
}
