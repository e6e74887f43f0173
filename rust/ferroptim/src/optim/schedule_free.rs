//! Schedule-Free AdamW for [`Optim`]: [`ScheduleFreeAdamWConfig`], a parameter group as the
//! Python class `ferroptim.ScheduleFreeAdamW` keeps it (hyperparameters and the group's
//! schedule state), and [`Optim::train`] / [`Optim::eval`].
//!
//! Defazio et al., "The Road Less Scheduled" (NeurIPS 2024), Algorithm 1, as the authors'
//! reference implementation (github.com/facebookresearch/schedule_free, `AdamWScheduleFree`)
//! computes it. The per-step update is the rule [`ScheduleFreeAdamW`]; the configuration adds
//! what the reference keeps per group and advances once per step: the step count `k`, the
//! running sum of the average's weights `weight_sum`, the largest learning rate so far
//! `lr_max`, the last warmed-up learning rate `scheduled_lr` and the mode `train_mode`.

use super::algorithm::check;
use super::stateful::Optim;
use crate::element::Float;
use crate::error::{Error, Result};
use crate::rule::{Rule, ScalarState};
use crate::rules::ScheduleFreeAdamW;
use tch::Tensor;

/// A Schedule-Free AdamW parameter group: the Python class's group entries under their names
/// (`betas` split into `beta1`, `beta2`). `Default` gives the reference's defaults and a
/// group that has not stepped yet, in train mode.
///
/// The parameters hold the gradient-evaluation point `y` while training. Call
/// [`Optim::eval`] before evaluating the model or saving it (the parameters become the
/// average `x`) and [`Optim::train`] before training again; [`Optimizer::step`] in eval mode
/// is an error. No learning-rate scheduler is needed (`warmup_steps` warms up linearly).
///
/// ```
/// use ferroptim::{Optim, Optimizer, ScheduleFreeAdamWConfig};
/// use tch::{Kind, Tensor};
///
/// # fn main() -> ferroptim::Result<()> {
/// let w = Tensor::from_slice(&[1.0f64, -2.0]).set_requires_grad(true);
/// let config = ScheduleFreeAdamWConfig { lr: 0.1, warmup_steps: 2, ..Default::default() };
/// let mut opt = Optim::new(vec![w.shallow_clone()], config)?;
/// for _ in 0..3 {
///     opt.zero_grad()?;
///     (&w * &w).sum(Kind::Double).backward();
///     opt.step()?;
/// }
/// assert_eq!(opt.config(0)?.k, 3);
/// opt.eval()?; // parameters: the average x
/// assert!(opt.step().is_err());
/// opt.train()?; // back to y
/// # Ok(())
/// # }
/// ```
///
/// [`Optimizer::step`]: super::Optimizer::step
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScheduleFreeAdamWConfig {
    /// Learning rate γ after warmup (default 0.0025).
    pub lr: f64,
    /// β₁, the interpolation between `z` and `x` that gives `y`, in (0, 1) (default 0.9).
    pub beta1: f64,
    /// β₂, decay of the second moment `exp_avg_sq`, in [0, 1) (default 0.999).
    pub beta2: f64,
    /// ε added to the denominator (default 1e-8).
    pub eps: f64,
    /// Weight decay λ, applied at `y` (default 0).
    pub weight_decay: f64,
    /// Steps of linear learning-rate warmup (default 0).
    pub warmup_steps: i64,
    /// Polynomial weighting power `r` of the average: `w_t = t^r · lr_max^p` (default 0).
    pub r: f64,
    /// Power `p` of `lr_max` in the average's weights (default 2).
    pub weight_lr_power: f64,
    /// Maximize the objective instead of minimizing it (default false).
    pub maximize: bool,
    /// Steps taken by the group (group state; default 0).
    pub k: i64,
    /// Whether the parameters hold `y` (train mode) or the average `x` (group state; default
    /// true). Change it with [`Optim::train`] / [`Optim::eval`], which also move the
    /// parameters.
    pub train_mode: bool,
    /// Σ w of the weights so far (group state; default 0).
    pub weight_sum: f64,
    /// The largest warmed-up learning rate so far (group state; default −1: none yet).
    pub lr_max: f64,
    /// The warmed-up learning rate of the last step (group state; default 0).
    pub scheduled_lr: f64,
}

impl Default for ScheduleFreeAdamWConfig {
    fn default() -> Self {
        ScheduleFreeAdamWConfig {
            lr: 0.0025,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            warmup_steps: 0,
            r: 0.0,
            weight_lr_power: 2.0,
            maximize: false,
            k: 0,
            train_mode: true,
            weight_sum: 0.0,
            lr_max: -1.0,
            scheduled_lr: 0.0,
        }
    }
}

impl ScheduleFreeAdamWConfig {
    /// The next step's rule and the group after it, with the reference's (and the Python
    /// class's) arithmetic: warmed-up `lr = lr·min(1, (k+1)/warmup_steps)`,
    /// `lr_max = max(lr, lr_max)`, `w = (k+1)^r · lr_max^p`, `c = w / (weight_sum + w)`.
    fn schedule(&self) -> (ScheduleFreeAdamW, ScheduleFreeAdamWConfig) {
        let k = self.k + 1;
        let warmup = if self.k < self.warmup_steps {
            k as f64 / self.warmup_steps as f64
        } else {
            1.0
        };
        let lr = self.lr * warmup;
        // Python's `max(lr, lr_max)`: `lr` unless `lr_max` is larger.
        let lr_max = if self.lr_max > lr { self.lr_max } else { lr };
        let weight = (k as f64).powf(self.r) * lr_max.powf(self.weight_lr_power);
        let weight_sum = self.weight_sum + weight;
        let ckp1 = if weight_sum != 0.0 {
            weight / weight_sum
        } else {
            0.0
        };
        let rule = ScheduleFreeAdamW {
            lr,
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            weight_decay: self.weight_decay,
            ckp1,
            step: k as f64,
            maximize: self.maximize,
        };
        let next = ScheduleFreeAdamWConfig {
            k,
            scheduled_lr: lr,
            lr_max,
            weight_sum,
            ..*self
        };
        (rule, next)
    }
}

impl Rule for ScheduleFreeAdamWConfig {
    type Scalars = <ScheduleFreeAdamW as Rule>::Scalars;

    fn state_names(&self) -> &'static [&'static str] {
        &["z", "exp_avg_sq"]
    }

    /// None: the schedule is the group's.
    fn scalar_state_names(&self) -> &'static [&'static str] {
        &[]
    }

    /// The scalars of the step that `k` and the rest of the group state lead to.
    fn scalars(&self, scalar_state: &mut [ScalarState], fresh: bool) -> Self::Scalars {
        self.schedule().0.scalars(scalar_state, fresh)
    }

    #[inline(always)]
    fn update<F: Float>(s: &Self::Scalars, param: F, grad: F, state: &mut [F]) -> F {
        ScheduleFreeAdamW::update(s, param, grad, state)
    }
}

crate::algorithm!(
    ScheduleFreeAdamWConfig,
    "ScheduleFreeAdamW",
    {
        lr: Float, beta1: Float, beta2: Float, eps: Float, weight_decay: Float,
        warmup_steps: Int, r: Float, weight_lr_power: Float, maximize: Bool, k: Int,
        train_mode: Bool, weight_sum: Float, lr_max: Float, scheduled_lr: Float
    },
    |c| {
        check::at_least("lr", c.lr, 0.0)?;
        check::at_least("eps", c.eps, 0.0)?;
        check::at_least("weight_decay", c.weight_decay, 0.0)?;
        if c.warmup_steps < 0 {
            return Err(check::invalid("warmup_steps", c.warmup_steps));
        }
        check::unit("betas[0]", c.beta1, false)?;
        if c.beta1 == 0.0 {
            return Err(check::invalid("betas[0]", c.beta1));
        }
        check::unit("betas[1]", c.beta2, false)
    },
    init: init_state,
    advance: advance
);

/// `z` a copy of the parameter, `exp_avg_sq` zeros.
fn init_state(_: &ScheduleFreeAdamWConfig, param: &Tensor) -> Result<super::ParamState> {
    let z = param.f_empty_like()?;
    z.shallow_clone().f_copy_(&param.f_detach()?)?;
    Ok(super::ParamState::from([
        ("z".to_string(), z),
        ("exp_avg_sq".to_string(), param.f_zeros_like()?),
    ]))
}

/// The group after its next step; an error in eval mode.
fn advance(c: &ScheduleFreeAdamWConfig, group: usize) -> Result<Option<ScheduleFreeAdamWConfig>> {
    if !c.train_mode {
        return Err(Error::StateMismatch {
            what: format!("ScheduleFreeAdamW group {group}"),
            expected: "train mode: call train() before step() (and eval() before evaluating)"
                .into(),
            got: "eval mode".into(),
        });
    }
    Ok(Some(c.schedule().1))
}

impl Optim<ScheduleFreeAdamWConfig> {
    /// Switches the parameters of the groups in train mode to the average `x`, for
    /// evaluation and checkpoints (the Python class's `eval()`): `x = lerp(y, z, 1 − 1/β₁)`
    /// for every parameter that has state. Groups already in eval mode are left alone.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] if a `z` does not have its parameter's shape,
    /// [`Error::Torch`] if libtorch fails; nothing changes in the first case.
    pub fn eval(&mut self) -> Result<()> {
        self.switch(false)
    }

    /// Switches the parameters of the groups in eval mode back to `y`, where gradients are
    /// taken (the Python class's `train()`): `y = lerp(x, z, 1 − β₁)`. A new optimizer is in
    /// train mode.
    ///
    /// # Errors
    /// As [`Optim::eval`].
    pub fn train(&mut self) -> Result<()> {
        self.switch(true)
    }

    fn switch(&mut self, train: bool) -> Result<()> {
        let mut moves = Vec::new();
        for (gi, g) in self.groups.iter().enumerate() {
            if g.config.train_mode == train {
                continue;
            }
            let beta1 = g.config.beta1;
            // y = lerp(x, z, 1 − β₁)  ⇔  x = lerp(y, z, 1 − 1/β₁)
            let weight = if train {
                1.0 - beta1
            } else {
                1.0 - 1.0 / beta1
            };
            for (pi, (p, st)) in g.params.iter().zip(&g.state).enumerate() {
                let Some(z) = st.get("z") else { continue };
                if z.size() != p.size() {
                    return Err(Error::ShapeMismatch {
                        what: format!("z of params[{pi}] in group {gi}"),
                        expected: p.size(),
                        got: z.size(),
                    });
                }
                moves.push((p, z, weight));
            }
        }
        for (p, z, weight) in moves {
            let z = z.f_to_device(p.device())?;
            let _ = p.f_detach()?.f_lerp_(&z, weight)?;
        }
        for g in &mut self.groups {
            g.config.train_mode = train;
        }
        Ok(())
    }
}
