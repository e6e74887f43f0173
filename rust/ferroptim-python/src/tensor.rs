//! `torch.Tensor` → `tch::Tensor`: the one place Python tensors cross into Rust.

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::Borrowed;

/// A `torch.Tensor` argument, unpacked to a `tch::Tensor` handle that shares its storage
/// (no copy): writes through it are visible to Python.
pub struct PyTensor(pub tch::Tensor);

impl<'a, 'py> FromPyObject<'a, 'py> for PyTensor {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        let ptr = obj.as_ptr() as *mut tch::python::CPyObject;
        // SAFETY: `ptr` is a live Python object borrowed for the duration of this call, and the
        // GIL is held (we have a `Python` token through `obj`), as `pyobject_unpack` requires.
        let unpacked = unsafe { tch::Tensor::pyobject_unpack(ptr) };
        match unpacked {
            Ok(Some(t)) => Ok(PyTensor(t)),
            Ok(None) => Err(PyTypeError::new_err(format!(
                "expected a torch.Tensor, got {}",
                obj.get_type()
                    .name()
                    .map(|n| n.to_string())
                    .unwrap_or_else(|_| "?".into())
            ))),
            Err(e) => Err(PyTypeError::new_err(e.to_string())),
        }
    }
}
