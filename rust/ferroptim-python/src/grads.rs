//! `zero_grad`: every parameter of every group in one native call (`ferroptim::zero_grads`).

use crate::error::CoreError;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use std::ffi::c_void;

extern "C" {
    /// `csrc/unpack.cpp`: the `at::Tensor` inside a `torch.Tensor` object, borrowed, or null.
    fn ferroptim_py_tensor(obj: *mut pyo3::ffi::PyObject) -> *const c_void;
}

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
    // Strong references keep every parameter alive for the call, whatever dropping a gradient
    // runs (weakref callbacks); their tensors are borrowed, not copied into tch handles.
    let mut owners = Vec::new();
    let mut tensors = Vec::new();
    for group in param_groups.iter() {
        let group = group.cast_into::<PyDict>()?;
        let Some(list) = group.get_item("params")? else {
            return Err(pyo3::exceptions::PyKeyError::new_err("params"));
        };
        for p in list.try_iter()? {
            let p = p?;
            // SAFETY: `p` is a live object and the GIL is held; the result is checked for null.
            let t = unsafe { ferroptim_py_tensor(p.as_ptr()) };
            if t.is_null() {
                let name = p.get_type().name().map(|n| n.to_string());
                return Err(PyTypeError::new_err(format!(
                    "expected a torch.Tensor parameter, got {}",
                    name.unwrap_or_else(|_| "?".into())
                )));
            }
            tensors.push(t);
            owners.push(p);
        }
    }
    // SAFETY: each pointer is the `cdata` tensor of an object in `owners`, which keeps it alive
    // until after the call; a live torch.Tensor object never replaces its `cdata` (`p.data = x`
    // changes the tensor in place), so the pointers stay valid whatever a gradient's
    // destructor runs.
    let result = unsafe { ferroptim::optim::zero_grads_raw(&tensors, set_to_none) };
    drop(owners);
    match result {
        Ok(()) => Ok(true),
        Err(ferroptim::Error::InvalidArgument { .. }) => Ok(false),
        Err(e) => Err(PyErr::from(CoreError::from(e))),
    }
}

/// Registers `zero_grad`.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(zero_grad, m)?)
}
