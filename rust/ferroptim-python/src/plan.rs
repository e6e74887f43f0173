//! Cached step plans: an optimizer's parameters and state converted to tch handles once, with a
//! snapshot of the Python containers they came from.
//!
//! A planned step converts nothing per parameter: it checks, by object identity, that
//! `optimizer.state`, every per-parameter state dict and every group's `params` list still
//! hold exactly the objects they held when the plan was made, reads the gradients from the
//! parameters, and steps. If anything changed — a state tensor replaced, a parameter added, a
//! parameter that has no state yet got a gradient — the step does nothing and reports it, and
//! the Python class takes its general path and makes a new plan (DESIGN.md §3: per-step Python
//! work O(groups), not O(params)).
//!
//! The identity checks are sound because the plan holds a reference to every object it
//! compares, so none of their addresses can be reused by a new object while the plan lives.
//! Tensor *contents and metadata* (`.data =`, `resize_`, a move to another device) are not
//! cached: the core driver inspects every tensor at every step.

use crate::error::CoreError;
use crate::tensor::PyTensor;
use ferroptim::{ParamState, Rule, StepCache};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString};
use std::ffi::c_void;
use std::sync::Mutex;

/// Builds a rule from a group dict of hyperparameters (see `rules.rs`).
pub trait FromGroup: Rule + Send + Sized + Clone {
    /// The rule with the hyperparameters of `d` (keys: the rule's field names).
    fn from_group(d: &Bound<'_, PyDict>) -> PyResult<Self>;

    /// True if some parameters of a group take [`FromGroup::split_rule`] instead of the
    /// group's rule (LARS); then [`FromGroup::splits`] is checked again at every planned step.
    const SPLITS: bool = false;

    /// Whether `param` takes the split rule (see [`FromGroup::SPLITS`]).
    fn splits(_param: &tch::Tensor) -> bool {
        false
    }

    /// The rule of the parameters for which [`FromGroup::splits`] holds.
    fn split_rule(&self) -> Self {
        self.clone()
    }
}

/// A dict's entries as they were: `(key, value)` objects, in iteration order.
struct DictSnapshot {
    dict: Py<PyDict>,
    items: Vec<(Py<PyAny>, Py<PyAny>)>,
}

impl DictSnapshot {
    fn take(dict: &Bound<'_, PyDict>) -> DictSnapshot {
        DictSnapshot {
            dict: dict.clone().unbind(),
            items: dict.iter().map(|(k, v)| (k.unbind(), v.unbind())).collect(),
        }
    }

    /// True if `dict` is the snapshot's dict and holds the same objects in the same order.
    fn holds(&self, py: Python<'_>, dict: &Bound<'_, PyAny>) -> bool {
        if !dict.is(&self.dict) {
            return false;
        }
        self.same_items(py)
    }

    /// True if the snapshot's dict still holds the same objects in the same order.
    ///
    /// Compares addresses only, through borrowed references: the objects themselves (e.g. the
    /// state tensors) are not touched, not even their reference counts, so a step does not
    /// pull every one of them into the cache.
    fn same_items(&self, py: Python<'_>) -> bool {
        let dict = self.dict.bind(py);
        if dict.len() != self.items.len() {
            return false;
        }
        let mut pos: ffi::Py_ssize_t = 0;
        let (mut key, mut value) = (std::ptr::null_mut(), std::ptr::null_mut());
        for (k0, v0) in &self.items {
            // SAFETY: the GIL is held (`py`), `dict` is a live dict (the snapshot owns a
            // reference), and no Python code runs during the loop, so the dict cannot change
            // and `PyDict_Next`'s borrowed `key`/`value` stay valid; they are only compared.
            let more = unsafe { ffi::PyDict_Next(dict.as_ptr(), &mut pos, &mut key, &mut value) };
            if more == 0 || key != k0.as_ptr() || value != v0.as_ptr() {
                return false;
            }
        }
        true
    }
}

/// One param group as planned.
struct PlannedGroup {
    /// The `param_groups` entry.
    group: Py<PyDict>,
    /// Its `params` list and the parameters it held.
    params_list: Py<PyList>,
    params: Vec<Py<PyAny>>,
    /// The parameters that had state, with their state dicts' snapshots and tch handles:
    /// those stepped with the group's rule, and those with its split rule
    /// ([`FromGroup::splits`]).
    state_dicts: Vec<DictSnapshot>,
    planned: Vec<ParamState>,
    split: Vec<ParamState>,
    /// The parameters that had no state: they must still have no gradient.
    stateless: Vec<tch::Tensor>,
}

impl PlannedGroup {
    fn new(
        group: &Bound<'_, PyDict>,
        state: &Bound<'_, PyDict>,
        names: &[String],
        scalar_names: &[String],
        splits: fn(&tch::Tensor) -> bool,
    ) -> PyResult<PlannedGroup> {
        let params_list = group
            .get_item("params")?
            .ok_or_else(|| pyo3::exceptions::PyKeyError::new_err("params"))?
            .cast_into::<PyList>()?;
        let mut planned = PlannedGroup {
            group: group.clone().unbind(),
            params_list: params_list.clone().unbind(),
            params: Vec::with_capacity(params_list.len()),
            state_dicts: Vec::new(),
            planned: Vec::new(),
            split: Vec::new(),
            stateless: Vec::new(),
        };
        // A rule without state (e.g. SGD without momentum) needs no state dict.
        let stateless_rule = names.is_empty() && scalar_names.is_empty();
        for p in params_list.iter() {
            let param = p.extract::<PyTensor>()?.0;
            if stateless_rule {
                planned.add(
                    ParamState {
                        param,
                        state: Vec::new(),
                        scalar_state: Vec::new(),
                    },
                    splits,
                );
                planned.params.push(p.unbind());
                continue;
            }
            let tensors = match state.get_item(&p)? {
                Some(d) => match d.cast_into::<PyDict>() {
                    Ok(d) => state_tensors(&d, names, scalar_names)?.map(|t| (d, t)),
                    Err(_) => None,
                },
                None => None,
            };
            match tensors {
                Some((d, (state, scalar_state))) => {
                    planned.state_dicts.push(DictSnapshot::take(&d));
                    planned.add(
                        ParamState {
                            param,
                            state,
                            scalar_state,
                        },
                        splits,
                    );
                }
                None => planned.stateless.push(param),
            }
            planned.params.push(p.unbind());
        }
        Ok(planned)
    }

    fn add(&mut self, ps: ParamState, splits: fn(&tch::Tensor) -> bool) {
        if splits(&ps.param) {
            self.split.push(ps);
        } else {
            self.planned.push(ps);
        }
    }

    /// The parameters planned with the group's rule, or with its split rule.
    fn params_of(&self, split: bool) -> &[ParamState] {
        if split {
            &self.split
        } else {
            &self.planned
        }
    }

    /// True if every planned parameter still takes the rule it was planned with.
    fn same_split(&self, splits: fn(&tch::Tensor) -> bool) -> bool {
        self.planned.iter().all(|ps| !splits(&ps.param))
            && self.split.iter().all(|ps| splits(&ps.param))
    }

    /// True if the group is the same dict with the same `params` list holding the same
    /// parameters, whose state dicts hold the same objects, and no stateless parameter has a
    /// gradient.
    fn unchanged(
        &self,
        py: Python<'_>,
        group: &Bound<'_, PyAny>,
        key: &Bound<'_, PyString>,
    ) -> bool {
        self.same_params(py, group, key)
            && self.state_dicts.chunks(PREFETCH_BATCH).all(|batch| {
                // After a step has streamed the model through the caches, every state dict
                // and snapshot misses: fetch a batch's at once, so that their misses overlap.
                for d in batch {
                    prefetch(d.dict.as_ptr().cast());
                    prefetch(d.items.as_ptr().cast());
                }
                batch.iter().all(|d| d.same_items(py))
            })
            && self
                .stateless
                .iter()
                .all(|p| p.f_grad().is_ok_and(|g| !g.defined()))
    }

    /// True if the group is the same dict with the same `params` list holding the same
    /// parameters (their state is not looked at).
    fn same_params(
        &self,
        py: Python<'_>,
        group: &Bound<'_, PyAny>,
        key: &Bound<'_, PyString>,
    ) -> bool {
        if !group.is(&self.group) {
            return false;
        }
        let list = match self.group.bind(py).get_item(key) {
            Ok(Some(list)) if list.is(&self.params_list) => self.params_list.bind(py),
            _ => return false,
        };
        list.len() == self.params.len()
            && self.params.iter().enumerate().all(|(i, p0)| {
                // SAFETY: the GIL is held and `list` is a live list of `params.len()` items
                // (just checked); the borrowed item is only compared, not used.
                let item = unsafe { ffi::PyList_GetItem(list.as_ptr(), i as ffi::Py_ssize_t) };
                item == p0.as_ptr()
            })
    }

    /// Appends the `at::Tensor` of every parameter of the group (tch's `C_tensor`, borrowed
    /// from the plan's handles).
    fn tensor_ptrs(&self, out: &mut Vec<*const c_void>) {
        let all = self.planned.iter().chain(&self.split).map(|ps| &ps.param);
        out.extend(
            all.chain(&self.stateless)
                .map(|t| t.as_ptr() as *const c_void),
        );
    }
}

/// State dicts per batch of [`prefetch`]es.
const PREFETCH_BATCH: usize = 16;

/// Asks the CPU to bring the cache line at `p` in: only a hint, which never faults, whatever
/// `p` is (a no-op on other architectures).
fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch instruction reads nothing architecturally and cannot fault, for any
    // address; SSE, which it needs, is part of x86-64's baseline.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// The state tensors of one parameter, in the rule's order, if its state dict has them all.
fn state_tensors(
    d: &Bound<'_, PyDict>,
    names: &[String],
    scalar_names: &[String],
) -> PyResult<Option<(Vec<tch::Tensor>, Vec<tch::Tensor>)>> {
    let get = |names: &[String]| -> PyResult<Option<Vec<tch::Tensor>>> {
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            match d.get_item(name)?.map(|t| t.extract::<PyTensor>()) {
                Some(Ok(t)) => out.push(t.0),
                _ => return Ok(None),
            }
        }
        Ok(Some(out))
    };
    Ok(get(names)?.zip(get(scalar_names)?))
}

/// The step of one rule type over planned groups (a monomorphised function, so that `Plan`
/// needs no type parameter).
/// It returns false, having changed nothing, if the plan no longer fits the parameters.
type StepFn = fn(Python<'_>, &mut Planned, &[Bound<'_, PyDict>], Option<f64>) -> PyResult<bool>;

/// What a step locks: the groups and the driver's cache of their overlap check.
struct Planned {
    groups: Vec<PlannedGroup>,
    cache: StepCache,
}

fn step_planned<R: FromGroup>(
    py: Python<'_>,
    planned: &mut Planned,
    hypers: &[Bound<'_, PyDict>],
    grad_scale: Option<f64>,
) -> PyResult<bool> {
    let Planned { groups, cache } = planned;
    if R::SPLITS && !groups.iter().all(|g| g.same_split(R::splits)) {
        return Ok(false);
    }
    // (rule, group index, split?, gradients) per driver group: each param group's rule, and
    // its split rule where some of its parameters take it.
    let mut calls = Vec::with_capacity(groups.len());
    for (gi, (group, d)) in groups.iter().zip(hypers).enumerate() {
        let rule = R::from_group(d)?;
        let split = rule.split_rule();
        for (rule, is_split) in [(rule, false), (split, true)] {
            let params = group.params_of(is_split);
            if params.is_empty() {
                continue;
            }
            // Read the gradients with the GIL held: Python may reassign `.grad` otherwise.
            let grads = ferroptim::read_grads(params.iter().map(|ps| &ps.param))
                .map_err(|e| PyErr::from(CoreError::from(e)))?;
            calls.push((rule, gi, is_split, grads));
        }
    }
    // Exclusive borrows of `Send` data only, so the closure is `Send` as `detach` requires.
    let (calls, groups) = (&mut calls, &mut *groups);
    py.detach(move || {
        let with: Vec<(&R, &[ParamState], &[tch::Tensor])> = calls
            .iter()
            .map(|(r, gi, is_split, grads)| (r, groups[*gi].params_of(*is_split), &grads[..]))
            .collect();
        ferroptim::step_with_grads(&with, grad_scale, cache)
    })
    .map_err(|e| PyErr::from(CoreError::from(e)))?;
    Ok(true)
}

/// A cached plan of one optimizer's step (see the module docs). Made by `<rule>_plan(state,
/// param_groups, names)` after a step of the general path.
#[pyclass(module = "ferroptim._core", frozen)]
pub struct Plan {
    state: DictSnapshot,
    param_groups: Py<PyList>,
    /// Locked for a step (tch tensors are `Send`, not `Sync`); never waited for: see `step`.
    planned: Mutex<Planned>,
    params_key: Py<PyString>,
    step: StepFn,
}

impl Plan {
    /// Plans rule `R` over `param_groups`, whose group `i` has the state names `names[i]`
    /// (state tensors, scalar state tensors).
    pub fn new<R: FromGroup>(
        py: Python<'_>,
        state: &Bound<'_, PyDict>,
        param_groups: &Bound<'_, PyList>,
        names: Vec<(Vec<String>, Vec<String>)>,
    ) -> PyResult<Plan> {
        if names.len() != param_groups.len() {
            return Err(pyo3::exceptions::PyValueError::new_err(format!(
                "names: expected {} entries (one per param group), got {}",
                param_groups.len(),
                names.len()
            )));
        }
        let groups = param_groups
            .iter()
            .zip(&names)
            .map(|(g, (n, s))| PlannedGroup::new(&g.cast_into::<PyDict>()?, state, n, s, R::splits))
            .collect::<PyResult<Vec<_>>>()?;
        Ok(Plan {
            state: DictSnapshot::take(state),
            param_groups: param_groups.clone().unbind(),
            planned: Mutex::new(Planned {
                groups,
                cache: StepCache::default(),
            }),
            params_key: PyString::intern(py, "params").unbind(),
            step: step_planned::<R>,
        })
    }
}

#[pymethods]
impl Plan {
    /// Steps every planned parameter that has a gradient, with the groups' hyperparameters
    /// `hypers` (one dict per group, keyed by the rule's field names), and returns 1 — if
    /// `state` and `param_groups` still hold what they held when the plan was made. Otherwise
    /// returns 0 having changed nothing. Raises as `<rule>_step` does, also having changed
    /// nothing.
    ///
    /// With `zero_grad` set (the `set_to_none` argument of torch.optim's `zero_grad`), the
    /// gradients are then reset as `zero_grad` does (see `ferroptim::zero_grads`), in the same
    /// call; not when the step raised or declined. Returns 2 if the step was done but the
    /// gradients were left alone because a parameter is not a leaf tensor (the caller then
    /// takes torch's `zero_grad`, which warns about it).
    #[pyo3(signature = (state, param_groups, hypers, grad_scale = None, zero_grad = None))]
    fn step(
        &self,
        py: Python<'_>,
        state: &Bound<'_, PyAny>,
        param_groups: &Bound<'_, PyAny>,
        hypers: Vec<Bound<'_, PyDict>>,
        grad_scale: Option<f64>,
        zero_grad: Option<bool>,
    ) -> PyResult<u8> {
        // Another thread stepping this optimizer right now holds the lock while the GIL is
        // released; waiting for it here, with the GIL held, could deadlock. Take the general
        // path instead.
        let Ok(mut planned) = self.planned.try_lock() else {
            return Ok(0);
        };
        if !self.unchanged(py, &planned.groups, state, param_groups) {
            return Ok(0);
        }
        if hypers.len() != planned.groups.len() {
            return Err(pyo3::exceptions::PyValueError::new_err(format!(
                "hypers: expected {} dicts (one per param group), got {}",
                planned.groups.len(),
                hypers.len()
            )));
        }
        if !(self.step)(py, &mut planned, &hypers, grad_scale)? {
            return Ok(0);
        }
        match zero_grad {
            Some(set_to_none) if !zero_planned(&planned.groups, set_to_none)? => Ok(2),
            _ => Ok(1),
        }
    }

    /// Resets the gradients of every parameter of `param_groups` as torch.optim's
    /// `zero_grad(set_to_none)` does (see `ferroptim::zero_grads`) and returns True — if
    /// `param_groups` still holds the groups and parameters it held when the plan was made
    /// (their state is not looked at). Otherwise, or if a parameter is not a leaf tensor,
    /// returns False having changed nothing. Raises RuntimeError if libtorch fails.
    #[pyo3(signature = (param_groups, set_to_none = true))]
    fn zero_grad(
        &self,
        py: Python<'_>,
        param_groups: &Bound<'_, PyAny>,
        set_to_none: bool,
    ) -> PyResult<bool> {
        let Ok(planned) = self.planned.try_lock() else {
            return Ok(false);
        };
        if !param_groups.is(&self.param_groups) {
            return Ok(false);
        }
        let list = self.param_groups.bind(py);
        let key = self.params_key.bind(py);
        let same = list.len() == planned.groups.len()
            && list
                .iter()
                .zip(&planned.groups)
                .all(|(g, planned)| planned.same_params(py, &g, key));
        if !same {
            return Ok(false);
        }
        zero_planned(&planned.groups, set_to_none)
    }
}

/// Resets the gradients of every parameter of `groups` (with the GIL held: dropping a gradient
/// may free a Python object). False, having changed nothing, if a parameter is not a leaf.
fn zero_planned(groups: &[PlannedGroup], set_to_none: bool) -> PyResult<bool> {
    let mut tensors = Vec::new();
    for g in groups {
        g.tensor_ptrs(&mut tensors);
    }
    // SAFETY: every pointer is the `C_tensor` of a tch handle owned by the plan, which the
    // caller holds (locked) for the whole call; dropping a gradient cannot free a parameter
    // (the plan and its `params` lists keep every parameter alive).
    match unsafe { ferroptim::optim::zero_grads_raw(&tensors, set_to_none) } {
        Ok(()) => Ok(true),
        Err(ferroptim::Error::InvalidArgument { .. }) => Ok(false),
        Err(e) => Err(PyErr::from(CoreError::from(e))),
    }
}

impl Plan {
    fn unchanged(
        &self,
        py: Python<'_>,
        groups: &[PlannedGroup],
        state: &Bound<'_, PyAny>,
        param_groups: &Bound<'_, PyAny>,
    ) -> bool {
        if !param_groups.is(&self.param_groups) || !self.state.holds(py, state) {
            return false;
        }
        let list = self.param_groups.bind(py);
        let key = self.params_key.bind(py);
        list.len() == groups.len()
            && list
                .iter()
                .zip(groups)
                .all(|(g, planned)| planned.unchanged(py, &g, key))
    }
}
