//! Element graphs compiled to machine code with Cranelift: the whole graph of one element
//! evaluated in vector registers (4 `f32` lanes), with no row of the block interpreter
//! (`eval.rs`) stored and reloaded per node.
//!
//! A kernel is compiled for one graph and one *shape* of its plan (which nodes are not needed,
//! which are the same for every element — passed in at each call, from slots and constants —
//! and which branch a `where` with such a mask takes), on first use, and cached for the
//! process. Every operation is the IEEE operation the interpreter does (`+ − × ÷ √`, fused
//! multiply-add, comparisons, selects; `exp` and `ln` through the same `f64` functions), so
//! the results are the interpreter's bit for bit (checked by `tests.rs`), except for which
//! NaN payload a NaN result carries.
//!
//! Used for graphs computed in `f32` (`f32`, `bf16` and `f16` storage) on x86-64 CPUs with
//! SSE4.1 and FMA; elsewhere, or with `FERROPTIM_EXPR_JIT=0`, the interpreter runs.

use super::eval::Outputs;
use super::graph::{Graph, NodeId, Op, MAX_NODES};
use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{types, AbiParam, Endianness, InstBuilder, MemFlags, Value};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{default_libcall_names, Linkage, Module};
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock, RwLock};

/// Lanes per vector.
pub(crate) const LANES: usize = 4;

/// A compiled kernel: `kernel(n, inputs, outputs, uniforms)` updates `n` elements (a multiple
/// of [`LANES`]). `inputs` points to the rows of the parameter, the gradient and each state
/// tensor, in that order; `outputs` to the rows receiving the new parameter and each new
/// state (an [`Outputs::Norms`] kernel: each norm term, and it writes nothing else); `uniforms[i]` is node `i`'s value where the shape says it is uniform. A row may be
/// both an input and an output (in-place update): each element is read before it is written.
pub(crate) type Kernel = unsafe extern "C" fn(
    n: usize,
    inputs: *const *const f32,
    outputs: *const *mut f32,
    uniforms: *const f32,
);

/// What one node is in a kernel's shape.
pub(crate) const DEAD: u8 = 0;
/// The node's value is the same for every element (passed in `uniforms`).
pub(crate) const UNIFORM: u8 = 1;
/// The node is computed per element.
pub(crate) const ROW: u8 = 2;
/// A `where` whose mask is uniform and nonzero: the first branch's value.
pub(crate) const TAKE_A: u8 = 3;
/// A `where` whose mask is uniform and zero: the second branch's value.
pub(crate) const TAKE_B: u8 = 4;

/// A plan's shape: one of the constants above per node.
pub(crate) type Shape = [u8; MAX_NODES];

/// Whether kernels are used: x86-64 with SSE4.1 and FMA, unless `FERROPTIM_EXPR_JIT=0`.
pub(crate) fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        std::env::var("FERROPTIM_EXPR_JIT").map_or(true, |v| v != "0")
            && std::arch::is_x86_feature_detected!("sse4.1")
            && std::arch::is_x86_feature_detected!("fma")
    })
}

type Key = (usize, Vec<u8>, bool);

/// The output nodes of a kernel, in the order of its `outputs` rows.
fn output_nodes(graph: &Graph, outputs: Outputs) -> Vec<NodeId> {
    match outputs {
        Outputs::Update => std::iter::once(graph.param_out)
            .chain(graph.state_out.iter().copied())
            .collect(),
        Outputs::Norms => graph.norms.clone(),
    }
}

/// Compiled kernels by (graph, shape); None where compiling failed (the interpreter runs).
fn cache() -> &'static RwLock<HashMap<Key, Option<Kernel>>> {
    static CACHE: OnceLock<RwLock<HashMap<Key, Option<Kernel>>>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// The kernel of `graph` (interned: its address identifies it) computing `outputs` for
/// `shape`, compiled on first use; None if it cannot be compiled here.
pub(crate) fn kernel(graph: &'static Graph, shape: &Shape, outputs: Outputs) -> Option<Kernel> {
    let n = graph.nodes.len();
    let key: Key = (
        graph as *const Graph as usize,
        shape[..n].to_vec(),
        outputs == Outputs::Norms,
    );
    {
        let map = match cache().read() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(k) = map.get(&key) {
            return *k;
        }
    }
    // One compilation at a time (the module and its code live for the process).
    static COMPILING: Mutex<()> = Mutex::new(());
    let _guard = match COMPILING.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    };
    if let Some(k) = cache().read().ok().and_then(|m| m.get(&key).copied()) {
        return k;
    }
    // A code generator failure of any kind, panics included, leaves the interpreter to run.
    let compiled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        compile(graph, shape, outputs)
    }))
    .ok()
    .and_then(Result::ok);
    let mut map = match cache().write() {
        Ok(m) => m,
        Err(poisoned) => poisoned.into_inner(),
    };
    map.insert(key, compiled);
    compiled
}

/// `exp` of one lane, as the interpreter computes it (in `f64`, rounded once).
extern "C" fn lane_exp(x: f32) -> f32 {
    f64::from(x).exp() as f32
}

/// `ln` of one lane, as the interpreter computes it.
extern "C" fn lane_ln(x: f32) -> f32 {
    f64::from(x).ln() as f32
}

type CompileError = Box<dyn std::error::Error>;

fn compile(graph: &Graph, shape: &Shape, outputs: Outputs) -> Result<Kernel, CompileError> {
    let mut flags = settings::builder();
    flags.set("opt_level", "speed")?;
    let isa = cranelift_native::builder()?.finish(settings::Flags::new(flags))?;
    let mut jb = JITBuilder::with_isa(isa, default_libcall_names());
    jb.symbol("ferroptim_lane_exp", lane_exp as *const u8);
    jb.symbol("ferroptim_lane_ln", lane_ln as *const u8);
    let mut module = JITModule::new(jb);
    let ptr = module.target_config().pointer_type();

    let mut lane_fn = module.make_signature();
    lane_fn.params.push(AbiParam::new(types::F32));
    lane_fn.returns.push(AbiParam::new(types::F32));
    let exp_id = module.declare_function("ferroptim_lane_exp", Linkage::Import, &lane_fn)?;
    let ln_id = module.declare_function("ferroptim_lane_ln", Linkage::Import, &lane_fn)?;

    let mut ctx = module.make_context();
    for _ in 0..4 {
        ctx.func.signature.params.push(AbiParam::new(ptr));
    }
    let id = module.declare_function(
        "ferroptim_graph_kernel",
        Linkage::Export,
        &ctx.func.signature,
    )?;
    let mut fctx = FunctionBuilderContext::new();
    {
        let mut b = FunctionBuilder::new(&mut ctx.func, &mut fctx);
        let lanes = Lanes {
            exp: module.declare_func_in_func(exp_id, b.func),
            ln: module.declare_func_in_func(ln_id, b.func),
        };
        emit(
            &mut b,
            graph,
            shape,
            &output_nodes(graph, outputs),
            ptr,
            &lanes,
        )?;
        b.finalize();
    }
    module.define_function(id, &mut ctx)?;
    module.clear_context(&mut ctx);
    module.finalize_definitions()?;
    let code = module.get_finalized_function(id);
    // The module owns the code's memory: it must live as long as the cached pointer.
    Box::leak(Box::new(module));
    // SAFETY: `code` is the finalized machine code of a function declared above with the
    // signature (pointer-sized integer × 4) → (), the C ABI of the host, which `Kernel` is.
    Ok(unsafe { std::mem::transmute::<*const u8, Kernel>(code) })
}

/// The per-lane functions a kernel may call.
struct Lanes {
    exp: cranelift_codegen::ir::FuncRef,
    ln: cranelift_codegen::ir::FuncRef,
}

/// Nodes read by the outputs (following the shape).
fn live(graph: &Graph, shape: &Shape, outs: &[NodeId]) -> [bool; MAX_NODES] {
    let mut live = [false; MAX_NODES];
    for &o in outs {
        live[o as usize] = true;
    }
    for i in (0..graph.nodes.len()).rev() {
        if !live[i] || shape[i] == UNIFORM || shape[i] == DEAD {
            continue;
        }
        match (shape[i], graph.nodes[i]) {
            (TAKE_A, Op::Where(_, a, _)) => live[a as usize] = true,
            (TAKE_B, Op::Where(_, _, b)) => live[b as usize] = true,
            (_, op) => {
                let (ids, k) = op.operands();
                for &a in &ids[..k] {
                    live[a as usize] = true;
                }
            }
        }
    }
    live
}

/// The kernel's body: pointers and uniform values loaded once, then a loop over vectors.
fn emit(
    b: &mut FunctionBuilder<'_>,
    g: &Graph,
    shape: &Shape,
    outs: &[NodeId],
    ptr: types::Type,
    lanes: &Lanes,
) -> Result<(), CompileError> {
    let n_nodes = g.nodes.len();
    let live = live(g, shape, outs);
    let mem = MemFlags::new().with_notrap();
    let entry = b.create_block();
    let header = b.create_block();
    let body2 = b.create_block();
    let tail = b.create_block();
    let body1 = b.create_block();
    let exit = b.create_block();
    b.append_block_params_for_function_params(entry);
    b.switch_to_block(entry);
    let params = b.block_params(entry).to_vec();
    let (n, inputs, outputs, uniforms) = (params[0], params[1], params[2], params[3]);
    let word = i32::try_from(ptr.bytes()).unwrap_or(8);
    let load_ptr = |b: &mut FunctionBuilder<'_>, base: Value, k: usize| {
        b.ins().load(ptr, mem, base, word * k as i32)
    };
    // Rows: the parameter, the gradient and state k are inputs 0, 1 and 2 + k.
    let n_states = g.state_out.len();
    let mut input_rows = Vec::with_capacity(2 + n_states);
    for k in 0..2 + n_states {
        input_rows.push(load_ptr(b, inputs, k));
    }
    let mut output_rows = Vec::with_capacity(outs.len());
    for k in 0..outs.len() {
        output_rows.push(load_ptr(b, outputs, k));
    }
    // Uniform nodes that a row node or an output reads, as splatted vectors.
    let mut vals: Vec<Option<Value>> = vec![None; n_nodes];
    for i in 0..n_nodes {
        if shape[i] == UNIFORM {
            let x = b.ins().load(types::F32, mem, uniforms, 4 * i as i32);
            vals[i] = Some(b.ins().splat(types::F32X4, x));
        }
    }
    let bytes = b.ins().imul_imm(n, 4);
    let zero = b.ins().iconst(ptr, 0);
    b.ins().jump(header, &[zero.into()]);
    let rows = Rows {
        live: &live,
        uniform: &vals,
        inputs: &input_rows,
        outputs: &output_rows,
        outs,
        mem,
        lanes,
    };

    // Two vectors per iteration while there are two (independent work for the core to
    // overlap: √ and ÷ have long latencies), then the last one.
    let vector = (4 * LANES) as i64;
    b.append_block_param(header, ptr);
    b.switch_to_block(header);
    let off = b.block_params(header)[0];
    let end2 = b.ins().iadd_imm(off, 2 * vector);
    let two = b.ins().icmp(IntCC::UnsignedLessThanOrEqual, end2, bytes);
    b.ins().brif(two, body2, &[], tail, &[]);

    b.switch_to_block(body2);
    vector_body(b, g, shape, &rows, off)?;
    let second = b.ins().iadd_imm(off, vector);
    vector_body(b, g, shape, &rows, second)?;
    b.ins().jump(header, &[end2.into()]);

    b.switch_to_block(tail);
    let one = b.ins().icmp(IntCC::UnsignedLessThan, off, bytes);
    b.ins().brif(one, body1, &[], exit, &[]);

    b.switch_to_block(body1);
    vector_body(b, g, shape, &rows, off)?;
    b.ins().jump(exit, &[]);

    b.switch_to_block(exit);
    b.ins().return_(&[]);
    b.seal_all_blocks();
    Ok(())
}

/// What [`vector_body`] reads: live nodes, uniform values, row pointers.
struct Rows<'a> {
    live: &'a [bool; MAX_NODES],
    uniform: &'a [Option<Value>],
    inputs: &'a [Value],
    outputs: &'a [Value],
    /// The output nodes, one per `outputs` row.
    outs: &'a [NodeId],
    mem: MemFlags,
    lanes: &'a Lanes,
}

/// The graph for the vector at byte offset `off` of every row: loads, operations, stores.
fn vector_body(
    b: &mut FunctionBuilder<'_>,
    g: &Graph,
    shape: &Shape,
    rows: &Rows<'_>,
    off: Value,
) -> Result<(), CompileError> {
    let mut row = rows.uniform.to_vec();
    for i in 0..g.nodes.len() {
        if !rows.live[i] || shape[i] == DEAD || shape[i] == UNIFORM {
            continue;
        }
        let (needs, k) = match (shape[i], g.nodes[i]) {
            (TAKE_A, Op::Where(_, a, _)) => ([a, 0, 0], 1),
            (TAKE_B, Op::Where(_, _, c)) => ([c, 0, 0], 1),
            (_, op) => op.operands(),
        };
        if needs[..k].iter().any(|&k| row[k as usize].is_none()) {
            return Err(format!("node {i} reads a node without a value in this shape").into());
        }
        let v = |k: NodeId| row[k as usize].unwrap_or_else(no_value);
        let value = match (shape[i], g.nodes[i]) {
            (TAKE_A, Op::Where(_, a, _)) => v(a),
            (TAKE_B, Op::Where(_, _, c)) => v(c),
            (_, op) => lane_op(b, op, &v, rows.inputs, off, rows.mem, rows.lanes),
        };
        row[i] = Some(value);
    }
    if rows.outs.iter().any(|&k| row[k as usize].is_none()) {
        return Err("an output without a value in this shape".into());
    }
    for (k, &o) in rows.outs.iter().enumerate() {
        let x = row[o as usize].unwrap_or_else(no_value);
        let addr = b.ins().iadd(rows.outputs[k], off);
        b.ins().store(rows.mem, x, addr, 0);
    }
    Ok(())
}

/// Stands for a missing value where `emit` has checked there is none.
fn no_value() -> Value {
    Value::from_u32(0)
}

/// One row operation on 4 lanes.
fn lane_op(
    b: &mut FunctionBuilder<'_>,
    op: Op,
    v: &dyn Fn(NodeId) -> Value,
    input_rows: &[Value],
    off: Value,
    mem: MemFlags,
    lanes: &Lanes,
) -> Value {
    let f32x4 = types::F32X4;
    let load_row = |b: &mut FunctionBuilder<'_>, k: usize| {
        let addr = b.ins().iadd(input_rows[k], off);
        b.ins().load(f32x4, mem, addr, 0)
    };
    match op {
        Op::Param => load_row(b, 0),
        Op::Grad => load_row(b, 1),
        Op::State(k) => load_row(b, 2 + usize::from(k)),
        // Slots and constants are always uniform.
        Op::Slot(_) | Op::Const(_) => splat(b, 0.0),
        Op::Neg(a) => b.ins().fneg(v(a)),
        Op::Abs(a) => b.ins().fabs(v(a)),
        Op::Sqrt(a) => b.ins().sqrt(v(a)),
        Op::Exp(a) => per_lane(b, lanes.exp, v(a)),
        Op::Log(a) => per_lane(b, lanes.ln, v(a)),
        Op::Sign(a) => {
            // 1 where x > 0, −1 where x < 0, else 0 (±0 and NaN), as `rules::sign`.
            let x = v(a);
            let zero = splat(b, 0.0);
            let one = splat(b, 1.0);
            let minus = splat(b, -1.0);
            let gt = b.ins().fcmp(FloatCC::GreaterThan, x, zero);
            let lt = b.ins().fcmp(FloatCC::LessThan, x, zero);
            let neg = select(b, lt, minus, zero);
            select(b, gt, one, neg)
        }
        Op::Add(a, c) => b.ins().fadd(v(a), v(c)),
        Op::Sub(a, c) => b.ins().fsub(v(a), v(c)),
        Op::Mul(a, c) => b.ins().fmul(v(a), v(c)),
        Op::Div(a, c) => b.ins().fdiv(v(a), v(c)),
        Op::Max(a, c) => max_nan(b, v(a), v(c)),
        Op::Min(a, c) => {
            // −max(−a, −b), as the interpreter (NaN: the negated canonical NaN).
            let (x, y) = (b.ins().fneg(v(a)), b.ins().fneg(v(c)));
            let m = max_nan(b, x, y);
            b.ins().fneg(m)
        }
        Op::Lt(a, c) => flag(b, FloatCC::LessThan, v(a), v(c)),
        Op::Le(a, c) => flag(b, FloatCC::LessThanOrEqual, v(a), v(c)),
        Op::Eq(a, c) => flag(b, FloatCC::Equal, v(a), v(c)),
        Op::Fma(a, c, d) => b.ins().fma(v(a), v(c), v(d)),
        Op::Where(m, a, c) => {
            // `m ≠ 0` is true for NaN, as in the interpreter.
            let zero = splat(b, 0.0);
            let mask = b.ins().fcmp(FloatCC::NotEqual, v(m), zero);
            select(b, mask, v(a), v(c))
        }
    }
}

fn splat(b: &mut FunctionBuilder<'_>, x: f32) -> Value {
    let c = b.ins().f32const(x);
    b.ins().splat(types::F32X4, c)
}

/// Lanes of `x` where `mask` (all ones or all zeros per lane, from `fcmp`) is set, else `y`.
fn select(b: &mut FunctionBuilder<'_>, mask: Value, x: Value, y: Value) -> Value {
    let little = MemFlags::new().with_endianness(Endianness::Little);
    let m = b.ins().bitcast(types::F32X4, little, mask);
    b.ins().bitselect(m, x, y)
}

/// 1.0 where `x cc y`, else 0.0.
fn flag(b: &mut FunctionBuilder<'_>, cc: FloatCC, x: Value, y: Value) -> Value {
    let mask = b.ins().fcmp(cc, x, y);
    let one = splat(b, 1.0);
    let zero = splat(b, 0.0);
    select(b, mask, one, zero)
}

/// `Float::max_nan`: the canonical NaN if either is NaN, else `x` if `x > y`, else `y`.
fn max_nan(b: &mut FunctionBuilder<'_>, x: Value, y: Value) -> Value {
    let gt = b.ins().fcmp(FloatCC::GreaterThan, x, y);
    let bigger = select(b, gt, x, y);
    let nan = b.ins().fcmp(FloatCC::Unordered, x, y);
    let canonical = splat(b, f32::NAN);
    select(b, nan, canonical, bigger)
}

/// `f` applied to each lane (a call per lane).
fn per_lane(b: &mut FunctionBuilder<'_>, f: cranelift_codegen::ir::FuncRef, x: Value) -> Value {
    let mut out = x;
    for lane in 0..LANES as u8 {
        let xi = b.ins().extractlane(x, lane);
        let call = b.ins().call(f, &[xi]);
        let yi = b.inst_results(call)[0];
        out = b.ins().insertlane(out, yi, lane);
    }
    out
}
