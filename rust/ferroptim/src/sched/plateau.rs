//! ReduceLROnPlateau (`torch.optim.lr_scheduler.ReduceLROnPlateau`).

use crate::error::Result;
use crate::optim::{check, Optimizer};

/// Whether the monitored metric should go down or up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Lower is better (a loss).
    Min,
    /// Higher is better (an accuracy).
    Max,
}

/// How `threshold` defines a significant improvement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThresholdMode {
    /// Better than `best·(1 ∓ threshold)`.
    Rel,
    /// Better than `best ∓ threshold`.
    Abs,
}

/// Multiplies the learning rates by `factor` once the metric passed to
/// [`ReduceLROnPlateau::step`] has not improved for more than `patience` epochs. The public
/// fields are the options; [`Default`] gives torch's defaults.
#[derive(Debug, Clone)]
pub struct ReduceLROnPlateau {
    /// Minimize or maximize the metric (default [`Mode::Min`]).
    pub mode: Mode,
    /// The factor by which the learning rate is reduced (default 0.1; must be < 1).
    pub factor: f64,
    /// Epochs without improvement tolerated before a reduction (default 10).
    pub patience: u32,
    /// The threshold of a significant improvement (default 1e-4).
    pub threshold: f64,
    /// Relative or absolute threshold (default [`ThresholdMode::Rel`]).
    pub threshold_mode: ThresholdMode,
    /// Epochs to wait after a reduction before counting bad epochs again (default 0).
    pub cooldown: u32,
    /// Lower bound of each group's learning rate: empty for 0, one value for all groups, or
    /// one per group (default empty).
    pub min_lrs: Vec<f64>,
    /// A reduction smaller than this is skipped (default 1e-8).
    pub eps: f64,
    /// None until the first metric: torch's `mode_worse`.
    best: Option<f64>,
    num_bad_epochs: u32,
    cooldown_counter: u32,
    last_epoch: i64,
    last_lr: Vec<f64>,
}

impl Default for ReduceLROnPlateau {
    fn default() -> Self {
        ReduceLROnPlateau {
            mode: Mode::Min,
            factor: 0.1,
            patience: 10,
            threshold: 1e-4,
            threshold_mode: ThresholdMode::Rel,
            cooldown: 0,
            min_lrs: Vec::new(),
            eps: 1e-8,
            best: None,
            num_bad_epochs: 0,
            cooldown_counter: 0,
            last_epoch: 0,
            last_lr: Vec::new(),
        }
    }
}

impl ReduceLROnPlateau {
    /// The scheduler with torch's defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `metric` for the epoch that just ended and reduces the learning rates if it
    /// has not improved for more than `patience` epochs (outside a cooldown).
    ///
    /// # Errors
    /// [`crate::Error::InvalidArgument`] if `factor >= 1` or `min_lrs` has a length other
    /// than 0, 1 or the number of groups; then nothing changes.
    pub fn step(&mut self, opt: &mut dyn Optimizer, metric: f64) -> Result<()> {
        if self.factor >= 1.0 || self.factor.is_nan() {
            return Err(check::invalid("factor", self.factor));
        }
        let n = opt.num_groups();
        let min_lrs = match self.min_lrs.len() {
            0 => vec![0.0; n],
            1 => vec![self.min_lrs[0]; n],
            len if len == n => self.min_lrs.clone(),
            len => {
                return Err(check::invalid(
                    "min_lr",
                    format!("{len} values for {n} parameter groups"),
                ))
            }
        };
        self.last_epoch += 1;
        if self.is_better(metric) {
            self.best = Some(metric);
            self.num_bad_epochs = 0;
        } else {
            self.num_bad_epochs += 1;
        }
        if self.cooldown_counter > 0 {
            self.cooldown_counter -= 1;
            self.num_bad_epochs = 0;
        }
        if self.num_bad_epochs > self.patience {
            for (g, &min_lr) in min_lrs.iter().enumerate() {
                let old = opt.lr(g)?;
                let reduced = old * self.factor;
                // Python's max(reduced, min_lr): the first unless the second is greater.
                let new = if min_lr > reduced { min_lr } else { reduced };
                if old - new > self.eps {
                    opt.set_lr(g, new)?;
                }
            }
            self.cooldown_counter = self.cooldown;
            self.num_bad_epochs = 0;
        }
        self.last_lr = opt.lrs();
        Ok(())
    }

    /// The learning rates after the last step.
    pub fn last_lr(&self) -> &[f64] {
        &self.last_lr
    }

    /// The best metric so far (before the first step: infinity of the bad sign).
    pub fn best(&self) -> f64 {
        self.best.unwrap_or_else(|| self.worst())
    }

    fn worst(&self) -> f64 {
        match self.mode {
            Mode::Min => f64::INFINITY,
            Mode::Max => f64::NEG_INFINITY,
        }
    }

    fn is_better(&self, a: f64) -> bool {
        let best = self.best();
        match (self.mode, self.threshold_mode) {
            (Mode::Min, ThresholdMode::Rel) => a < best * (1.0 - self.threshold),
            (Mode::Min, ThresholdMode::Abs) => a < best - self.threshold,
            (Mode::Max, ThresholdMode::Rel) => a > best * (self.threshold + 1.0),
            (Mode::Max, ThresholdMode::Abs) => a > best + self.threshold,
        }
    }
}
