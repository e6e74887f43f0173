//! # ferroptim
//!
//! Fused, multi-threaded optimizer steps for [tch](https://docs.rs/tch) tensors, with
//! torch.optim's exact update rules, hyperparameter names, defaults and state names, so that
//! a step here continues a trajectory started by `torch.optim` (and vice versa).
//!
//! ## Training with tch
//! [`Optim`] is a stateful optimizer over a [`tch::nn::VarStore`] (or a list of tensors) for
//! any algorithm; its configuration is the algorithm's struct ([`Adam`], [`Sgd`], …, with
//! torch's defaults). [`Optimizer`] is the trait training loops and the LR schedulers of
//! [`sched`] are generic over; [`Optimizer::save`] writes a checkpoint that the Python package
//! (`ferroptim.checkpoint.load`) loads into a `ferroptim` or `torch.optim` optimizer.
//!
//! ```
//! use ferroptim::sched::{LinearLR, Scheduler};
//! use ferroptim::{Adam, Optim, Optimizer};
//! use tch::nn::{self, Module};
//! use tch::{Device, Kind, Tensor};
//!
//! # fn main() -> ferroptim::Result<()> {
//! // Fit y = 2x − 1 with a linear model.
//! let vs = nn::VarStore::new(Device::Cpu);
//! let model = nn::linear(vs.root(), 1, 1, Default::default());
//! let x = Tensor::linspace(-1.0, 1.0, 64, (Kind::Float, Device::Cpu)).view([64, 1]);
//! let y = &x * 2.0 - 1.0;
//!
//! let mut opt = Optim::new(&vs, Adam { lr: 0.1, ..Adam::adamw() })?;
//! let mut warmup = LinearLR::new(&mut opt, 0.1, 1.0, 10)?;
//! let mut first = None;
//! for _ in 0..200 {
//!     opt.zero_grad()?;
//!     let loss = (model.forward(&x) - &y).square().mean(Kind::Float);
//!     first.get_or_insert(loss.double_value(&[]));
//!     loss.backward();
//!     opt.step()?;
//!     warmup.step(&mut opt)?;
//! }
//! let loss = (model.forward(&x) - &y).square().mean(Kind::Float).double_value(&[]);
//! assert!(loss < 1e-3 && loss < first.unwrap_or(0.0) / 100.0, "{loss}");
//! // State under torch's names, e.g. Adam's step count.
//! assert_eq!(opt.state(0, 0)?["step"].double_value(&[]), 200.0);
//! # Ok(())
//! # }
//! ```
//!
//! Hyperparameters are validated as torch validates them; errors are [`Error`] values
//! (e.g. [`Error::InvalidArgument`] naming the argument and its value), never panics, and a
//! failed call changes nothing.
//!
//! ## Rules and the driver
//! Each algorithm is a [`Rule`] — an elementwise update plus its per-step scalars — and one
//! generic driver, [`step`], applies it to every parameter of every group in a single pass:
//! each element's parameter, gradient and state are read once and written once, half types are
//! widened to `f32` and rounded once, and the work is split across libtorch's intra-op thread
//! count with small tensors batched into one parallel region. Your own rule gets the same
//! driver through [`Optim`]: see [`optim`] and [`algorithm!`].
//!
//! The driver can also be called directly on explicit tensors:
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

pub mod device;
mod driver;
pub mod element;
mod error;
pub mod expr;
pub mod optim;
mod profiling;
pub mod quant;
mod rule;
pub mod rules;
pub mod sched;
pub mod tensor_rules;

pub use driver::{
    read_grads, step, step_params, step_unscaling, step_with_grads, Group, ParamState,
    ParamTensors, StepCache,
};
pub use error::{Error, Result};
pub use optim::{Algorithm, Hyper, Hyperparameters, Optim, Optimizer, ScheduleFreeAdamWConfig};
pub use profiling::record_function_observed;
pub use rule::{NormSink, Rule, ScalarState, MAX_NORMS, MAX_SCALAR_STATE, MAX_STATE};
pub use rules::{AdEMAMix, Adan, Lamb, Lars, ScheduleFreeAdamW};
pub use rules::{
    Adadelta, Adagrad, Adam, Adamax, Adopt, Asgd, Lion, NAdam, RAdam, RMSprop, Rprop, Sgd,
};
/// The tch version this crate is built against (for the [`algorithm!`] macro and users).
pub use tch;
