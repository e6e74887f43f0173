//! The crate's error type.

use tch::{Device, Kind, TchError};

/// Everything that can go wrong in a ferroptim step. No variant is ever returned after a
/// parameter or state tensor has been modified: inputs are validated before the update starts.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A hyperparameter is out of range (e.g. a negative `lr`).
    #[error("Invalid {name} value: {value}")]
    InvalidArgument {
        /// The argument's name, as in torch.optim (`lr`, `betas`, `eps`, …).
        name: &'static str,
        /// The rejected value, formatted.
        value: String,
    },
    /// A gradient (or parameter) is a sparse tensor; the fused kernels need dense ones.
    #[error("{what} is sparse: ferroptim does not support sparse gradients")]
    Sparse {
        /// Which tensor, e.g. `grad of params[2] in group 0`.
        what: String,
    },
    /// A tensor's shape differs from its parameter's shape.
    #[error("{what} has shape {got:?}, but the parameter has shape {expected:?}")]
    ShapeMismatch {
        /// Which tensor.
        what: String,
        /// The parameter's shape.
        expected: Vec<i64>,
        /// The tensor's shape.
        got: Vec<i64>,
    },
    /// A tensor lives on another device than its parameter.
    #[error("{what} is on {got:?}, but the parameter is on {expected:?}")]
    DeviceMismatch {
        /// Which tensor.
        what: String,
        /// The parameter's device.
        expected: Device,
        /// The tensor's device.
        got: Device,
    },
    /// A tensor's dtype is not one of float32, float64, bfloat16, float16.
    #[error("{what} has dtype {kind:?}; supported dtypes are float32, float64, bfloat16, float16")]
    UnsupportedDtype {
        /// Which tensor.
        what: String,
        /// Its dtype.
        kind: Kind,
    },
    /// The number of state tensors or step counters does not match the algorithm.
    #[error("{what}: expected {expected}, got {got}")]
    StateMismatch {
        /// Which parameter.
        what: String,
        /// What the algorithm needs.
        expected: String,
        /// What was given.
        got: String,
    },
    /// Two tensors that are written (parameters, state) share memory with another tensor.
    #[error("{first} and {second} overlap in memory; parameters and state must not alias")]
    Overlap {
        /// One tensor.
        first: String,
        /// The other.
        second: String,
    },
    /// A tensor to be updated in place is an inference tensor (created under
    /// `torch.inference_mode`) and the step runs outside inference mode, where torch's
    /// in-place ops refuse it too.
    #[error(
        "{what} is an inference tensor: in-place update to inference tensor outside \
         InferenceMode is not allowed (make a clone to get a normal tensor)"
    )]
    InferenceTensor {
        /// Which tensor.
        what: String,
    },
    /// An optimizer checkpoint cannot be written or read, or does not match the optimizer.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// The worker thread pool could not be created.
    #[error("cannot start worker threads: {0}")]
    Threads(String),
    /// NVRTC or the CUDA driver failed, or is not available (the device path's own kernels).
    #[error("CUDA kernels: {0}")]
    Cuda(String),
    /// An error reported by libtorch.
    #[error(transparent)]
    Torch(#[from] TchError),
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;
