//! Learning-rate schedulers for any [`Optimizer`], numerically equal to
//! `torch.optim.lr_scheduler`'s (torch 2.11): the same recursive formulas, evaluated in the same
//! order in `f64`, so the learning rates are the same floats.
//!
//! As in torch, creating a scheduler performs its initial step (epoch 0), which may already
//! change the learning rates (e.g. [`LinearLR`] multiplies them by `start_factor`), and
//! [`Scheduler::step`] is called after the optimizer's step. The schedulers read the groups'
//! learning rates when they are created as their base learning rates (torch's `initial_lr`).
//!
//! There is no `SequentialLR` yet: for warmup followed by a decay, step a [`LinearLR`] for the
//! warmup epochs and then create the decay scheduler (e.g. [`CosineAnnealingLR`]), whose base
//! learning rates are then the warmed-up ones.
//!
//! ```
//! use ferroptim::sched::{CosineAnnealingLR, Scheduler};
//! use ferroptim::{Optim, Optimizer, Sgd};
//! use tch::Tensor;
//!
//! # fn main() -> ferroptim::Result<()> {
//! let w = Tensor::zeros([2], tch::kind::FLOAT_CPU).set_requires_grad(true);
//! let mut opt = Optim::new(vec![w], Sgd { lr: 0.1, ..Sgd::default() })?;
//! let mut sched = CosineAnnealingLR::new(&mut opt, 10, 0.0)?;
//! for _epoch in 0..10 {
//!     // ... forward, backward, opt.step()? ...
//!     sched.step(&mut opt)?;
//! }
//! assert!(opt.lr(0)?.abs() < 1e-12);
//! # Ok(())
//! # }
//! ```

mod decay;
mod onecycle;
mod plateau;
#[cfg(test)]
mod tests;

pub use decay::{CosineAnnealingLR, ExponentialLR, LinearLR, MultiStepLR, StepLR};
pub use onecycle::OneCycleLR;
pub use plateau::{Mode, ReduceLROnPlateau, ThresholdMode};

use crate::error::Result;
use crate::optim::{check, Optimizer};

/// An epoch-based learning-rate scheduler (everything but [`ReduceLROnPlateau`], whose step
/// takes a metric).
pub trait Scheduler {
    /// Advances one epoch (or iteration) and sets the optimizer's learning rates.
    ///
    /// # Errors
    /// [`crate::Error::InvalidArgument`] if `opt` has another number of groups than when the
    /// scheduler was created, a computed learning rate is invalid, or the schedule is over
    /// ([`OneCycleLR`]); then no learning rate changes.
    fn step(&mut self, opt: &mut dyn Optimizer) -> Result<()>;

    /// The learning rates the last step set (torch's `get_last_lr()`).
    fn last_lr(&self) -> &[f64];

    /// The index of the last epoch (0 after creation; torch's `last_epoch`).
    fn last_epoch(&self) -> i64;
}

/// The state every epoch-based scheduler shares (torch's `LRScheduler` attributes).
#[derive(Debug, Clone)]
pub(crate) struct Epochs {
    pub(crate) base_lrs: Vec<f64>,
    pub(crate) last_epoch: i64,
    pub(crate) last_lr: Vec<f64>,
}

impl Epochs {
    /// Before the initial step: base learning rates from the optimizer, epoch −1.
    pub(crate) fn new(opt: &dyn Optimizer) -> Self {
        Epochs {
            base_lrs: opt.lrs(),
            last_epoch: -1,
            last_lr: Vec::new(),
        }
    }

    /// `last_epoch += 1`, then each group's learning rate becomes
    /// `lr(epoch, group's lr, group's base lr)`; all are computed and checked before any is set.
    pub(crate) fn advance(
        &mut self,
        opt: &mut dyn Optimizer,
        lr: impl Fn(i64, f64, f64) -> f64,
    ) -> Result<()> {
        let n = opt.num_groups();
        if n != self.base_lrs.len() {
            return Err(check::invalid(
                "optimizer",
                format!(
                    "{n} parameter groups; the scheduler was created for {}",
                    self.base_lrs.len()
                ),
            ));
        }
        let epoch = self.last_epoch + 1;
        let lrs = (0..n)
            .map(|g| Ok(lr(epoch, opt.lr(g)?, self.base_lrs[g])))
            .collect::<Result<Vec<f64>>>()?;
        set_lrs(opt, &lrs)?;
        self.last_epoch = epoch;
        self.last_lr = lrs;
        Ok(())
    }
}

/// Sets every group's learning rate, after checking them all.
pub(crate) fn set_lrs(opt: &mut dyn Optimizer, lrs: &[f64]) -> Result<()> {
    for &lr in lrs {
        check::at_least("lr", lr, 0.0)?;
    }
    for (g, &lr) in lrs.iter().enumerate() {
        opt.set_lr(g, lr)?;
    }
    Ok(())
}

/// Implements [`Scheduler`] for a type with an `epochs: Epochs` field and a
/// `fn lr(&self, epoch, lr, base_lr) -> f64` method.
macro_rules! epoch_scheduler {
    ($ty:ty) => {
        impl $crate::sched::Scheduler for $ty {
            fn step(&mut self, opt: &mut dyn $crate::optim::Optimizer) -> $crate::Result<()> {
                let this = self.clone();
                self.epochs
                    .advance(opt, |epoch, lr, base| this.lr(epoch, lr, base))
            }

            fn last_lr(&self) -> &[f64] {
                &self.epochs.last_lr
            }

            fn last_epoch(&self) -> i64 {
                self.epochs.last_epoch
            }
        }
    };
}
pub(crate) use epoch_scheduler;
