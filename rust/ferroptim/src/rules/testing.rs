//! Helpers for the rules' unit tests: a rule applied to one element in f64.

use crate::rule::{Rule, ScalarState};
use tch::Kind;

/// Runs one element through `grads.len()` steps of `rule`, from parameter `p0` and state
/// `state0` (scalar state zero, except as `rule` sets it), in f64. Returns the parameter and
/// the state.
pub(crate) fn run<R: Rule>(rule: &R, p0: f64, state0: &[f64], grads: &[f64]) -> (f64, Vec<f64>) {
    let zeros = vec![0.0; rule.scalar_state_names().len()];
    run_with(rule, p0, state0, &zeros, grads).0
}

/// [`run`] with explicit initial scalar state; also returns the final scalar state.
pub(crate) fn run_with<R: Rule>(
    rule: &R,
    p0: f64,
    state0: &[f64],
    scalar0: &[f64],
    grads: &[f64],
) -> ((f64, Vec<f64>), Vec<f64>) {
    assert_eq!(state0.len(), rule.state_names().len());
    let mut p = p0;
    let mut state = state0.to_vec();
    let mut scalar: Vec<ScalarState> = scalar0
        .iter()
        .map(|&v| ScalarState::new(v, Kind::Double))
        .collect();
    for (t, &g) in grads.iter().enumerate() {
        let s = rule.scalars(&mut scalar, t == 0);
        p = R::update(&s, p, g, &mut state);
    }
    ((p, state), scalar.iter().map(ScalarState::get).collect())
}

/// Asserts `a ≈ b` to 1e-12 relative (absolute below 1).
pub(crate) fn close(a: f64, b: f64) {
    assert!((a - b).abs() <= 1e-12 * b.abs().max(1.0), "{a} != {b}");
}
