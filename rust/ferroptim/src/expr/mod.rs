//! Rules as expression graphs (DESIGN.md §2, "Where new capabilities go"): an optimizer written
//! as data — the per-element update and the per-step scalars — run by the same fused driver as
//! the built-in rules (threads, small-tensor batching, half types, GradScaler, plans), one pass
//! over memory per step. Python-defined rules (`ferroptim.rules`) arrive here as a [`Graph`].
//!
//! The element graph is evaluated over blocks of elements (`eval.rs`), each node over the whole
//! block in a vectorised loop; the built-in SIMD rules are the oracle it must reproduce bit for
//! bit when it is given the same operations (tests in `tests.rs` and
//! `tests/python/test_rules.py`).

#[cfg(target_arch = "x86_64")]
mod compiled;
mod eval;
mod graph;
#[cfg(target_arch = "x86_64")]
mod jit;
#[cfg(test)]
mod tests;
#[cfg(all(test, target_arch = "x86_64"))]
mod tests_jit;
#[cfg(test)]
mod tests_norms;

pub use graph::{Graph, NodeId, Op, ScalarOp, MAX_HYPERS, MAX_NODES, MAX_SLOTS};

use crate::element::{Float, Storage};
use crate::error::Result;
use crate::rule::{NormSink, Rule, ScalarState, MAX_NORMS};
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

/// A [`Graph`] made a rule: the graph (checked, and kept for the life of the process, see
/// [`GraphRule::new`]) and the group's float hyperparameters.
#[derive(Clone, Copy, Debug)]
pub struct GraphRule {
    graph: &'static Graph,
    hypers: [f64; MAX_HYPERS],
}

/// Per-parameter, per-step scalars of a [`GraphRule`]: the slot values, and what the scalar
/// graph is evaluated from again once the per-tensor norms are known ([`Rule::with_norms`]).
#[derive(Clone, Copy, Debug)]
pub struct GraphScalars {
    graph: &'static Graph,
    slots: [f64; MAX_SLOTS],
    hypers: [f64; MAX_HYPERS],
    step: f64,
    fresh: bool,
}

impl GraphRule {
    /// The rule of `graph` (checked and interned, see [`intern`]) with the float
    /// hyperparameters `hypers` (the scalar graph's `Hyper(k)` inputs, in order).
    ///
    /// # Errors
    /// [`crate::Error::InvalidArgument`] if the graph fails [`Graph::check`], or `hypers` does
    /// not have the graph's number of hyperparameters.
    pub fn new(graph: &Graph, hypers: &[f64]) -> Result<GraphRule> {
        GraphRule::with_interned(intern(graph)?, hypers)
    }

    /// The rule of a graph already [`intern`]ed (no check of the graph again: a step builds
    /// its rule from each group's hyperparameters, so this is on the step's path).
    ///
    /// # Errors
    /// [`crate::Error::InvalidArgument`] if `hypers` does not have the graph's number of
    /// hyperparameters.
    pub fn with_interned(graph: &'static Graph, hypers: &[f64]) -> Result<GraphRule> {
        if hypers.len() != graph.n_hypers {
            return Err(crate::Error::InvalidArgument {
                name: "hypers",
                value: format!(
                    "{} values for {} hyperparameters",
                    hypers.len(),
                    graph.n_hypers
                ),
            });
        }
        let mut h = [0.0; MAX_HYPERS];
        h[..hypers.len()].copy_from_slice(hypers);
        Ok(GraphRule { graph, hypers: h })
    }

    /// The rule's graph.
    pub fn graph(&self) -> &'static Graph {
        self.graph
    }
}

/// Checks `graph` ([`Graph::check`]) and returns its interned copy: equal graphs share one
/// copy, which lives until the process ends (rules' state names are `'static`, see
/// [`Rule::state_names`]); a program defines a handful of rules, each interned once.
///
/// # Errors
/// As [`Graph::check`].
pub fn intern(graph: &Graph) -> Result<&'static Graph> {
    graph.check()?;
    static GRAPHS: OnceLock<Mutex<Vec<&'static Graph>>> = OnceLock::new();
    let mut graphs = match GRAPHS.get_or_init(Default::default).lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    };
    if let Some(g) = graphs.iter().find(|g| **g == graph) {
        return Ok(g);
    }
    let g: &'static Graph = Box::leak(Box::new(graph.clone()));
    graphs.push(g);
    Ok(g)
}

/// The `'static` state names of an interned graph.
fn state_names_of(graph: &'static Graph) -> &'static [&'static str] {
    static NAMES: OnceLock<Mutex<HashMap<usize, &'static [&'static str]>>> = OnceLock::new();
    let mut names = match NAMES.get_or_init(Default::default).lock() {
        Ok(n) => n,
        Err(poisoned) => poisoned.into_inner(),
    };
    names
        .entry(graph as *const Graph as usize)
        .or_insert_with(|| {
            let v: Vec<&'static str> = graph.state_names.iter().map(|s| s.as_str()).collect();
            Box::leak(v.into_boxed_slice())
        })
}

impl Rule for GraphRule {
    type Scalars = GraphScalars;

    const UPDATES_SLICES: bool = true;

    fn state_names(&self) -> &'static [&'static str] {
        state_names_of(self.graph)
    }

    fn scalars(&self, scalar_state: &mut [ScalarState], fresh: bool) -> GraphScalars {
        let step = scalar_state.first_mut().map_or(1.0, |s| s.increment());
        let n = self.graph.n_hypers;
        GraphScalars {
            graph: self.graph,
            // Slots computed from the norms are completed by `with_norms`.
            slots: self
                .graph
                .slot_values(&self.hypers[..n], step, fresh, &[0.0; MAX_NORMS]),
            hypers: self.hypers,
            step,
            fresh,
        }
    }

    /// The graph's norm terms ([`Graph::norms`]).
    fn norms(s: &GraphScalars) -> usize {
        s.graph.norms.len()
    }

    fn norm_terms<F: Float>(s: &GraphScalars, param: F, grad: F, state: &[F]) -> [F; MAX_NORMS] {
        // One element, as `update` (the driver calls `norm_terms_slice` instead).
        let p = [Elem(param)];
        let g = [Elem(grad)];
        let st: Vec<[Elem<F>; 1]> = state.iter().map(|&v| [Elem(v)]).collect();
        let views: Vec<&[Elem<F>]> = st.iter().map(|a| &a[..]).collect();
        let mut out = [F::ZERO; MAX_NORMS];
        eval::norm_terms_slice(s.graph, &s.slots, None, &p, &g, &views, &mut |terms| {
            for (o, t) in out.iter_mut().zip(terms) {
                *o = t[0];
            }
        });
        out
    }

    #[inline(always)]
    fn norm_terms_slice<S: Storage>(
        s: &GraphScalars,
        grad_scale: Option<f64>,
        param: &[S],
        grad: &[S],
        state: &[&[S]],
        sink: &mut NormSink<'_, S::Compute>,
    ) -> bool {
        #[cfg(target_arch = "x86_64")]
        if compiled::norm_terms_slice_compiled(
            s.graph, &s.slots, grad_scale, param, grad, state, sink,
        ) {
            return true;
        }
        eval::norm_terms_slice(s.graph, &s.slots, grad_scale, param, grad, state, sink);
        true
    }

    fn with_norms(s: &mut GraphScalars, sums: [f64; MAX_NORMS]) {
        let n = s.graph.n_hypers;
        s.slots = s.graph.slot_values(&s.hypers[..n], s.step, s.fresh, &sums);
    }

    fn update<F: Float>(s: &GraphScalars, param: F, grad: F, state: &mut [F]) -> F {
        // One element: the block evaluator over slices of one (the driver calls
        // `update_slice` instead wherever it can).
        let mut p = [Elem(param)];
        let mut g = [Elem(grad)];
        let mut st: Vec<[Elem<F>; 1]> = state.iter().map(|&v| [Elem(v)]).collect();
        let mut views: Vec<&mut [Elem<F>]> = st.iter_mut().map(|a| &mut a[..]).collect();
        eval::update_slice(s.graph, &s.slots, None, &mut p, &mut g, &mut views);
        for (dst, src) in state.iter_mut().zip(&st) {
            *dst = src[0].0;
        }
        p[0].0
    }

    #[inline(always)]
    fn update_slice<S: Storage>(
        s: &GraphScalars,
        grad_scale: Option<f64>,
        param: &mut [S],
        grad: &mut [S],
        state: &mut [&mut [S]],
    ) -> bool {
        #[cfg(target_arch = "x86_64")]
        if compiled::update_slice_compiled(s.graph, &s.slots, grad_scale, param, grad, state) {
            return true;
        }
        eval::update_slice(s.graph, &s.slots, grad_scale, param, grad, state);
        true
    }
}

/// A compute-type value stored as itself (for [`GraphRule::update`]'s one-element slices).
#[derive(Clone, Copy)]
struct Elem<F>(F);

impl<F: Float> Storage for Elem<F> {
    type Compute = F;
    const KIND: tch::Kind = tch::Kind::Float;
    #[inline(always)]
    fn load(self) -> F {
        self.0
    }
    #[inline(always)]
    fn store(v: F) -> Self {
        Elem(v)
    }
}
