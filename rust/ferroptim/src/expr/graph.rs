//! Rules as data: an element graph (the per-element update) and a scalar graph (the per-step
//! scalars), checked once when they are built.

use crate::error::{Error, Result};
use crate::rule::{MAX_NORMS, MAX_STATE};

/// Index of an earlier node of the same graph.
pub type NodeId = u32;

/// Largest number of nodes of an element graph.
pub const MAX_NODES: usize = 256;
/// Largest number of per-step scalars (slots) an element graph reads.
pub const MAX_SLOTS: usize = 32;
/// Largest number of float hyperparameters a scalar graph reads.
pub const MAX_HYPERS: usize = 32;

/// One operation of the element graph, computed in the element's compute type (`f32` for
/// 32-bit and half storage, `f64` for `f64`), each result rounded once (IEEE).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Op {
    /// The parameter element.
    Param,
    /// The gradient element (divided by the loss scale when GradScaler hands one over).
    Grad,
    /// State tensor `k`'s element, before the update.
    State(u8),
    /// Per-step scalar `k` (output `k` of the scalar graph), rounded to the compute type.
    Slot(u8),
    /// A constant, rounded to the compute type.
    Const(f64),
    /// `-a`.
    Neg(NodeId),
    /// `|a|`.
    Abs(NodeId),
    /// `√a`, correctly rounded.
    Sqrt(NodeId),
    /// `eᵃ`, computed in `f64` and rounded.
    Exp(NodeId),
    /// `ln a`, computed in `f64` and rounded.
    Log(NodeId),
    /// `torch.sign`: 1, −1, or 0 (NaN and ±0 give 0).
    Sign(NodeId),
    /// `a + b`.
    Add(NodeId, NodeId),
    /// `a − b`.
    Sub(NodeId, NodeId),
    /// `a · b`.
    Mul(NodeId, NodeId),
    /// `a / b`.
    Div(NodeId, NodeId),
    /// `torch.maximum` (NaN if either is NaN).
    Max(NodeId, NodeId),
    /// `torch.minimum` (NaN if either is NaN).
    Min(NodeId, NodeId),
    /// `a · b + c` with one rounding.
    Fma(NodeId, NodeId, NodeId),
    /// 1 if `a < b` else 0 (IEEE: false with a NaN).
    Lt(NodeId, NodeId),
    /// 1 if `a ≤ b` else 0.
    Le(NodeId, NodeId),
    /// 1 if `a = b` else 0.
    Eq(NodeId, NodeId),
    /// `b` where `m ≠ 0`, else `c`.
    Where(NodeId, NodeId, NodeId),
}

impl Op {
    /// The nodes this operation reads, in order: `(ids, n)` with the operands in `ids[..n]`
    /// (none for the inputs `Param`, `Grad`, `State`, `Slot`, `Const`).
    pub fn operands(self) -> ([NodeId; 3], usize) {
        match self {
            Op::Param | Op::Grad | Op::State(_) | Op::Slot(_) | Op::Const(_) => ([0; 3], 0),
            Op::Neg(a) | Op::Abs(a) | Op::Sqrt(a) | Op::Exp(a) | Op::Log(a) | Op::Sign(a) => {
                ([a, 0, 0], 1)
            }
            Op::Add(a, b)
            | Op::Sub(a, b)
            | Op::Mul(a, b)
            | Op::Div(a, b)
            | Op::Max(a, b)
            | Op::Min(a, b)
            | Op::Lt(a, b)
            | Op::Le(a, b)
            | Op::Eq(a, b) => ([a, b, 0], 2),
            Op::Fma(a, b, c) | Op::Where(a, b, c) => ([a, b, c], 3),
        }
    }
}

/// One operation of the scalar graph, computed in `f64` as Python computes it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ScalarOp {
    /// Float hyperparameter `k` of the group.
    Hyper(u8),
    /// The parameter's step count after this step's increment (1 on the first step).
    Step,
    /// The sum of squares of norm term `k` ([`Graph::norms`]) over the whole tensor, in `f64`
    /// (summed in a fixed order whatever the thread count, as the built-in rules' norms; see
    /// `driver/norms.rs`). Its square root is the term's 2-norm, e.g. LAMB's `‖θ‖`.
    NormSq(u8),
    /// 1 on a parameter's first step (its state was just created), else 0.
    Fresh,
    /// A constant.
    Const(f64),
    /// `-a`.
    Neg(NodeId),
    /// `|a|`.
    Abs(NodeId),
    /// `√a`.
    Sqrt(NodeId),
    /// `eᵃ`.
    Exp(NodeId),
    /// `ln a`.
    Log(NodeId),
    /// `a + b`.
    Add(NodeId, NodeId),
    /// `a − b`.
    Sub(NodeId, NodeId),
    /// `a · b`.
    Mul(NodeId, NodeId),
    /// `a / b`.
    Div(NodeId, NodeId),
    /// `aᵇ` (C's `pow`, as Python's `**` on floats).
    Pow(NodeId, NodeId),
    /// `max(a, b)` (NaN if either is NaN).
    Max(NodeId, NodeId),
    /// `min(a, b)` (NaN if either is NaN).
    Min(NodeId, NodeId),
    /// `b` where `m ≠ 0`, else `c`.
    Where(NodeId, NodeId, NodeId),
    /// 1 if `a < b` else 0.
    Lt(NodeId, NodeId),
    /// 1 if `a = b` else 0 (IEEE: 0 with a NaN).
    Eq(NodeId, NodeId),
}

impl ScalarOp {
    /// The nodes this operation reads: `(ids, n)` with the operands in `ids[..n]`.
    pub fn operands(self) -> ([NodeId; 3], usize) {
        match self {
            ScalarOp::Hyper(_)
            | ScalarOp::Step
            | ScalarOp::NormSq(_)
            | ScalarOp::Fresh
            | ScalarOp::Const(_) => ([0; 3], 0),
            ScalarOp::Neg(a)
            | ScalarOp::Abs(a)
            | ScalarOp::Sqrt(a)
            | ScalarOp::Exp(a)
            | ScalarOp::Log(a) => ([a, 0, 0], 1),
            ScalarOp::Add(a, b)
            | ScalarOp::Sub(a, b)
            | ScalarOp::Mul(a, b)
            | ScalarOp::Div(a, b)
            | ScalarOp::Pow(a, b)
            | ScalarOp::Max(a, b)
            | ScalarOp::Min(a, b)
            | ScalarOp::Lt(a, b)
            | ScalarOp::Eq(a, b) => ([a, b, 0], 2),
            ScalarOp::Where(a, b, c) => ([a, b, c], 3),
        }
    }
}

/// A rule as data: the per-step scalars computed from the hyperparameters and the step count
/// (`scalars`, whose outputs are the element graph's slots), and the per-element update
/// (`nodes`, with the new parameter value and the new value of every state tensor).
///
/// A rule that needs per-tensor norms (LAMB's and LARS's trust ratios) names up to
/// [`MAX_NORMS`] element nodes in `norms`: the driver first sums their squares over each whole
/// tensor (in `f64`, in a fixed order), then the scalar graph reads the sums
/// ([`ScalarOp::NormSq`]), so that slots computed from them (the trust ratio) are per-tensor
/// uniform values of the update. The norm terms are computed from the old state and must not
/// read such slots.
#[derive(Clone, Debug, PartialEq)]
pub struct Graph {
    /// State tensor names (torch.optim style, e.g. `exp_avg`), in slot order.
    pub state_names: Vec<String>,
    /// The element graph, in evaluation order.
    pub nodes: Vec<Op>,
    /// The node giving the new parameter value.
    pub param_out: NodeId,
    /// The nodes giving each state tensor's new value (one per state name).
    pub state_out: Vec<NodeId>,
    /// The scalar graph, in evaluation order.
    pub scalars: Vec<ScalarOp>,
    /// The scalar nodes giving each slot's value.
    pub slots: Vec<NodeId>,
    /// How many float hyperparameters the scalar graph reads.
    pub n_hypers: usize,
    /// The element nodes whose squares are summed over each tensor before the update (at most
    /// [`MAX_NORMS`]; empty for an elementwise rule).
    pub norms: Vec<NodeId>,
}

fn bad(value: String) -> Error {
    Error::InvalidArgument {
        name: "graph",
        value,
    }
}

impl Graph {
    /// Checks the graph: every operand names an earlier node, inputs are in range, outputs
    /// exist, and sizes are within [`MAX_NODES`], [`MAX_SLOTS`], [`MAX_HYPERS`], [`MAX_STATE`].
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] (name `graph`) describing the first problem found.
    pub fn check(&self) -> Result<()> {
        let n_state = self.state_names.len();
        if n_state > MAX_STATE {
            return Err(bad(format!(
                "{n_state} state tensors (at most {MAX_STATE})"
            )));
        }
        if self.state_out.len() != n_state {
            return Err(bad(format!(
                "{} state outputs for {n_state} state tensors",
                self.state_out.len()
            )));
        }
        if self.nodes.is_empty() || self.nodes.len() > MAX_NODES {
            return Err(bad(format!(
                "{} nodes (1 to {MAX_NODES})",
                self.nodes.len()
            )));
        }
        if self.slots.len() > MAX_SLOTS || self.n_hypers > MAX_HYPERS {
            return Err(bad(format!(
                "{} slots and {} hyperparameters (at most {MAX_SLOTS} and {MAX_HYPERS})",
                self.slots.len(),
                self.n_hypers
            )));
        }
        for (i, op) in self.nodes.iter().enumerate() {
            let (ids, k) = op.operands();
            let ok = ids[..k].iter().all(|&a| (a as usize) < i)
                && match *op {
                    Op::State(k) => usize::from(k) < n_state,
                    Op::Slot(k) => usize::from(k) < self.slots.len(),
                    _ => true,
                };
            if !ok {
                return Err(bad(format!(
                    "node {i} ({op:?}) refers to a later node or an input out of range"
                )));
            }
        }
        for (i, op) in self.scalars.iter().enumerate() {
            let (ids, k) = op.operands();
            let ok = ids[..k].iter().all(|&a| (a as usize) < i)
                && match *op {
                    ScalarOp::Hyper(k) => usize::from(k) < self.n_hypers,
                    ScalarOp::NormSq(k) => usize::from(k) < self.norms.len(),
                    _ => true,
                };
            if !ok {
                return Err(bad(format!(
                    "scalar node {i} ({op:?}) refers to a later node or an input out of range"
                )));
            }
        }
        let n = self.nodes.len();
        let outs = std::iter::once(&self.param_out).chain(&self.state_out);
        if let Some(o) = outs.into_iter().find(|&&o| o as usize >= n) {
            return Err(bad(format!("output node {o} of {n}")));
        }
        if let Some(s) = self
            .slots
            .iter()
            .find(|&&s| s as usize >= self.scalars.len())
        {
            return Err(bad(format!("slot node {s} of {}", self.scalars.len())));
        }
        if self.norms.len() > MAX_NORMS {
            return Err(bad(format!(
                "{} norm terms (at most {MAX_NORMS})",
                self.norms.len()
            )));
        }
        if let Some(o) = self.norms.iter().find(|&&o| o as usize >= n) {
            return Err(bad(format!("norm term node {o} of {n}")));
        }
        self.check_norm_terms()
    }

    /// The norm terms are summed before the slots that depend on the sums are known: refuses
    /// a norm term that reads such a slot (directly or through other nodes).
    fn check_norm_terms(&self) -> Result<()> {
        if self.norms.is_empty() {
            return Ok(());
        }
        // Scalar nodes computed from a NormSq.
        let mut late = vec![false; self.scalars.len()];
        for (i, op) in self.scalars.iter().enumerate() {
            let (ids, k) = op.operands();
            late[i] =
                matches!(op, ScalarOp::NormSq(_)) || ids[..k].iter().any(|&a| late[a as usize]);
        }
        // Element nodes the norm terms read, from the terms back.
        let mut read = vec![false; self.nodes.len()];
        for &o in &self.norms {
            read[o as usize] = true;
        }
        for i in (0..self.nodes.len()).rev() {
            if !read[i] {
                continue;
            }
            let op = self.nodes[i];
            if let Op::Slot(k) = op {
                if late[self.slots[usize::from(k)] as usize] {
                    return Err(bad(format!(
                        "norm term reads node {i} ({op:?}), a per-step scalar computed from \
                         the norms (a norm term is summed before the norms are known)"
                    )));
                }
            }
            let (ids, k) = op.operands();
            for &a in &ids[..k] {
                read[a as usize] = true;
            }
        }
        Ok(())
    }

    /// The slot values for one parameter's step: the scalar graph evaluated in `f64` with the
    /// group's float hyperparameters, the step count after the increment, `fresh`, and the
    /// sums of squares of the norm terms (`norm_sq[k]` for [`ScalarOp::NormSq`]`(k)`; zeros
    /// before they are known).
    pub fn slot_values(
        &self,
        hypers: &[f64],
        step: f64,
        fresh: bool,
        norm_sq: &[f64; MAX_NORMS],
    ) -> [f64; MAX_SLOTS] {
        let mut v = [0.0f64; 2 * MAX_NODES];
        let mut vals: Vec<f64> = Vec::new();
        let buf: &mut [f64] = if self.scalars.len() <= v.len() {
            &mut v[..self.scalars.len()]
        } else {
            vals.resize(self.scalars.len(), 0.0);
            &mut vals
        };
        for i in 0..buf.len() {
            let x = |a: NodeId| buf[a as usize];
            buf[i] = match self.scalars[i] {
                ScalarOp::Hyper(k) => hypers.get(usize::from(k)).copied().unwrap_or(f64::NAN),
                ScalarOp::Step => step,
                ScalarOp::NormSq(k) => norm_sq.get(usize::from(k)).copied().unwrap_or(f64::NAN),
                ScalarOp::Fresh => f64::from(u8::from(fresh)),
                ScalarOp::Const(c) => c,
                ScalarOp::Neg(a) => -x(a),
                ScalarOp::Abs(a) => x(a).abs(),
                ScalarOp::Sqrt(a) => x(a).sqrt(),
                ScalarOp::Exp(a) => x(a).exp(),
                ScalarOp::Log(a) => x(a).ln(),
                ScalarOp::Add(a, b) => x(a) + x(b),
                ScalarOp::Sub(a, b) => x(a) - x(b),
                ScalarOp::Mul(a, b) => x(a) * x(b),
                ScalarOp::Div(a, b) => x(a) / x(b),
                ScalarOp::Pow(a, b) => x(a).powf(x(b)),
                ScalarOp::Max(a, b) => nan_or(x(a), x(b), f64::max),
                ScalarOp::Min(a, b) => nan_or(x(a), x(b), f64::min),
                ScalarOp::Lt(a, b) => f64::from(u8::from(x(a) < x(b))),
                ScalarOp::Eq(a, b) => f64::from(u8::from(x(a) == x(b))),
                ScalarOp::Where(m, a, b) => {
                    if x(m) != 0.0 {
                        x(a)
                    } else {
                        x(b)
                    }
                }
            };
        }
        let mut out = [0.0; MAX_SLOTS];
        for (o, &s) in out.iter_mut().zip(&self.slots) {
            *o = buf[s as usize];
        }
        out
    }
}

fn nan_or(a: f64, b: f64, f: fn(f64, f64) -> f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        f(a, b)
    }
}
