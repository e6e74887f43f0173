//! The element graph evaluated over blocks of elements: one pass over memory (each tensor
//! read and written once per block), every node computed for a whole block in a loop the
//! compiler vectorises, in the instruction set the driver's kernel was compiled for.

use super::graph::{Graph, NodeId, Op, MAX_SLOTS};
use crate::element::{Float, Storage};

/// Elements per block: with the graph's nodes as rows of this many values, a block stays in
/// the L1 cache (e.g. 40 nodes × 128 × 4 B = 20 KiB for `f32`).
pub(crate) const BLOCK: usize = 128;

/// Updates `param` and `state` (each `param.len()` elements, `state.len()` equal to the
/// graph's state count) from `grad` (divided by `grad_scale` if given, and written back so
/// divided), with the slot values `slots`.
#[inline(always)]
pub(crate) fn update_slice<S: Storage>(
    g: &Graph,
    slots: &[f64; MAX_SLOTS],
    grad_scale: Option<f64>,
    param: &mut [S],
    grad: &mut [S],
    state: &mut [&mut [S]],
) {
    let mut slot_values = [<S::Compute as Float>::ZERO; MAX_SLOTS];
    for (v, &s) in slot_values.iter_mut().zip(slots.iter()) {
        *v = <S::Compute as Float>::from_f64(s);
    }
    let scale = grad_scale.map(<S::Compute as Float>::from_f64);
    let mut rows = vec![[<S::Compute as Float>::ZERO; BLOCK]; g.nodes.len()];
    let len = param.len();
    let mut start = 0;
    while start < len {
        let n = BLOCK.min(len - start);
        let end = start + n;
        block(
            g,
            &slot_values,
            scale,
            &mut rows,
            n,
            &mut param[start..end],
            &mut grad[start..end],
            state,
            start,
        );
        start = end;
    }
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn block<S: Storage>(
    g: &Graph,
    slots: &[S::Compute; MAX_SLOTS],
    scale: Option<S::Compute>,
    rows: &mut [[S::Compute; BLOCK]],
    n: usize,
    param: &mut [S],
    grad: &mut [S],
    state: &mut [&mut [S]],
    offset: usize,
) {
    for i in 0..g.nodes.len() {
        let (done, rest) = rows.split_at_mut(i);
        let out = &mut rest[0][..n];
        let r = |a: NodeId| &done[a as usize][..n];
        match g.nodes[i] {
            Op::Param => load(out, param),
            Op::Grad => {
                load(out, grad);
                if let Some(scale) = scale {
                    for (o, gr) in out.iter_mut().zip(grad.iter_mut()) {
                        *o = *o / scale;
                        *gr = S::store(*o);
                    }
                }
            }
            Op::State(k) => load(out, &state[usize::from(k)][offset..offset + n]),
            Op::Slot(k) => out.fill(slots[usize::from(k)]),
            Op::Const(c) => out.fill(<S::Compute as Float>::from_f64(c)),
            Op::Neg(a) => unary(out, r(a), |x| -x),
            Op::Abs(a) => unary(out, r(a), |x| x.abs()),
            Op::Sqrt(a) => unary(out, r(a), |x| x.sqrt()),
            Op::Exp(a) => unary(out, r(a), |x| Float::from_f64(x.to_f64().exp())),
            Op::Log(a) => unary(out, r(a), |x| Float::from_f64(x.to_f64().ln())),
            Op::Sign(a) => unary(out, r(a), sign),
            Op::Add(a, b) => binary(out, r(a), r(b), |x, y| x + y),
            Op::Sub(a, b) => binary(out, r(a), r(b), |x, y| x - y),
            Op::Mul(a, b) => binary(out, r(a), r(b), |x, y| x * y),
            Op::Div(a, b) => binary(out, r(a), r(b), |x, y| x / y),
            Op::Max(a, b) => binary(out, r(a), r(b), |x, y| x.max_nan(y)),
            Op::Min(a, b) => binary(out, r(a), r(b), min_nan),
            Op::Lt(a, b) => binary(out, r(a), r(b), |x, y| flag(x < y)),
            Op::Le(a, b) => binary(out, r(a), r(b), |x, y| flag(x <= y)),
            Op::Eq(a, b) => binary(out, r(a), r(b), |x, y| flag(x == y)),
            Op::Fma(a, b, c) => {
                let (a, b, c) = (r(a), r(b), r(c));
                for j in 0..n {
                    out[j] = a[j].mul_add(b[j], c[j]);
                }
            }
            Op::Where(m, a, b) => {
                let (m, a, b) = (r(m), r(a), r(b));
                for j in 0..n {
                    out[j] = if m[j] != <S::Compute as Float>::ZERO {
                        a[j]
                    } else {
                        b[j]
                    };
                }
            }
        }
    }
    store(param, &rows[g.param_out as usize][..n]);
    for (k, &o) in g.state_out.iter().enumerate() {
        store(&mut state[k][offset..offset + n], &rows[o as usize][..n]);
    }
}

#[inline(always)]
fn load<S: Storage>(out: &mut [S::Compute], from: &[S]) {
    for (o, x) in out.iter_mut().zip(from) {
        *o = x.load();
    }
}

#[inline(always)]
fn store<S: Storage>(to: &mut [S], from: &[S::Compute]) {
    for (t, x) in to.iter_mut().zip(from) {
        *t = S::store(*x);
    }
}

#[inline(always)]
fn unary<F: Float>(out: &mut [F], a: &[F], f: impl Fn(F) -> F) {
    for (o, &x) in out.iter_mut().zip(a) {
        *o = f(x);
    }
}

#[inline(always)]
fn binary<F: Float>(out: &mut [F], a: &[F], b: &[F], f: impl Fn(F, F) -> F) {
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
        *o = f(x, y);
    }
}

#[inline(always)]
fn flag<F: Float>(b: bool) -> F {
    if b {
        F::from_f64(1.0)
    } else {
        F::ZERO
    }
}

/// `torch.sign`: 1 for positive, −1 for negative, 0 otherwise (±0 and NaN), as ferroptim's
/// built-in rules compute it (`rules/ops.rs`).
#[inline(always)]
fn sign<F: Float>(x: F) -> F {
    if x > F::ZERO {
        F::from_f64(1.0)
    } else if x < F::ZERO {
        F::from_f64(-1.0)
    } else {
        F::ZERO
    }
}

/// `torch.minimum`: NaN if either is NaN.
#[inline(always)]
fn min_nan<F: Float>(a: F, b: F) -> F {
    // NaN-propagating: max_nan of the negations, negated.
    -((-a).max_nan(-b))
}
