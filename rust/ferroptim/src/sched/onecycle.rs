//! OneCycleLR (`torch.optim.lr_scheduler.OneCycleLR`).

use super::{set_lrs, Scheduler};
use crate::error::Result;
use crate::optim::{check, Hyper, Optimizer};
use std::f64::consts::PI;

/// The 1cycle policy (Smith & Topin, "Super-Convergence: Very Fast Training of Neural Networks
/// Using Large Learning Rates", 2018): the learning rate rises from `max_lr / div_factor` to
/// `max_lr` over the first `pct_start` of `total_steps`, then anneals to
/// `max_lr / div_factor / final_div_factor`; the momentum (`momentum`, or `beta1` for
/// algorithms with betas) moves inversely between `max_momentum` and `base_momentum`. Step it
/// after every batch.
///
/// Build it with [`OneCycleLR::new`], adjust the public fields (torch's defaults), then call
/// [`OneCycleLR::start`], which sets the initial learning rates and momenta.
#[derive(Debug, Clone)]
pub struct OneCycleLR {
    /// The peak learning rate of each group (one value: the same for all groups).
    pub max_lrs: Vec<f64>,
    /// The number of steps in the cycle.
    pub total_steps: usize,
    /// The fraction of the cycle spent increasing the learning rate (default 0.3).
    pub pct_start: f64,
    /// Anneal linearly instead of by cosine (default false: torch's `anneal_strategy="cos"`).
    pub anneal_linear: bool,
    /// Cycle the momentum inversely to the learning rate (default true).
    pub cycle_momentum: bool,
    /// The lowest momentum (default 0.85).
    pub base_momentum: f64,
    /// The highest momentum (default 0.95).
    pub max_momentum: f64,
    /// The initial learning rate is `max_lr / div_factor` (default 25).
    pub div_factor: f64,
    /// The final learning rate is the initial one divided by this (default 1e4).
    pub final_div_factor: f64,
    /// Use a third phase that anneals from the initial to the final learning rate, after
    /// returning symmetrically to the initial one (default false).
    pub three_phase: bool,
    started: Option<Started>,
}

#[derive(Debug, Clone)]
struct Started {
    /// Per group: initial, max and min learning rate.
    lrs: Vec<[f64; 3]>,
    /// `"momentum"` or `"beta1"`, if the momentum cycles.
    momentum: Option<&'static str>,
    last_epoch: i64,
    last_lr: Vec<f64>,
}

const INITIAL: usize = 0;
const MAX: usize = 1;
const MIN: usize = 2;

/// One phase: last step, learning rates (start, end) as indices into `Started::lrs`, and the
/// momenta (start, end), `true` meaning `max_momentum`.
type Phase = (f64, usize, usize, bool, bool);

impl OneCycleLR {
    /// A schedule with torch's defaults; call [`OneCycleLR::start`] to apply it.
    pub fn new(max_lrs: Vec<f64>, total_steps: usize) -> Self {
        OneCycleLR {
            max_lrs,
            total_steps,
            pct_start: 0.3,
            anneal_linear: false,
            cycle_momentum: true,
            base_momentum: 0.85,
            max_momentum: 0.95,
            div_factor: 25.0,
            final_div_factor: 1e4,
            three_phase: false,
            started: None,
        }
    }

    /// Validates the schedule, sets each group's momentum to `max_momentum` (if cycled) and
    /// performs the initial step (learning rates `max_lr / div_factor`).
    ///
    /// # Errors
    /// [`crate::Error::InvalidArgument`] for torch's `ValueError` cases: `total_steps` 0,
    /// `pct_start` outside [0, 1], `max_lrs` of a length other than 1 or the number of groups,
    /// or `cycle_momentum` with an algorithm that has neither `beta1` nor `momentum`.
    pub fn start(&mut self, opt: &mut dyn Optimizer) -> Result<()> {
        if self.total_steps == 0 {
            return Err(check::invalid("total_steps", 0));
        }
        check::unit("pct_start", self.pct_start, true)?;
        let n = opt.num_groups();
        let max_lrs = match self.max_lrs.len() {
            1 => vec![self.max_lrs[0]; n],
            len if len == n => self.max_lrs.clone(),
            len => {
                return Err(check::invalid(
                    "max_lr",
                    format!("{len} values for {n} parameter groups"),
                ))
            }
        };
        let momentum = if !self.cycle_momentum {
            None
        } else if opt.hyperparameter(0, "beta1").is_ok() {
            Some("beta1")
        } else if opt.hyperparameter(0, "momentum").is_ok() {
            Some("momentum")
        } else {
            return Err(check::invalid(
                "cycle_momentum",
                "true (optimizer must support momentum or beta1 with `cycle_momentum` option enabled)",
            ));
        };
        let lrs = max_lrs
            .iter()
            .map(|&max| {
                let initial = max / self.div_factor;
                [initial, max, initial / self.final_div_factor]
            })
            .collect();
        if let Some(name) = momentum {
            for g in 0..n {
                opt.set_hyperparameter(g, name, Hyper::Float(self.max_momentum))?;
            }
        }
        self.started = Some(Started {
            lrs,
            momentum,
            last_epoch: -1,
            last_lr: Vec::new(),
        });
        self.step(opt)
    }

    fn phases(&self) -> Vec<Phase> {
        let total = self.total_steps as f64;
        let first = self.pct_start * total - 1.0;
        if self.three_phase {
            vec![
                (first, INITIAL, MAX, true, false),
                (
                    2.0 * self.pct_start * total - 2.0,
                    MAX,
                    INITIAL,
                    false,
                    true,
                ),
                (total - 1.0, INITIAL, MIN, true, true),
            ]
        } else {
            vec![
                (first, INITIAL, MAX, true, false),
                (total - 1.0, MAX, MIN, false, true),
            ]
        }
    }

    fn anneal(&self, start: f64, end: f64, pct: f64) -> f64 {
        if self.anneal_linear {
            (end - start) * pct + start
        } else {
            let cos_out = (PI * pct).cos() + 1.0;
            end + (start - end) / 2.0 * cos_out
        }
    }
}

impl Scheduler for OneCycleLR {
    /// # Errors
    /// Also [`crate::Error::InvalidArgument`] before [`OneCycleLR::start`] or after
    /// `total_steps` steps (torch: "Tried to step … times").
    fn step(&mut self, opt: &mut dyn Optimizer) -> Result<()> {
        let phases = self.phases();
        let Some(s) = self.started.as_ref() else {
            return Err(check::invalid(
                "scheduler",
                "OneCycleLR stepped before start()",
            ));
        };
        let step_num = s.last_epoch + 1;
        if step_num > self.total_steps as i64 {
            return Err(check::invalid(
                "step",
                format!(
                    "Tried to step {step_num} times. The specified number of total steps is {}",
                    self.total_steps
                ),
            ));
        }
        if opt.num_groups() != s.lrs.len() {
            return Err(check::invalid(
                "optimizer",
                "its number of parameter groups changed",
            ));
        }
        let momenta = [self.base_momentum, self.max_momentum];
        let mut lrs = Vec::with_capacity(s.lrs.len());
        let mut moms = Vec::with_capacity(s.lrs.len());
        for group in &s.lrs {
            let mut start_step = 0.0;
            for (i, &(end_step, lr0, lr1, m0, m1)) in phases.iter().enumerate() {
                if step_num as f64 <= end_step || i == phases.len() - 1 {
                    let pct = (step_num as f64 - start_step) / (end_step - start_step);
                    lrs.push(self.anneal(group[lr0], group[lr1], pct));
                    moms.push(self.anneal(momenta[usize::from(m0)], momenta[usize::from(m1)], pct));
                    break;
                }
                start_step = end_step;
            }
        }
        set_lrs(opt, &lrs)?;
        if let Some(name) = s.momentum {
            for (g, &m) in moms.iter().enumerate() {
                opt.set_hyperparameter(g, name, Hyper::Float(m))?;
            }
        }
        if let Some(s) = self.started.as_mut() {
            s.last_epoch = step_num;
            s.last_lr = lrs;
        }
        Ok(())
    }

    fn last_lr(&self) -> &[f64] {
        self.started.as_ref().map_or(&[], |s| &s.last_lr)
    }

    fn last_epoch(&self) -> i64 {
        self.started.as_ref().map_or(-1, |s| s.last_epoch)
    }
}
