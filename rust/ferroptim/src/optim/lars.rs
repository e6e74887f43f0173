//! [`Algorithm`](super::Algorithm) for LARS: the hyperparameters of the Python class
//! `ferroptim.LARS` (those of `pytorch_optimizer.LARS` 4.1.0) and its split of each group.
//!
//! The Python class steps a group as two native groups: tensors of two or more dimensions
//! with the trust ratio, the others (biases, normalisation weights) without weight decay or
//! trust ratio. [`Algorithm::rule_for`](super::Algorithm::rule_for) does the same here, so an
//! `Optim<Lars>` takes the Python class's steps. The field [`Lars::trust`] is not one of the
//! Python group's entries (nor of the checkpoint's): `true` (the default) applies the trust
//! ratio to the tensors of two or more dimensions, `false` to no tensor of the group.

use super::algorithm::check;
use crate::rules::Lars;
use tch::Tensor;

crate::algorithm!(
    Lars,
    "LARS",
    {
        lr: Float, weight_decay: Float, momentum: Float, dampening: Float,
        trust_coefficient: Float, nesterov: Bool, maximize: Bool
    },
    |c| {
        check::at_least("lr", c.lr, 0.0)?;
        check::at_least("weight_decay", c.weight_decay, 0.0)?;
        check::unit("momentum", c.momentum, false)?;
        check::unit("dampening", c.dampening, false)?;
        check::at_least("trust_coefficient", c.trust_coefficient, 0.0)
    },
    rule_for: plain_below_two_dims
);

/// Tensors of at most one dimension take plain momentum steps (no weight decay, no trust
/// ratio), as in the Python class.
fn plain_below_two_dims(c: &Lars, param: &Tensor) -> Option<Lars> {
    (c.trust && param.dim() <= 1).then_some(Lars { trust: false, ..*c })
}
