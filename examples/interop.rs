//! Runs the Rust API on data from Python, for the cross-language tests
//! (`tests/python/test_rust_api.py`); not a usage example.
//!
//! ```text
//! interop run <class> <problem.safetensors> <checkpoint-in> <out.safetensors> [<k> <checkpoint-out>]
//! interop schedules
//! ```
//!
//! `run`: the problem file holds `param.{i}` (initial parameters) and `grad.{t}.{i}` (the
//! gradient of parameter `i` at step `t`, from 0) and `__metadata__["group_sizes"]`, a JSON list
//! of the number of parameters per group. It builds the optimizer of the Python class
//! `<class>` (an `Optim` of its configuration type, or `LbfgsOptim`) with those groups, loads
//! `<checkpoint-in>` (hyperparameters and any state, written by `ferroptim.checkpoint.save`),
//! runs one step per gradient (SparseAdam: as sparse gradients; LBFGS: `grad.{t}.{i}` are the
//! targets of the closure's loss `Σᵢ sum((pᵢ − gᵢ)·(pᵢ − gᵢ))`), writes the parameters after
//! step `t` as `param.{t}.{i}` to `<out>`, and after step `k` saves its own checkpoint to
//! `<checkpoint-out>`.
//!
//! `schedules`: prints, as JSON, the learning rates (and momenta) of fixed scheduler scenarios
//! that the test recomputes with `torch.optim.lr_scheduler`.

use ferroptim::optim::{clear_grads, set_grad, LbfgsOptim};
use ferroptim::sched::{
    CosineAnnealingLR, ExponentialLR, LinearLR, MultiStepLR, OneCycleLR, ReduceLROnPlateau,
    Scheduler, StepLR,
};
use ferroptim::tensor_rules::{Adafactor, Lbfgs, Muon, SparseAdam};
use ferroptim::{
    AdEMAMix, Adadelta, Adagrad, Adam, Adamax, Adan, Adopt, Asgd, Hyper, Hyperparameters, Lamb,
    Lars, Lion, NAdam, Optim, Optimizer, RAdam, RMSprop, Rprop, ScheduleFreeAdamWConfig, Sgd,
};
use std::error::Error;
use std::path::Path;
use tch::{Kind, Tensor};

type Res<T> = Result<T, Box<dyn Error>>;

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("run") if args.len() == 5 || args.len() == 7 => {
            let save = if args.len() == 7 {
                Some((args[5].parse::<usize>()?, args[6].as_str()))
            } else {
                None
            };
            let problem = Problem::read(&args[2])?;
            let (ckpt, out) = (&args[3], &args[4]);
            let mut opt: Box<dyn Optimizer> = match args[1].as_str() {
                "SGD" => problem.optim::<Sgd>()?,
                "Adam" | "AdamW" => problem.optim::<Adam>()?,
                "Adagrad" => problem.optim::<Adagrad>()?,
                "Adamax" => problem.optim::<Adamax>()?,
                "NAdam" => problem.optim::<NAdam>()?,
                "RAdam" => problem.optim::<RAdam>()?,
                "RMSprop" => problem.optim::<RMSprop>()?,
                "Rprop" => problem.optim::<Rprop>()?,
                "Adadelta" => problem.optim::<Adadelta>()?,
                "ASGD" => problem.optim::<Asgd>()?,
                "Lion" => problem.optim::<Lion>()?,
                "ADOPT" => problem.optim::<Adopt>()?,
                "Lamb" => problem.optim::<Lamb>()?,
                "Adan" => problem.optim::<Adan>()?,
                "AdEMAMix" => problem.optim::<AdEMAMix>()?,
                "ScheduleFreeAdamW" => problem.optim::<ScheduleFreeAdamWConfig>()?,
                "LARS" => problem.optim::<Lars>()?,
                "Adafactor" => problem.optim::<Adafactor>()?,
                "Muon" => problem.optim::<Muon>()?,
                "SparseAdam" => problem.optim::<SparseAdam>()?,
                "LBFGS" => Box::new(LbfgsOptim::new(&problem.params, Lbfgs::default())?),
                other => return Err(format!("unknown class {other}").into()),
            };
            let mode = match args[1].as_str() {
                "SparseAdam" => Mode::Sparse,
                "LBFGS" => Mode::Closure,
                _ => Mode::Backward,
            };
            problem.run(opt.as_mut(), mode, ckpt, out, save)
        }
        Some("schedules") => schedules(),
        _ => Err("usage: interop run <class> <problem> <checkpoint-in> <out> [<k> <checkpoint-out>] | interop schedules".into()),
    }
}

/// How the gradients of step `t` reach the optimizer.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// `backward()` of `sum(p·g)`: `p.grad = g`.
    Backward,
    /// `p.grad = g.to_sparse()` (SparseAdam).
    Sparse,
    /// A closure, evaluated as often as the optimizer asks, whose loss is
    /// `Σᵢ sum((pᵢ − gᵢ)·(pᵢ − gᵢ))` (LBFGS; `grad.{t}.{i}` are the targets).
    Closure,
}

struct Problem {
    tensors: std::collections::HashMap<String, Tensor>,
    sizes: Vec<usize>,
    params: Vec<Tensor>,
}

impl Problem {
    fn read(path: &str) -> Res<Problem> {
        let tensors: std::collections::HashMap<String, Tensor> =
            Tensor::read_safetensors(path)?.into_iter().collect();
        let bytes = std::fs::read(path)?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)?;
        let sizes: Vec<usize> = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get("group_sizes"))
            .ok_or("no group_sizes")
            .and_then(|s| serde_json::from_str(s).map_err(|_| "bad group_sizes"))?;
        let n: usize = sizes.iter().sum();
        let params: Vec<Tensor> = (0..n)
            .map(|i| {
                let p = tensors.get(&format!("param.{i}")).ok_or("missing param")?;
                Ok(p.copy().set_requires_grad(true))
            })
            .collect::<Res<_>>()?;
        Ok(Problem {
            tensors,
            sizes,
            params,
        })
    }

    /// An `Optim` with the problem's groups and default hyperparameters.
    fn optim<R: Hyperparameters + Default>(&self) -> Res<Box<dyn Optimizer>>
    where
        Optim<R>: Optimizer,
    {
        let mut start = 0;
        let mut opt: Option<Optim<R>> = None;
        for &s in &self.sizes {
            let group = &self.params[start..start + s];
            start += s;
            match opt.as_mut() {
                None => opt = Some(Optim::new(group, R::default())?),
                Some(o) => {
                    o.add_param_group(group, R::default())?;
                }
            }
        }
        Ok(Box::new(opt.ok_or("no groups")?))
    }

    fn grad(&self, t: usize, i: usize) -> Res<&Tensor> {
        Ok(self
            .tensors
            .get(&format!("grad.{t}.{i}"))
            .ok_or("missing grad")?)
    }

    /// Loads `ckpt` (hyperparameters and any state, written by `ferroptim.checkpoint.save`),
    /// runs one step per gradient, writes the parameters after step `t` as `param.{t}.{i}`
    /// to `out`, and after step `k` saves a checkpoint.
    fn run(
        &self,
        opt: &mut dyn Optimizer,
        mode: Mode,
        ckpt: &str,
        out: &str,
        save: Option<(usize, &str)>,
    ) -> Res<()> {
        opt.load(Path::new(ckpt))?;
        let params = &self.params;
        let mut written = Vec::new();
        let mut t = 0;
        while self.tensors.contains_key(&format!("grad.{t}.0")) {
            match mode {
                Mode::Backward | Mode::Sparse => {
                    opt.zero_grad()?;
                    for (i, p) in params.iter().enumerate() {
                        let g = self.grad(t, i)?;
                        if mode == Mode::Sparse {
                            set_grad(p, &g.to_sparse(None, None::<i64>, None::<i64>))?;
                        } else {
                            // d/dp sum(p·g) = g exactly.
                            (p * g).sum(Kind::Double).backward();
                        }
                    }
                    opt.step()?;
                }
                Mode::Closure => {
                    let targets: Vec<&Tensor> = (0..params.len())
                        .map(|i| self.grad(t, i))
                        .collect::<Res<_>>()?;
                    let mut closure = || -> ferroptim::Result<f64> {
                        clear_grads(params)?;
                        let mut loss: Option<Tensor> = None;
                        for (p, c) in params.iter().zip(&targets) {
                            let r = p - *c;
                            let term = (&r * &r).sum(None::<Kind>);
                            loss = Some(match loss {
                                None => term,
                                Some(l) => l + term,
                            });
                        }
                        let loss = loss.unwrap_or_else(|| Tensor::from(0.0f32));
                        loss.backward();
                        Ok(loss.double_value(&[]))
                    };
                    opt.step_with(&mut closure)?;
                }
            }
            t += 1;
            for (i, p) in params.iter().enumerate() {
                written.push((format!("param.{t}.{i}"), p.detach().copy()));
            }
            if let Some((k, path)) = save {
                if k == t {
                    opt.save(Path::new(path))?;
                }
            }
        }
        Tensor::write_safetensors(&written, out)?;
        Ok(())
    }
}

/// Two groups (lr 0.1 and 0.01) of one parameter each, SGD with momentum 0.9 or Adam.
fn sgd() -> Res<Optim<Sgd>> {
    let cfg = Sgd {
        lr: 0.1,
        momentum: 0.9,
        ..Sgd::default()
    };
    let mut opt = Optim::new(vec![Tensor::zeros([1], tch::kind::FLOAT_CPU)], cfg)?;
    opt.add_param_group(
        vec![Tensor::zeros([1], tch::kind::FLOAT_CPU)],
        Sgd { lr: 0.01, ..cfg },
    )?;
    Ok(opt)
}

fn adam() -> Res<Optim<Adam>> {
    let cfg = Adam {
        lr: 0.1,
        ..Adam::default()
    };
    let mut opt = Optim::new(vec![Tensor::zeros([1], tch::kind::FLOAT_CPU)], cfg)?;
    opt.add_param_group(
        vec![Tensor::zeros([1], tch::kind::FLOAT_CPU)],
        Adam { lr: 0.01, ..cfg },
    )?;
    Ok(opt)
}

/// Learning rates after construction and after each of `steps` scheduler steps.
fn trace<O: Optimizer, S: Scheduler>(opt: &mut O, mut s: S, steps: usize) -> Res<Vec<Vec<f64>>> {
    let mut out = vec![opt.lrs()];
    for _ in 0..steps {
        s.step(opt)?;
        out.push(opt.lrs());
    }
    Ok(out)
}

fn momenta<O: Optimizer>(opt: &O, name: &str) -> Res<Vec<f64>> {
    (0..opt.num_groups())
        .map(|g| match opt.hyperparameter(g, name)? {
            Hyper::Float(v) => Ok(v),
            other => Err(format!("{name} is {other:?}").into()),
        })
        .collect()
}

fn schedules() -> Res<()> {
    let mut out = serde_json::Map::new();
    let mut put = |name: &str, v: Vec<Vec<f64>>| {
        out.insert(name.into(), serde_json::json!(v));
    };
    let mut o = sgd()?;
    let s = StepLR::new(&mut o, 3, 0.5)?;
    put("StepLR", trace(&mut o, s, 12)?);
    let mut o = sgd()?;
    let s = MultiStepLR::new(&mut o, vec![2, 5, 5], 0.1)?;
    put("MultiStepLR", trace(&mut o, s, 8)?);
    let mut o = sgd()?;
    let s = ExponentialLR::new(&mut o, 0.9)?;
    put("ExponentialLR", trace(&mut o, s, 10)?);
    let mut o = sgd()?;
    let s = CosineAnnealingLR::new(&mut o, 10, 1e-3)?;
    put("CosineAnnealingLR", trace(&mut o, s, 35)?);
    let mut o = sgd()?;
    let s = LinearLR::new(&mut o, 0.1, 1.0, 5)?;
    put("LinearLR", trace(&mut o, s, 8)?);

    // OneCycleLR: learning rates and momenta after each step.
    for (name, three_phase, linear) in [("OneCycleLR", false, false), ("OneCycleLR3", true, true)] {
        let mut o = sgd()?;
        let mut s = OneCycleLR::new(vec![0.5, 0.05], 20);
        s.three_phase = three_phase;
        s.anneal_linear = linear;
        s.start(&mut o)?;
        let (mut lrs, mut ms) = (vec![o.lrs()], vec![momenta(&o, "momentum")?]);
        for _ in 0..19 {
            s.step(&mut o)?;
            lrs.push(o.lrs());
            ms.push(momenta(&o, "momentum")?);
        }
        put(name, lrs);
        put(&format!("{name}.momentum"), ms);
    }
    let mut o = adam()?;
    let mut s = OneCycleLR::new(vec![0.5, 0.05], 20);
    s.start(&mut o)?;
    let (mut lrs, mut ms) = (vec![o.lrs()], vec![momenta(&o, "beta1")?]);
    for _ in 0..19 {
        s.step(&mut o)?;
        lrs.push(o.lrs());
        ms.push(momenta(&o, "beta1")?);
    }
    put("OneCycleLR.adam", lrs);
    put("OneCycleLR.adam.beta1", ms);

    let mut o = sgd()?;
    let mut s = ReduceLROnPlateau::default();
    s.patience = 2;
    s.cooldown = 1;
    s.factor = 0.5;
    s.min_lrs = vec![0.02, 0.0];
    let metrics = [
        5.0, 4.0, 4.0, 4.0, 4.0, 3.0, 3.5, 3.5, 3.5, 3.5, 3.5, 3.5, 1.0, 2.0, 2.0, 2.0, 2.0,
    ];
    let mut lrs = vec![o.lrs()];
    for m in metrics {
        s.step(&mut o, m)?;
        lrs.push(o.lrs());
    }
    put("ReduceLROnPlateau", lrs);
    println!("{}", serde_json::Value::Object(out));
    Ok(())
}
