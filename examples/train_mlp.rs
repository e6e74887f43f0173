//! Trains an MLP with ferroptim's AdamW and a cosine learning-rate schedule, then trains the
//! same model from the same initialisation with tch's own `nn::AdamW`, and compares the loss
//! and the time of the optimizer steps.
//!
//! ```text
//! LD_LIBRARY_PATH=$(python -c 'import torch, os; print(os.path.dirname(torch.__file__))')/lib \
//!     cargo run --release --example train_mlp [-- --epochs 10 --hidden 256]
//! ```
//!
//! The data is generated (no dataset ships with the packages this project depends on): three
//! interleaved noisy spirals of 1.5 turns in the plane, 6000 points: a linear model cannot
//! separate them (≈ 33 % accuracy); the MLP learns them to the noise's limit.

use ferroptim::sched::{CosineAnnealingLR, Scheduler};
use ferroptim::{Adam, Optim, Optimizer};
use std::error::Error;
use std::io::IsTerminal;
use std::time::{Duration, Instant};
use tch::nn::{self, Module, OptimizerConfig};
use tch::{Device, Kind, Tensor};

type Res<T> = Result<T, Box<dyn Error>>;
/// What runs after each backward pass; returns the duration of the optimizer step.
type StepFn = Box<dyn FnMut() -> Res<Duration>>;

const CLASSES: i64 = 3;
const BATCH: i64 = 250;
const LR: f64 = 3e-3;

/// `n` points per class on `CLASSES` spirals with Gaussian noise; (inputs [N, 2], labels [N]).
fn spirals(n: i64, seed: i64) -> (Tensor, Tensor) {
    tch::manual_seed(seed);
    let opts = (Kind::Float, Device::Cpu);
    let mut xs = Vec::new();
    let mut ys = Vec::new();
    for c in 0..CLASSES {
        let r = Tensor::linspace(0.05, 1.0, n, opts);
        let turn = 2.0 * std::f64::consts::PI * c as f64 / CLASSES as f64;
        let theta = Tensor::linspace(turn, turn + 3.0 * std::f64::consts::PI, n, opts)
            + Tensor::randn([n], opts) * 0.3;
        xs.push(Tensor::stack(&[&r * theta.sin(), &r * theta.cos()], 1));
        ys.push(Tensor::full([n], c, (Kind::Int64, Device::Cpu)));
    }
    let perm = Tensor::randperm(n * CLASSES, (Kind::Int64, Device::Cpu));
    (
        Tensor::cat(&xs, 0).index_select(0, &perm),
        Tensor::cat(&ys, 0).index_select(0, &perm),
    )
}

fn mlp(vs: &nn::Path, hidden: i64) -> impl Module {
    nn::seq()
        .add(nn::linear(vs / "l1", 2, hidden, Default::default()))
        .add_fn(|x| x.relu())
        .add(nn::linear(vs / "l2", hidden, hidden, Default::default()))
        .add_fn(|x| x.relu())
        .add(nn::linear(vs / "l3", hidden, CLASSES, Default::default()))
}

/// What one training run reports.
struct Run {
    losses: Vec<f64>,
    accuracy: f64,
    step_times: Vec<Duration>,
}

/// Trains from a fixed initialisation; `make` builds the closure that runs after each
/// backward pass: the optimizer step (timed; the duration is returned), zeroing the gradients
/// and the scheduler step.
fn train(
    data: &(Tensor, Tensor, Tensor, Tensor),
    hidden: i64,
    epochs: usize,
    label: &str,
    make: &dyn Fn(&nn::VarStore) -> Res<StepFn>,
) -> Res<Run> {
    let (x, y, x_test, y_test) = data;
    tch::manual_seed(42);
    let vs = nn::VarStore::new(Device::Cpu);
    let net = mlp(&vs.root(), hidden);
    let mut step = make(&vs)?;
    let tty = std::io::stderr().is_terminal();
    let n = x.size()[0];
    let batches = n / BATCH;
    let mut run = Run {
        losses: Vec::new(),
        accuracy: 0.0,
        step_times: Vec::new(),
    };
    for epoch in 1..=epochs {
        let mut total = 0.0;
        for b in 0..batches {
            let xb = x.narrow(0, b * BATCH, BATCH);
            let yb = y.narrow(0, b * BATCH, BATCH);
            let loss = net.forward(&xb).cross_entropy_for_logits(&yb);
            loss.backward();
            run.step_times.push(step()?);
            total += loss.double_value(&[]);
            if tty {
                // A bar of the epoch's progress, redrawn in place.
                let done = ((b + 1) * 30 / batches) as usize;
                eprint!(
                    "\r{label} epoch {epoch:>2}/{epochs} [{:<30}]",
                    "=".repeat(done)
                );
            }
        }
        let loss = total / batches as f64;
        run.losses.push(loss);
        run.accuracy =
            tch::no_grad(|| net.forward(x_test).accuracy_for_logits(y_test)).double_value(&[]);
        eprintln!(
            "\r{label} epoch {epoch:>2}/{epochs}  train loss {loss:.4}  test accuracy {:5.1} %",
            100.0 * run.accuracy
        );
    }
    Ok(run)
}

fn median(times: &[Duration]) -> Duration {
    let mut t = times.to_vec();
    t.sort();
    t[t.len() / 2]
}

fn arg(name: &str, default: i64) -> Res<i64> {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == name) {
        Some(i) => Ok(args.get(i + 1).ok_or("missing value")?.parse()?),
        None => Ok(default),
    }
}

fn main() -> Res<()> {
    let epochs = arg("--epochs", 10)? as usize;
    let hidden = arg("--hidden", 256)?;
    let (x, y) = spirals(2000, 0);
    let n_train = 5000;
    let data = (
        x.narrow(0, 0, n_train),
        y.narrow(0, 0, n_train),
        x.narrow(0, n_train, 6000 - n_train),
        y.narrow(0, n_train, 6000 - n_train),
    );
    let steps = (n_train / BATCH) as usize * epochs;
    println!(
        "3 spirals, {n_train} training / {} test points; MLP 2-{hidden}-{hidden}-3; \
         {epochs} epochs of {} batches; {} threads",
        6000 - n_train,
        n_train / BATCH,
        tch::get_num_threads()
    );

    // ferroptim: AdamW (torch's defaults but lr) + cosine annealing over all steps.
    let ours = train(&data, hidden, epochs, "ferroptim", &|vs| {
        let mut opt = Optim::new(
            vs,
            Adam {
                lr: LR,
                ..Adam::adamw()
            },
        )?;
        let mut sched = CosineAnnealingLR::new(&mut opt, steps, 0.0)?;
        Ok(Box::new(move || {
            let t0 = Instant::now();
            opt.step()?;
            let took = t0.elapsed();
            opt.zero_grad()?;
            sched.step(&mut opt)?;
            Ok(took)
        }))
    })?;

    // tch's nn::AdamW (libtorch's C++ AdamW), same hyperparameters and schedule.
    let theirs = train(&data, hidden, epochs, "tch     ", &|vs| {
        let cfg = nn::AdamW {
            beta1: 0.9,
            beta2: 0.999,
            wd: 1e-2,
            eps: 1e-8,
            amsgrad: false,
        };
        let mut opt = cfg.build(vs, LR)?;
        let mut t = 0usize;
        Ok(Box::new(move || {
            let t0 = Instant::now();
            opt.step();
            let took = t0.elapsed();
            opt.zero_grad();
            t += 1;
            let lr = if t > steps {
                0.0
            } else {
                0.5 * LR * (1.0 + (std::f64::consts::PI * t as f64 / steps as f64).cos())
            };
            opt.set_lr(lr);
            Ok(took)
        }))
    })?;

    let (a, b) = (median(&ours.step_times), median(&theirs.step_times));
    println!(
        "final train loss: ferroptim {:.4}, tch {:.4} (first epoch {:.4})",
        ours.losses.last().unwrap_or(&f64::NAN),
        theirs.losses.last().unwrap_or(&f64::NAN),
        ours.losses.first().unwrap_or(&f64::NAN),
    );
    println!(
        "test accuracy:    ferroptim {:.1} %, tch {:.1} %",
        100.0 * ours.accuracy,
        100.0 * theirs.accuracy
    );
    println!(
        "optimizer step (median of {}): ferroptim {:.1} µs, tch nn::AdamW {:.1} µs ({:.2}x)",
        ours.step_times.len(),
        a.as_secs_f64() * 1e6,
        b.as_secs_f64() * 1e6,
        b.as_secs_f64() / a.as_secs_f64()
    );
    Ok(())
}
