//! # ferroptim
//!
//! Fused, multi-threaded optimizer steps for [tch](https://docs.rs/tch) tensors: SGD, Adam and
//! AdamW with torch.optim's exact update rules, hyperparameter names and state names, so that a
//! step here continues a trajectory started by `torch.optim` (and vice versa).
//!
//! Each algorithm is a [`Rule`] — an elementwise update plus its per-step scalars — and one
//! generic driver, [`step`], applies it to every parameter of every group in a single pass:
//! each element's parameter, gradient and state are read once and written once, half types are
//! widened to `f32` and rounded once, and the work is split across libtorch's intra-op thread
//! count with small tensors batched into one parallel region.
//!
//! ```
//! use ferroptim::{step, Adam, Group, ParamTensors};
//! use tch::{Kind, Tensor};
//!
//! let param = Tensor::ones([3], (Kind::Float, tch::Device::Cpu));
//! let grad = Tensor::full([3], 0.5, (Kind::Float, tch::Device::Cpu));
//! let state = vec![param.zeros_like(), param.zeros_like()]; // exp_avg, exp_avg_sq
//! let counter = Tensor::zeros([], (Kind::Float, tch::Device::Cpu));
//! let mut groups = [Group {
//!     rule: Adam::adamw(),
//!     params: vec![ParamTensors {
//!         param: param.shallow_clone(),
//!         grad,
//!         state,
//!         scalar_state: vec![counter], // step
//!         fresh: true,
//!     }],
//! }];
//! step(&mut groups).expect("valid inputs");
//!
//! // AdamW's first step: θ(1 − lr·λ) − lr·g/(|g| + ε) = 1 − 1e-5 − 1e-3·0.5/(0.5 + 1e-8)
//! let expected = (1.0 - 1e-3 * 1e-2) - 1e-3 * 0.5 / (0.5 + 1e-8);
//! assert!((param.double_value(&[0]) - expected).abs() < 1e-7);
//! assert_eq!(groups[0].params[0].scalar_state[0].double_value(&[]), 1.0);
//! ```
#![deny(missing_docs)]

mod driver;
pub mod element;
mod error;
pub mod optim;
mod rule;
pub mod rules;
pub mod sched;

pub use driver::{step, step_unscaling, Group, ParamTensors};
pub use error::{Error, Result};
pub use optim::{Algorithm, Hyper, Optim, Optimizer};
pub use rule::{Rule, ScalarState, MAX_SCALAR_STATE, MAX_STATE};
pub use rules::{
    Adadelta, Adagrad, Adam, Adamax, Adopt, Asgd, Lion, NAdam, RAdam, RMSprop, Rprop, Sgd,
};
/// The tch version this crate is built against (for the [`algorithm!`] macro and users).
pub use tch;
