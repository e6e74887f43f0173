//! [`LbfgsOptim`]: `torch.optim.LBFGS` for tch, a stateful optimizer around
//! [`tensor_rules::lbfgs::step`](crate::tensor_rules::lbfgs::step).

use super::algorithm::{check, Hyper, Hyperparameters};
use super::checkpoint::{self, fail, float_from_json, float_json, Owned};
use super::stateful::IntoParams;
use super::Optimizer;
use crate::error::{Error, Result};
use crate::tensor_rules::lbfgs::{self, Lbfgs, LbfgsState};
use crate::tensor_rules::Num;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::path::Path;
use tch::Tensor;

impl Default for Lbfgs {
    /// torch's defaults: `lr = 1` (an int, as torch's), `max_iter = 20`, `max_eval = 25`
    /// (torch's `max_iter * 5 // 4`; set it yourself when changing `max_iter`),
    /// `tolerance_grad = 1e-7`, `tolerance_change = 1e-9`, `history_size = 100`, no line
    /// search.
    fn default() -> Self {
        Lbfgs {
            lr: Num::Int(1),
            max_iter: 20,
            max_eval: 25,
            tolerance_grad: 1e-7,
            tolerance_change: 1e-9,
            history_size: 100,
            strong_wolfe: false,
        }
    }
}

impl Hyperparameters for Lbfgs {
    fn class_name(&self) -> &'static str {
        "LBFGS"
    }

    /// `line_search_fn` is `Name(Some("strong_wolfe"))` or `Name(None)`.
    fn hyperparameter_names(&self) -> &'static [&'static str] {
        &[
            "lr",
            "max_iter",
            "max_eval",
            "tolerance_grad",
            "tolerance_change",
            "history_size",
            "line_search_fn",
        ]
    }

    /// `lr` is `Hyper::Int` while it is torch's int default, else `Hyper::Float`.
    fn get(&self, name: &str) -> Option<Hyper> {
        Some(match name {
            "lr" => match &self.lr {
                Num::Int(v) => Hyper::Int(*v),
                other => Hyper::Float(other.value().unwrap_or(f64::NAN)),
            },
            "max_iter" => Hyper::Int(self.max_iter),
            "max_eval" => Hyper::Int(self.max_eval),
            "tolerance_grad" => Hyper::Float(self.tolerance_grad),
            "tolerance_change" => Hyper::Float(self.tolerance_change),
            "history_size" => Hyper::Int(i64::try_from(self.history_size).unwrap_or(i64::MAX)),
            "line_search_fn" => Hyper::Name(self.strong_wolfe.then_some("strong_wolfe")),
            _ => return None,
        })
    }

    fn set(&mut self, name: &str, value: Hyper) -> Result<()> {
        match (name, value) {
            ("lr", Hyper::Int(v)) => self.lr = Num::Int(v),
            ("lr", Hyper::Float(v)) => self.lr = Num::Float(v),
            ("max_iter", Hyper::Int(v)) => self.max_iter = v,
            ("max_eval", Hyper::Int(v)) => self.max_eval = v,
            ("tolerance_grad", Hyper::Float(v)) => self.tolerance_grad = v,
            ("tolerance_change", Hyper::Float(v)) => self.tolerance_change = v,
            ("history_size", Hyper::Int(v)) => {
                self.history_size =
                    usize::try_from(v).map_err(|_| check::invalid("history_size", v))?
            }
            ("line_search_fn", Hyper::Name(None)) => self.strong_wolfe = false,
            ("line_search_fn", Hyper::Name(Some("strong_wolfe"))) => self.strong_wolfe = true,
            _ => {
                return Err(check::invalid(
                    "hyperparameter",
                    format!("{name} = {value}"),
                ))
            }
        }
        Ok(())
    }

    fn lr(&self) -> f64 {
        self.lr.value().unwrap_or(f64::NAN)
    }

    fn set_lr(&mut self, lr: f64) {
        self.lr = Num::Float(lr);
    }

    /// torch's: `lr ≥ 0`.
    fn validate(&self) -> Result<()> {
        check::at_least("lr", self.lr(), 0.0)
    }
}

/// L-BFGS over a list of tensors (one parameter group, as torch's `LBFGS`), with torch's
/// hyperparameters ([`Lbfgs`], `Default` = torch's defaults) and state (all of it belongs to
/// the first parameter in torch: [`LbfgsState`]). Each step evaluates the closure several
/// times (up to `max_eval`), so [`Optimizer::step`] is an error: call
/// [`Optimizer::step_with`] with a closure that resets the gradients (e.g.
/// [`clear_grads`](super::clear_grads)), computes the loss, calls `backward()` and returns the
/// loss. Every operation follows `torch.optim.LBFGS` (torch 2.11), so iterates, history and
/// closure-evaluation counts are torch's bit for bit. A checkpoint stores the state as
/// torch's `state_dict` (`state.0.d`, the lists as `state.0.old_dirs.{k}`, … see the
/// [module documentation](crate::optim#checkpoints)).
///
/// ```
/// use ferroptim::optim::{clear_grads, LbfgsOptim};
/// use ferroptim::tensor_rules::Lbfgs;
/// use ferroptim::Optimizer;
/// use tch::{Kind, Tensor};
///
/// # fn main() -> ferroptim::Result<()> {
/// // Minimize (x − 3)² + 2(y + 1)².
/// let x = Tensor::from_slice(&[0.0f64, 0.0]).set_requires_grad(true);
/// let config = Lbfgs { strong_wolfe: true, ..Lbfgs::default() };
/// let mut opt = LbfgsOptim::new(vec![x.shallow_clone()], config)?;
/// let params: Vec<Tensor> = opt.params().iter().map(Tensor::shallow_clone).collect();
/// let target = Tensor::from_slice(&[3.0f64, -1.0]);
/// let weight = Tensor::from_slice(&[1.0f64, 2.0]);
/// let mut closure = || -> ferroptim::Result<f64> {
///     clear_grads(&params)?;
///     let loss = ((&params[0] - &target).square() * &weight).sum(Kind::Double);
///     loss.backward();
///     Ok(loss.double_value(&[]))
/// };
/// let first = opt.step_with(&mut closure)?;
/// assert_eq!(first, 11.0); // the loss at the start
/// assert!((x.double_value(&[0]) - 3.0).abs() < 1e-4);
/// assert_eq!(opt.state().func_evals, 5); // as torch.optim.LBFGS
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct LbfgsOptim {
    config: Lbfgs,
    params: Vec<Tensor>,
    state: LbfgsState,
    /// Group entries read from a checkpoint that are not hyperparameters, written back.
    extra: Map<String, Value>,
}

impl LbfgsOptim {
    /// An L-BFGS optimizer over `params` (all real, dense, on one device).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `config` fails torch's checks or `params` is empty or
    /// holds a non-leaf tensor.
    pub fn new(params: impl IntoParams, config: Lbfgs) -> Result<Self> {
        config.validate()?;
        let params = params.into_params();
        if params.is_empty() {
            return Err(check::invalid("params", "[] (an empty parameter list)"));
        }
        for (i, p) in params.iter().enumerate() {
            if !p.f_is_leaf()? {
                return Err(check::invalid(
                    "params",
                    format!("params[{i}] (can't optimize a non-leaf Tensor)"),
                ));
            }
        }
        Ok(LbfgsOptim {
            config,
            params,
            state: LbfgsState::default(),
            extra: Map::new(),
        })
    }

    /// The hyperparameters.
    pub fn config(&self) -> &Lbfgs {
        &self.config
    }

    /// Replaces the hyperparameters (the state is kept).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `config` fails torch's checks; then nothing changes.
    pub fn set_config(&mut self, config: Lbfgs) -> Result<()> {
        config.validate()?;
        self.config = config;
        Ok(())
    }

    /// The parameters (handles sharing the caller's tensors), e.g. for the closure.
    pub fn params(&self) -> &[Tensor] {
        &self.params
    }

    /// torch's `state[params[0]]`.
    pub fn state(&self) -> &LbfgsState {
        &self.state
    }

    fn no_group(group: usize) -> Error {
        check::invalid(
            "group",
            format!("{group} (the optimizer has 1 parameter group)"),
        )
    }
}

impl Optimizer for LbfgsOptim {
    /// An error: L-BFGS needs a closure ([`Optimizer::step_with`]), as torch's.
    fn step(&mut self) -> Result<()> {
        Err(check::invalid(
            "closure",
            "None (LBFGS re-evaluates the model: call step_with(closure))",
        ))
    }

    /// One `torch.optim.LBFGS.step(closure)`: the closure runs with gradients enabled, the
    /// updates without; returns the closure's first loss. Errors of the closure are returned
    /// as they are; as in torch, parameters and state may have changed by then.
    fn step_with(&mut self, closure: &mut dyn FnMut() -> Result<f64>) -> Result<f64> {
        let params: Vec<Tensor> = self.params.iter().map(Tensor::shallow_clone).collect();
        let mut first = None;
        let evaluate = || -> Result<lbfgs::Evaluation> {
            let loss = tch::with_grad(&mut *closure)?;
            first.get_or_insert(loss);
            let grads = params
                .iter()
                .map(|p| Ok(Some(p.f_grad()?).filter(Tensor::defined)))
                .collect::<Result<Vec<_>>>()?;
            Ok((loss, grads))
        };
        tch::no_grad(|| lbfgs::step(&self.config, &self.params, &mut self.state, evaluate))?;
        first.ok_or_else(|| check::invalid("closure", "never called"))
    }

    fn zero_grad(&mut self) -> Result<()> {
        super::clear_grads(&self.params)
    }

    fn num_groups(&self) -> usize {
        1
    }

    fn lr(&self, group: usize) -> Result<f64> {
        match group {
            0 => Ok(Hyperparameters::lr(&self.config)),
            g => Err(Self::no_group(g)),
        }
    }

    fn set_lr(&mut self, group: usize, lr: f64) -> Result<()> {
        self.set_hyperparameter(group, "lr", Hyper::Float(lr))
    }

    fn hyperparameter(&self, group: usize, name: &str) -> Result<Hyper> {
        if group != 0 {
            return Err(Self::no_group(group));
        }
        self.config
            .get(name)
            .ok_or_else(|| check::invalid("hyperparameter", name))
    }

    fn set_hyperparameter(&mut self, group: usize, name: &str, value: Hyper) -> Result<()> {
        if group != 0 {
            return Err(Self::no_group(group));
        }
        let mut config = self.config.clone();
        config.set(name, value)?;
        self.set_config(config)
    }

    fn save(&self, path: &Path) -> Result<()> {
        let mut group = self.extra.clone();
        checkpoint::write_hyper(&self.config, &mut group);
        let ids: Vec<usize> = (0..self.params.len()).collect();
        group.insert("params".into(), Value::from(ids));
        let (tensors, values) = encode(&self.state)?;
        let values = if values.is_empty() {
            Map::new()
        } else {
            Map::from_iter([("0".to_string(), Value::Object(values))])
        };
        checkpoint::write(path, vec![Value::Object(group)], tensors, values)
    }

    fn load(&mut self, path: &Path) -> Result<()> {
        let file = checkpoint::read(path, 1)?;
        let saved = &file.groups[0];
        checkpoint::group_ids(path, saved, 0, self.params.len())?;
        let mut config = self.config.clone();
        let extra = checkpoint::read_hyper(&mut config, saved).map_err(|e| fail(path, e))?;
        config.validate()?;
        let param = &self.params[0];
        let mut tensors = HashMap::new();
        for (name, t) in file.tensors {
            let key = name
                .strip_prefix("state.0.")
                .ok_or_else(|| fail(path, format!("unexpected tensor {name}")))?;
            let base = key.split('.').next().unwrap_or(key);
            tensors.insert(name.clone(), checkpoint::cast(t, base, param)?);
        }
        let empty = Map::new();
        let values = match file.values.get("0") {
            None => &empty,
            Some(v) => v
                .as_object()
                .ok_or_else(|| fail(path, "state_values[0] is not an object"))?,
        };
        let state = decode(values, &mut tensors).map_err(|e| fail(path, e))?;
        if let Some(name) = tensors.keys().next() {
            return Err(fail(path, format!("unexpected tensor {name}")));
        }
        self.config = config;
        self.extra = extra;
        self.state = state;
        Ok(())
    }
}

/// A Python value of the state: a JSON number, or a reference to tensor `key`.
fn num_json(n: &Num, key: String, tensors: &mut Vec<(String, Owned)>) -> Result<Value> {
    Ok(match n {
        Num::Int(v) => Value::from(*v),
        Num::Float(v) => float_json(*v),
        Num::Tensor(t) => {
            tensors.push((key.clone(), Owned::of(t)?));
            Value::Object(Map::from_iter([("tensor".to_string(), Value::from(key))]))
        }
    })
}

/// The state as tensors and `state_values` entries (torch's names and Python types: a 0-d
/// tensor `t` or `H_diag` is stored as the tensor `state.0.t`, a number as JSON).
/// Tensors to write and `state_values` entries.
type Encoded = (Vec<(String, Owned)>, Map<String, Value>);

fn encode(s: &LbfgsState) -> Result<Encoded> {
    let mut tensors = Vec::new();
    let mut values = Map::new();
    values.insert("func_evals".into(), Value::from(s.func_evals));
    values.insert("n_iter".into(), Value::from(s.n_iter));
    for (name, t) in [("d", &s.d), ("prev_flat_grad", &s.prev_flat_grad)] {
        if let Some(t) = t {
            tensors.push((format!("state.0.{name}"), Owned::of(t)?));
        }
    }
    for (name, n) in [("t", &s.t), ("H_diag", &s.h_diag)] {
        match n {
            Some(Num::Tensor(t)) => tensors.push((format!("state.0.{name}"), Owned::of(t)?)),
            Some(n) => {
                let v = num_json(n, String::new(), &mut tensors)?;
                values.insert(name.into(), v);
            }
            None => {}
        }
    }
    if let Some(l) = s.prev_loss {
        values.insert("prev_loss".into(), float_json(l));
    }
    for (name, list) in [("old_dirs", &s.old_dirs), ("old_stps", &s.old_stps)] {
        if let Some(list) = list {
            let items = list.iter().enumerate().map(|(k, t)| {
                num_json(
                    &Num::Tensor(t.shallow_clone()),
                    format!("state.0.{name}.{k}"),
                    &mut tensors,
                )
            });
            let items = items.collect::<Result<Vec<_>>>()?;
            values.insert(name.into(), Value::Array(items));
        }
    }
    if let Some(ro) = &s.ro {
        let items = ro
            .iter()
            .enumerate()
            .map(|(k, n)| num_json(n, format!("state.0.ro.{k}"), &mut tensors))
            .collect::<Result<Vec<_>>>()?;
        values.insert("ro".into(), Value::Array(items));
    }
    if let Some(al) = &s.al {
        let items = al
            .iter()
            .enumerate()
            .map(|(k, n)| match n {
                Some(n) => num_json(n, format!("state.0.al.{k}"), &mut tensors),
                None => Ok(Value::Null),
            })
            .collect::<Result<Vec<_>>>()?;
        values.insert("al".into(), Value::Array(items));
    }
    Ok((tensors, values))
}

type Tensors = HashMap<String, Tensor>;

/// A JSON number, or a `{"tensor": key}` reference (taken out of `tensors`), as a [`Num`].
fn num_of(v: &Value, tensors: &mut Tensors) -> std::result::Result<Num, String> {
    if let Some(key) = v.get("tensor").and_then(Value::as_str) {
        return tensors
            .remove(key)
            .map(Num::Tensor)
            .ok_or_else(|| format!("missing tensor {key}"));
    }
    if let Some(i) = v.as_i64() {
        return Ok(Num::Int(i));
    }
    float_from_json(v)
        .map(Num::Float)
        .ok_or_else(|| format!("invalid state value {v}"))
}

fn decode(
    values: &Map<String, Value>,
    tensors: &mut Tensors,
) -> std::result::Result<LbfgsState, String> {
    let int = |name: &str| -> std::result::Result<i64, String> {
        match values.get(name) {
            None => Ok(0),
            Some(v) => v.as_i64().ok_or_else(|| format!("invalid {name}: {v}")),
        }
    };
    let mut s = LbfgsState {
        func_evals: int("func_evals")?,
        n_iter: int("n_iter")?,
        ..LbfgsState::default()
    };
    s.d = tensors.remove("state.0.d");
    s.prev_flat_grad = tensors.remove("state.0.prev_flat_grad");
    for (name, slot) in [("t", &mut s.t), ("H_diag", &mut s.h_diag)] {
        *slot = match (tensors.remove(&format!("state.0.{name}")), values.get(name)) {
            (Some(t), _) => Some(Num::Tensor(t)),
            (None, Some(Value::Null) | None) => None,
            (None, Some(v)) => Some(num_of(v, tensors)?),
        };
    }
    s.prev_loss = match values.get("prev_loss") {
        None | Some(Value::Null) => None,
        Some(v) => Some(float_from_json(v).ok_or_else(|| format!("invalid prev_loss: {v}"))?),
    };
    let list = |name: &str| -> std::result::Result<Option<&Vec<Value>>, String> {
        match values.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Array(items)) => Ok(Some(items)),
            Some(v) => Err(format!("invalid {name}: {v}")),
        }
    };
    for (name, slot) in [("old_dirs", &mut s.old_dirs), ("old_stps", &mut s.old_stps)] {
        if let Some(items) = list(name)? {
            let mut out = Vec::with_capacity(items.len());
            for v in items {
                match num_of(v, tensors)? {
                    Num::Tensor(t) => out.push(t),
                    _ => return Err(format!("{name}: {v} is not a tensor")),
                }
            }
            *slot = Some(out);
        }
    }
    if let Some(items) = list("ro")? {
        s.ro = Some(
            items
                .iter()
                .map(|v| num_of(v, tensors))
                .collect::<std::result::Result<_, _>>()?,
        );
    }
    if let Some(items) = list("al")? {
        let mut out = Vec::with_capacity(items.len());
        for v in items {
            out.push(if v.is_null() {
                None
            } else {
                Some(num_of(v, tensors)?)
            });
        }
        s.al = Some(out);
    }
    Ok(s)
}
