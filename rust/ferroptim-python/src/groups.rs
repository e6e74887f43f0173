//! Python group dicts → core groups. Keys mirror torch.optim's `param_groups` names.

use crate::error::CoreError;
use crate::tensor::PyTensor;
use ferroptim::{Group, ParamTensors};
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
    /// Their scalar state tensors (`step`, …), parameter-major: the rule's scalar state names
    /// per parameter.
    scalar_states: Vec<PyTensor>,
    /// Per parameter, whether its state was just created.
    fresh: Vec<bool>,
}

impl TensorArgs {
    /// Builds the core group, checking that the lists have one entry (or `n_state` entries)
    /// per parameter.
    pub fn into_group<R: ferroptim::Rule>(self, rule: R) -> Result<Group<R>, CoreError> {
        let n = self.params.len();
        let n_state = rule.state_names().len();
        let n_scalar = rule.scalar_state_names().len();
        let lists = [
            ("grads", self.grads.len(), n),
            ("states", self.states.len(), n * n_state),
            ("fresh", self.fresh.len(), n),
            ("scalar_states", self.scalar_states.len(), n * n_scalar),
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
        let mut scalars = self.scalar_states.into_iter().map(|t| t.0);
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
                scalar_state: scalars.by_ref().take(n_scalar).collect(),
                fresh,
            })
            .collect();
        Ok(Group { rule, params })
    }
}
