//! [`Quantized`]: any elementwise [`Algorithm`] with 8-bit block-wise state in an [`Optim`].

use super::algorithm::{Algorithm, Hyper, Hyperparameters, ParamState};
use super::stateful::Optim;
use super::Optimizer;
use crate::driver::{read_grads, Group, ParamTensors};
use crate::error::{Error, Result};
use crate::quant::{self, QuantGroup, QuantParam};
use std::any::TypeId;
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use tch::{Device, Tensor};

/// The configuration of a parameter group whose state is kept in 8 bits (see
/// [`crate::quant`]): the algorithm's own configuration, the block size and bitsandbytes'
/// small-tensor rule. `Optim<Quantized<R>>` is the Rust counterpart of the Python classes
/// `AdamW8bit`, `Lion8bit`, … and writes checkpoints they read.
///
/// ```
/// use ferroptim::optim::Quantized;
/// use ferroptim::{Adam, Optim, Optimizer};
/// use tch::{Device, Kind, Tensor};
///
/// # fn main() -> ferroptim::Result<()> {
/// let w = Tensor::randn([8192], (Kind::Float, Device::Cpu)).set_requires_grad(true);
/// let mut opt = Optim::new(vec![w.shallow_clone()], Quantized::new(Adam::adamw()))?;
/// (&w * &w).sum(Kind::Float).backward();
/// opt.step()?;
/// let state = opt.state(0, 0)?;
/// assert_eq!(state["exp_avg"].kind(), Kind::Uint8); // one code per element
/// assert_eq!(state["exp_avg_absmax"].size(), [32]); // one scale per block of 256
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Quantized<R> {
    /// The algorithm and its hyperparameters.
    pub config: R,
    /// Elements per block (default 256; a power of two from 16 to 65536).
    pub block_size: usize,
    /// Parameters with fewer elements keep fp32 state (default 4096).
    pub min_8bit_size: usize,
}

impl<R> Quantized<R> {
    /// `config` with 8-bit state, the default block size and small-tensor rule.
    pub fn new(config: R) -> Self {
        Quantized {
            config,
            block_size: quant::DEFAULT_BLOCK_SIZE,
            min_8bit_size: quant::DEFAULT_MIN_8BIT_SIZE,
        }
    }
}

impl<R: Algorithm> Default for Quantized<R> {
    fn default() -> Self {
        Quantized::new(R::default())
    }
}

/// The algorithm's hyperparameter names followed by `block_size` and `min_8bit_size`, made
/// once per algorithm type.
fn names_of<R: Algorithm>(config: &R) -> &'static [&'static str] {
    static NAMES: OnceLock<Mutex<HashMap<TypeId, &'static [&'static str]>>> = OnceLock::new();
    let map = NAMES.get_or_init(Default::default);
    let mut map = match map.lock() {
        Ok(m) => m,
        Err(poisoned) => poisoned.into_inner(),
    };
    map.entry(TypeId::of::<R>()).or_insert_with(|| {
        let mut v = config.hyperparameter_names().to_vec();
        v.extend(["block_size", "min_8bit_size"]);
        // One small list per algorithm type, for the life of the program.
        Box::leak(v.into_boxed_slice())
    })
}

impl<R: Algorithm> Hyperparameters for Quantized<R> {
    fn class_name(&self) -> &'static str {
        self.config.class_name()
    }

    fn hyperparameter_names(&self) -> &'static [&'static str] {
        names_of(&self.config)
    }

    fn get(&self, name: &str) -> Option<Hyper> {
        match name {
            "block_size" => Some(Hyper::Int(self.block_size as i64)),
            "min_8bit_size" => Some(Hyper::Int(self.min_8bit_size as i64)),
            _ => self.config.get(name),
        }
    }

    fn set(&mut self, name: &str, value: Hyper) -> Result<()> {
        let size = |v: i64| {
            usize::try_from(v)
                .map_err(|_| super::check::invalid("hyperparameter", format!("{name} = {v}")))
        };
        match (name, value) {
            ("block_size", Hyper::Int(v)) => self.block_size = size(v)?,
            ("min_8bit_size", Hyper::Int(v)) => self.min_8bit_size = size(v)?,
            _ => return self.config.set(name, value),
        }
        Ok(())
    }

    fn lr(&self) -> f64 {
        self.config.lr()
    }

    fn set_lr(&mut self, lr: f64) {
        self.config.set_lr(lr)
    }

    fn validate(&self) -> Result<()> {
        quant::check_block_size(self.block_size)?;
        self.config.validate()
    }
}

impl<R: Algorithm> Optim<Quantized<R>> {
    /// One step (see [`Optimizer::step`]), with gradients scaled by `grad_scale` when given.
    fn run_quantized(&mut self, grad_scale: Option<f64>) -> Result<()> {
        let mut full = Vec::new();
        let mut eight = Vec::new();
        let mut created = Vec::new();
        for (gi, g) in self.groups.iter().enumerate() {
            let q = &g.config;
            let rule = q.config.clone();
            let names = rule.state_names();
            let scalar_names = rule.scalar_state_names();
            let first = names.first().or(scalar_names.first());
            let grads = read_grads(&g.params)?;
            let (mut fp, mut qp) = (Vec::new(), Vec::new());
            for (pi, ((p, st), grad)) in g.params.iter().zip(&g.state).zip(grads).enumerate() {
                if !grad.defined() {
                    continue;
                }
                let fresh = first.is_some_and(|f| !st.contains_key(*f));
                let new_state = if fresh {
                    Some(init_state(q, p, st)?)
                } else {
                    None
                };
                let source = new_state.as_ref().unwrap_or(st);
                let take = |names: &mut dyn Iterator<Item = String>| -> Result<Vec<Tensor>> {
                    names
                        .map(|n| {
                            source.get(&n).map(Tensor::shallow_clone).ok_or_else(|| {
                                Error::StateMismatch {
                                    what: format!("state of params[{pi}] in group {gi}"),
                                    expected: n.clone(),
                                    got: format!("{:?}", source.keys().collect::<Vec<_>>()),
                                }
                            })
                        })
                        .collect()
                };
                let is_8bit = names
                    .first()
                    .and_then(|n| source.get(*n))
                    .is_some_and(|t| t.kind() == tch::Kind::Uint8);
                let scalar_state = take(&mut scalar_names.iter().map(|n| n.to_string()))?;
                if is_8bit {
                    qp.push(QuantParam {
                        param: p.shallow_clone(),
                        grad,
                        codes: take(&mut names.iter().map(|n| n.to_string()))?,
                        absmax: take(&mut names.iter().map(|n| format!("{n}_absmax")))?,
                        scalar_state,
                        fresh,
                        state: vec![],
                    });
                } else {
                    fp.push(ParamTensors {
                        param: p.shallow_clone(),
                        grad,
                        state: take(&mut names.iter().map(|n| n.to_string()))?,
                        scalar_state,
                        fresh,
                    });
                }
                if let Some(s) = new_state {
                    created.push((gi, pi, s));
                }
            }
            eight.push(QuantGroup {
                rule: rule.clone(),
                block_size: q.block_size,
                params: qp,
                bf16_stochastic_round: None,
            });
            full.push(Group { rule, params: fp });
        }
        // One call: both sets are validated before either is modified.
        quant::step_8bit_mixed(&eight, &full, grad_scale)?;
        for (gi, pi, s) in created {
            self.groups[gi].state[pi] = s;
        }
        Ok(())
    }

    /// [`Optimizer::step`] with gradients scaled by `grad_scale` (see
    /// [`crate::step_unscaling`]).
    ///
    /// # Errors
    /// As [`Optimizer::step`]; also [`Error::InvalidArgument`] for a bad `grad_scale`.
    pub fn step_unscaling(&mut self, grad_scale: f64) -> Result<()> {
        self.run_quantized(Some(grad_scale))
    }
}

/// The algorithm's new state for `param` (merged over `existing`), each state tensor
/// quantized when `param` is a CPU tensor of at least `min_8bit_size` elements.
fn init_state<R: Algorithm>(
    q: &Quantized<R>,
    param: &Tensor,
    existing: &ParamState,
) -> Result<ParamState> {
    let mut state: ParamState = existing
        .iter()
        .map(|(k, v)| (k.clone(), v.shallow_clone()))
        .collect();
    let mut new = q.config.init_state(param)?;
    if param.numel() >= q.min_8bit_size && param.device() == Device::Cpu {
        for name in q.config.state_names() {
            if let Some(t) = new.remove(*name) {
                let (codes, absmax) = quant::quantize(&t, name, q.block_size)?;
                new.insert((*name).to_string(), codes);
                new.insert(format!("{name}_absmax"), absmax);
            }
        }
    }
    state.extend(new);
    Ok(state)
}

impl<R: Algorithm> Optimizer for Optim<Quantized<R>> {
    fn step(&mut self) -> Result<()> {
        self.run_quantized(None)
    }

    crate::optim::stateful::optimizer_methods!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Adam, Lion};
    use tch::Kind;

    fn train<R: Algorithm>(opt: &mut Optim<Quantized<R>>, ws: &[Tensor], steps: i64) {
        for t in 0..steps {
            opt.zero_grad().unwrap();
            let loss: Tensor = ws
                .iter()
                .map(|w| (w * (t as f64 + 1.0) - 0.5).square().sum(Kind::Float))
                .fold(Tensor::zeros([], (Kind::Float, Device::Cpu)), |a, b| a + b);
            loss.backward();
            opt.step().unwrap();
        }
    }

    fn params() -> Vec<Tensor> {
        tch::manual_seed(0);
        [5000i64, 100]
            .iter()
            .map(|&n| Tensor::randn([n], (Kind::Float, Device::Cpu)).set_requires_grad(true))
            .collect()
    }

    #[test]
    fn small_tensors_keep_fp32_state_and_checkpoints_resume_bit_for_bit() {
        let ws = params();
        let config = Quantized {
            block_size: 128,
            ..Quantized::new(Adam::adamw())
        };
        let mut opt = Optim::new(&ws, config.clone()).unwrap();
        train(&mut opt, &ws, 3);
        assert_eq!(opt.state(0, 0).unwrap()["exp_avg"].kind(), Kind::Uint8);
        assert_eq!(opt.state(0, 0).unwrap()["exp_avg_sq_absmax"].size(), [40]);
        assert_eq!(opt.state(0, 1).unwrap()["exp_avg"].kind(), Kind::Float);
        assert_eq!(
            opt.hyperparameter(0, "block_size").unwrap(),
            Hyper::Int(128)
        );
        let dir = std::env::temp_dir().join(format!("ferroptim-q-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("opt.safetensors");
        opt.save(&path).unwrap();
        let saved: Vec<Tensor> = ws.iter().map(|w| w.detach().copy()).collect();
        train(&mut opt, &ws, 2);

        let ws2: Vec<Tensor> = saved
            .iter()
            .map(|w| w.copy().set_requires_grad(true))
            .collect();
        let mut opt2 = Optim::new(&ws2, Quantized::new(Adam::adamw())).unwrap();
        opt2.load(&path).unwrap();
        assert_eq!(opt2.config(0).unwrap().block_size, 128);
        train(&mut opt2, &ws2, 2);
        for (a, b) in ws.iter().zip(&ws2) {
            assert!(a.equal(b));
        }
        for (k, v) in opt.state(0, 0).unwrap() {
            assert!(v.equal(&opt2.state(0, 0).unwrap()[k]), "{k}");
        }
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn quantized_lion_matches_step_8bit() {
        let ws = params();
        let mut opt =
            Optim::new(vec![ws[0].shallow_clone()], Quantized::new(Lion::default())).unwrap();
        train(&mut opt, &ws[..1], 2);
        let st = opt.state(0, 0).unwrap();
        assert_eq!(st["exp_avg"].kind(), Kind::Uint8);
        assert!(Quantized {
            block_size: 100,
            ..Quantized::new(Lion::default())
        }
        .validate()
        .is_err());
    }
}
