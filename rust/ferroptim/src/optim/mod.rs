//! Stateful optimizers for tch-rs training loops: [`Optim`] over any [`Algorithm`], the
//! [`Optimizer`] trait that user code and LR schedulers are generic over, and checkpoints in
//! safetensors that the Python package reads and writes.
//!
//! # The algorithms
//! Every rule of the crate is an [`Algorithm`]; its struct is the configuration of a parameter
//! group and `Default` gives torch.optim's defaults:
//!
//! | Python class | configuration |
//! |---|---|
//! | `SGD` | [`Sgd`](crate::Sgd) |
//! | `Adam` / `AdamW` | [`Adam`](crate::Adam) / [`Adam::adamw`](crate::Adam::adamw) |
//! | `Adagrad`, `Adamax`, `Adadelta` | [`Adagrad`](crate::Adagrad), [`Adamax`](crate::Adamax), [`Adadelta`](crate::Adadelta) |
//! | `NAdam`, `RAdam`, `RMSprop`, `Rprop` | [`NAdam`](crate::NAdam), [`RAdam`](crate::RAdam), [`RMSprop`](crate::RMSprop), [`Rprop`](crate::Rprop) |
//! | `ASGD`, `Lion`, `ADOPT` | [`Asgd`](crate::Asgd), [`Lion`](crate::Lion), [`Adopt`](crate::Adopt) |
//! | `Adan`, `AdEMAMix`, `Lamb` | [`Adan`](crate::Adan), [`AdEMAMix`](crate::AdEMAMix), [`Lamb`](crate::Lamb) |
//! | `LARS` | [`Lars`](crate::Lars) (tensors of one dimension or fewer without trust ratio, as in Python) |
//! | `ScheduleFreeAdamW` | [`ScheduleFreeAdamWConfig`] (with [`Optim::train`] / [`Optim::eval`]) |
//! | `Adafactor`, `Muon`, `SparseAdam` | [`Optim`] over [`tensor_rules::Adafactor`](crate::tensor_rules::Adafactor), [`tensor_rules::Muon`](crate::tensor_rules::Muon), [`tensor_rules::SparseAdam`](crate::tensor_rules::SparseAdam) (sparse gradients: [`set_grad`]) |
//! | `LBFGS` | [`LbfgsOptim`] over [`tensor_rules::Lbfgs`](crate::tensor_rules::Lbfgs), stepped with [`Optimizer::step_with`] |
//!
//! Every configuration implements [`Hyperparameters`] (names, values, torch's checks); the
//! elementwise ones also [`Algorithm`], which runs them with the fused driver. The last
//! three rows step with the ATen operations of [`crate::tensor_rules`] instead, bit-identical
//! to torch.
//!
//! # Writing your own algorithm
//! An elementwise algorithm is a [`Rule`](crate::Rule): its state names, the scalars it
//! computes once per parameter and step, and the update of one element. Implement
//! [`Algorithm`] for it with the [`algorithm!`](crate::algorithm) macro (hyperparameter names
//! and validation) and [`Optim`] drives it with the same fused, multi-threaded driver as the
//! built-in algorithms: half types widened to `f32`, small tensors batched, CUDA tensors
//! staged. `examples/sign_sgd.rs` is a complete example; in short:
//!
//! ```
//! use ferroptim::{element::Float, optim::check, Optim, Optimizer, Rule, ScalarState};
//! use tch::{Device, Kind, Tensor};
//!
//! /// signSGD with momentum (Bernstein et al., 2018): θ ← θ − lr·sign(m), m ← βm + (1 − β)g.
//! #[derive(Debug, Clone, Copy)]
//! struct Signum {
//!     lr: f64,
//!     beta: f64,
//! }
//! impl Default for Signum {
//!     fn default() -> Self {
//!         Signum { lr: 1e-3, beta: 0.9 }
//!     }
//! }
//! impl Rule for Signum {
//!     type Scalars = Signum;
//!     fn state_names(&self) -> &'static [&'static str] {
//!         &["momentum_buffer"]
//!     }
//!     fn scalar_state_names(&self) -> &'static [&'static str] {
//!         &[] // no step counter
//!     }
//!     fn scalars(&self, _: &mut [ScalarState], _fresh: bool) -> Signum {
//!         *self
//!     }
//!     fn update<F: Float>(s: &Signum, p: F, g: F, state: &mut [F]) -> F {
//!         let m = state[0] * F::from_f64(s.beta) + F::from_f64(1.0 - s.beta) * g;
//!         state[0] = m;
//!         let one = F::from_f64(1.0);
//!         let sign = if m > F::ZERO { one } else if m < F::ZERO { -one } else { F::ZERO };
//!         p - F::from_f64(s.lr) * sign
//!     }
//! }
//! ferroptim::algorithm!(Signum, "Signum", { lr: Float, beta: Float }, |c| {
//!     check::at_least("lr", c.lr, 0.0)?;
//!     check::unit("beta", c.beta, false)
//! });
//!
//! # fn main() -> ferroptim::Result<()> {
//! let w = Tensor::from_slice(&[1.0f32, -1.0]).set_requires_grad(true);
//! let mut opt = Optim::new(vec![w.shallow_clone()], Signum { lr: 0.5, beta: 0.0 })?;
//! (&w * &w).sum(Kind::Float).backward(); // g = 2w
//! opt.step()?;
//! assert_eq!(Vec::<f32>::try_from(&w).unwrap(), [0.5, -0.5]);
//! # Ok(())
//! # }
//! ```
//!
//! # Checkpoints
//! [`Optimizer::save`] / [`Optimizer::load`] write and read one safetensors file, laid out
//! as `torch.optim.Optimizer.state_dict()`: tensors `state.{i}.{name}` for parameter `i`
//! (numbered through the groups in order, as torch numbers them) and the JSON of
//! `param_groups` (torch's keys, e.g. `betas`, with `params` as those indices) in the header's
//! `__metadata__["param_groups"]`. State that torch keeps as Python values rather than
//! tensors (SparseAdam's int `step`; LBFGS's counters, floats and lists of tensors) is written
//! as JSON in `__metadata__["state_values"]`, `{"{i}": {name: value}}`, where a list's tensors
//! are stored as `state.{i}.{name}.{k}` and appear as `{"tensor": "state.{i}.{name}.{k}"}`.
//! `ferroptim.checkpoint.save/load` in Python convert the same file to and from any
//! `torch.optim` optimizer's `state_dict`.

mod algorithm;
mod algorithms;
pub(crate) mod checkpoint;
mod grad;
mod lars;
mod lbfgs;
mod quantized;
mod schedule_free;
pub(crate) mod stateful;
mod tensor;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_beyond;
#[cfg(test)]
mod tests_tensor;

pub use algorithm::{
    check, scalar_tensor, zeros_state, Algorithm, Hyper, Hyperparameters, ParamState,
};
pub use checkpoint::FORMAT;
pub use grad::{clear_grads, set_grad, zero_grads, zero_grads_raw};
pub use lbfgs::LbfgsOptim;
pub use quantized::Quantized;
pub use schedule_free::ScheduleFreeAdamWConfig;
pub use stateful::{IntoParams, Optim};

use crate::error::Result;
use std::path::Path;

/// What training loops and LR schedulers need from an optimizer, whatever its algorithm.
///
/// Parameter groups are numbered from 0 in the order they were added. Every method validates
/// before it changes anything: on error the optimizer is as it was.
pub trait Optimizer {
    /// Performs one optimization step: updates every parameter that has a gradient (and
    /// creates its state on its first step).
    ///
    /// # Errors
    /// Those of [`crate::step`] (sparse gradients, mismatched tensors…); nothing changes.
    fn step(&mut self) -> Result<()>;

    /// One step with a closure that re-evaluates the model — resets the gradients, computes
    /// the loss, calls `backward()` and returns the loss — as torch's `step(closure)`;
    /// returns the closure's (first) loss. The default calls the closure once, then
    /// [`Optimizer::step`]; [`LbfgsOptim`] calls it as often as its line search needs (and
    /// its [`Optimizer::step`] is an error).
    ///
    /// # Errors
    /// The closure's, returned as they are, and those of [`Optimizer::step`].
    fn step_with(&mut self, closure: &mut dyn FnMut() -> Result<f64>) -> Result<f64> {
        let loss = closure()?;
        self.step()?;
        Ok(loss)
    }

    /// Sets every parameter's gradient to none (undefined), as torch's
    /// `zero_grad(set_to_none=True)`; see [`Optim::zero_grad_with`] for zeroing in place.
    ///
    /// # Errors
    /// [`crate::Error::Torch`] if libtorch reports an error.
    fn zero_grad(&mut self) -> Result<()>;

    /// The number of parameter groups.
    fn num_groups(&self) -> usize;

    /// The learning rate of group `group`.
    ///
    /// # Errors
    /// [`crate::Error::InvalidArgument`] if there is no such group.
    fn lr(&self, group: usize) -> Result<f64>;

    /// Sets the learning rate of group `group`.
    ///
    /// # Errors
    /// [`crate::Error::InvalidArgument`] if there is no such group or `lr` is invalid
    /// (negative or NaN).
    fn set_lr(&mut self, group: usize, lr: f64) -> Result<()>;

    /// Hyperparameter `name` (the configuration's field name, e.g. `"beta1"`, `"momentum"`)
    /// of group `group`.
    ///
    /// # Errors
    /// [`crate::Error::InvalidArgument`] if there is no such group or hyperparameter.
    fn hyperparameter(&self, group: usize, name: &str) -> Result<Hyper>;

    /// Sets hyperparameter `name` of group `group`.
    ///
    /// # Errors
    /// [`crate::Error::InvalidArgument`] if there is no such group or hyperparameter, the
    /// value has the wrong type, or the new configuration fails torch's checks.
    fn set_hyperparameter(&mut self, group: usize, name: &str, value: Hyper) -> Result<()>;

    /// The learning rates of all groups.
    fn lrs(&self) -> Vec<f64> {
        (0..self.num_groups())
            .filter_map(|g| self.lr(g).ok())
            .collect()
    }

    /// Writes the optimizer's hyperparameters and state to a safetensors checkpoint (see the
    /// [module documentation](crate::optim#checkpoints)).
    ///
    /// # Errors
    /// [`crate::Error::Checkpoint`] if the file cannot be written, [`crate::Error::Torch`]
    /// if a state tensor cannot be read.
    fn save(&self, path: &Path) -> Result<()>;

    /// Reads a checkpoint written by [`Optimizer::save`] or by the Python package's
    /// `ferroptim.checkpoint.save`, for an optimizer over the same parameters (same groups,
    /// same number of parameters in each). Like torch's `load_state_dict`, the groups'
    /// hyperparameters are replaced by the saved ones and state tensors (except `step`) are
    /// converted to their parameter's dtype and device.
    ///
    /// # Errors
    /// [`crate::Error::Checkpoint`] if the file cannot be read or does not match the
    /// optimizer; [`crate::Error::InvalidArgument`] if saved hyperparameters fail torch's
    /// checks. Nothing changes on error.
    fn load(&mut self, path: &Path) -> Result<()>;
}
