//! Core errors → Python exceptions, in one place (the classes torch.optim raises).

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::PyErr;

/// A [`ferroptim::Error`] on its way to Python.
pub struct CoreError(ferroptim::Error);

impl From<ferroptim::Error> for CoreError {
    fn from(e: ferroptim::Error) -> Self {
        CoreError(e)
    }
}

impl From<CoreError> for PyErr {
    fn from(CoreError(e): CoreError) -> PyErr {
        use ferroptim::Error as E;
        match e {
            E::InvalidArgument { .. } => PyValueError::new_err(e.to_string()),
            E::Sparse { .. }
            | E::ShapeMismatch { .. }
            | E::DeviceMismatch { .. }
            | E::UnsupportedDtype { .. }
            | E::StateMismatch { .. }
            | E::Overlap { .. }
            | E::InferenceTensor { .. }
            | E::Threads(_)
            | E::Torch(_) => PyRuntimeError::new_err(e.to_string()),
            // `ferroptim::Error` is non-exhaustive to Python: anything new is a RuntimeError.
            #[allow(unreachable_patterns)]
            _ => PyRuntimeError::new_err(e.to_string()),
        }
    }
}
