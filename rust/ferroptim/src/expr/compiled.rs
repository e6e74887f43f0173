//! Element graphs through their compiled kernels (`jit.rs`): the plan of a call turned into
//! a kernel shape and uniform values, and the elements handed to the kernel (`f32` tensors in
//! place, other storage through rows of `f32`). x86-64 only.

use super::eval::{plan, rows_in, Outputs, Plan, BLOCK, SCRATCH};
use super::graph::{Graph, Op, MAX_NODES, MAX_SLOTS};
use super::jit;
use crate::element::{Float, Storage};
use crate::rule::{NormSink, MAX_NORMS, MAX_STATE};
use std::cell::Cell;

/// [`update_slice`] through a compiled kernel (`jit.rs`), for graphs computed in `f32`:
/// returns false, having done nothing, where none applies (other compute types, CPUs without
/// SSE4.1 and FMA, `FERROPTIM_EXPR_JIT=0`, a kernel that failed to compile). Same results.
#[inline(always)]
pub(crate) fn update_slice_compiled<S: Storage>(
    g: &'static Graph,
    slots: &[f64; MAX_SLOTS],
    grad_scale: Option<f64>,
    param: &mut [S],
    grad: &mut [S],
    state: &mut [&mut [S]],
) -> bool {
    if std::mem::size_of::<S::Compute>() != 4 || state.len() > MAX_STATE || !jit::enabled() {
        return false;
    }
    let Some((uniforms, kernel)) = compiled_plan::<S::Compute>(g, slots, Outputs::Update) else {
        return false;
    };
    let scale = grad_scale.map(<S::Compute as Float>::from_f64);
    let mut words = SCRATCH.with(Cell::take);
    let n_states = state.len();
    let rows = rows_in::<f32>(&mut words, 2 * (2 + n_states));
    let (ins, outs) = rows.split_at_mut(2 + n_states);
    let len = param.len();
    let mut start = 0;
    if S::as_f32(param).is_some() {
        // f32 storage: all whole vectors in one call, in place.
        start = len - len % jit::LANES;
        if start > 0 {
            compiled_block(
                kernel,
                scale,
                &uniforms,
                ins,
                outs,
                0..start,
                param,
                grad,
                state,
            );
        }
    }
    while start < len {
        let n = BLOCK.min(len - start);
        let end = start + n;
        compiled_block(
            kernel,
            scale,
            &uniforms,
            ins,
            outs,
            start..end,
            param,
            grad,
            state,
        );
        start = end;
    }
    SCRATCH.with(|cell| cell.set(words));
    true
}

/// The last kernel a thread ran, with the slot values it was planned for: the tensors of a
/// group share their slots (same step count), so most calls skip planning.
struct Planned {
    graph: usize,
    outputs: Outputs,
    slots: [u64; MAX_SLOTS],
    uniforms: [f32; MAX_NODES],
    kernel: jit::Kernel,
}

thread_local! {
    static LAST: std::cell::RefCell<Option<Box<Planned>>> = const { std::cell::RefCell::new(None) };
}

/// The uniform node values and the kernel computing `outputs` for `g` with `slots` (None: no
/// kernel).
fn compiled_plan<F: Float>(
    g: &'static Graph,
    slots: &[f64; MAX_SLOTS],
    outputs: Outputs,
) -> Option<([f32; MAX_NODES], jit::Kernel)> {
    let id = g as *const Graph as usize;
    let bits = slots.map(f64::to_bits);
    let hit = LAST.with(|last| {
        last.borrow()
            .as_ref()
            .filter(|p| p.graph == id && p.outputs == outputs && p.slots == bits)
            .map(|p| (p.uniforms, p.kernel))
    });
    if hit.is_some() {
        return hit;
    }
    let mut plans = [Plan::Dead; MAX_NODES];
    plan::<F>(g, slots, outputs, &mut plans);
    let mut shape: jit::Shape = [jit::DEAD; MAX_NODES];
    let mut uniforms = [0.0f32; MAX_NODES];
    for (i, p) in plans[..g.nodes.len()].iter().enumerate() {
        shape[i] = match (*p, g.nodes[i]) {
            (Plan::Dead, _) => jit::DEAD,
            (Plan::Uniform(v), _) => {
                uniforms[i] = v.to_f64() as f32; // exact: the compute type is f32
                jit::UNIFORM
            }
            (Plan::Row, Op::Where(m, ..)) => match plans[m as usize] {
                Plan::Uniform(m) if m != F::ZERO => jit::TAKE_A,
                Plan::Uniform(_) => jit::TAKE_B,
                _ => jit::ROW,
            },
            (Plan::Row, _) => jit::ROW,
        };
    }
    let kernel = jit::kernel(g, &shape, outputs)?;
    LAST.with(|last| {
        *last.borrow_mut() = Some(Box::new(Planned {
            graph: id,
            outputs,
            slots: bits,
            uniforms,
            kernel,
        }));
    });
    Some((uniforms, kernel))
}

/// The norm terms of `param`, `grad` (divided by `grad_scale` if given, not written back) and
/// `state` through a compiled kernel, handed to `sink` as `eval::norm_terms_slice` does (runs
/// of `BLOCK` elements, in order): returns false, having done nothing, where no kernel applies
/// (as [`update_slice_compiled`]). Same values as the interpreter.
#[inline(always)]
pub(crate) fn norm_terms_slice_compiled<S: Storage>(
    g: &'static Graph,
    slots: &[f64; MAX_SLOTS],
    grad_scale: Option<f64>,
    param: &[S],
    grad: &[S],
    state: &[&[S]],
    sink: &mut NormSink<'_, S::Compute>,
) -> bool {
    if std::mem::size_of::<S::Compute>() != 4 || state.len() > MAX_STATE || !jit::enabled() {
        return false;
    }
    let Some((uniforms, kernel)) = compiled_plan::<S::Compute>(g, slots, Outputs::Norms) else {
        return false;
    };
    let scale = grad_scale.map(|s| <S::Compute as Float>::from_f64(s).to_f64() as f32);
    let n_norms = g.norms.len();
    let mut words = SCRATCH.with(Cell::take);
    let rows = rows_in::<f32>(&mut words, 2 + state.len() + MAX_NORMS);
    let (ins, outs) = rows.split_at_mut(2 + state.len());
    let mut in_ptrs = [std::ptr::null::<f32>(); 2 + MAX_STATE];
    let mut out_ptrs = [std::ptr::null_mut::<f32>(); MAX_NORMS];
    let mut start = 0;
    while start < param.len() {
        let n = BLOCK.min(param.len() - start);
        let end = start + n;
        let padded = n.div_ceil(jit::LANES) * jit::LANES;
        widen(&mut ins[0][..n], &param[start..end]);
        widen(&mut ins[1][..n], &grad[start..end]);
        if let Some(scale) = scale {
            // As the interpreter: the quotient in f32 (the compute type).
            ins[1][..n].iter_mut().for_each(|x| *x /= scale);
        }
        for (k, st) in state.iter().enumerate() {
            widen(&mut ins[2 + k][..n], &st[start..end]);
        }
        for (k, row) in ins.iter_mut().enumerate() {
            row[n..padded].fill(0.0);
            in_ptrs[k] = row.as_ptr();
        }
        for (k, row) in outs.iter_mut().enumerate() {
            out_ptrs[k] = row.as_mut_ptr();
        }
        // SAFETY: every row pointer addresses BLOCK ≥ `padded` f32 values of the thread's
        // scratch, inputs and outputs distinct; the kernel writes the `n_norms` output rows
        // only; the uniforms array holds MAX_NODES values.
        unsafe {
            kernel(
                padded,
                in_ptrs.as_ptr(),
                out_ptrs.as_ptr(),
                uniforms.as_ptr(),
            )
        };
        let mut terms: [&[S::Compute]; MAX_NORMS] = [&[]; MAX_NORMS];
        let mut values = [[<S::Compute as Float>::ZERO; BLOCK]; MAX_NORMS];
        for ((t, v), row) in terms.iter_mut().zip(values.iter_mut()).zip(outs.iter()) {
            for (x, &y) in v[..n].iter_mut().zip(&row[..n]) {
                *x = <S::Compute as Float>::from_f64(f64::from(y)); // exact: f32
            }
            *t = &v[..n];
        }
        sink(&terms[..n_norms]);
        start = end;
    }
    SCRATCH.with(|cell| cell.set(words));
    true
}

/// Elements `range` through `kernel`: `f32` storage in place (whole vectors, any number),
/// everything else (half types, the last partial vector: at most `BLOCK` elements) through
/// the `ins` rows, the outputs through `outs`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn compiled_block<S: Storage>(
    kernel: jit::Kernel,
    scale: Option<S::Compute>,
    uniforms: &[f32; MAX_NODES],
    ins: &mut [[f32; BLOCK]],
    outs: &mut [[f32; BLOCK]],
    range: std::ops::Range<usize>,
    param: &mut [S],
    grad: &mut [S],
    state: &mut [&mut [S]],
) {
    let (start, n) = (range.start, range.len());
    let grad = &mut grad[range.clone()];
    let whole = n - n % jit::LANES;
    let n_states = state.len();
    let mut in_ptrs = [std::ptr::null::<f32>(); 2 + MAX_STATE];
    let mut out_ptrs = [std::ptr::null_mut::<f32>(); 1 + MAX_STATE];
    let param = &mut param[range.clone()];
    let direct = whole > 0 && S::as_f32(param).is_some();
    if direct {
        if let Some(scale) = scale {
            // Divided in place (exactly the f32 the interpreter computes: no rounding to
            // storage), for the tail below too.
            for g in grad.iter_mut() {
                *g = S::store(g.load() / scale);
            }
        }
        // f32 storage: the kernel reads and writes the tensors themselves.
        in_ptrs[0] = S::as_f32(param).map_or(std::ptr::null(), |p| p.as_ptr());
        out_ptrs[0] = S::as_f32(param).map_or(std::ptr::null_mut(), |p| p.as_mut_ptr());
        in_ptrs[1] = S::as_f32(grad).map_or(std::ptr::null(), |p| p.as_ptr());
        for (k, st) in state.iter_mut().enumerate() {
            let st =
                S::as_f32(&mut st[range.clone()]).map_or(std::ptr::null_mut(), |p| p.as_mut_ptr());
            in_ptrs[2 + k] = st;
            out_ptrs[1 + k] = st;
        }
        // SAFETY: each pointer addresses `whole` (≥ 1, a multiple of LANES) live f32 values of
        // this block, borrowed mutably here for the call; rows that are both read and written
        // are the same tensor's, read lane by lane before written; the uniforms array holds
        // MAX_NODES values.
        unsafe {
            kernel(
                whole,
                in_ptrs.as_ptr(),
                out_ptrs.as_ptr(),
                uniforms.as_ptr(),
            )
        };
        if whole == n {
            return;
        }
    }
    // The rest (all of it for half types), padded to whole vectors through the rows.
    let from = if direct { whole } else { 0 };
    let m = n - from;
    let padded = m.div_ceil(jit::LANES) * jit::LANES;
    widen(&mut ins[0][..m], &param[from..]);
    widen(&mut ins[1][..m], &grad[from..]);
    if let (Some(scale), false) = (scale, direct) {
        // As the interpreter: the quotient is used unrounded and stored rounded.
        let scale = scale.to_f64() as f32; // the compute type is f32
        for (o, g) in ins[1][..m].iter_mut().zip(grad.iter_mut()) {
            *o /= scale;
            *g = S::store(<S::Compute as Float>::from_f64(f64::from(*o)));
        }
    }
    for (k, st) in state.iter().enumerate() {
        widen(&mut ins[2 + k][..m], &st[start + from..start + n]);
    }
    for row in ins.iter_mut().take(2 + n_states) {
        row[m..padded].fill(0.0);
    }
    for (k, row) in ins.iter().enumerate().take(2 + n_states) {
        in_ptrs[k] = row.as_ptr();
    }
    for (k, row) in outs.iter_mut().enumerate().take(1 + n_states) {
        out_ptrs[k] = row.as_mut_ptr();
    }
    // SAFETY: every row pointer addresses BLOCK ≥ `padded` f32 values of the thread's
    // scratch, inputs and outputs distinct; the uniforms array holds MAX_NODES values.
    unsafe {
        kernel(
            padded,
            in_ptrs.as_ptr(),
            out_ptrs.as_ptr(),
            uniforms.as_ptr(),
        )
    };
    narrow(&mut param[from..], &outs[0][..m]);
    for (k, st) in state.iter_mut().enumerate() {
        narrow(&mut st[start + from..start + n], &outs[1 + k][..m]);
    }
}

/// Widens stored values to `f32` (exact: the compute type is `f32`).
#[inline(always)]
fn widen<S: Storage>(out: &mut [f32], from: &[S]) {
    for (o, x) in out.iter_mut().zip(from) {
        *o = x.load().to_f64() as f32;
    }
}

/// Rounds `f32` results to storage.
#[inline(always)]
fn narrow<S: Storage>(to: &mut [S], from: &[f32]) {
    for (t, &x) in to.iter_mut().zip(from) {
        *t = S::store(<S::Compute as Float>::from_f64(f64::from(x)));
    }
}
