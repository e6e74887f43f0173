//! Rules as data: an element graph (the per-element update) and a scalar graph (the per-step
//! scalars), checked once when they are built.

use crate::error::{Error, Result};
use crate::rule::MAX_STATE;

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

/// One operation of the scalar graph, computed in `f64` as Python computes it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ScalarOp {
    /// Float hyperparameter `k` of the group.
    Hyper(u8),
    /// The parameter's step count after this step's increment (1 on the first step).
    Step,
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
}

/// A rule as data: the per-step scalars computed from the hyperparameters and the step count
/// (`scalars`, whose outputs are the element graph's slots), and the per-element update
/// (`nodes`, with the new parameter value and the new value of every state tensor).
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
            let ok = match *op {
                Op::Param | Op::Grad | Op::Const(_) => true,
                Op::State(k) => usize::from(k) < n_state,
                Op::Slot(k) => usize::from(k) < self.slots.len(),
                Op::Neg(a) | Op::Abs(a) | Op::Sqrt(a) | Op::Exp(a) | Op::Log(a) | Op::Sign(a) => {
                    (a as usize) < i
                }
                Op::Add(a, b)
                | Op::Sub(a, b)
                | Op::Mul(a, b)
                | Op::Div(a, b)
                | Op::Max(a, b)
                | Op::Min(a, b)
                | Op::Lt(a, b)
                | Op::Le(a, b)
                | Op::Eq(a, b) => (a as usize) < i && (b as usize) < i,
                Op::Fma(a, b, c) | Op::Where(a, b, c) => {
                    (a as usize) < i && (b as usize) < i && (c as usize) < i
                }
            };
            if !ok {
                return Err(bad(format!(
                    "node {i} ({op:?}) refers to a later node or an input out of range"
                )));
            }
        }
        for (i, op) in self.scalars.iter().enumerate() {
            let ok = match *op {
                ScalarOp::Step | ScalarOp::Fresh | ScalarOp::Const(_) => true,
                ScalarOp::Hyper(k) => usize::from(k) < self.n_hypers,
                ScalarOp::Neg(a)
                | ScalarOp::Abs(a)
                | ScalarOp::Sqrt(a)
                | ScalarOp::Exp(a)
                | ScalarOp::Log(a) => (a as usize) < i,
                ScalarOp::Add(a, b)
                | ScalarOp::Sub(a, b)
                | ScalarOp::Mul(a, b)
                | ScalarOp::Div(a, b)
                | ScalarOp::Pow(a, b)
                | ScalarOp::Max(a, b)
                | ScalarOp::Min(a, b)
                | ScalarOp::Lt(a, b) => (a as usize) < i && (b as usize) < i,
                ScalarOp::Where(a, b, c) => {
                    (a as usize) < i && (b as usize) < i && (c as usize) < i
                }
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
        Ok(())
    }

    /// The slot values for one parameter's step: the scalar graph evaluated in `f64` with the
    /// group's float hyperparameters, the step count after the increment and `fresh`.
    pub fn slot_values(&self, hypers: &[f64], step: f64, fresh: bool) -> [f64; MAX_SLOTS] {
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
