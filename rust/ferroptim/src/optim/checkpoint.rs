//! Optimizer checkpoints in safetensors, laid out as torch's `Optimizer.state_dict()`.
//!
//! - tensors: `state.{i}.{name}` for every state tensor of parameter `i`, where parameters are
//!   numbered through the groups in order (torch's `state_dict` numbering);
//! - `__metadata__["format"]`: [`FORMAT`];
//! - `__metadata__["param_groups"]`: a JSON list with one object per group: its hyperparameters
//!   under torch's keys (`lr`, `betas: [β₁, β₂]` (three for Adan, AdEMAMix), `etas`, `step_sizes`, `weight_decay`, …;
//!   non-finite numbers as the strings `"Infinity"`, `"-Infinity"`, `"NaN"`), any other entries
//!   the group carried (`foreach`, `initial_lr`, …) and `params`, the indices of its parameters;
//! - `__metadata__["state_values"]` (only if there are any): state entries that torch keeps as
//!   Python values rather than tensors, as JSON `{"{i}": {name: value}}`: numbers (SparseAdam's
//!   `step`, LBFGS's `n_iter`, `prev_loss`, …; an int stays an int), `null`, and lists (LBFGS's
//!   `old_dirs`, `ro`, `al`, …) whose tensors are stored as `state.{i}.{name}.{k}` and appear
//!   in the list as `{"tensor": "state.{i}.{name}.{k}"}`.
//!
//! `python/ferroptim/checkpoint.py` converts this file to and from a `state_dict`.

use super::algorithm::{Hyper, Hyperparameters, ParamState};
use super::stateful::Optim;
use crate::error::{Error, Result};
use safetensors::tensor::{Dtype, SafeTensors, View};
use serde_json::{Map, Number, Value};
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// The value of `__metadata__["format"]` in the checkpoints this crate writes and reads.
pub const FORMAT: &str = "ferroptim.optimizer.v1";

/// Hyperparameters that torch keeps as one tuple: (torch key, the fields in tuple order). A
/// tuple is used when the config has at least its first two fields; it holds the leading
/// fields the config has (Adam's `betas` has two, Adan's three).
const TUPLES: [(&str, &[&str]); 5] = [
    ("betas", &["beta1", "beta2", "beta3"]),
    ("eps", &["eps1", "eps2"]),
    ("ns_coefficients", &["ns_a", "ns_b", "ns_c"]),
    ("etas", &["etaminus", "etaplus"]),
    ("step_sizes", &["step_size_min", "step_size_max"]),
];

/// The tuple (torch key, its fields present in `names`) that `name` belongs to, if any.
fn tuple_of(name: &str, names: &[&str]) -> Option<(&'static str, Vec<&'static str>)> {
    TUPLES.iter().find_map(|&(key, fields)| {
        let present: Vec<&'static str> = fields
            .iter()
            .copied()
            .take_while(|f| names.contains(f))
            .collect();
        (present.len() >= 2 && present.contains(&name)).then_some((key, present))
    })
}

pub(crate) fn fail(path: &Path, reason: impl Into<String>) -> Error {
    Error::Checkpoint {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

pub(crate) fn save<R: Hyperparameters>(opt: &Optim<R>, path: &Path) -> Result<()> {
    let mut groups = Vec::with_capacity(opt.groups.len());
    let mut tensors = Vec::new();
    let mut values = Map::new();
    let mut index = 0usize;
    for g in &opt.groups {
        let numbers = g.config.number_state();
        let mut map = g.extra.clone();
        write_hyper(&g.config, &mut map);
        for (k, state) in g.state.iter().enumerate() {
            let mut own = Map::new();
            for (name, t) in state {
                if numbers.contains(&name.as_str()) {
                    own.insert(name.clone(), number_json(t)?);
                } else {
                    tensors.push((format!("state.{}.{name}", index + k), Owned::of(t)?));
                }
            }
            if !own.is_empty() {
                values.insert((index + k).to_string(), Value::Object(own));
            }
        }
        let ids: Vec<usize> = (index..index + g.params.len()).collect();
        map.insert("params".into(), Value::from(ids));
        index += g.params.len();
        groups.push(Value::Object(map));
    }
    write(path, groups, tensors, values)
}

/// Writes a checkpoint file: the groups' JSON, the state tensors and the state entries that
/// are Python values (`values`: parameter index → name → JSON; omitted when empty).
pub(crate) fn write(
    path: &Path,
    groups: Vec<Value>,
    tensors: Vec<(String, Owned)>,
    values: Map<String, Value>,
) -> Result<()> {
    let json = |v: &Value| serde_json::to_string(v).map_err(|e| fail(path, e.to_string()));
    let mut metadata = HashMap::from([
        ("format".to_string(), FORMAT.to_string()),
        ("param_groups".to_string(), json(&Value::Array(groups))?),
    ]);
    if !values.is_empty() {
        metadata.insert("state_values".into(), json(&Value::Object(values))?);
    }
    safetensors::serialize_to_file(tensors, &Some(metadata), path)
        .map_err(|e| fail(path, e.to_string()))
}

/// A checkpoint file's contents: the groups' JSON, the state values (see [`write`]) and the
/// tensors by name, on the CPU as saved.
pub(crate) struct Contents {
    pub(crate) groups: Vec<Map<String, Value>>,
    pub(crate) values: Map<String, Value>,
    pub(crate) tensors: Vec<(String, Tensor)>,
}

/// Reads a checkpoint for an optimizer with `n_groups` groups.
pub(crate) fn read(path: &Path, n_groups: usize) -> Result<Contents> {
    let bytes = std::fs::read(path).map_err(|e| fail(path, e.to_string()))?;
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| fail(path, e.to_string()))?;
    let file = SafeTensors::deserialize(&bytes).map_err(|e| fail(path, e.to_string()))?;
    let meta = header.metadata().as_ref();
    let get = |key: &str| meta.and_then(|m| m.get(key));
    if get("format").map(String::as_str) != Some(FORMAT) {
        return Err(fail(path, format!("not a {FORMAT} checkpoint")));
    }
    let groups: Vec<Map<String, Value>> = get("param_groups")
        .ok_or_else(|| fail(path, "no param_groups in the metadata"))
        .and_then(|s| serde_json::from_str(s).map_err(|e| fail(path, e.to_string())))?;
    if groups.len() != n_groups {
        return Err(fail(
            path,
            format!(
                "loaded state dict has a different number of parameter groups ({} saved, {} in the optimizer)",
                groups.len(),
                n_groups
            ),
        ));
    }
    let values = match get("state_values") {
        None => Map::new(),
        Some(s) => serde_json::from_str(s).map_err(|e| fail(path, e.to_string()))?,
    };
    let mut tensors = Vec::new();
    for (name, view) in file.tensors() {
        let kind = kind_of(view.dtype()).ok_or_else(|| {
            fail(
                path,
                format!("{name}: unsupported dtype {:?}", view.dtype()),
            )
        })?;
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        tensors.push((name, Tensor::f_from_data_size(view.data(), &shape, kind)?));
    }
    Ok(Contents {
        groups,
        values,
        tensors,
    })
}

/// The parameter indices of saved group `gi`, checked against `n` parameters.
pub(crate) fn group_ids(
    path: &Path,
    saved: &Map<String, Value>,
    gi: usize,
    n: usize,
) -> Result<Vec<u64>> {
    let ids = saved
        .get("params")
        .and_then(Value::as_array)
        .ok_or_else(|| fail(path, format!("param_groups[{gi}] has no params")))?;
    if ids.len() != n {
        return Err(fail(
            path,
            format!(
                "param_groups[{gi}] has {} parameters, the optimizer's group {n} \
                 (loaded state dict contains a parameter group that doesn't match the \
                 size of optimizer's group)",
                ids.len(),
            ),
        ));
    }
    ids.iter()
        .map(|id| {
            id.as_u64()
                .ok_or_else(|| fail(path, format!("param_groups[{gi}]: invalid index {id}")))
        })
        .collect()
}

/// torch's `load_state_dict`: `step` is kept as saved; other state follows its parameter's
/// device and (for a floating parameter) dtype.
pub(crate) fn cast(t: Tensor, key: &str, param: &Tensor) -> Result<Tensor> {
    if key == "step" {
        return Ok(t);
    }
    // 8-bit state (`crate::quant`): codes and block scales keep their dtypes, on the CPU.
    if t.kind() == Kind::Uint8 || key.ends_with("_absmax") {
        return Ok(t.f_to_device(Device::Cpu)?);
    }
    let target = if param.is_floating_point() {
        param.kind()
    } else {
        t.kind()
    };
    Ok(t.f_to_device_(param.device(), target, false, false)?)
}

pub(crate) fn load<R: Hyperparameters>(opt: &mut Optim<R>, path: &Path) -> Result<()> {
    let file = read(path, opt.groups.len())?;
    // Build everything first; the optimizer is only changed once all of it is valid.
    let mut configs = Vec::with_capacity(file.groups.len());
    let mut where_is = HashMap::new();
    for (gi, (saved, g)) in file.groups.iter().zip(&opt.groups).enumerate() {
        for (pi, id) in group_ids(path, saved, gi, g.params.len())?
            .into_iter()
            .enumerate()
        {
            where_is.insert(id, (gi, pi));
        }
        let mut config = g.config.clone();
        let extra = read_hyper(&mut config, saved).map_err(|e| fail(path, e))?;
        config.validate()?;
        configs.push((config, extra));
    }
    let mut states: Vec<Vec<ParamState>> = opt
        .groups
        .iter()
        .map(|g| g.params.iter().map(|_| ParamState::new()).collect())
        .collect();
    for (name, t) in file.tensors {
        let bad = || fail(path, format!("unexpected tensor {name}"));
        let rest = name.strip_prefix("state.").ok_or_else(bad)?;
        let (id, key) = rest.split_once('.').ok_or_else(bad)?;
        let id: u64 = id.parse().map_err(|_| bad())?;
        let &(gi, pi) = where_is.get(&id).ok_or_else(bad)?;
        let t = cast(t, key, &opt.groups[gi].params[pi])?;
        states[gi][pi].insert(key.to_string(), t);
    }
    for (id, entries) in &file.values {
        let bad = || fail(path, format!("unexpected state value of parameter {id}"));
        let id: u64 = id.parse().map_err(|_| bad())?;
        let &(gi, pi) = where_is.get(&id).ok_or_else(bad)?;
        for (key, v) in entries.as_object().ok_or_else(bad)? {
            let t = number_tensor(v).ok_or_else(|| {
                fail(path, format!("state[{id}][{key}]: unsupported value {v}"))
            })??;
            states[gi][pi].insert(key.clone(), t);
        }
    }
    for ((g, (config, extra)), state) in opt.groups.iter_mut().zip(configs).zip(states) {
        g.config = config;
        g.extra = extra;
        g.state = state;
    }
    Ok(())
}

/// A one-element state tensor as the Python number it stands for: an int for integer
/// dtypes, else a float.
pub(crate) fn number_json(t: &Tensor) -> Result<Value> {
    Ok(match t.f_kind()? {
        Kind::Int64 | Kind::Int | Kind::Int16 | Kind::Int8 | Kind::Uint8 => {
            Value::from(t.f_int64_value(&[])?)
        }
        Kind::Bool => Value::Bool(t.f_int64_value(&[])? != 0),
        _ => float_json(t.f_double_value(&[])?),
    })
}

/// A Python number from a checkpoint as a 0-d CPU tensor (int64 for an int, float64 for a
/// float); `None` if `v` is not a number.
pub(crate) fn number_tensor(v: &Value) -> Option<Result<Tensor>> {
    if let Some(i) = v.as_i64() {
        return Some(Tensor::f_scalar_tensor(i, (Kind::Int64, Device::Cpu)).map_err(Into::into));
    }
    let f = float_from_json(v)?;
    Some(Tensor::f_scalar_tensor(f, (Kind::Double, Device::Cpu)).map_err(Into::into))
}

/// Writes `config`'s hyperparameters into `map` under torch's keys.
pub(crate) fn write_hyper<R: Hyperparameters>(config: &R, map: &mut Map<String, Value>) {
    let names = config.hyperparameter_names();
    for &name in names {
        let Some(value) = config.get(name) else {
            continue;
        };
        match tuple_of(name, names) {
            // written once, at its first field
            Some((key, fields)) if fields[0] == name => {
                let values = fields.iter().filter_map(|f| config.get(f)).map(to_json);
                map.insert(key.into(), Value::Array(values.collect()));
            }
            Some(_) => {}
            None => {
                map.insert(name.into(), to_json(value));
            }
        }
    }
}

/// Reads `config`'s hyperparameters from `saved` (torch's keys; missing ones keep their
/// current values) and returns the group's other entries (except `params`).
pub(crate) fn read_hyper<R: Hyperparameters>(
    config: &mut R,
    saved: &Map<String, Value>,
) -> std::result::Result<Map<String, Value>, String> {
    let mut used = vec!["params"];
    let names = config.hyperparameter_names();
    for &name in names {
        let (key, value) = match tuple_of(name, names) {
            Some((key, fields)) => {
                let at = fields.iter().position(|f| *f == name).unwrap_or(0);
                (key, saved.get(key).and_then(|v| v.get(at)))
            }
            None => (name, saved.get(name)),
        };
        used.push(key);
        let (Some(value), Some(current)) = (value, config.get(name)) else {
            continue;
        };
        let new = from_json(value, current).ok_or_else(|| format!("invalid {key}: {value}"))?;
        config.set(name, new).map_err(|e| e.to_string())?;
    }
    Ok(saved
        .iter()
        .filter(|(k, _)| !used.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect())
}

pub(crate) fn float_json(v: f64) -> Value {
    match Number::from_f64(v) {
        Some(n) => Value::Number(n),
        None if v.is_nan() => Value::from("NaN"),
        None if v > 0.0 => Value::from("Infinity"),
        None => Value::from("-Infinity"),
    }
}

fn to_json(h: Hyper) -> Value {
    match h {
        Hyper::Float(v) | Hyper::OptionalFloat(Some(v)) => float_json(v),
        Hyper::Bool(b) => Value::Bool(b),
        Hyper::OptionalFloat(None) | Hyper::Name(None) => Value::Null,
        Hyper::Int(v) => Value::from(v),
        Hyper::Name(Some(name)) => Value::from(name),
    }
}

/// The values a [`Hyper::Name`] hyperparameter can take (torch's strings).
const NAMES: [&str; 3] = ["original", "match_rms_adamw", "strong_wolfe"];

pub(crate) fn float_from_json(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => match s.as_str() {
            "NaN" => Some(f64::NAN),
            "Infinity" => Some(f64::INFINITY),
            "-Infinity" => Some(f64::NEG_INFINITY),
            _ => None,
        },
        _ => None,
    }
}

/// `v` as a value of `like`'s variant.
fn from_json(v: &Value, like: Hyper) -> Option<Hyper> {
    match like {
        Hyper::Float(_) => float_from_json(v).map(Hyper::Float),
        Hyper::Bool(_) => v.as_bool().map(Hyper::Bool),
        Hyper::OptionalFloat(_) if v.is_null() => Some(Hyper::OptionalFloat(None)),
        Hyper::OptionalFloat(_) => float_from_json(v).map(|f| Hyper::OptionalFloat(Some(f))),
        // An integer stays one; a float is offered as such (LBFGS's `lr` is either).
        Hyper::Int(_) => match v.as_i64() {
            Some(i) => Some(Hyper::Int(i)),
            None => float_from_json(v).map(Hyper::Float),
        },
        Hyper::Name(_) if v.is_null() => Some(Hyper::Name(None)),
        Hyper::Name(_) => {
            let s = v.as_str()?;
            NAMES
                .iter()
                .find(|n| **n == s)
                .map(|n| Hyper::Name(Some(n)))
        }
    }
}

fn kind_of(dtype: Dtype) -> Option<Kind> {
    Some(match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::F64 => Kind::Double,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F16 => Kind::Half,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        Dtype::U8 => Kind::Uint8,
        Dtype::BOOL => Kind::Bool,
        _ => return None,
    })
}

fn dtype_of(kind: Kind) -> Option<Dtype> {
    Some(match kind {
        Kind::Float => Dtype::F32,
        Kind::Double => Dtype::F64,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Half => Dtype::F16,
        Kind::Int64 => Dtype::I64,
        Kind::Int => Dtype::I32,
        Kind::Uint8 => Dtype::U8,
        Kind::Bool => Dtype::BOOL,
        _ => return None,
    })
}

/// A tensor's bytes on the host, for the safetensors writer.
pub(crate) struct Owned {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl Owned {
    pub(crate) fn of(t: &Tensor) -> Result<Owned> {
        let kind = t.f_kind()?;
        let dtype = dtype_of(kind).ok_or_else(|| Error::UnsupportedDtype {
            what: "a state tensor".into(),
            kind,
        })?;
        let host = t.f_to_device(Device::Cpu)?.f_contiguous()?;
        let numel = host.numel();
        let mut data = vec![0u8; numel * kind.elt_size_in_bytes()];
        host.f_copy_data_u8(&mut data, numel)?;
        Ok(Owned {
            dtype,
            shape: host.size().iter().map(|&d| d as usize).collect(),
            data,
        })
    }
}

impl View for Owned {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}
