//! `lbfgs_step`: torch.optim.LBFGS's step in the core crate, with the Python closure called
//! back (GIL held) and the state exchanged as torch's `state[params[0]]` entries.

use crate::error::CoreError;
use crate::tensor::PyTensor;
use ferroptim::tensor_rules::lbfgs::{self, Evaluation, Lbfgs, LbfgsState};
use ferroptim::tensor_rules::Num;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyFloat, PyInt, PyList};
use tch::Tensor;

/// A Python int, float or tensor as a [`Num`].
fn num(v: &Bound<'_, PyAny>) -> PyResult<Num> {
    if v.is_instance_of::<PyInt>() {
        return Ok(Num::Int(v.extract()?));
    }
    if v.is_instance_of::<PyFloat>() {
        return Ok(Num::Float(v.extract()?));
    }
    match v.extract::<PyTensor>() {
        Ok(t) => Ok(Num::Tensor(t.0)),
        Err(_) => Err(PyTypeError::new_err("expected an int, a float or a tensor")),
    }
}

/// A tensor as a `torch.Tensor` sharing its storage.
pub(crate) fn wrap<'py>(py: Python<'py>, t: &Tensor) -> PyResult<Bound<'py, PyAny>> {
    let ptr = t
        .pyobject_wrap()
        .map_err(|e| PyErr::from(CoreError::from(ferroptim::Error::from(e))))?;
    // SAFETY: `pyobject_wrap` returns a new reference to a live Python object (or null on
    // failure, which `from_owned_ptr_or_err` reports); the GIL is held (`py`).
    unsafe { Bound::from_owned_ptr_or_err(py, ptr as *mut pyo3::ffi::PyObject) }
}

fn py_num<'py>(py: Python<'py>, n: &Num) -> PyResult<Bound<'py, PyAny>> {
    Ok(match n {
        Num::Int(v) => v.into_pyobject(py)?.into_any(),
        Num::Float(v) => v.into_pyobject(py)?.into_any(),
        Num::Tensor(t) => wrap(py, t)?,
    })
}

fn opt<'py, T>(
    state: &Bound<'py, PyDict>,
    key: &str,
    f: impl Fn(&Bound<'py, PyAny>) -> PyResult<T>,
) -> PyResult<Option<T>> {
    match state.get_item(key)? {
        Some(v) if !v.is_none() => Ok(Some(f(&v)?)),
        _ => Ok(None),
    }
}

fn tensor_list(v: &Bound<'_, PyAny>) -> PyResult<Vec<Tensor>> {
    Ok(v.extract::<Vec<PyTensor>>()?
        .into_iter()
        .map(|t| t.0)
        .collect())
}

fn num_list(v: &Bound<'_, PyAny>) -> PyResult<Vec<Num>> {
    v.try_iter()?.map(|x| num(&x?)).collect()
}

fn read_state(state: &Bound<'_, PyDict>) -> PyResult<LbfgsState> {
    Ok(LbfgsState {
        func_evals: opt(state, "func_evals", |v| v.extract())?.unwrap_or(0),
        n_iter: opt(state, "n_iter", |v| v.extract())?.unwrap_or(0),
        d: opt(state, "d", |v| Ok(v.extract::<PyTensor>()?.0))?,
        t: opt(state, "t", num)?,
        old_dirs: opt(state, "old_dirs", tensor_list)?,
        old_stps: opt(state, "old_stps", tensor_list)?,
        ro: opt(state, "ro", num_list)?,
        h_diag: opt(state, "H_diag", num)?,
        prev_flat_grad: opt(state, "prev_flat_grad", |v| Ok(v.extract::<PyTensor>()?.0))?,
        prev_loss: opt(state, "prev_loss", |v| v.extract())?,
        al: opt(state, "al", |v| {
            v.try_iter()?
                .map(|x| {
                    let x = x?;
                    if x.is_none() {
                        Ok(None)
                    } else {
                        num(&x).map(Some)
                    }
                })
                .collect()
        })?,
        stored: false,
    })
}

fn write_state<'py>(py: Python<'py>, s: &LbfgsState) -> PyResult<Bound<'py, PyDict>> {
    let out = PyDict::new(py);
    out.set_item("func_evals", s.func_evals)?;
    out.set_item("n_iter", s.n_iter)?;
    if let Some(al) = &s.al {
        let items = al
            .iter()
            .map(|a| match a {
                Some(a) => py_num(py, a),
                None => Ok(py.None().into_bound(py)),
            })
            .collect::<PyResult<Vec<_>>>()?;
        out.set_item("al", PyList::new(py, items)?)?;
    }
    if !s.stored {
        return Ok(out);
    }
    let tensor_or_none = |t: &Option<Tensor>| -> PyResult<Bound<'py, PyAny>> {
        match t {
            Some(t) => wrap(py, t),
            None => Ok(py.None().into_bound(py)),
        }
    };
    let num_or_none = |n: &Option<Num>| -> PyResult<Bound<'py, PyAny>> {
        match n {
            Some(n) => py_num(py, n),
            None => Ok(py.None().into_bound(py)),
        }
    };
    let tensors = |v: &Option<Vec<Tensor>>| -> PyResult<Bound<'py, PyList>> {
        let items = v
            .iter()
            .flatten()
            .map(|t| wrap(py, t))
            .collect::<PyResult<Vec<_>>>()?;
        PyList::new(py, items)
    };
    out.set_item("d", tensor_or_none(&s.d)?)?;
    out.set_item("t", num_or_none(&s.t)?)?;
    out.set_item("old_dirs", tensors(&s.old_dirs)?)?;
    out.set_item("old_stps", tensors(&s.old_stps)?)?;
    let ro =
        s.ro.iter()
            .flatten()
            .map(|n| py_num(py, n))
            .collect::<PyResult<Vec<_>>>()?;
    out.set_item("ro", PyList::new(py, ro)?)?;
    out.set_item("H_diag", num_or_none(&s.h_diag)?)?;
    out.set_item("prev_flat_grad", tensor_or_none(&s.prev_flat_grad)?)?;
    out.set_item("prev_loss", s.prev_loss)?;
    Ok(out)
}

/// One L-BFGS step (torch.optim.LBFGS.step): `closure()` must return `(float(loss),
/// [p.grad for p in params])`; `state` is read (torch's entries of `state[params[0]]`) and
/// the entries to store are returned as a new dict. The GIL is held throughout (the closure
/// needs it).
#[pyfunction]
#[pyo3(signature = (params, closure, state, group))]
pub fn lbfgs_step<'py>(
    py: Python<'py>,
    params: Vec<PyTensor>,
    closure: Bound<'py, PyAny>,
    state: Bound<'py, PyDict>,
    group: Bound<'py, PyDict>,
) -> PyResult<Bound<'py, PyDict>> {
    let get = |k: &str| -> PyResult<Bound<'py, PyAny>> {
        group
            .get_item(k)?
            .ok_or_else(|| pyo3::exceptions::PyKeyError::new_err(k.to_string()))
    };
    let hyper = Lbfgs {
        lr: num(&get("lr")?)?,
        max_iter: get("max_iter")?.extract()?,
        max_eval: get("max_eval")?.extract()?,
        tolerance_grad: get("tolerance_grad")?.extract()?,
        tolerance_change: get("tolerance_change")?.extract()?,
        history_size: get("history_size")?.extract()?,
        strong_wolfe: get("strong_wolfe")?.extract()?,
    };
    let params: Vec<Tensor> = params.into_iter().map(|t| t.0).collect();
    let mut st = read_state(&state)?;
    let mut closure_error: Option<PyErr> = None;
    let evaluate = || -> ferroptim::Result<Evaluation> {
        let call = || -> PyResult<Evaluation> {
            let (loss, grads): (f64, Vec<Option<PyTensor>>) = closure.call0()?.extract()?;
            Ok((loss, grads.into_iter().map(|g| g.map(|g| g.0)).collect()))
        };
        call().map_err(|e| {
            closure_error = Some(e);
            ferroptim::Error::Torch(tch::TchError::Torch("the closure raised".into()))
        })
    };
    let result = lbfgs::step(&hyper, &params, &mut st, evaluate);
    if let Some(e) = closure_error {
        return Err(e);
    }
    result.map_err(|e| PyErr::from(CoreError::from(e)))?;
    write_state(py, &st)
}
