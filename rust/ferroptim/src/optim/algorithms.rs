//! [`Algorithm`](super::Algorithm) for every rule of the crate: hyperparameter names, torch's
//! validation (`ValueError` cases of each `torch.optim` constructor, torch 2.11) and how state
//! starts.
//!
//! Adding a rule to the stateful API is one `algorithm!` invocation here.

use super::algorithm::{check, scalar_tensor, zeros_state, ParamState};
use crate::error::Result;
use crate::rules::{
    AdEMAMix, Adadelta, Adagrad, Adam, Adamax, Adan, Adopt, Asgd, Lamb, Lion, NAdam, RAdam,
    RMSprop, Rprop, Sgd,
};
use tch::{Device, Tensor};

/// `betas[0]`, `betas[1]` in [0, 1) (`closed`: [0, 1]).
fn betas(beta1: f64, beta2: f64, closed: bool) -> Result<()> {
    check::unit("betas[0]", beta1, closed)?;
    check::unit("betas[1]", beta2, closed)
}

fn lr_eps_wd(lr: f64, eps: f64, weight_decay: f64) -> Result<()> {
    check::at_least("lr", lr, 0.0)?;
    check::at_least("eps", eps, 0.0)?;
    check::at_least("weight_decay", weight_decay, 0.0)
}

crate::algorithm!(
    Sgd,
    "SGD",
    {
        lr: Float, momentum: Float, dampening: Float, weight_decay: Float, nesterov: Bool,
        maximize: Bool
    },
    |c| {
        check::at_least("lr", c.lr, 0.0)?;
        check::at_least("momentum", c.momentum, 0.0)?;
        check::at_least("weight_decay", c.weight_decay, 0.0)?;
        if c.nesterov && (c.momentum <= 0.0 || c.dampening != 0.0) {
            return Err(check::invalid(
                "nesterov",
                format!(
                    "true with momentum {} and dampening {} (Nesterov momentum requires a \
                     momentum and zero dampening)",
                    c.momentum, c.dampening
                ),
            ));
        }
        Ok(())
    }
);

crate::algorithm!(
    Adam,
    if c.decoupled_weight_decay { "AdamW" } else { "Adam" },
    {
        lr: Float, beta1: Float, beta2: Float, eps: Float, weight_decay: Float, amsgrad: Bool,
        maximize: Bool, decoupled_weight_decay: Bool
    },
    |c| {
        lr_eps_wd(c.lr, c.eps, c.weight_decay)?;
        betas(c.beta1, c.beta2, false)
    }
);

crate::algorithm!(
    Adagrad,
    "Adagrad",
    {
        lr: Float, lr_decay: Float, weight_decay: Float, eps: Float,
        initial_accumulator_value: Float, maximize: Bool
    },
    |c| {
        check::at_least("lr", c.lr, 0.0)?;
        check::at_least("lr_decay", c.lr_decay, 0.0)?;
        check::at_least("weight_decay", c.weight_decay, 0.0)?;
        check::at_least("initial_accumulator_value", c.initial_accumulator_value, 0.0)?;
        check::at_least("eps", c.eps, 0.0)
    },
    init: adagrad_state
);

/// `step` = 0, `sum` = `full_like(param, initial_accumulator_value)`.
fn adagrad_state(c: &Adagrad, param: &Tensor) -> Result<ParamState> {
    Ok(ParamState::from([
        ("step".to_string(), scalar_tensor(0.0, Device::Cpu)?),
        (
            "sum".to_string(),
            param.f_full_like(c.initial_accumulator_value)?,
        ),
    ]))
}

crate::algorithm!(
    Adamax,
    "Adamax",
    {
        lr: Float, beta1: Float, beta2: Float, eps: Float, weight_decay: Float, maximize: Bool
    },
    |c| {
        lr_eps_wd(c.lr, c.eps, c.weight_decay)?;
        betas(c.beta1, c.beta2, false)
    }
);

crate::algorithm!(
    NAdam,
    "NAdam",
    {
        lr: Float, beta1: Float, beta2: Float, eps: Float, weight_decay: Float,
        momentum_decay: Float, decoupled_weight_decay: Bool, maximize: Bool
    },
    |c| {
        lr_eps_wd(c.lr, c.eps, c.weight_decay)?;
        betas(c.beta1, c.beta2, false)?;
        check::at_least("momentum_decay", c.momentum_decay, 0.0)
    },
    init: nadam_state
);

/// The default state with `mu_product` = 1.
fn nadam_state(c: &NAdam, param: &Tensor) -> Result<ParamState> {
    let mut state = zeros_state(c, param)?;
    state.insert("mu_product".to_string(), scalar_tensor(1.0, Device::Cpu)?);
    Ok(state)
}

crate::algorithm!(
    RAdam,
    "RAdam",
    {
        lr: Float, beta1: Float, beta2: Float, eps: Float, weight_decay: Float,
        decoupled_weight_decay: Bool, maximize: Bool
    },
    |c| {
        lr_eps_wd(c.lr, c.eps, c.weight_decay)?;
        betas(c.beta1, c.beta2, false)
    }
);

crate::algorithm!(
    RMSprop,
    "RMSprop",
    {
        lr: Float, alpha: Float, eps: Float, weight_decay: Float, momentum: Float,
        centered: Bool, maximize: Bool
    },
    |c| {
        lr_eps_wd(c.lr, c.eps, c.weight_decay)?;
        check::at_least("momentum", c.momentum, 0.0)?;
        check::at_least("alpha", c.alpha, 0.0)
    }
);

crate::algorithm!(
    Rprop,
    "Rprop",
    {
        lr: Float, etaminus: Float, etaplus: Float, step_size_min: Float,
        step_size_max: Float, maximize: Bool
    },
    |c| {
        check::at_least("lr", c.lr, 0.0)?;
        if 0.0 < c.etaminus && c.etaminus < 1.0 && 1.0 < c.etaplus {
            Ok(())
        } else {
            Err(check::invalid(
                "etas",
                format!("({}, {})", c.etaminus, c.etaplus),
            ))
        }
    },
    init: rprop_state
);

/// `step` = 0, `prev` = 0, `step_size` = `full_like(param, lr)`.
fn rprop_state(c: &Rprop, param: &Tensor) -> Result<ParamState> {
    Ok(ParamState::from([
        ("step".to_string(), scalar_tensor(0.0, Device::Cpu)?),
        ("prev".to_string(), param.f_zeros_like()?),
        ("step_size".to_string(), param.f_full_like(c.lr)?),
    ]))
}

crate::algorithm!(
    Adadelta,
    "Adadelta",
    { lr: Float, rho: Float, eps: Float, weight_decay: Float, maximize: Bool },
    |c| {
        check::at_least("lr", c.lr, 0.0)?;
        check::unit("rho", c.rho, true)?;
        check::at_least("eps", c.eps, 0.0)?;
        check::at_least("weight_decay", c.weight_decay, 0.0)
    }
);

crate::algorithm!(
    Asgd,
    "ASGD",
    {
        lr: Float, lambd: Float, alpha: Float, t0: Float, weight_decay: Float, maximize: Bool
    },
    |c| {
        check::at_least("lr", c.lr, 0.0)?;
        check::at_least("weight_decay", c.weight_decay, 0.0)
    },
    init: asgd_state
);

/// `step` = 0, `eta` = `lr`, `mu` = 1 (0-d float32 on the parameter's device, as torch places
/// them), `ax` = 0.
fn asgd_state(c: &Asgd, param: &Tensor) -> Result<ParamState> {
    let device = param.device();
    Ok(ParamState::from([
        ("step".to_string(), scalar_tensor(0.0, device)?),
        ("eta".to_string(), scalar_tensor(c.lr, device)?),
        ("mu".to_string(), scalar_tensor(1.0, device)?),
        ("ax".to_string(), param.f_zeros_like()?),
    ]))
}

crate::algorithm!(
    Lion,
    "Lion",
    { lr: Float, beta1: Float, beta2: Float, weight_decay: Float, maximize: Bool },
    |c| {
        check::at_least("lr", c.lr, 0.0)?;
        check::at_least("weight_decay", c.weight_decay, 0.0)?;
        betas(c.beta1, c.beta2, true)
    }
);

crate::algorithm!(
    Adopt,
    "ADOPT",
    {
        lr: Float, beta1: Float, beta2: Float, eps: Float, clip_exponent: OptionalFloat,
        weight_decay: Float, decouple: Bool, maximize: Bool
    },
    |c| {
        lr_eps_wd(c.lr, c.eps, c.weight_decay)?;
        betas(c.beta1, c.beta2, false)
    }
);

crate::algorithm!(
    Lamb,
    "Lamb",
    {
        lr: Float, beta1: Float, beta2: Float, eps: Float, weight_decay: Float,
        weight_decouple: Bool, grad_averaging: Bool, adam: Bool, maximize: Bool
    },
    |c| {
        lr_eps_wd(c.lr, c.eps, c.weight_decay)?;
        betas(c.beta1, c.beta2, false)
    }
);

/// Three `betas`, each in [0, 1) (Adan, AdEMAMix).
fn three_betas(beta1: f64, beta2: f64, beta3: f64) -> Result<()> {
    betas(beta1, beta2, false)?;
    check::unit("betas[2]", beta3, false)
}

crate::algorithm!(
    Adan,
    "Adan",
    {
        lr: Float, beta1: Float, beta2: Float, beta3: Float, eps: Float, weight_decay: Float,
        no_prox: Bool, maximize: Bool
    },
    |c| {
        lr_eps_wd(c.lr, c.eps, c.weight_decay)?;
        three_betas(c.beta1, c.beta2, c.beta3)
    }
);

crate::algorithm!(
    AdEMAMix,
    "AdEMAMix",
    {
        lr: Float, beta1: Float, beta2: Float, beta3: Float, alpha: Float,
        beta3_warmup: OptionalFloat, alpha_warmup: OptionalFloat, eps: Float,
        weight_decay: Float, maximize: Bool
    },
    |c| {
        lr_eps_wd(c.lr, c.eps, c.weight_decay)?;
        check::at_least("alpha", c.alpha, 0.0)?;
        three_betas(c.beta1, c.beta2, c.beta3)?;
        for (name, warmup) in [("beta3_warmup", c.beta3_warmup), ("alpha_warmup", c.alpha_warmup)] {
            // not `> 0` (NaN included), as the Python class's `not warmup > 0`
            if let Some(w) = warmup.filter(|w| w.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater)) {
                return Err(check::invalid(name, w.to_string()));
            }
        }
        Ok(())
    }
);
