//! A user-defined optimizer: signSGD as a ferroptim rule, driven by the same fused,
//! multi-threaded driver as the built-in algorithms, with a built-in LR scheduler.
//!
//! ```text
//! cargo run --release --example sign_sgd
//! ```
//!
//! signSGD: Bernstein et al., "signSGD: Compressed Optimisation for Non-Convex Problems",
//! ICML 2018: `θ ← θ − lr·sign(g)` (here with optional decoupled weight decay).
//! Writing a rule takes three pieces:
//! 1. a struct of hyperparameters with `Default` (and an `lr` field);
//! 2. `impl Rule`: the state names, the per-step scalars, and the update of one element,
//!    generic over the element type `F` (`f32` for f32/bf16/f16 tensors, `f64` for f64);
//! 3. `ferroptim::algorithm!`: the hyperparameters by name and their validation.

use ferroptim::element::Float;
use ferroptim::optim::check;
use ferroptim::sched::{Scheduler, StepLR};
use ferroptim::{Optim, Optimizer, Rule, ScalarState};
use tch::{Device, Kind, Tensor};

/// signSGD hyperparameters.
#[derive(Debug, Clone, Copy)]
struct SignSgd {
    /// Learning rate: the size of every element's step.
    lr: f64,
    /// Decoupled weight decay λ: `θ ← θ(1 − lr·λ)` before the step.
    weight_decay: f64,
}

impl Default for SignSgd {
    fn default() -> Self {
        SignSgd {
            lr: 1e-3,
            weight_decay: 0.0,
        }
    }
}

/// What the update needs, computed once per parameter and step (in f64, like Python scalars).
#[derive(Debug, Clone, Copy)]
struct SignSgdScalars {
    decay: f64,
    lr: f64,
}

impl Rule for SignSgd {
    type Scalars = SignSgdScalars;

    /// No state tensors…
    fn state_names(&self) -> &'static [&'static str] {
        &[]
    }

    /// …and no step counter.
    fn scalar_state_names(&self) -> &'static [&'static str] {
        &[]
    }

    fn scalars(&self, _scalar_state: &mut [ScalarState], _fresh: bool) -> SignSgdScalars {
        SignSgdScalars {
            decay: 1.0 - self.lr * self.weight_decay,
            lr: self.lr,
        }
    }

    #[inline(always)]
    fn update<F: Float>(s: &SignSgdScalars, param: F, grad: F, _state: &mut [F]) -> F {
        let one = F::from_f64(1.0);
        let sign = if grad > F::ZERO {
            one
        } else if grad < F::ZERO {
            -one
        } else {
            F::ZERO
        };
        param * F::from_f64(s.decay) - F::from_f64(s.lr) * sign
    }
}

ferroptim::algorithm!(
    SignSgd,
    "SignSGD",
    { lr: Float, weight_decay: Float },
    |c| {
        check::at_least("lr", c.lr, 0.0)?;
        check::at_least("weight_decay", c.weight_decay, 0.0)
    }
);

fn main() -> ferroptim::Result<()> {
    // Least squares: recover w* from y = X·w* + noise.
    tch::manual_seed(0);
    let opts = (Kind::Float, Device::Cpu);
    let w_star = Tensor::randn([64, 1], opts);
    let x = Tensor::randn([1024, 64], opts);
    let y = x.matmul(&w_star) + Tensor::randn([1024, 1], opts) * 0.01;
    let w = Tensor::zeros([64, 1], opts).set_requires_grad(true);

    let mut opt = Optim::new(
        vec![w.shallow_clone()],
        SignSgd {
            lr: 0.05,
            ..Default::default()
        },
    )?;
    let mut sched = StepLR::new(&mut opt, 50, 0.5)?;
    // Invalid hyperparameters are typed errors, not panics.
    if let Err(e) = opt.set_lr(0, -1.0) {
        println!("rejected: {e}");
    }
    for t in 0..=300 {
        opt.zero_grad()?;
        let loss = (x.matmul(&w) - &y).square().mean(Kind::Float);
        loss.backward();
        opt.step()?;
        sched.step(&mut opt)?;
        if t % 50 == 0 {
            println!(
                "step {t:>3}  loss {:.6}  lr {:.5}",
                loss.double_value(&[]),
                opt.lr(0)?
            );
        }
    }
    let err = (&w - &w_star).abs().max().double_value(&[]);
    println!("max |w − w*| = {err:.4}");
    Ok(())
}
