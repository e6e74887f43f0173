//! `zero_grad`: every parameter of every group in one native call (`ferroptim::zero_grads`).

use crate::error::CoreError;
use crate::tensor::PyTensor;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

/// Resets the gradients of every parameter of `param_groups` (torch.optim's `param_groups`: a
/// list of dicts whose `"params"` are lists of tensors) as `torch.optim.Optimizer.zero_grad`
/// does (see `ferroptim::zero_grads`), with the GIL held (a gradient may be a Python tensor
/// subclass). Returns False, having changed nothing, if a parameter is not a leaf tensor:
/// the caller then takes torch's own path (which warns about `.grad` of non-leaf tensors).
///
/// Raises TypeError if an entry is not a tensor, RuntimeError if libtorch fails.
#[pyfunction]
#[pyo3(signature = (param_groups, set_to_none = true))]
pub fn zero_grad(param_groups: &Bound<'_, PyList>, set_to_none: bool) -> PyResult<bool> {
    let mut params = Vec::new();
    for group in param_groups.iter() {
        let group = group.cast_into::<PyDict>()?;
        let Some(list) = group.get_item("params")? else {
            return Err(pyo3::exceptions::PyKeyError::new_err("params"));
        };
        for p in list.try_iter()? {
            params.push(p?.extract::<PyTensor>()?.0);
        }
    }
    match ferroptim::optim::zero_grads(&params, set_to_none) {
        Ok(()) => Ok(true),
        Err(ferroptim::Error::InvalidArgument { .. }) => Ok(false),
        Err(e) => Err(PyErr::from(CoreError::from(e))),
    }
}

/// Registers `zero_grad`.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(zero_grad, m)?)
}
