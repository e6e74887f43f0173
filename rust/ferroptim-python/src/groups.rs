//! Python group dicts → core groups. Keys mirror torch.optim's `param_groups` names.

use crate::error::CoreError;
use crate::tensor::PyTensor;
use ferroptim::{Adam, Group, ParamTensors, Sgd};
use pyo3::FromPyObject;

/// The tensors of one group: flat lists, so that extracting them allocates no Python objects
/// per parameter.
#[derive(FromPyObject)]
#[pyo3(from_item_all)]
pub struct TensorArgs {
    /// The parameters that have a gradient.
    params: Vec<PyTensor>,
    /// Their gradients.
    grads: Vec<PyTensor>,
    /// Their state tensors, parameter-major: `n_state` per parameter in the rule's order
    /// (`exp_avg`, `exp_avg_sq`, …).
    states: Vec<PyTensor>,
    /// Their `step` tensors; empty for rules without a step counter.
    steps: Vec<PyTensor>,
    /// Per parameter, whether its state was just created.
    fresh: Vec<bool>,
}

impl TensorArgs {
    /// Builds the core group, checking that the lists have one entry (or `n_state` entries)
    /// per parameter.
    pub fn into_group<R: ferroptim::Rule>(self, rule: R) -> Result<Group<R>, CoreError> {
        let n = self.params.len();
        let n_state = rule.state_names().len();
        let lists = [
            ("grads", self.grads.len(), n),
            ("states", self.states.len(), n * n_state),
            ("fresh", self.fresh.len(), n),
            (
                "steps",
                self.steps.len(),
                if rule.uses_step() { n } else { 0 },
            ),
        ];
        for (name, len, want) in lists {
            if len != want {
                return Err(ferroptim::Error::StateMismatch {
                    what: format!("group list '{name}'"),
                    expected: format!("{want} entries for {n} parameters"),
                    got: format!("{len}"),
                }
                .into());
            }
        }
        let mut steps = self.steps.into_iter().map(|t| t.0);
        let mut states = self.states.into_iter().map(|t| t.0);
        let params = self
            .params
            .into_iter()
            .zip(self.grads)
            .zip(self.fresh)
            .map(|((p, g), fresh)| ParamTensors {
                param: p.0,
                grad: g.0,
                state: states.by_ref().take(n_state).collect(),
                step: steps.next(),
                fresh,
            })
            .collect();
        Ok(Group { rule, params })
    }
}

/// A group's hyperparameters, as extracted from its dict, and the core rule they make.
pub trait RuleArgs {
    /// The core rule.
    type Rule: ferroptim::Rule + Send;
    /// Builds the core rule.
    fn rule(&self) -> Self::Rule;
}

/// SGD hyperparameters of one group (floats; the Python class converts tensors).
#[derive(FromPyObject)]
#[pyo3(from_item_all)]
pub struct SgdArgs {
    lr: f64,
    momentum: f64,
    dampening: f64,
    weight_decay: f64,
    nesterov: bool,
    maximize: bool,
}

impl RuleArgs for SgdArgs {
    type Rule = Sgd;
    fn rule(&self) -> Sgd {
        Sgd {
            lr: self.lr,
            momentum: self.momentum,
            dampening: self.dampening,
            weight_decay: self.weight_decay,
            nesterov: self.nesterov,
            maximize: self.maximize,
        }
    }
}

/// Adam/AdamW hyperparameters of one group.
#[derive(FromPyObject)]
#[pyo3(from_item_all)]
pub struct AdamArgs {
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    amsgrad: bool,
    maximize: bool,
    decoupled_weight_decay: bool,
}

impl RuleArgs for AdamArgs {
    type Rule = Adam;
    fn rule(&self) -> Adam {
        Adam {
            lr: self.lr,
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            weight_decay: self.weight_decay,
            amsgrad: self.amsgrad,
            maximize: self.maximize,
            decoupled_weight_decay: self.decoupled_weight_decay,
        }
    }
}
