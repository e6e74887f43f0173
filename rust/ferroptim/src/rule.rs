//! The [`Rule`] trait: an elementwise optimizer written once, run by the fused driver.

use crate::element::Float;
use half::{bf16, f16};
use tch::Kind;

/// Largest number of per-element state tensors a rule may keep.
pub const MAX_STATE: usize = 4;

/// Largest number of per-parameter scalar state tensors (`step`, …) a rule may keep.
pub const MAX_SCALAR_STATE: usize = 3;

/// An elementwise optimizer algorithm (DESIGN.md §2).
///
/// A rule states which per-parameter state it keeps (under torch.optim's names): state
/// tensors shaped like the parameter (`exp_avg`, …) and one-element *scalar state* tensors
/// (`step`, NAdam's `mu_product`, …). Once per parameter and step it advances the scalar state
/// and precomputes the scalars of the update (bias corrections, step sizes…); then it updates
/// one element at a time. The driver ([`crate::step`]) does everything else: validation,
/// threads, dtype widening/rounding and the fallback for non-contiguous or non-CPU tensors.
///
/// `update` must be a pure function of its arguments, so that the result of each element does
/// not depend on how the work is split across threads.
pub trait Rule: Sync {
    /// Scalars derived from the hyperparameters and the scalar state, computed in `f64` (as
    /// torch.optim computes them in Python) and converted to the element's [`Float`] type at use.
    type Scalars: Copy + Send + Sync;

    /// torch.optim's names of the state tensors, in the order they are passed to the driver
    /// (e.g. `["exp_avg", "exp_avg_sq"]`). At most [`MAX_STATE`].
    fn state_names(&self) -> &'static [&'static str];

    /// torch.optim's names of the per-parameter scalar state tensors (one element each, e.g. a
    /// float32 0-d CPU tensor), in the order they are passed to the driver. At most
    /// [`MAX_SCALAR_STATE`]. The default is `["step"]`.
    fn scalar_state_names(&self) -> &'static [&'static str] {
        &["step"]
    }

    /// Advances the parameter's scalar state for this step (e.g. `step += 1`) and returns the
    /// per-parameter scalars of the update. `scalar_state` holds the current values, in the
    /// order of [`Rule::scalar_state_names`]; the driver writes them back. `fresh` is true when
    /// the state tensors were just created and hold no history (e.g. SGD's `momentum_buffer`
    /// is initialised from the gradient). It must be a pure function of `self`, the values in
    /// `scalar_state` and `fresh`: the driver computes it once for consecutive parameters of a
    /// group whose scalar state holds the same values (e.g. the same `step`).
    fn scalars(&self, scalar_state: &mut [ScalarState], fresh: bool) -> Self::Scalars;

    /// Updates one element: returns the new parameter value and updates `state` in place.
    /// `state.len()` equals `self.state_names().len()`.
    fn update<F: Float>(s: &Self::Scalars, param: F, grad: F, state: &mut [F]) -> F;

    /// True if [`Rule::update_slice`] updates whole pieces (and [`Rule::norm_terms_slice`]
    /// computes the norm terms of whole pieces): every instruction-set variant of the driver
    /// then calls them instead of its own per-element loops (the default, false).
    const UPDATES_SLICES: bool = false;

    /// Updates a whole contiguous piece of one parameter at once, instead of element by
    /// element with [`Rule::update`]: `param`, `grad` and each `state[k]` have the same
    /// length; with `grad_scale`, each gradient element is divided by it, and stored back so
    /// divided, before it is used. Returns false (the default) to let the driver call
    /// [`Rule::update`] per element. Rules whose update is data (expression graphs,
    /// `crate::expr`) evaluate it over blocks here. Must give the same result for any split
    /// of the piece (the driver splits work across threads).
    #[inline(always)]
    fn update_slice<S: crate::element::Storage>(
        _s: &Self::Scalars,
        _grad_scale: Option<f64>,
        _param: &mut [S],
        _grad: &mut [S],
        _state: &mut [&mut [S]],
    ) -> bool {
        false
    }

    /// How many per-tensor sums of squares the parameter's update needs (at most
    /// [`MAX_NORMS`]; e.g. LAMB's and LARS's trust ratios need two norms). The default, 0,
    /// is a purely elementwise rule. When nonzero, the driver first reduces
    /// [`Rule::norm_terms`] over the whole tensor, then calls [`Rule::with_norms`], then runs
    /// [`Rule::update`] (see `driver/norms.rs`).
    fn norms(_s: &Self::Scalars) -> usize {
        0
    }

    /// The values whose squares the driver sums over the tensor (the first [`Rule::norms`] of
    /// them), computed from the element's current parameter, gradient and state without
    /// changing anything (e.g. the decayed parameter and the update direction). Pure, like
    /// [`Rule::update`].
    fn norm_terms<F: Float>(
        _s: &Self::Scalars,
        _param: F,
        _grad: F,
        _state: &[F],
    ) -> [F; MAX_NORMS] {
        [F::ZERO; MAX_NORMS]
    }

    /// The norm terms of a whole contiguous piece at once, instead of element by element with
    /// [`Rule::norm_terms`] (called only with [`Rule::UPDATES_SLICES`]): `param`, `grad` and
    /// each `state[k]` have the same length; with `grad_scale`, each gradient element is
    /// divided by it first (in the compute type, not stored). The terms are handed to `sink`
    /// for consecutive runs of elements, in order, one row per norm term (the first
    /// [`Rule::norms`] terms, rows of equal length); each run but the last must be a multiple
    /// of 16 elements long. The driver sums their squares exactly as those of
    /// [`Rule::norm_terms`], so the sums do not depend on the split. Returns false (the
    /// default), having called nothing, to let the driver call [`Rule::norm_terms`] per element.
    #[inline(always)]
    fn norm_terms_slice<S: crate::element::Storage>(
        _s: &Self::Scalars,
        _grad_scale: Option<f64>,
        _param: &[S],
        _grad: &[S],
        _state: &[&[S]],
        _sink: &mut NormSink<'_, S::Compute>,
    ) -> bool {
        false
    }

    /// Completes the parameter's scalars from the sums of squares (`sums[k]` = Σ
    /// `norm_terms[k]²`, accumulated in `f64` in a fixed order whatever the thread count).
    fn with_norms(_s: &mut Self::Scalars, _sums: [f64; MAX_NORMS]) {}
}

/// Receives the norm terms of consecutive runs of elements from [`Rule::norm_terms_slice`]:
/// one row per norm term, rows of equal length.
pub type NormSink<'a, F> = dyn FnMut(&[&[F]]) + 'a;

/// Largest number of per-tensor sums of squares a rule may ask for (see [`Rule::norms`]).
pub const MAX_NORMS: usize = 2;

/// The value of a one-element scalar state tensor, read as `f64` and written back in the
/// tensor's own dtype, so that rules round exactly as torch's in-place tensor arithmetic does.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScalarState {
    value: f64,
    kind: Kind,
}

impl ScalarState {
    /// A value held by a tensor of dtype `kind` (the value is rounded to it).
    pub fn new(value: f64, kind: Kind) -> Self {
        let mut s = ScalarState { value, kind };
        s.value = s.round(value);
        s
    }

    /// The current value.
    pub fn get(&self) -> f64 {
        self.value
    }

    /// The tensor's dtype.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Stores `value` rounded to the tensor's dtype (as `tensor.copy_(value)`); returns it.
    pub fn set(&mut self, value: f64) -> f64 {
        self.value = self.round(value);
        self.value
    }

    /// `step += 1` in the tensor's dtype; returns the new value.
    pub fn increment(&mut self) -> f64 {
        self.set(self.value + 1.0)
    }

    /// `tensor *= factor` as torch computes it for a tensor and a Python float: the factor is
    /// rounded to the tensor's dtype, the product to nearest. Returns the new value.
    pub fn mul(&mut self, factor: f64) -> f64 {
        self.set(self.value * self.round(factor))
    }

    /// `value` rounded to the tensor's dtype (integer dtypes truncate, as a cast does).
    pub fn round(&self, value: f64) -> f64 {
        match self.kind {
            Kind::Float => f64::from(value as f32),
            Kind::Half => f16::from_f64(value).to_f64(),
            Kind::BFloat16 => bf16::from_f64(value).to_f64(),
            Kind::Double => value,
            _ => value.trunc(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalar_state_rounds_to_its_dtype() {
        let mut s = ScalarState::new(1.0, Kind::Float);
        // f32(0.9) = 0.89999997615814208984375
        assert_eq!(s.mul(0.9), f64::from(0.9f32));
        let mut big = ScalarState::new(16_777_216.0, Kind::Float);
        assert_eq!(big.increment(), 16_777_216.0); // 2^24 + 1 is not a float32
        let mut d = ScalarState::new(16_777_216.0, Kind::Double);
        assert_eq!(d.increment(), 16_777_217.0);
        let mut i = ScalarState::new(3.0, Kind::Int64);
        assert_eq!(i.set(2.7), 2.0);
        assert_eq!(
            ScalarState::new(1.0 / 3.0, Kind::BFloat16).get(),
            0.333984375
        );
    }
}
