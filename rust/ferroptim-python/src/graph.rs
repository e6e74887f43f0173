//! Rules defined in Python (`ferroptim.rules`): their traced graphs as `ferroptim.expr` graphs,
//! and the step and plan functions of `ferroptim::expr::GraphRule`.

use crate::plan::{FromGroup, Plan};
use crate::rules::{get, run};
use ferroptim::expr::{Graph as CoreGraph, GraphRule, NodeId, Op, ScalarOp};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

/// A traced rule (see `python/ferroptim/rules.py`), checked and interned once.
#[pyclass(module = "ferroptim._core", frozen, name = "Graph")]
pub struct Graph {
    graph: &'static CoreGraph,
}

/// A node as Python sends it: `(op, a, b, c, value)`.
type RawNode = (String, u32, u32, u32, f64);

fn small(what: &str, v: u32) -> PyResult<u8> {
    u8::try_from(v).map_err(|_| PyValueError::new_err(format!("{what} {v} out of range")))
}

fn op(n: &RawNode) -> PyResult<Op> {
    let (name, a, b, c, value) = n;
    let (a, b, c): (NodeId, NodeId, NodeId) = (*a, *b, *c);
    Ok(match name.as_str() {
        "param" => Op::Param,
        "grad" => Op::Grad,
        "state" => Op::State(small("state", a)?),
        "slot" => Op::Slot(small("slot", a)?),
        "const" => Op::Const(*value),
        "neg" => Op::Neg(a),
        "abs" => Op::Abs(a),
        "sqrt" => Op::Sqrt(a),
        "exp" => Op::Exp(a),
        "log" => Op::Log(a),
        "sign" => Op::Sign(a),
        "add" => Op::Add(a, b),
        "sub" => Op::Sub(a, b),
        "mul" => Op::Mul(a, b),
        "div" => Op::Div(a, b),
        "maximum" => Op::Max(a, b),
        "minimum" => Op::Min(a, b),
        "lt" => Op::Lt(a, b),
        "le" => Op::Le(a, b),
        "eq" => Op::Eq(a, b),
        "fma" => Op::Fma(a, b, c),
        "where" => Op::Where(a, b, c),
        other => {
            return Err(PyValueError::new_err(format!(
                "unknown element operation {other:?}"
            )))
        }
    })
}

fn scalar_op(n: &RawNode) -> PyResult<ScalarOp> {
    let (name, a, b, c, value) = n;
    let (a, b, c): (NodeId, NodeId, NodeId) = (*a, *b, *c);
    Ok(match name.as_str() {
        "hyper" => ScalarOp::Hyper(small("hyper", a)?),
        "step" => ScalarOp::Step,
        "fresh" => ScalarOp::Fresh,
        "const" => ScalarOp::Const(*value),
        "neg" => ScalarOp::Neg(a),
        "abs" => ScalarOp::Abs(a),
        "sqrt" => ScalarOp::Sqrt(a),
        "exp" => ScalarOp::Exp(a),
        "log" => ScalarOp::Log(a),
        "add" => ScalarOp::Add(a, b),
        "sub" => ScalarOp::Sub(a, b),
        "mul" => ScalarOp::Mul(a, b),
        "div" => ScalarOp::Div(a, b),
        "pow" => ScalarOp::Pow(a, b),
        "maximum" => ScalarOp::Max(a, b),
        "minimum" => ScalarOp::Min(a, b),
        "lt" => ScalarOp::Lt(a, b),
        "eq" => ScalarOp::Eq(a, b),
        "norm_sq" => ScalarOp::NormSq(small("norm", a)?),
        "where" => ScalarOp::Where(a, b, c),
        other => {
            return Err(PyValueError::new_err(format!(
                "unknown scalar operation {other:?}"
            )))
        }
    })
}

#[pymethods]
impl Graph {
    /// Checks and interns a traced rule. Raises ValueError naming the first bad node.
    #[new]
    #[pyo3(signature = (state_names, nodes, param_out, state_out, scalars, slots, n_hypers, norms = Vec::new()))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        state_names: Vec<String>,
        nodes: Vec<RawNode>,
        param_out: u32,
        state_out: Vec<u32>,
        scalars: Vec<RawNode>,
        slots: Vec<u32>,
        n_hypers: usize,
        norms: Vec<u32>,
    ) -> PyResult<Self> {
        let graph = CoreGraph {
            state_names,
            nodes: nodes.iter().map(op).collect::<PyResult<_>>()?,
            param_out,
            state_out,
            scalars: scalars.iter().map(scalar_op).collect::<PyResult<_>>()?,
            slots,
            n_hypers,
            norms,
        };
        let graph =
            ferroptim::expr::intern(&graph).map_err(|e| PyValueError::new_err(e.to_string()))?;
        Ok(Graph { graph })
    }

    /// The number of element nodes.
    #[getter]
    fn n_nodes(&self) -> usize {
        self.graph.nodes.len()
    }

    /// The number of per-tensor norm terms.
    #[getter]
    fn n_norms(&self) -> usize {
        self.graph.norms.len()
    }
}

impl FromGroup for GraphRule {
    fn from_group(d: &Bound<'_, PyDict>) -> PyResult<Self> {
        let graph: Bound<'_, Graph> = get(d, "graph")?;
        let hypers: Vec<f64> = get(d, "hypers")?;
        GraphRule::with_interned(graph.get().graph, &hypers)
            .map_err(|e| PyValueError::new_err(e.to_string()))
    }
}

/// One step of Python-defined rules over all groups (each group dict has `graph`, a
/// [`Graph`], and `hypers`, its float hyperparameters in the graph's order).
#[pyfunction]
#[pyo3(signature = (groups, grad_scale = None))]
pub fn graph_step(
    py: Python<'_>,
    groups: Vec<Bound<'_, PyDict>>,
    grad_scale: Option<f64>,
) -> PyResult<()> {
    run::<GraphRule>(py, groups, grad_scale)
}

/// A cached plan of a Python-defined rule's steps.
#[pyfunction]
pub fn graph_plan(
    py: Python<'_>,
    state: &Bound<'_, PyDict>,
    param_groups: &Bound<'_, PyList>,
    names: Vec<(Vec<String>, Vec<String>)>,
) -> PyResult<Plan> {
    Plan::new::<GraphRule>(py, state, param_groups, names)
}

/// Registers `Graph`, `graph_step` and `graph_plan`.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Graph>()?;
    m.add_function(wrap_pyfunction!(graph_step, m)?)?;
    m.add_function(wrap_pyfunction!(graph_plan, m)?)
}
