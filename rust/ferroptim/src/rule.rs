//! The [`Rule`] trait: an elementwise optimizer written once, run by the fused driver.

use crate::element::Float;

/// Largest number of per-element state tensors a rule may keep.
pub const MAX_STATE: usize = 4;

/// An elementwise optimizer algorithm (DESIGN.md §2).
///
/// A rule states which per-parameter state tensors it keeps (under torch.optim's names), which
/// scalars it precomputes once per parameter and step (bias corrections, step sizes…), and the
/// update of one element. The driver ([`crate::step`]) does everything else: validation,
/// threads, dtype widening/rounding and the fallback for non-contiguous or non-CPU tensors.
///
/// `update` must be a pure function of its arguments, so that the result of each element does
/// not depend on how the work is split across threads.
pub trait Rule: Sync {
    /// Scalars derived from the hyperparameters and the step count, computed in `f64` (as
    /// torch.optim computes them in Python) and converted to the element's [`Float`] type at use.
    type Scalars: Copy + Send + Sync;

    /// torch.optim's names of the state tensors, in the order they are passed to the driver
    /// (e.g. `["exp_avg", "exp_avg_sq"]`). At most [`MAX_STATE`].
    fn state_names(&self) -> &'static [&'static str];

    /// Whether the algorithm keeps a per-parameter `step` counter (a one-element tensor that the
    /// driver increments by one before calling [`Rule::scalars`]).
    fn uses_step(&self) -> bool;

    /// Per-parameter scalars for this step. `step` is the counter after its increment (0 if the
    /// rule keeps none); `fresh` is true when the state tensors were just created and hold no
    /// history yet (e.g. SGD's `momentum_buffer` is initialised from the gradient).
    fn scalars(&self, step: f64, fresh: bool) -> Self::Scalars;

    /// Updates one element: returns the new parameter value and updates `state` in place.
    /// `state.len()` equals `self.state_names().len()`.
    fn update<F: Float>(s: &Self::Scalars, param: F, grad: F, state: &mut [F]) -> F;
}
