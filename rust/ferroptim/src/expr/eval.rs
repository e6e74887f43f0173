//! The element graph evaluated over blocks of elements: one pass over memory (each tensor
//! read and written once per block), every node computed for a whole block in a loop the
//! compiler vectorises, in the instruction set the driver's kernel was compiled for.

use super::graph::{Graph, NodeId, Op, MAX_NODES, MAX_SLOTS};
use crate::rule::{NormSink, MAX_NORMS};
// `torch.sign` as the built-in rules compute it: 1, −1, or 0 (±0 and NaN).
use crate::element::{Float, Storage};
use crate::rules::sign;
use std::cell::Cell;

/// Elements per block: with the graph's nodes as rows of this many values, a block stays in
/// the L1 cache (e.g. 40 nodes × 128 × 4 B = 20 KiB for `f32`).
pub(crate) const BLOCK: usize = 128;

/// What one node is for a call: not needed, the same value for every element (computed once,
/// from slots and constants only), or a row computed per block.
#[derive(Clone, Copy)]
pub(super) enum Plan<F> {
    Dead,
    Uniform(F),
    Row,
}

/// Updates `param` and `state` (each `param.len()` elements, `state.len()` equal to the
/// graph's state count) from `grad` (divided by `grad_scale` if given, and written back so
/// divided), with the slot values `slots`.
///
/// Nodes that depend on slots and constants only are computed once per call (with the same
/// operation, so the same bits as per element); a `where` whose mask is such a node computes
/// only the branch it takes; nodes no output needs are skipped.
#[inline(always)]
pub(crate) fn update_slice<S: Storage>(
    g: &Graph,
    slots: &[f64; MAX_SLOTS],
    grad_scale: Option<f64>,
    param: &mut [S],
    grad: &mut [S],
    state: &mut [&mut [S]],
) {
    let mut plans = [Plan::Dead; MAX_NODES];
    plan::<S::Compute>(g, slots, Outputs::Update, &mut plans);
    let plans = &plans[..g.nodes.len()];
    let scale = grad_scale.map(<S::Compute as Float>::from_f64);
    // The thread's scratch is moved out and back (no closure around the work: it must be
    // inlined into the caller, which is compiled for the CPU's instruction set).
    let mut words = SCRATCH.with(Cell::take);
    let rows = rows_in::<S::Compute>(&mut words, g.nodes.len());
    blocks(g, plans, scale, rows, param, grad, state);
    SCRATCH.with(|cell| cell.set(words));
}

/// The graph's norm terms ([`Graph::norms`]) of `param`, `grad` (divided by `grad_scale` if
/// given, not written back) and `state` (each `param.len()` elements), handed to `sink` for
/// consecutive runs of elements in order: `BLOCK` elements per call but the last, one row per
/// norm term. Reads only. For the first pass of rules with per-tensor norms
/// (`driver/norms.rs`, through [`crate::rule::Rule::norm_terms_slice`]).
#[inline(always)]
pub(crate) fn norm_terms_slice<S: Storage>(
    g: &Graph,
    slots: &[f64; MAX_SLOTS],
    grad_scale: Option<f64>,
    param: &[S],
    grad: &[S],
    state: &[&[S]],
    sink: &mut NormSink<'_, S::Compute>,
) {
    let mut plans = [Plan::Dead; MAX_NODES];
    plan::<S::Compute>(g, slots, Outputs::Norms, &mut plans);
    let plans = &plans[..g.nodes.len()];
    let scale = grad_scale.map(<S::Compute as Float>::from_f64);
    let mut words = SCRATCH.with(Cell::take);
    let rows = rows_in::<S::Compute>(&mut words, g.nodes.len());
    // Rows for norm terms that are the same for every element.
    let mut uniform = [[<S::Compute as Float>::ZERO; BLOCK]; MAX_NORMS];
    for (row, &o) in uniform.iter_mut().zip(&g.norms) {
        if let Plan::Uniform(v) = plans[o as usize] {
            row.fill(v);
        }
    }
    let len = param.len();
    let mut start = 0;
    while start < len {
        let n = BLOCK.min(len - start);
        let end = start + n;
        compute(
            g,
            plans,
            scale,
            rows,
            n,
            &param[start..end],
            &grad[start..end],
            state,
            start,
        );
        let mut terms: [&[S::Compute]; MAX_NORMS] = [&[]; MAX_NORMS];
        for ((t, &o), u) in terms.iter_mut().zip(&g.norms).zip(&uniform) {
            *t = match plans[o as usize] {
                Plan::Uniform(_) => &u[..n],
                _ => &rows[o as usize][..n],
            };
        }
        sink(&terms[..g.norms.len()]);
        start = end;
    }
    SCRATCH.with(|cell| cell.set(words));
}

/// Which outputs a call computes: the update's (new parameter and state) or the norm terms.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Outputs {
    Update,
    Norms,
}

thread_local! {
    /// Each thread's rows (grown to the largest graph it has run, never shrunk): no allocation
    /// per call, which matters for the many small tensors of a model.
    pub(super) static SCRATCH: Cell<Vec<u64>> = const { Cell::new(Vec::new()) };
}

/// `n` rows of `BLOCK` values of `F` in `words` (grown as needed).
pub(super) fn rows_in<F: Float>(words: &mut Vec<u64>, n: usize) -> &mut [[F; BLOCK]] {
    let bytes = n * std::mem::size_of::<[F; BLOCK]>();
    let need = bytes.div_ceil(8);
    if words.len() < need {
        words.resize(need, 0);
    }
    // SAFETY: `words` holds at least `n * size_of::<[F; BLOCK]>()` initialised bytes, aligned
    // to 8, which is at least `F`'s alignment (`f32` or `f64`); every bit pattern is a valid
    // float; the slice borrows `words` mutably for its whole life.
    unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<[F; BLOCK]>(), n) }
}

#[inline(always)]
fn blocks<S: Storage>(
    g: &Graph,
    plans: &[Plan<S::Compute>],
    scale: Option<S::Compute>,
    rows: &mut [[S::Compute; BLOCK]],
    param: &mut [S],
    grad: &mut [S],
    state: &mut [&mut [S]],
) {
    let len = param.len();
    let mut start = 0;
    while start < len {
        let n = BLOCK.min(len - start);
        let end = start + n;
        block(
            g,
            plans,
            scale,
            rows,
            n,
            &mut param[start..end],
            &mut grad[start..end],
            state,
            start,
        );
        start = end;
    }
}

/// The [`Plan`] of every node for one call computing `outputs`, into `plans[..g.nodes.len()]`.
pub(super) fn plan<F: Float>(
    g: &Graph,
    slots: &[f64; MAX_SLOTS],
    outputs: Outputs,
    plans: &mut [Plan<F>; MAX_NODES],
) {
    for (i, op) in g.nodes.iter().enumerate() {
        let u = |a: NodeId| match plans[a as usize] {
            Plan::Uniform(v) => Some(v),
            _ => None,
        };
        let value = match *op {
            Op::Param | Op::Grad | Op::State(_) => None,
            Op::Slot(k) => Some(F::from_f64(slots[usize::from(k)])),
            Op::Const(c) => Some(F::from_f64(c)),
            Op::Fma(a, b, c) => match (u(a), u(b), u(c)) {
                (Some(x), Some(y), Some(z)) => Some(x.mul_add(y, z)),
                _ => None,
            },
            Op::Where(m, a, b) => match (u(m), u(a), u(b)) {
                (Some(m), Some(x), Some(y)) => Some(choose(m, x, y)),
                _ => None,
            },
            other => match other.operands() {
                ([a, ..], 1) => u(a).map(|x| apply1(other, x)),
                ([a, b, _], _) => u(a).zip(u(b)).map(|(x, y)| apply2(other, x, y)),
            },
        };
        plans[i] = value.map_or(Plan::Row, Plan::Uniform);
    }
    // Liveness, from the outputs back: rows only for what an output needs.
    let mut live = [false; MAX_NODES];
    match outputs {
        Outputs::Update => {
            live[g.param_out as usize] = true;
            for &o in &g.state_out {
                live[o as usize] = true;
            }
        }
        Outputs::Norms => {
            for &o in &g.norms {
                live[o as usize] = true;
            }
        }
    }
    for i in (0..g.nodes.len()).rev() {
        if !live[i] || matches!(plans[i], Plan::Uniform(_)) {
            continue;
        }
        let mut mark = |a: NodeId| live[a as usize] = true;
        match g.nodes[i] {
            Op::Where(m, a, b) if matches!(plans[m as usize], Plan::Uniform(_)) => {
                if let Plan::Uniform(m) = plans[m as usize] {
                    mark(if m != F::ZERO { a } else { b });
                }
            }
            other => {
                let (ids, k) = other.operands();
                ids[..k].iter().for_each(|&a| mark(a));
            }
        }
    }
    for (p, l) in plans.iter_mut().zip(live).take(g.nodes.len()) {
        if !l && matches!(p, Plan::Row) {
            *p = Plan::Dead;
        }
    }
}

/// A unary operation's value.
#[inline(always)]
fn apply1<F: Float>(op: Op, x: F) -> F {
    match op {
        Op::Neg(_) => -x,
        Op::Abs(_) => x.abs(),
        Op::Sqrt(_) => x.sqrt(),
        Op::Exp(_) => F::from_f64(x.to_f64().exp()),
        Op::Log(_) => F::from_f64(x.to_f64().ln()),
        _ => sign(x),
    }
}

/// A binary operation's value.
#[inline(always)]
fn apply2<F: Float>(op: Op, x: F, y: F) -> F {
    match op {
        Op::Add(..) => x + y,
        Op::Sub(..) => x - y,
        Op::Mul(..) => x * y,
        Op::Div(..) => x / y,
        Op::Max(..) => x.max_nan(y),
        Op::Min(..) => min_nan(x, y),
        Op::Lt(..) => flag(x < y),
        Op::Le(..) => flag(x <= y),
        _ => flag(x == y),
    }
}

#[inline(always)]
fn choose<F: Float>(m: F, x: F, y: F) -> F {
    if m != F::ZERO {
        x
    } else {
        y
    }
}

/// An operand: a row of the block, or one value for all elements.
#[derive(Clone, Copy)]
enum Src<'a, F> {
    Row(&'a [F]),
    Uni(F),
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn block<S: Storage>(
    g: &Graph,
    plans: &[Plan<S::Compute>],
    scale: Option<S::Compute>,
    rows: &mut [[S::Compute; BLOCK]],
    n: usize,
    param: &mut [S],
    grad: &mut [S],
    state: &mut [&mut [S]],
    offset: usize,
) {
    compute(g, plans, scale, rows, n, param, grad, state, offset);
    if scale.is_some() {
        // The gradient is stored divided by the loss scale (the row holds the quotient).
        for (i, op) in g.nodes.iter().enumerate() {
            if matches!(op, Op::Grad) && matches!(plans[i], Plan::Row) {
                store(grad, &rows[i][..n]);
            }
        }
    }
    let out = |o: NodeId| match plans[o as usize] {
        Plan::Uniform(v) => Src::Uni(v),
        _ => Src::Row(&rows[o as usize][..n]),
    };
    store_src(param, out(g.param_out));
    for (k, &o) in g.state_out.iter().enumerate() {
        store_src(&mut state[k][offset..offset + n], out(o));
    }
}

/// The rows of the nodes planned as rows, for the `n` elements of `param` and `grad` (the
/// gradient divided by `scale` if given) and of `state` from `offset`. Reads only.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn compute<S: Storage, T: AsRef<[S]>>(
    g: &Graph,
    plans: &[Plan<S::Compute>],
    scale: Option<S::Compute>,
    rows: &mut [[S::Compute; BLOCK]],
    n: usize,
    param: &[S],
    grad: &[S],
    state: &[T],
    offset: usize,
) {
    for i in 0..g.nodes.len() {
        if !matches!(plans[i], Plan::Row) {
            continue;
        }
        let (done, rest) = rows.split_at_mut(i);
        let out = &mut rest[0][..n];
        let r = |a: NodeId| match plans[a as usize] {
            Plan::Uniform(v) => Src::Uni(v),
            _ => Src::Row(&done[a as usize][..n]),
        };
        match g.nodes[i] {
            Op::Param => load(out, param),
            Op::Grad => {
                load(out, grad);
                if let Some(scale) = scale {
                    for o in out.iter_mut() {
                        *o = *o / scale;
                    }
                }
            }
            Op::State(k) => load(out, &state[usize::from(k)].as_ref()[offset..offset + n]),
            Op::Slot(_) | Op::Const(_) => {} // always uniform
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
            Op::Fma(a, b, c) => ternary(out, r(a), r(b), r(c), |x, y, z| x.mul_add(y, z)),
            Op::Where(m, a, b) => match plans[m as usize] {
                // A uniform mask: only the branch taken was computed.
                Plan::Uniform(m) => copy(out, r(if m != Float::ZERO { a } else { b })),
                _ => ternary(out, r(m), r(a), r(b), choose),
            },
        }
    }
}

/// Stores an output node's values (a uniform output is the same value everywhere).
#[inline(always)]
fn store_src<S: Storage>(to: &mut [S], from: Src<'_, S::Compute>) {
    match from {
        Src::Row(r) => store(to, r),
        Src::Uni(v) => to.fill(S::store(v)),
    }
}

#[inline(always)]
fn copy<F: Float>(out: &mut [F], a: Src<'_, F>) {
    match a {
        Src::Row(a) => out.copy_from_slice(a),
        Src::Uni(v) => out.fill(v),
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
fn unary<F: Float>(out: &mut [F], a: Src<'_, F>, f: impl Fn(F) -> F) {
    match a {
        Src::Row(a) => {
            for (o, &x) in out.iter_mut().zip(a) {
                *o = f(x);
            }
        }
        Src::Uni(x) => out.fill(f(x)),
    }
}

#[inline(always)]
fn binary<F: Float>(out: &mut [F], a: Src<'_, F>, b: Src<'_, F>, f: impl Fn(F, F) -> F) {
    match (a, b) {
        (Src::Row(a), Src::Row(b)) => {
            for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
                *o = f(x, y);
            }
        }
        (Src::Row(a), Src::Uni(y)) => {
            for (o, &x) in out.iter_mut().zip(a) {
                *o = f(x, y);
            }
        }
        (Src::Uni(x), Src::Row(b)) => {
            for (o, &y) in out.iter_mut().zip(b) {
                *o = f(x, y);
            }
        }
        (Src::Uni(x), Src::Uni(y)) => out.fill(f(x, y)),
    }
}

#[inline(always)]
fn ternary<F: Float>(
    out: &mut [F],
    a: Src<'_, F>,
    b: Src<'_, F>,
    c: Src<'_, F>,
    f: impl Fn(F, F, F) -> F,
) {
    match (a, b, c) {
        (Src::Row(a), Src::Row(b), Src::Row(c)) => {
            for (((o, &x), &y), &z) in out.iter_mut().zip(a).zip(b).zip(c) {
                *o = f(x, y, z);
            }
        }
        (Src::Uni(x), Src::Row(b), Src::Row(c)) => {
            for ((o, &y), &z) in out.iter_mut().zip(b).zip(c) {
                *o = f(x, y, z);
            }
        }
        (Src::Row(a), Src::Uni(y), Src::Row(c)) => {
            for ((o, &x), &z) in out.iter_mut().zip(a).zip(c) {
                *o = f(x, y, z);
            }
        }
        (Src::Row(a), Src::Row(b), Src::Uni(z)) => {
            for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
                *o = f(x, y, z);
            }
        }
        (a, b, c) => {
            // Two or three uniform operands: rare (one row at most); element by element.
            let at = |s: Src<'_, F>, j: usize| match s {
                Src::Row(r) => r[j],
                Src::Uni(v) => v,
            };
            for (j, o) in out.iter_mut().enumerate() {
                *o = f(at(a, j), at(b, j), at(c, j));
            }
        }
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

/// `torch.minimum`: NaN if either is NaN.
#[inline(always)]
fn min_nan<F: Float>(a: F, b: F) -> F {
    // NaN-propagating: max_nan of the negations, negated.
    -((-a).max_nan(-b))
}
