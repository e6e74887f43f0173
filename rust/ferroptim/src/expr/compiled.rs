//! Element graphs through their compiled kernels (`jit.rs`): the plan of a call turned into
//! a kernel shape and uniform values, and the elements handed to the kernel — `f32` and
//! `bf16` tensors in place, other storage (and `bf16` with a loss scale) through rows of
//! `f32`. x86-64 only.

use super::eval::{plan, rows_in, Plan, BLOCK, SCRATCH};
use super::graph::{Graph, Op, MAX_NODES, MAX_SLOTS};
use super::jit;
use crate::element::{Float, Storage};
use crate::rule::MAX_STATE;
use std::cell::{Cell, RefCell};

/// `eval::update_slice` through a compiled kernel, for graphs computed in `f32`: returns
/// false, having done nothing, where none applies (other compute types, CPUs without SSE4.1
/// and FMA, `FERROPTIM_EXPR_JIT=0`, a kernel that failed to compile). Same results.
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
    // Storage the kernel reads and writes itself. A bf16 gradient divided by a loss scale is
    // used unrounded (as the interpreter does), so that case goes through f32 rows.
    let native = if S::as_f32(param).is_some() {
        Some(jit::Storage::F32)
    } else if grad_scale.is_none() && S::as_bf16(param).is_some() {
        Some(jit::Storage::Bf16)
    } else {
        None
    };
    let storage = native.unwrap_or(jit::Storage::F32);
    let Some((uniforms, kernel)) = compiled_plan::<S::Compute>(g, slots, storage) else {
        return false;
    };
    let scale = grad_scale.map(<S::Compute as Float>::from_f64);
    if native.is_some() {
        if let Some(scale) = scale {
            // f32: the quotient is exactly what the interpreter computes and stores.
            for x in grad.iter_mut() {
                *x = S::store(x.load() / scale);
            }
        }
        in_place(kernel, &uniforms, param, grad, state);
        return true;
    }
    let mut words = SCRATCH.with(Cell::take);
    let n_states = state.len();
    let rows = rows_in::<f32>(&mut words, 2 * (2 + n_states));
    let (ins, outs) = rows.split_at_mut(2 + n_states);
    let len = param.len();
    let mut start = 0;
    while start < len {
        let end = start + BLOCK.min(len - start);
        through_rows(
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

/// The last kernel a thread ran, with the slot values and storage it was planned for: the
/// tensors of a group share their slots (same step count), so most calls skip planning.
struct Planned {
    graph: usize,
    slots: [u64; MAX_SLOTS],
    storage: jit::Storage,
    uniforms: [f32; MAX_NODES],
    kernel: jit::Kernel,
}

thread_local! {
    static LAST: RefCell<Option<Box<Planned>>> = const { RefCell::new(None) };
}

/// The uniform node values and the kernel for `g` with `slots` (None: no kernel).
fn compiled_plan<F: Float>(
    g: &'static Graph,
    slots: &[f64; MAX_SLOTS],
    storage: jit::Storage,
) -> Option<([f32; MAX_NODES], jit::Kernel)> {
    let id = g as *const Graph as usize;
    let bits = slots.map(f64::to_bits);
    let hit = LAST.with(|last| {
        last.borrow()
            .as_ref()
            .filter(|p| p.graph == id && p.slots == bits && p.storage == storage)
            .map(|p| (p.uniforms, p.kernel))
    });
    if hit.is_some() {
        return hit;
    }
    let mut plans = [Plan::Dead; MAX_NODES];
    plan::<F>(g, slots, &mut plans);
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
    let kernel = jit::kernel(g, &shape, storage)?;
    LAST.with(|last| {
        *last.borrow_mut() = Some(Box::new(Planned {
            graph: id,
            slots: bits,
            storage,
            uniforms,
            kernel,
        }));
    });
    Some((uniforms, kernel))
}

/// Every element through a kernel compiled for `S` itself (`f32` or `bf16`): the whole
/// vectors in one call on the tensors, the last partial vector through copies padded with
/// zeros.
#[inline(always)]
fn in_place<S: Storage>(
    kernel: jit::Kernel,
    uniforms: &[f32; MAX_NODES],
    param: &mut [S],
    grad: &mut [S],
    state: &mut [&mut [S]],
) {
    let len = param.len();
    let whole = len - len % jit::LANES;
    let mut ins = [std::ptr::null::<u8>(); 2 + MAX_STATE];
    let mut outs = [std::ptr::null_mut::<u8>(); 1 + MAX_STATE];
    if whole > 0 {
        ins[0] = param.as_ptr().cast();
        outs[0] = param.as_mut_ptr().cast();
        ins[1] = grad.as_ptr().cast();
        for (k, st) in state.iter_mut().enumerate() {
            outs[1 + k] = st.as_mut_ptr().cast();
            ins[2 + k] = outs[1 + k];
        }
        // SAFETY: the kernel was compiled for `S`'s layout (the caller checked that `S` is
        // f32, or bf16); every pointer addresses `len` ≥ `whole` live elements (all slices
        // have `param.len()` elements), borrowed mutably for the call; a row both read and
        // written is one tensor, each vector read before it is written; `uniforms` holds
        // MAX_NODES values.
        unsafe { kernel(whole, ins.as_ptr(), outs.as_ptr(), uniforms.as_ptr()) };
    }
    if whole == len {
        return;
    }
    let zero = S::store(<S::Compute as Float>::ZERO);
    let mut pad = [[zero; jit::LANES]; 2 + MAX_STATE];
    let tail = whole..len;
    pad[0][..tail.len()].copy_from_slice(&param[tail.clone()]);
    pad[1][..tail.len()].copy_from_slice(&grad[tail.clone()]);
    for (k, st) in state.iter().enumerate() {
        pad[2 + k][..tail.len()].copy_from_slice(&st[tail.clone()]);
    }
    ins[1] = pad[1].as_ptr().cast();
    outs[0] = pad[0].as_mut_ptr().cast();
    ins[0] = outs[0];
    for k in 0..state.len() {
        outs[1 + k] = pad[2 + k].as_mut_ptr().cast();
        ins[2 + k] = outs[1 + k];
    }
    // SAFETY: as above, with rows of LANES elements of the local `pad`.
    unsafe { kernel(jit::LANES, ins.as_ptr(), outs.as_ptr(), uniforms.as_ptr()) };
    param[tail.clone()].copy_from_slice(&pad[0][..tail.len()]);
    for (k, st) in state.iter_mut().enumerate() {
        st[tail.clone()].copy_from_slice(&pad[2 + k][..tail.len()]);
    }
}

/// Elements `range` (at most `BLOCK`) through an `f32` kernel, widened into the `ins` rows
/// (padded to whole vectors) and rounded back from the `outs` rows.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn through_rows<S: Storage>(
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
    let m = range.len();
    let n_states = state.len();
    let padded = m.div_ceil(jit::LANES) * jit::LANES;
    widen(&mut ins[0][..m], &param[range.clone()]);
    widen(&mut ins[1][..m], &grad[range.clone()]);
    if let Some(scale) = scale {
        // As the interpreter: the quotient is used unrounded and stored rounded.
        let scale = scale.to_f64() as f32; // the compute type is f32
        for (o, g) in ins[1][..m].iter_mut().zip(&mut grad[range.clone()]) {
            *o /= scale;
            *g = S::store(<S::Compute as Float>::from_f64(f64::from(*o)));
        }
    }
    for (k, st) in state.iter().enumerate() {
        widen(&mut ins[2 + k][..m], &st[range.clone()]);
    }
    let mut in_ptrs = [std::ptr::null::<u8>(); 2 + MAX_STATE];
    let mut out_ptrs = [std::ptr::null_mut::<u8>(); 1 + MAX_STATE];
    for (k, row) in ins.iter_mut().enumerate().take(2 + n_states) {
        row[m..padded].fill(0.0);
        in_ptrs[k] = row.as_ptr().cast();
    }
    for (k, row) in outs.iter_mut().enumerate().take(1 + n_states) {
        out_ptrs[k] = row.as_mut_ptr().cast();
    }
    // SAFETY: an f32 kernel; every row pointer addresses BLOCK ≥ `padded` f32 values of the
    // thread's scratch, inputs and outputs distinct; `uniforms` holds MAX_NODES values.
    unsafe {
        kernel(
            padded,
            in_ptrs.as_ptr(),
            out_ptrs.as_ptr(),
            uniforms.as_ptr(),
        )
    };
    narrow(&mut param[range.clone()], &outs[0][..m]);
    for (k, st) in state.iter_mut().enumerate() {
        narrow(&mut st[range.clone()], &outs[1 + k][..m]);
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
