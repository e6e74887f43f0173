//! `ferroptim._core`: the native module behind the `ferroptim` Python package.
//!
//! Thin by design (DESIGN.md §2): it converts arguments, releases the GIL around one call into
//! the core crate per optimizer step, and maps errors to Python exceptions. The Python classes
//! in `python/ferroptim/` own validation, `param_groups` and state.

mod device;
mod error;
mod grads;
mod graph;
mod groups;
mod lbfgs;
mod plan;
mod quant;
mod rules;
mod tensor;
mod tensor_rules;

use pyo3::prelude::*;

/// The native module.
#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(record_function_observed, m)?)?;
    rules::register(m)?;
    device::register(m)?;
    grads::register(m)?;
    graph::register(m)?;
    quant::register(m)?;
    tensor_rules::register(m)
}

/// True if anything observes libtorch's `RecordFunction` events (a running profiler, an
/// execution trace observer, …): then `step` enters its `record_function` region.
#[pyfunction]
fn record_function_observed() -> bool {
    ferroptim::record_function_observed()
}
