//! [`Optim`]: the stateful optimizer over tch tensors, for any [`Algorithm`].

use super::algorithm::{check, Algorithm, Hyperparameters, ParamState};
use super::grad;
use super::Optimizer;
use crate::driver::{read_grads, step_groups, Group, ParamTensors, StepCache};
use crate::error::{Error, Result};
use tch::{nn::VarStore, Tensor};

/// Parameters an optimizer can be built over: a [`VarStore`]'s trainable variables (in their
/// creation order, like `model.parameters()`), or explicit tensors (handles to the caller's
/// tensors, e.g. leaf tensors with `requires_grad`).
pub trait IntoParams {
    /// The parameters, as handles ([`Tensor::shallow_clone`]) sharing the caller's storage.
    fn into_params(self) -> Vec<Tensor>;
}

impl IntoParams for &VarStore {
    fn into_params(self) -> Vec<Tensor> {
        self.trainable_variables()
    }
}

impl IntoParams for Vec<Tensor> {
    fn into_params(self) -> Vec<Tensor> {
        self
    }
}

impl IntoParams for &[Tensor] {
    fn into_params(self) -> Vec<Tensor> {
        self.iter().map(Tensor::shallow_clone).collect()
    }
}

impl IntoParams for &Vec<Tensor> {
    fn into_params(self) -> Vec<Tensor> {
        self.as_slice().into_params()
    }
}

/// One parameter group: its configuration (hyperparameters), parameters and their state.
#[derive(Debug)]
pub(crate) struct ParamGroup<R> {
    pub(crate) config: R,
    pub(crate) params: Vec<Tensor>,
    /// `state[i]` belongs to `params[i]`; empty until the parameter's first step.
    pub(crate) state: Vec<ParamState>,
    /// Group entries read from a checkpoint that this algorithm does not use (`foreach`,
    /// `initial_lr`, …), kept so that saving writes them back.
    pub(crate) extra: serde_json::Map<String, serde_json::Value>,
}

/// A stateful optimizer: parameter groups, each with its own configuration `R` (the rule struct
/// with its hyperparameters, e.g. [`crate::Adam`]), and per-parameter state under torch.optim's
/// names, created on a parameter's first step as torch.optim creates it.
///
/// For an elementwise [`Algorithm`], each [`Optimizer::step`] is one call of the fused
/// multi-threaded driver ([`crate::step`]) over every parameter that has a gradient; for the
/// configurations of [`crate::tensor_rules`] (Adafactor, Muon, SparseAdam) it is their step
/// function. Every method validates its input before it changes anything and returns an
/// [`Error`] instead of panicking.
///
/// ```
/// use ferroptim::{Adam, Optim, Optimizer};
/// use tch::{nn, nn::Module, Device, Kind, Tensor};
///
/// # fn main() -> ferroptim::Result<()> {
/// let vs = nn::VarStore::new(Device::Cpu);
/// let net = nn::linear(vs.root(), 2, 1, Default::default());
/// let mut opt = Optim::new(&vs, Adam { lr: 1e-2, ..Adam::adamw() })?;
/// let x = Tensor::from_slice(&[1.0f32, 2.0]).view([1, 2]);
/// opt.zero_grad()?;
/// net.forward(&x).sum(Kind::Float).backward();
/// opt.step()?;
/// assert_eq!(opt.state(0, 0)?["step"].double_value(&[]), 1.0);
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Optim<R: Hyperparameters> {
    pub(crate) groups: Vec<ParamGroup<R>>,
    /// The driver's overlap-check result and scratch buffers, reused from step to step.
    cache: StepCache,
}

impl<R: Hyperparameters> Optim<R> {
    /// An optimizer with one group: `params` with hyperparameters `config`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `config` fails torch's checks
    /// ([`Hyperparameters::validate`], [`Hyperparameters::check_param`]),
    /// `params` is empty, holds a tensor twice or a non-leaf tensor.
    pub fn new(params: impl IntoParams, config: R) -> Result<Self> {
        let params = params.into_params();
        if params.is_empty() {
            return Err(check::invalid("params", "[] (an empty parameter list)"));
        }
        let mut opt = Optim {
            groups: Vec::new(),
            cache: StepCache::default(),
        };
        opt.add_param_group(params, config)?;
        Ok(opt)
    }

    /// Adds a parameter group (torch's `add_param_group`) and returns its index.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `config` fails torch's checks, or a tensor is not a leaf
    /// or is already optimized (in this or another group).
    pub fn add_param_group(&mut self, params: impl IntoParams, config: R) -> Result<usize> {
        config.validate()?;
        let params = params.into_params();
        for (i, p) in params.iter().enumerate() {
            config.check_param(i, p)?;
            if !p.f_is_leaf()? {
                return Err(check::invalid(
                    "params",
                    format!("params[{i}] (can't optimize a non-leaf Tensor)"),
                ));
            }
            let known = self.groups.iter().flat_map(|g| &g.params);
            if known.chain(&params[..i]).any(|q| same_tensor(p, q)) {
                return Err(check::invalid(
                    "params",
                    format!(
                        "params[{i}] (some parameters appear in more than one parameter group)"
                    ),
                ));
            }
        }
        let state = params.iter().map(|_| ParamState::new()).collect();
        self.groups.push(ParamGroup {
            config,
            params,
            state,
            extra: serde_json::Map::new(),
        });
        Ok(self.groups.len() - 1)
    }

    /// The configuration (hyperparameters) of group `group`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if there is no such group.
    pub fn config(&self, group: usize) -> Result<&R> {
        Ok(&self.group(group)?.config)
    }

    /// Replaces group `group`'s configuration (its state is kept, as when a torch.optim user
    /// edits `param_groups[group]`).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if there is no such group or `config` fails torch's checks;
    /// then nothing changes.
    pub fn set_config(&mut self, group: usize, config: R) -> Result<()> {
        config.validate()?;
        self.group_mut(group)?.config = config;
        Ok(())
    }

    /// Changes group `group`'s configuration with `edit`, e.g.
    /// `opt.update_config(0, |c| c.weight_decay = 0.1)`.
    ///
    /// # Errors
    /// As [`Optim::set_config`]; on error nothing changes.
    pub fn update_config(&mut self, group: usize, edit: impl FnOnce(&mut R)) -> Result<()> {
        let mut config = self.config(group)?.clone();
        edit(&mut config);
        self.set_config(group, config)
    }

    /// The parameters of group `group`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if there is no such group.
    pub fn params(&self, group: usize) -> Result<&[Tensor]> {
        Ok(&self.group(group)?.params)
    }

    /// The state of parameter `index` of group `group` under torch.optim's names (`exp_avg`,
    /// `step`, …): empty before its first step.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if there is no such group or parameter.
    pub fn state(&self, group: usize, index: usize) -> Result<&ParamState> {
        let g = self.group(group)?;
        g.state.get(index).ok_or_else(|| {
            check::invalid(
                "index",
                format!("{index} (group {group} has {} parameters)", g.params.len()),
            )
        })
    }

    /// Resets the gradients in one native call per group ([`zero_grads`](super::zero_grads),
    /// torch.optim's `zero_grad` semantics): `set_to_none` (torch's default, and
    /// [`Optimizer::zero_grad`]'s) makes them undefined, like `p.grad = None`, so that
    /// parameters without a gradient in the next backward pass are skipped by the step;
    /// otherwise they are detached (or marked not to require grad) and filled with zeros in
    /// place, and every parameter takes part in the next step.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if a parameter is not a leaf tensor (nothing changed in its
    /// group); [`Error::Torch`] if libtorch reports an error.
    pub fn zero_grad_with(&mut self, set_to_none: bool) -> Result<()> {
        for g in &self.groups {
            grad::zero_grads(&g.params, set_to_none)?;
        }
        Ok(())
    }

    pub(crate) fn group(&self, group: usize) -> Result<&ParamGroup<R>> {
        let n = self.groups.len();
        self.groups.get(group).ok_or_else(|| no_group(group, n))
    }

    pub(crate) fn group_mut(&mut self, group: usize) -> Result<&mut ParamGroup<R>> {
        let n = self.groups.len();
        self.groups.get_mut(group).ok_or_else(|| no_group(group, n))
    }
}

impl<R: Algorithm> Optim<R> {
    /// [`Optimizer::step`] with gradients scaled by `grad_scale`, unscaled in the fused pass
    /// and written back (see [`crate::step_unscaling`]); for loss scaling in mixed precision.
    ///
    /// # Errors
    /// As [`Optimizer::step`]; also [`Error::InvalidArgument`] if `grad_scale` is zero or not
    /// finite.
    pub fn step_unscaling(&mut self, grad_scale: f64) -> Result<()> {
        self.run(Some(grad_scale))
    }

    /// One step: gathers the parameters with a gradient and their state (creating missing
    /// state), runs the driver, and keeps the created state (and the groups' advanced
    /// configurations, [`Algorithm::advance`]) only if it succeeded.
    fn run(&mut self, grad_scale: Option<f64>) -> Result<()> {
        let advanced = (self.groups.iter().enumerate())
            .map(|(gi, g)| g.config.advance(gi))
            .collect::<Result<Vec<_>>>()?;
        let mut groups = Vec::with_capacity(self.groups.len());
        let mut created = Vec::new();
        for (gi, g) in self.groups.iter().enumerate() {
            let rule = g.config.clone();
            // Parameters that `rule_for` gives a rule of their own, each in a driver group.
            let mut own = Vec::new();
            let names = rule.state_names();
            let scalar_names = rule.scalar_state_names();
            let first = names.first().or(scalar_names.first());
            let mut params = Vec::with_capacity(g.params.len());
            let grads = read_grads(&g.params)?;
            for (pi, ((p, st), grad)) in g.params.iter().zip(&g.state).zip(grads).enumerate() {
                if !grad.defined() {
                    continue;
                }
                let mut fresh = false;
                let mut new_state = None;
                if let Some(first) = first {
                    if !st.contains_key(*first) {
                        let mut merged = st
                            .iter()
                            .map(|(k, v)| (k.clone(), v.shallow_clone()))
                            .collect::<ParamState>();
                        merged.extend(rule.init_state(p)?);
                        new_state = Some(merged);
                        fresh = true;
                    }
                }
                let source = new_state.as_ref().unwrap_or(st);
                let take = |names: &[&str]| -> Result<Vec<Tensor>> {
                    names
                        .iter()
                        .map(|n| {
                            source.get(*n).map(Tensor::shallow_clone).ok_or_else(|| {
                                Error::StateMismatch {
                                    what: format!("state of params[{pi}] in group {gi}"),
                                    expected: format!("{names:?}"),
                                    got: format!("{:?}", source.keys().collect::<Vec<_>>()),
                                }
                            })
                        })
                        .collect()
                };
                let tensors = ParamTensors {
                    param: p.shallow_clone(),
                    grad,
                    state: take(names)?,
                    scalar_state: take(scalar_names)?,
                    fresh,
                };
                match rule.rule_for(p) {
                    None => params.push(tensors),
                    Some(rule) => own.push(Group {
                        rule,
                        params: vec![tensors],
                    }),
                }
                if let Some(s) = new_state {
                    created.push((gi, pi, s));
                }
            }
            groups.push(Group { rule, params });
            groups.extend(own);
        }
        step_groups(&groups, grad_scale, &mut self.cache)?;
        for (gi, pi, s) in created {
            self.groups[gi].state[pi] = s;
        }
        for (g, config) in self.groups.iter_mut().zip(advanced) {
            if let Some(config) = config {
                g.config = config;
            }
        }
        Ok(())
    }
}

impl<R: Algorithm> Optimizer for Optim<R> {
    fn step(&mut self) -> Result<()> {
        self.run(None)
    }

    crate::optim::stateful::optimizer_methods!();
}

/// The [`Optimizer`] methods that are the same for every configuration type (all but
/// `step`), for `impl Optimizer for Optim<…>` blocks.
macro_rules! optimizer_methods {
    () => {
        fn zero_grad(&mut self) -> $crate::Result<()> {
            self.zero_grad_with(true)
        }

        fn num_groups(&self) -> usize {
            self.groups.len()
        }

        fn lr(&self, group: usize) -> $crate::Result<f64> {
            Ok($crate::optim::Hyperparameters::lr(
                &self.group(group)?.config,
            ))
        }

        fn set_lr(&mut self, group: usize, lr: f64) -> $crate::Result<()> {
            self.update_config(group, |c| $crate::optim::Hyperparameters::set_lr(c, lr))
        }

        fn hyperparameter(&self, group: usize, name: &str) -> $crate::Result<$crate::Hyper> {
            $crate::optim::Hyperparameters::get(&self.group(group)?.config, name)
                .ok_or_else(|| $crate::optim::check::invalid("hyperparameter", name))
        }

        fn set_hyperparameter(
            &mut self,
            group: usize,
            name: &str,
            value: $crate::Hyper,
        ) -> $crate::Result<()> {
            let mut config = self.config(group)?.clone();
            $crate::optim::Hyperparameters::set(&mut config, name, value)?;
            self.set_config(group, config)
        }

        fn save(&self, path: &std::path::Path) -> $crate::Result<()> {
            $crate::optim::checkpoint::save(self, path)
        }

        fn load(&mut self, path: &std::path::Path) -> $crate::Result<()> {
            $crate::optim::checkpoint::load(self, path)
        }
    };
}
pub(crate) use optimizer_methods;

fn no_group(group: usize, n: usize) -> Error {
    check::invalid(
        "group",
        format!("{group} (the optimizer has {n} parameter groups)"),
    )
}

/// Whether two handles refer to the same parameter (same storage address, shape and strides).
fn same_tensor(a: &Tensor, b: &Tensor) -> bool {
    a.numel() > 0
        && a.data_ptr() == b.data_ptr()
        && a.size() == b.size()
        && a.stride() == b.stride()
}
