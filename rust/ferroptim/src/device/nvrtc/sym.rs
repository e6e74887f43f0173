//! A symbolic [`Float`]: running a rule's generic `update::<Sym>` records the operations it
//! performs, in order, into an expression graph — the one source of the CUDA element function.
//!
//! * Values are nodes of a hash-consed graph ([`Node`]): the inputs (parameter, gradient,
//!   state slots), the per-step scalars, and every arithmetic operation of the [`Float`] trait
//!   (`+ − × ÷`, negation, `sqrt`, `abs`, `max_nan` and `mul_add`, which stays a fused
//!   multiply-add; nothing else is ever fused).
//! * **Per-step scalars.** Every `F::from_f64(v)` the rule calls becomes a kernel argument
//!   (a *slot*), numbered by where in the rule's execution the call happens (the branch
//!   decisions taken so far and its ordinal since the last one), not by its value. The value is
//!   recorded (rounded to `F` as `from_f64` rounds it): tracing the rule again each step with
//!   that step's `Scalars` yields the same graph and the new argument values. Host-side
//!   branches of the rule on its scalars (`if s.amsgrad`, `if weight_decay != 0`) select the
//!   graph, so the graph is a function of them; the caller keys its compile cache on it.
//! * **Branches on values** (`<`, `<=`, `>`, `>=`, `==` in `sign`, `clamp`, `lerp`, ADOPT's
//!   `max`) cannot be answered symbolically: the tracer enumerates every path (depth first,
//!   replaying the rule with a script of decisions) and records the compared nodes, so the
//!   result is a decision tree of paths, emitted as nested `if`s with the same IEEE comparison.
//!
//! A rule that reads a value back (`to_f64`, `partial_cmp`) cannot be traced: the trace
//! reports it instead of guessing.

use crate::element::Float;
use std::cell::RefCell;
use std::collections::HashMap;
use std::ops::{Add, Div, Mul, Neg, Sub};

/// Index of a node in the trace's graph.
pub type NodeId = u32;

/// One operation of the graph. Operands are earlier nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Node {
    /// The constant 0 (`Float::ZERO`).
    Zero,
    /// The parameter element.
    Param,
    /// The gradient element (already unscaled by the kernel when a `grad_scale` is given).
    Grad,
    /// State tensor `k`'s element, as read before the update.
    State(u8),
    /// Per-step scalar argument `k` (a `from_f64` call of the rule).
    Slot(u16),
    /// `-a`.
    Neg(NodeId),
    /// `√a`, correctly rounded.
    Sqrt(NodeId),
    /// `|a|`.
    Abs(NodeId),
    /// `a + b`.
    Add(NodeId, NodeId),
    /// `a − b`.
    Sub(NodeId, NodeId),
    /// `a · b`.
    Mul(NodeId, NodeId),
    /// `a / b`.
    Div(NodeId, NodeId),
    /// `Float::max_nan(a, b)`.
    MaxNan(NodeId, NodeId),
    /// `a · b + c` with one rounding.
    Fma(NodeId, NodeId, NodeId),
}

/// A comparison operator, with IEEE semantics (false when either side is NaN, `!=` aside).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CmpOp {
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `==`
    Eq,
}

impl CmpOp {
    /// The C operator.
    pub fn c(self) -> &'static str {
        match self {
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
            CmpOp::Eq => "==",
        }
    }
}

/// A branch condition: `a op b`.
pub type Cond = (CmpOp, NodeId, NodeId);

/// The traced rule: a decision tree whose leaves hold the outputs.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Tree {
    /// The new parameter and the new value of each state slot.
    Leaf {
        /// The returned parameter.
        param: NodeId,
        /// The final `state[k]`.
        state: Vec<NodeId>,
    },
    /// `if cond { then } else { other }`.
    Branch {
        /// The comparison.
        cond: Cond,
        /// Taken when it holds.
        then: Box<Tree>,
        /// Taken otherwise.
        other: Box<Tree>,
    },
}

/// A whole trace: graph, decision tree, and the scalar slots' values for this step.
#[derive(Clone, Debug)]
pub struct Trace {
    /// The nodes; a node's operands precede it.
    pub nodes: Vec<Node>,
    /// The decision tree of paths.
    pub tree: Tree,
    /// Value of each slot, as `f64` (exactly the `F` value `from_f64` gave).
    pub slots: Vec<f64>,
}

/// A symbolic value: a node of the trace being recorded on this thread.
#[derive(Clone, Copy, Debug)]
pub struct Sym(NodeId);

/// Largest number of paths a traced rule may have.
const MAX_PATHS: usize = 256;

struct Recorder {
    nodes: Vec<Node>,
    index: HashMap<Node, NodeId>,
    /// Decisions to replay at the next comparisons; further ones answer `false`.
    script: Vec<bool>,
    /// Conditions met and decisions taken on this path.
    taken: Vec<(Cond, bool)>,
    /// `from_f64` calls since the last decision on this path.
    ordinal: u32,
    slot_index: HashMap<(Vec<bool>, u32), u16>,
    slot_values: Vec<f64>,
    /// Set when the rule did something the trace cannot represent.
    failure: Option<String>,
    /// Rounds a host scalar to the traced compute type (`f32` or `f64`).
    round: fn(f64) -> f64,
}

thread_local! {
    static REC: RefCell<Option<Recorder>> = const { RefCell::new(None) };
}

fn with_rec<T>(f: impl FnOnce(&mut Recorder) -> T, default: T) -> T {
    REC.with(|r| match r.borrow_mut().as_mut() {
        Some(rec) => f(rec),
        None => default,
    })
}

impl Recorder {
    fn node(&mut self, n: Node) -> NodeId {
        if let Some(&id) = self.index.get(&n) {
            return id;
        }
        let id = self.nodes.len() as NodeId;
        self.nodes.push(n);
        self.index.insert(n, id);
        id
    }

    fn decide(&mut self, cond: Cond) -> bool {
        let i = self.taken.len();
        let d = self.script.get(i).copied().unwrap_or(false);
        self.taken.push((cond, d));
        self.ordinal = 0;
        d
    }

    fn slot(&mut self, v: f64) -> NodeId {
        let key = (
            self.taken.iter().map(|&(_, d)| d).collect::<Vec<_>>(),
            self.ordinal,
        );
        self.ordinal += 1;
        let value = (self.round)(v);
        let k = match self.slot_index.get(&key) {
            Some(&k) => {
                let known = self.slot_values[usize::from(k)];
                if known.to_bits() != value.to_bits() {
                    self.failure = Some(format!(
                        "scalar slot {k} took two values ({known} and {value}) on one step"
                    ));
                }
                k
            }
            None => {
                let k = self.slot_values.len() as u16;
                self.slot_values.push(value);
                self.slot_index.insert(key, k);
                k
            }
        };
        self.node(Node::Slot(k))
    }
}

fn op(n: impl FnOnce() -> Node) -> Sym {
    Sym(with_rec(|r| r.node(n()), 0))
}

impl Add for Sym {
    type Output = Sym;
    fn add(self, o: Sym) -> Sym {
        op(|| Node::Add(self.0, o.0))
    }
}
impl Sub for Sym {
    type Output = Sym;
    fn sub(self, o: Sym) -> Sym {
        op(|| Node::Sub(self.0, o.0))
    }
}
impl Mul for Sym {
    type Output = Sym;
    fn mul(self, o: Sym) -> Sym {
        op(|| Node::Mul(self.0, o.0))
    }
}
impl Div for Sym {
    type Output = Sym;
    fn div(self, o: Sym) -> Sym {
        op(|| Node::Div(self.0, o.0))
    }
}
impl Neg for Sym {
    type Output = Sym;
    fn neg(self) -> Sym {
        op(|| Node::Neg(self.0))
    }
}

fn cmp(a: &Sym, b: &Sym, o: CmpOp) -> bool {
    with_rec(|r| r.decide((o, a.0, b.0)), false)
}

impl PartialEq for Sym {
    fn eq(&self, other: &Sym) -> bool {
        cmp(self, other, CmpOp::Eq)
    }
}

impl PartialOrd for Sym {
    fn partial_cmp(&self, _other: &Sym) -> Option<std::cmp::Ordering> {
        with_rec(
            |r| r.failure = Some("the rule called partial_cmp on a traced value".into()),
            (),
        );
        None
    }
    fn lt(&self, o: &Sym) -> bool {
        cmp(self, o, CmpOp::Lt)
    }
    fn le(&self, o: &Sym) -> bool {
        cmp(self, o, CmpOp::Le)
    }
    fn gt(&self, o: &Sym) -> bool {
        cmp(self, o, CmpOp::Gt)
    }
    fn ge(&self, o: &Sym) -> bool {
        cmp(self, o, CmpOp::Ge)
    }
}

impl Float for Sym {
    /// Node 0 of every trace is [`Node::Zero`].
    const ZERO: Sym = Sym(0);
    fn from_f64(v: f64) -> Sym {
        Sym(with_rec(|r| r.slot(v), 0))
    }
    fn sqrt(self) -> Sym {
        op(|| Node::Sqrt(self.0))
    }
    fn max_nan(self, other: Sym) -> Sym {
        op(|| Node::MaxNan(self.0, other.0))
    }
    fn abs(self) -> Sym {
        op(|| Node::Abs(self.0))
    }
    fn mul_add(self, a: Sym, b: Sym) -> Sym {
        op(|| Node::Fma(self.0, a.0, b.0))
    }
    fn to_f64(self) -> f64 {
        with_rec(
            |r| r.failure = Some("the rule read a traced value with to_f64".into()),
            (),
        );
        f64::NAN
    }
}

/// Clears the recorder when dropped, so a panicking rule leaves no trace behind.
struct Session;
impl Drop for Session {
    fn drop(&mut self) {
        REC.with(|r| *r.borrow_mut() = None);
    }
}

/// Traces `f` — a call of a rule's generic update with [`Sym`] values — over every path.
///
/// `f` receives the parameter, gradient and `n_state` state values and returns the new
/// parameter; its final state values are the new state. `f32_compute` rounds the scalar slots
/// as `f32::from_f64` does (for f32, bf16 and f16 storage), else keeps them `f64`.
pub fn trace(
    n_state: usize,
    f32_compute: bool,
    mut f: impl FnMut(Sym, Sym, &mut [Sym]) -> Sym,
) -> Result<Trace, String> {
    let _session = Session;
    let round: fn(f64) -> f64 = if f32_compute {
        |v| f64::from(v as f32)
    } else {
        |v| v
    };
    let mut rec = Recorder {
        nodes: Vec::new(),
        index: HashMap::new(),
        script: Vec::new(),
        taken: Vec::new(),
        ordinal: 0,
        slot_index: HashMap::new(),
        slot_values: Vec::new(),
        failure: None,
        round,
    };
    rec.node(Node::Zero);
    let param = rec.node(Node::Param);
    let grad = rec.node(Node::Grad);
    let inputs: Vec<NodeId> = (0..n_state)
        .map(|k| rec.node(Node::State(k as u8)))
        .collect();
    REC.with(|r| *r.borrow_mut() = Some(rec));
    // Depth-first over decision scripts.
    let mut pending: Vec<Vec<bool>> = vec![Vec::new()];
    let mut paths: Vec<Path> = Vec::new();
    while let Some(script) = pending.pop() {
        if paths.len() >= MAX_PATHS {
            return Err(format!("the rule has more than {MAX_PATHS} paths"));
        }
        let fixed = script.len();
        with_rec(
            |r| {
                r.script = script;
                r.taken.clear();
                r.ordinal = 0;
            },
            (),
        );
        let mut state: Vec<Sym> = inputs.iter().map(|&k| Sym(k)).collect();
        let out = f(Sym(param), Sym(grad), &mut state);
        let taken = with_rec(|r| std::mem::take(&mut r.taken), Vec::new());
        // Every decision past the script answered `false`: its `true` side is still to visit.
        for j in fixed..taken.len() {
            let mut alt: Vec<bool> = taken[..j].iter().map(|&(_, d)| d).collect();
            alt.push(true);
            pending.push(alt);
        }
        paths.push((taken, out.0, state.iter().map(|s| s.0).collect()));
    }
    let rec = REC
        .with(|r| r.borrow_mut().take())
        .ok_or_else(|| "the trace recorder was lost".to_string())?;
    if let Some(e) = rec.failure {
        return Err(e);
    }
    let tree = build(&paths, 0)?;
    Ok(Trace {
        nodes: rec.nodes,
        tree,
        slots: rec.slot_values,
    })
}

/// One path: its decisions, the returned parameter and the final state.
type Path = (Vec<(Cond, bool)>, NodeId, Vec<NodeId>);

/// The decision tree of `paths`, which share their first `depth` decisions.
fn build(paths: &[Path], depth: usize) -> Result<Tree, String> {
    let first = paths.first().ok_or("no path")?;
    if first.0.len() == depth {
        if paths.len() != 1 {
            return Err("two paths with the same decisions".into());
        }
        return Ok(Tree::Leaf {
            param: first.1,
            state: first.2.clone(),
        });
    }
    let cond = first.0[depth].0;
    let (mut yes, mut no) = (Vec::new(), Vec::new());
    for p in paths {
        match p.0.get(depth) {
            Some(&(c, d)) if c == cond => {
                if d {
                    yes.push(p.clone())
                } else {
                    no.push(p.clone())
                }
            }
            _ => return Err("paths with the same decisions met different conditions".into()),
        }
    }
    if yes.is_empty() || no.is_empty() {
        return Err("a condition with one side never explored".into());
    }
    Ok(Tree::Branch {
        cond,
        then: Box::new(build(&yes, depth + 1)?),
        other: Box::new(build(&no, depth + 1)?),
    })
}
