//! [`Optim`] over the configurations of [`crate::tensor_rules`]: Adafactor, Muon and
//! SparseAdam, with torch's hyperparameter names, validation and state.
//!
//! Their steps are the `tensor_rules` step functions (ATen operations in the order of torch's
//! implementations, bit-identical to torch); this module only keeps the groups and the state,
//! as [`Optim`] does for the elementwise algorithms. State is created on a parameter's first
//! step with a gradient, as torch creates it:
//!
//! | class | state (torch's names) |
//! |---|---|
//! | [`Adafactor`] | `step` (float32 0-d CPU); `row_var`, `col_var` (more than one dimension) or `variance` |
//! | [`Muon`] | `momentum_buffer` |
//! | [`SparseAdam`] | `step` (a Python `int` in torch: here an int64 0-d CPU tensor, a JSON integer in checkpoints), `exp_avg`, `exp_avg_sq` |
//!
//! The learning rate of these configurations is a [`Lr`]: [`Hyperparameters::set_lr`] (and
//! LR schedulers) set a float; a tensor `lr` is read as its value.

use super::algorithm::{check, scalar_tensor, Hyper, Hyperparameters, ParamState};
use super::stateful::{optimizer_methods, Optim};
use super::Optimizer;
use crate::error::{Error, Result};
use crate::tensor_rules::adafactor::{factor_shapes, is_factored};
use crate::tensor_rules::muon::AdjustLr;
use crate::tensor_rules::{
    adafactor, muon, sparse_adam, Adafactor, AdafactorGroup, AdafactorParam, Lr, Muon, MuonGroup,
    MuonParam, SparseAdam, SparseAdamGroup, SparseAdamParam,
};
use tch::{Device, Kind, Tensor};

/// `lr`'s value (a tensor `lr` read as a float; NaN if it cannot be read).
fn lr_value(lr: &Lr) -> f64 {
    match lr {
        Lr::Float(v) => *v,
        Lr::Tensor(t) => t.f_double_value(&[]).unwrap_or(f64::NAN),
    }
}

fn no_such(name: &str, value: Hyper) -> Error {
    check::invalid("hyperparameter", format!("{name} = {value}"))
}

impl Hyperparameters for Adafactor {
    fn class_name(&self) -> &'static str {
        "Adafactor"
    }

    /// `eps1`, `eps2` are torch's `eps` tuple.
    fn hyperparameter_names(&self) -> &'static [&'static str] {
        &[
            "lr",
            "beta2_decay",
            "eps1",
            "eps2",
            "d",
            "weight_decay",
            "maximize",
        ]
    }

    fn get(&self, name: &str) -> Option<Hyper> {
        Some(match name {
            "lr" => Hyper::Float(lr_value(&self.lr)),
            "beta2_decay" => Hyper::Float(self.beta2_decay),
            "eps1" => Hyper::OptionalFloat(self.eps1),
            "eps2" => Hyper::Float(self.eps2),
            "d" => Hyper::Float(self.d),
            "weight_decay" => Hyper::Float(self.weight_decay),
            "maximize" => Hyper::Bool(self.maximize),
            _ => return None,
        })
    }

    fn set(&mut self, name: &str, value: Hyper) -> Result<()> {
        match (name, value) {
            ("lr", Hyper::Float(v)) => self.lr = Lr::Float(v),
            ("beta2_decay", Hyper::Float(v)) => self.beta2_decay = v,
            ("eps1", Hyper::OptionalFloat(v)) => self.eps1 = v,
            ("eps2", Hyper::Float(v)) => self.eps2 = v,
            ("d", Hyper::Float(v)) => self.d = v,
            ("weight_decay", Hyper::Float(v)) => self.weight_decay = v,
            ("maximize", Hyper::Bool(v)) => self.maximize = v,
            _ => return Err(no_such(name, value)),
        }
        Ok(())
    }

    fn lr(&self) -> f64 {
        lr_value(&self.lr)
    }

    fn set_lr(&mut self, lr: f64) {
        self.lr = Lr::Float(lr);
    }

    /// torch's: `lr ≥ 0`, `beta2_decay ≤ 0`, `eps ≥ 0` (each), `d ≥ 1`, `weight_decay ≥ 0`.
    fn validate(&self) -> Result<()> {
        check::at_least("lr", lr_value(&self.lr), 0.0)?;
        check::at_most("beta2_decay", self.beta2_decay, 0.0)?;
        if let Some(eps1) = self.eps1 {
            check::at_least("eps[0]", eps1, 0.0)?;
        }
        check::at_least("eps[1]", self.eps2, 0.0)?;
        check::at_least("d", self.d, 1.0)?;
        check::at_least("weight_decay", self.weight_decay, 0.0)
    }
}

impl Hyperparameters for Muon {
    fn class_name(&self) -> &'static str {
        "Muon"
    }

    /// `ns_a`, `ns_b`, `ns_c` are torch's `ns_coefficients` tuple (the quintic's a, b, c).
    fn hyperparameter_names(&self) -> &'static [&'static str] {
        &[
            "lr",
            "weight_decay",
            "momentum",
            "nesterov",
            "ns_a",
            "ns_b",
            "ns_c",
            "eps",
            "ns_steps",
            "adjust_lr_fn",
        ]
    }

    /// `adjust_lr_fn`: `Name(None)` for [`AdjustLr::Original`] (torch's default `None`; a
    /// saved `"original"` reads as the same), `Name(Some("match_rms_adamw"))`.
    fn get(&self, name: &str) -> Option<Hyper> {
        let (a, b, c) = self.ns_coefficients;
        Some(match name {
            "lr" => Hyper::Float(lr_value(&self.lr)),
            "weight_decay" => Hyper::Float(self.weight_decay),
            "momentum" => Hyper::Float(self.momentum),
            "nesterov" => Hyper::Bool(self.nesterov),
            "ns_a" => Hyper::Float(a),
            "ns_b" => Hyper::Float(b),
            "ns_c" => Hyper::Float(c),
            "eps" => Hyper::Float(self.eps),
            "ns_steps" => Hyper::Int(i64::try_from(self.ns_steps).unwrap_or(i64::MAX)),
            "adjust_lr_fn" => Hyper::Name(match self.adjust_lr_fn {
                AdjustLr::Original => None,
                AdjustLr::MatchRmsAdamw => Some("match_rms_adamw"),
                AdjustLr::Unscaled => Some("unscaled"),
            }),
            _ => return None,
        })
    }

    fn set(&mut self, name: &str, value: Hyper) -> Result<()> {
        let coefficients = &mut self.ns_coefficients;
        match (name, value) {
            ("lr", Hyper::Float(v)) => self.lr = Lr::Float(v),
            ("weight_decay", Hyper::Float(v)) => self.weight_decay = v,
            ("momentum", Hyper::Float(v)) => self.momentum = v,
            ("nesterov", Hyper::Bool(v)) => self.nesterov = v,
            ("ns_a", Hyper::Float(v)) => coefficients.0 = v,
            ("ns_b", Hyper::Float(v)) => coefficients.1 = v,
            ("ns_c", Hyper::Float(v)) => coefficients.2 = v,
            ("eps", Hyper::Float(v)) => self.eps = v,
            ("ns_steps", Hyper::Int(v)) => {
                self.ns_steps = usize::try_from(v).map_err(|_| check::invalid("ns_steps", v))?
            }
            ("adjust_lr_fn", Hyper::Name(None | Some("original"))) => {
                self.adjust_lr_fn = AdjustLr::Original
            }
            ("adjust_lr_fn", Hyper::Name(Some("match_rms_adamw"))) => {
                self.adjust_lr_fn = AdjustLr::MatchRmsAdamw
            }
            _ => return Err(no_such(name, value)),
        }
        Ok(())
    }

    fn lr(&self) -> f64 {
        lr_value(&self.lr)
    }

    fn set_lr(&mut self, lr: f64) {
        self.lr = Lr::Float(lr);
    }

    /// torch's: `lr`, `momentum`, `weight_decay` ≥ 0, `adjust_lr_fn` one of torch's
    /// (`ns_steps < 100` is checked at the step, as torch does).
    fn validate(&self) -> Result<()> {
        check::at_least("lr", lr_value(&self.lr), 0.0)?;
        check::at_least("momentum", self.momentum, 0.0)?;
        check::at_least("weight_decay", self.weight_decay, 0.0)?;
        if self.adjust_lr_fn == AdjustLr::Unscaled {
            return Err(check::invalid("adjust_lr_fn", "unscaled"));
        }
        Ok(())
    }

    /// Muon only takes 2-D parameters (torch's `ValueError`).
    fn check_param(&self, index: usize, param: &Tensor) -> Result<()> {
        if param.dim() != 2 {
            return Err(check::invalid(
                "params",
                format!(
                    "params[{index}] of size {:?} (Muon only supports 2D parameters)",
                    param.size()
                ),
            ));
        }
        Ok(())
    }
}

impl Hyperparameters for SparseAdam {
    fn class_name(&self) -> &'static str {
        "SparseAdam"
    }

    fn hyperparameter_names(&self) -> &'static [&'static str] {
        &["lr", "beta1", "beta2", "eps", "maximize"]
    }

    fn get(&self, name: &str) -> Option<Hyper> {
        Some(match name {
            "lr" => Hyper::Float(lr_value(&self.lr)),
            "beta1" => Hyper::Float(self.beta1),
            "beta2" => Hyper::Float(self.beta2),
            "eps" => Hyper::Float(self.eps),
            "maximize" => Hyper::Bool(self.maximize),
            _ => return None,
        })
    }

    fn set(&mut self, name: &str, value: Hyper) -> Result<()> {
        match (name, value) {
            ("lr", Hyper::Float(v)) => self.lr = Lr::Float(v),
            ("beta1", Hyper::Float(v)) => self.beta1 = v,
            ("beta2", Hyper::Float(v)) => self.beta2 = v,
            ("eps", Hyper::Float(v)) => self.eps = v,
            ("maximize", Hyper::Bool(v)) => self.maximize = v,
            _ => return Err(no_such(name, value)),
        }
        Ok(())
    }

    fn lr(&self) -> f64 {
        lr_value(&self.lr)
    }

    fn set_lr(&mut self, lr: f64) {
        self.lr = Lr::Float(lr);
    }

    /// torch's: `lr > 0`, `eps > 0`, `betas` in [0, 1).
    fn validate(&self) -> Result<()> {
        check::above("lr", lr_value(&self.lr), 0.0)?;
        check::above("eps", self.eps, 0.0)?;
        check::unit("betas[0]", self.beta1, false)?;
        check::unit("betas[1]", self.beta2, false)
    }

    /// SparseAdam takes dense real parameters (torch's `ValueError`).
    fn check_param(&self, index: usize, param: &Tensor) -> Result<()> {
        if param.is_sparse() || !param.is_floating_point() {
            return Err(check::invalid(
                "params",
                format!("params[{index}] (SparseAdam requires dense real parameter tensors)"),
            ));
        }
        Ok(())
    }

    fn number_state(&self) -> &'static [&'static str] {
        &["step"]
    }
}

/// A parameter with a gradient, its indices and (handles to) its state.
struct Entry {
    group: usize,
    index: usize,
    param: Tensor,
    grad: Tensor,
    state: ParamState,
}

fn shallow(state: &ParamState) -> ParamState {
    state
        .iter()
        .map(|(k, v)| (k.clone(), v.shallow_clone()))
        .collect()
}

/// The parameters that have a gradient, group by group, with their state; state that does not
/// exist yet is made by `init(param, grad)` and also returned in the second list, to be
/// stored once the step has succeeded.
#[allow(clippy::type_complexity)]
fn gather<R: Hyperparameters>(
    opt: &Optim<R>,
    init: impl Fn(&Tensor, &Tensor) -> Result<ParamState>,
) -> Result<(Vec<Vec<Entry>>, Vec<(usize, usize, ParamState)>)> {
    let mut groups = Vec::with_capacity(opt.groups.len());
    let mut created = Vec::new();
    for (gi, g) in opt.groups.iter().enumerate() {
        let mut entries = Vec::new();
        for (pi, (p, st)) in g.params.iter().zip(&g.state).enumerate() {
            let grad = p.f_grad()?;
            if !grad.defined() {
                continue;
            }
            let state = if st.is_empty() {
                let new = init(p, &grad)?;
                let handles = shallow(&new);
                created.push((gi, pi, new));
                handles
            } else {
                shallow(st)
            };
            entries.push(Entry {
                group: gi,
                index: pi,
                param: p.shallow_clone(),
                grad,
                state,
            });
        }
        groups.push(entries);
    }
    Ok((groups, created))
}

fn store<R: Hyperparameters>(opt: &mut Optim<R>, created: Vec<(usize, usize, ParamState)>) {
    for (gi, pi, s) in created {
        opt.groups[gi].state[pi] = s;
    }
}

impl Entry {
    fn take(&mut self, name: &str) -> Result<Tensor> {
        self.state.remove(name).ok_or_else(|| Error::StateMismatch {
            what: format!("state of params[{}] in group {}", self.index, self.group),
            expected: format!("an entry {name}"),
            got: format!("{:?}", self.state.keys().collect::<Vec<_>>()),
        })
    }
}

/// torch's Adafactor state for a parameter with gradient `grad`.
fn adafactor_state(grad: &Tensor) -> Result<ParamState> {
    let mut st = ParamState::from([("step".to_string(), scalar_tensor(0.0, Device::Cpu)?)]);
    let opts = (grad.f_kind()?, grad.device());
    let shape = grad.size();
    if is_factored(shape.len()) {
        let (row, col) = factor_shapes(&shape);
        st.insert("row_var".into(), grad.f_new_zeros(row.as_slice(), opts)?);
        st.insert("col_var".into(), grad.f_new_zeros(col.as_slice(), opts)?);
    } else {
        st.insert("variance".into(), grad.f_zeros_like()?);
    }
    Ok(st)
}

impl Optimizer for Optim<Adafactor> {
    /// One `torch.optim.Adafactor.step()` ([`adafactor::step`]).
    fn step(&mut self) -> Result<()> {
        let (entries, created) = gather(self, |_, g| adafactor_state(g))?;
        let mut groups = Vec::new();
        for (g, list) in self.groups.iter().zip(entries) {
            let mut params = Vec::with_capacity(list.len());
            for mut e in list {
                params.push(AdafactorParam {
                    step: e.take("step")?,
                    row_var: e.state.remove("row_var"),
                    col_var: e.state.remove("col_var"),
                    variance: e.state.remove("variance"),
                    param: e.param,
                    grad: e.grad,
                });
            }
            groups.push(AdafactorGroup {
                hyper: g.config.clone(),
                params,
            });
        }
        tch::no_grad(|| adafactor::step(&mut groups))?;
        store(self, created);
        Ok(())
    }

    optimizer_methods!();
}

impl Optimizer for Optim<Muon> {
    /// One `torch.optim.Muon.step()` ([`muon::step`]).
    fn step(&mut self) -> Result<()> {
        let (entries, created) = gather(self, |_, g| {
            Ok(ParamState::from([(
                "momentum_buffer".to_string(),
                g.f_zeros_like()?,
            )]))
        })?;
        let mut groups = Vec::new();
        for (g, list) in self.groups.iter().zip(entries) {
            let mut params = Vec::with_capacity(list.len());
            for mut e in list {
                params.push(MuonParam {
                    momentum_buffer: e.take("momentum_buffer")?,
                    param: e.param,
                    grad: e.grad,
                });
            }
            groups.push(MuonGroup {
                hyper: g.config.clone(),
                params,
            });
        }
        tch::no_grad(|| muon::step(&mut groups))?;
        store(self, created);
        Ok(())
    }

    optimizer_methods!();
}

impl Optimizer for Optim<SparseAdam> {
    /// One `torch.optim.SparseAdam.step()` ([`sparse_adam::step`]): gradients must be sparse
    /// COO tensors (e.g. of `Tensor::embedding` with `sparse = true`); `step` counts every
    /// step a parameter has a gradient.
    fn step(&mut self) -> Result<()> {
        let (entries, created) = gather(self, |p, _| {
            Ok(ParamState::from([
                (
                    "step".to_string(),
                    Tensor::f_scalar_tensor(0i64, (Kind::Int64, Device::Cpu))?,
                ),
                ("exp_avg".to_string(), p.f_zeros_like()?),
                ("exp_avg_sq".to_string(), p.f_zeros_like()?),
            ]))
        })?;
        let mut groups = Vec::new();
        let mut counters = Vec::new();
        for (g, list) in self.groups.iter().zip(entries) {
            let mut params = Vec::with_capacity(list.len());
            for mut e in list {
                let counter = e.take("step")?;
                let step = counter.f_int64_value(&[])? + 1;
                params.push(SparseAdamParam {
                    exp_avg: e.take("exp_avg")?,
                    exp_avg_sq: e.take("exp_avg_sq")?,
                    param: e.param,
                    grad: e.grad,
                    step,
                });
                counters.push((counter, step));
            }
            groups.push(SparseAdamGroup {
                hyper: g.config.clone(),
                params,
            });
        }
        tch::no_grad(|| sparse_adam::step(&mut groups))?;
        for (mut counter, step) in counters {
            let _ = counter.f_fill_(step)?;
        }
        store(self, created);
        Ok(())
    }

    optimizer_methods!();
}
