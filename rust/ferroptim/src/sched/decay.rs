//! StepLR, MultiStepLR, ExponentialLR, LinearLR and CosineAnnealingLR: torch's recursive
//! (chainable) `get_lr` formulas.

use super::{epoch_scheduler, Epochs, Scheduler};
use crate::error::Result;
use crate::optim::{check, Optimizer};
use std::f64::consts::PI;

/// Multiplies the learning rates by `gamma` every `step_size` epochs
/// (`torch.optim.lr_scheduler.StepLR`).
#[derive(Debug, Clone)]
pub struct StepLR {
    step_size: i64,
    gamma: f64,
    epochs: Epochs,
}

impl StepLR {
    /// Creates the scheduler and performs its initial step (which changes nothing).
    ///
    /// # Errors
    /// [`crate::Error::InvalidArgument`] if `step_size` is 0.
    pub fn new(opt: &mut dyn Optimizer, step_size: usize, gamma: f64) -> Result<Self> {
        if step_size == 0 {
            return Err(check::invalid("step_size", 0));
        }
        let mut s = StepLR {
            step_size: step_size as i64,
            gamma,
            epochs: Epochs::new(opt),
        };
        s.step(opt)?;
        Ok(s)
    }

    fn lr(&self, epoch: i64, lr: f64, _base: f64) -> f64 {
        if epoch == 0 || epoch % self.step_size != 0 {
            lr
        } else {
            lr * self.gamma
        }
    }
}
epoch_scheduler!(StepLR);

/// Multiplies the learning rates by `gamma` at each milestone epoch (by `gammaⁿ` at a
/// milestone listed `n` times) (`torch.optim.lr_scheduler.MultiStepLR`).
#[derive(Debug, Clone)]
pub struct MultiStepLR {
    milestones: Vec<i64>,
    gamma: f64,
    epochs: Epochs,
}

impl MultiStepLR {
    /// Creates the scheduler and performs its initial step.
    ///
    /// # Errors
    /// [`crate::Error::InvalidArgument`] if `opt` rejects a learning rate.
    pub fn new(opt: &mut dyn Optimizer, milestones: Vec<usize>, gamma: f64) -> Result<Self> {
        let mut s = MultiStepLR {
            milestones: milestones.into_iter().map(|m| m as i64).collect(),
            gamma,
            epochs: Epochs::new(opt),
        };
        s.step(opt)?;
        Ok(s)
    }

    fn lr(&self, epoch: i64, lr: f64, _base: f64) -> f64 {
        match self.milestones.iter().filter(|&&m| m == epoch).count() {
            0 => lr,
            n => lr * self.gamma.powf(n as f64),
        }
    }
}
epoch_scheduler!(MultiStepLR);

/// Multiplies the learning rates by `gamma` every epoch
/// (`torch.optim.lr_scheduler.ExponentialLR`).
#[derive(Debug, Clone)]
pub struct ExponentialLR {
    gamma: f64,
    epochs: Epochs,
}

impl ExponentialLR {
    /// Creates the scheduler and performs its initial step (which changes nothing).
    ///
    /// # Errors
    /// [`crate::Error::InvalidArgument`] if `opt` rejects a learning rate.
    pub fn new(opt: &mut dyn Optimizer, gamma: f64) -> Result<Self> {
        let mut s = ExponentialLR {
            gamma,
            epochs: Epochs::new(opt),
        };
        s.step(opt)?;
        Ok(s)
    }

    fn lr(&self, epoch: i64, lr: f64, _base: f64) -> f64 {
        if epoch == 0 {
            lr
        } else {
            lr * self.gamma
        }
    }
}
epoch_scheduler!(ExponentialLR);

/// Linear warmup (or decay): the learning rates are multiplied by a factor that goes linearly
/// from `start_factor` at epoch 0 to `end_factor` at epoch `total_iters`, then stays
/// (`torch.optim.lr_scheduler.LinearLR`).
#[derive(Debug, Clone)]
pub struct LinearLR {
    start_factor: f64,
    end_factor: f64,
    total_iters: i64,
    epochs: Epochs,
}

impl LinearLR {
    /// Creates the scheduler and performs its initial step, which multiplies the learning
    /// rates by `start_factor`. torch's defaults are `(1/3, 1.0, 5)`.
    ///
    /// # Errors
    /// [`crate::Error::InvalidArgument`] unless `0 < start_factor <= 1` and
    /// `0 <= end_factor <= 1`.
    pub fn new(
        opt: &mut dyn Optimizer,
        start_factor: f64,
        end_factor: f64,
        total_iters: usize,
    ) -> Result<Self> {
        if !(start_factor > 0.0 && start_factor <= 1.0) {
            return Err(check::invalid("start_factor", start_factor));
        }
        check::unit("end_factor", end_factor, true)?;
        let mut s = LinearLR {
            start_factor,
            end_factor,
            total_iters: total_iters as i64,
            epochs: Epochs::new(opt),
        };
        s.step(opt)?;
        Ok(s)
    }

    fn lr(&self, epoch: i64, lr: f64, _base: f64) -> f64 {
        if epoch == 0 {
            return lr * self.start_factor;
        }
        if epoch > self.total_iters {
            return lr;
        }
        let delta = self.end_factor - self.start_factor;
        lr * (1.0
            + delta / (self.total_iters as f64 * self.start_factor + (epoch - 1) as f64 * delta))
    }
}
epoch_scheduler!(LinearLR);

/// Cosine annealing from the base learning rates to `eta_min` over `t_max` epochs, then back
/// up (no restarts) (`torch.optim.lr_scheduler.CosineAnnealingLR`; Loshchilov & Hutter,
/// "SGDR: Stochastic Gradient Descent with Warm Restarts", ICLR 2017).
#[derive(Debug, Clone)]
pub struct CosineAnnealingLR {
    t_max: i64,
    eta_min: f64,
    epochs: Epochs,
}

impl CosineAnnealingLR {
    /// Creates the scheduler and performs its initial step (which changes nothing).
    ///
    /// # Errors
    /// [`crate::Error::InvalidArgument`] if `t_max` is 0.
    pub fn new(opt: &mut dyn Optimizer, t_max: usize, eta_min: f64) -> Result<Self> {
        if t_max == 0 {
            return Err(check::invalid("T_max", 0));
        }
        let mut s = CosineAnnealingLR {
            t_max: t_max as i64,
            eta_min,
            epochs: Epochs::new(opt),
        };
        s.step(opt)?;
        Ok(s)
    }

    fn lr(&self, epoch: i64, lr: f64, base: f64) -> f64 {
        let (t, eta_min) = (self.t_max as f64, self.eta_min);
        if epoch == 0 {
            lr
        } else if (epoch - 1 - self.t_max).rem_euclid(2 * self.t_max) == 0 {
            lr + (base - eta_min) * (1.0 - (PI / t).cos()) / 2.0
        } else {
            (1.0 + (PI * epoch as f64 / t).cos()) / (1.0 + (PI * (epoch - 1) as f64 / t).cos())
                * (lr - eta_min)
                + eta_min
        }
    }
}
epoch_scheduler!(CosineAnnealingLR);
