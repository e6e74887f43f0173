//! C emission: a traced rule ([`Trace`]) as the element function `fo_update`, in C++ that
//! compiles both for the device (NVRTC) and for the host (the bit-for-bit check).
//!
//! Each node becomes one `const T tN = …;` with an explicitly rounded operation from
//! `prelude.h` (`fo_add`, `fo_fma`, …), defined in the innermost branch where it is first
//! needed; each decision becomes an `if` with the same IEEE comparison as the Rust rule.

use super::sym::{Node, NodeId, Trace, Tree};
use std::collections::HashSet;
use std::fmt::Write;

/// The shared prelude: explicitly rounded operations and storage conversions.
pub const PRELUDE: &str = include_str!("prelude.h");

/// The storage type of a tensor element, as the generated code names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dtype {
    /// `float32`.
    F32,
    /// `float64` (computed in `double`).
    F64,
    /// `bfloat16`, computed in `float`.
    Bf16,
    /// `float16`, computed in `float`.
    F16,
}

impl Dtype {
    /// The C storage type (`prelude.h`).
    pub fn storage(self) -> &'static str {
        match self {
            Dtype::F32 => "float",
            Dtype::F64 => "double",
            Dtype::Bf16 => "fo_bf16",
            Dtype::F16 => "fo_f16",
        }
    }
    /// The C compute type.
    pub fn compute(self) -> &'static str {
        if self == Dtype::F64 {
            "double"
        } else {
            "float"
        }
    }
    /// Whether arithmetic is done in `f32` (the traced scalars are rounded to `f32`).
    pub fn f32_compute(self) -> bool {
        self != Dtype::F64
    }
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F64 => 8,
            Dtype::Bf16 | Dtype::F16 => 2,
        }
    }
    /// A short name for kernel and cache names.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::F64 => "f64",
            Dtype::Bf16 => "bf16",
            Dtype::F16 => "f16",
        }
    }
}

/// `fo_update(sc, p, g, st)`: the rule's element update in compute type `T`. `sc` holds the
/// trace's scalar slots, `st` the state values (read, then overwritten with the new state); it
/// returns the new parameter. `T` must be a typedef in scope.
pub fn element_function(trace: &Trace, n_state: usize) -> String {
    let mut out = String::new();
    out.push_str(
        "FO_DEV T fo_update(const T* __restrict__ sc, const T p, const T g, T* __restrict__ st) {\n",
    );
    // A rule need not read every argument (no scalar slot, no state).
    out.push_str("  (void)sc; (void)p; (void)g; (void)st;\n");
    let used = reachable(&trace.tree, &trace.nodes);
    for k in 0..n_state {
        if used.contains(&Node::State(k as u8)) {
            let _ = writeln!(out, "  const T s{k} = st[{k}];");
        }
    }
    let mut done = HashSet::new();
    emit_tree(&trace.tree, &trace.nodes, &mut done, 1, &mut out);
    out.push_str("}\n");
    out
}

/// Every node that some path's conditions or outputs depend on.
fn reachable(tree: &Tree, nodes: &[Node]) -> HashSet<Node> {
    let mut seen = HashSet::new();
    let mut stack: Vec<NodeId> = Vec::new();
    let mut trees = vec![tree];
    while let Some(t) = trees.pop() {
        match t {
            Tree::Leaf { param, state } => {
                stack.push(*param);
                stack.extend(state.iter().copied());
            }
            Tree::Branch { cond, then, other } => {
                stack.push(cond.1);
                stack.push(cond.2);
                trees.push(then);
                trees.push(other);
            }
        }
    }
    while let Some(id) = stack.pop() {
        let n = nodes[id as usize];
        if !seen.insert(n) {
            continue;
        }
        match n {
            Node::Neg(a) | Node::Sqrt(a) | Node::Abs(a) => stack.push(a),
            Node::Add(a, b)
            | Node::Sub(a, b)
            | Node::Mul(a, b)
            | Node::Div(a, b)
            | Node::MaxNan(a, b) => stack.extend([a, b]),
            Node::Fma(a, b, c) => stack.extend([a, b, c]),
            _ => {}
        }
    }
    seen
}

fn indent(depth: usize) -> String {
    "  ".repeat(depth)
}

fn emit_tree(
    tree: &Tree,
    nodes: &[Node],
    done: &mut HashSet<NodeId>,
    depth: usize,
    out: &mut String,
) {
    match tree {
        Tree::Leaf { param, state } => {
            define(*param, nodes, done, depth, out);
            for &s in state {
                define(s, nodes, done, depth, out);
            }
            for (k, &s) in state.iter().enumerate() {
                let _ = writeln!(out, "{}st[{k}] = {};", indent(depth), name(s, nodes));
            }
            let _ = writeln!(out, "{}return {};", indent(depth), name(*param, nodes));
        }
        Tree::Branch { cond, then, other } => {
            let (op, a, b) = *cond;
            define(a, nodes, done, depth, out);
            define(b, nodes, done, depth, out);
            let _ = writeln!(
                out,
                "{}if ({} {} {}) {{",
                indent(depth),
                name(a, nodes),
                op.c(),
                name(b, nodes)
            );
            emit_tree(then, nodes, &mut done.clone(), depth + 1, out);
            let _ = writeln!(out, "{}}} else {{", indent(depth));
            emit_tree(other, nodes, &mut done.clone(), depth + 1, out);
            let _ = writeln!(out, "{}}}", indent(depth));
        }
    }
}

/// The C expression naming node `id`: an input, a slot or a temporary.
fn name(id: NodeId, nodes: &[Node]) -> String {
    match nodes[id as usize] {
        Node::Zero => "((T)0)".into(),
        Node::Param => "p".into(),
        Node::Grad => "g".into(),
        Node::State(k) => format!("s{k}"),
        Node::Slot(k) => format!("sc[{k}]"),
        _ => format!("t{id}"),
    }
}

/// Emits the definitions of `id` and of its operands not yet defined in scope.
fn define(id: NodeId, nodes: &[Node], done: &mut HashSet<NodeId>, depth: usize, out: &mut String) {
    if done.contains(&id) {
        return;
    }
    let node = nodes[id as usize];
    let n = |x: NodeId| name(x, nodes);
    let expr = match node {
        Node::Zero | Node::Param | Node::Grad | Node::State(_) | Node::Slot(_) => return,
        Node::Neg(a) | Node::Sqrt(a) | Node::Abs(a) => {
            define(a, nodes, done, depth, out);
            match node {
                Node::Neg(_) => format!("-{}", n(a)),
                Node::Sqrt(_) => format!("fo_sqrt({})", n(a)),
                _ => format!("fo_abs({})", n(a)),
            }
        }
        Node::Add(a, b)
        | Node::Sub(a, b)
        | Node::Mul(a, b)
        | Node::Div(a, b)
        | Node::MaxNan(a, b) => {
            define(a, nodes, done, depth, out);
            define(b, nodes, done, depth, out);
            let f = match node {
                Node::Add(..) => "fo_add",
                Node::Sub(..) => "fo_sub",
                Node::Mul(..) => "fo_mul",
                Node::Div(..) => "fo_div",
                _ => "fo_max_nan",
            };
            format!("{f}({}, {})", n(a), n(b))
        }
        Node::Fma(a, b, c) => {
            define(a, nodes, done, depth, out);
            define(b, nodes, done, depth, out);
            define(c, nodes, done, depth, out);
            format!("fo_fma({}, {}, {})", n(a), n(b), n(c))
        }
    };
    let _ = writeln!(out, "{}const T t{id} = {expr};", indent(depth));
    done.insert(id);
}
