//! Tests of the stateful optimizer: exact values, state as torch creates it, errors, checkpoints.

use super::*;
use crate::{AdEMAMix, Adagrad, Adam, Adan, Asgd, Error, NAdam, Rprop, Sgd};
use tch::{Device, Kind, Tensor};

/// A leaf parameter of float64 values that requires a gradient.
fn param(values: &[f64]) -> Tensor {
    Tensor::from_slice(values).set_requires_grad(true)
}

/// Sets `p.grad` to exactly `g` (the gradient of `sum(p·g)`), replacing any previous one.
fn set_grad(p: &Tensor, g: &[f64]) {
    super::grad::clear(p).unwrap();
    (p * Tensor::from_slice(g)).sum(Kind::Double).backward();
}

fn values(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(&t.to_kind(Kind::Double).flatten(0, -1)).unwrap()
}

fn invalid(e: Error) -> (&'static str, String) {
    match e {
        Error::InvalidArgument { name, value } => (name, value),
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

#[test]
fn adam_two_steps_by_hand() {
    let p = param(&[1.0]);
    let cfg = Adam {
        lr: 0.1,
        ..Adam::default()
    };
    let mut opt = Optim::new(vec![p.shallow_clone()], cfg).unwrap();
    set_grad(&p, &[0.5]);
    opt.step().unwrap();
    set_grad(&p, &[-1.0]);
    opt.step().unwrap();
    // step 1: m1 = 0.05, v1 = 0.00025, p1 = 1 − 0.1·0.5/(0.5 + 1e-8)
    let p1 = 1.0 - 0.1 * 0.5 / (0.5 + 1e-8);
    // step 2: m2 = −0.055, v2 = 0.999·0.00025 + 0.001
    let (m2, v2): (f64, f64) = (-0.055, 0.999 * 0.00025 + 0.001);
    let denom = v2.sqrt() / (1.0 - 0.999f64.powi(2)).sqrt() + 1e-8;
    let expected = p1 - 0.1 / (1.0 - 0.9f64.powi(2)) * m2 / denom;
    assert!((values(&p)[0] - expected).abs() < 1e-15);
    let st = opt.state(0, 0).unwrap();
    assert_eq!(
        st.keys().map(String::as_str).collect::<Vec<_>>(),
        ["exp_avg", "exp_avg_sq", "step"]
    );
    assert!((values(&st["exp_avg"])[0] - m2).abs() < 1e-16);
    // `step` as torch creates it: float32, 0-d, CPU.
    let step = &st["step"];
    assert_eq!(
        (step.kind(), step.dim(), step.device()),
        (Kind::Float, 0, Device::Cpu)
    );
    assert_eq!(step.double_value(&[]), 2.0);
    assert_eq!(st["exp_avg"].kind(), Kind::Double);
}

#[test]
fn groups_have_their_own_hyperparameters() {
    let (a, b) = (param(&[1.0, 2.0]), param(&[3.0]));
    let sgd = Sgd {
        lr: 0.1,
        ..Sgd::default()
    };
    let mut opt = Optim::new(vec![a.shallow_clone()], sgd).unwrap();
    let g = opt
        .add_param_group(vec![b.shallow_clone()], Sgd { lr: 0.5, ..sgd })
        .unwrap();
    assert_eq!((g, opt.num_groups(), opt.lrs()), (1, 2, vec![0.1, 0.5]));
    set_grad(&a, &[1.0, 1.0]);
    set_grad(&b, &[1.0]);
    opt.step().unwrap();
    assert_eq!(values(&a), [0.9, 1.9]);
    assert_eq!(values(&b), [2.5]);
    // Plain SGD keeps no state.
    assert!(opt.state(1, 0).unwrap().is_empty());
}

#[test]
fn zero_grad_sets_gradients_to_none_and_those_parameters_are_skipped() {
    let (a, b) = (param(&[1.0]), param(&[1.0]));
    let mut opt = Optim::new(vec![a.shallow_clone(), b.shallow_clone()], Adam::default()).unwrap();
    set_grad(&a, &[1.0]);
    set_grad(&b, &[1.0]);
    opt.zero_grad().unwrap();
    assert!(!a.grad().defined() && !b.grad().defined());
    set_grad(&a, &[1.0]);
    opt.step().unwrap();
    assert_eq!(opt.state(0, 0).unwrap()["step"].double_value(&[]), 1.0);
    assert!(opt.state(0, 1).unwrap().is_empty());
    assert_eq!(values(&b), [1.0]);
    // In place: the gradient stays defined, filled with zeros.
    opt.zero_grad_with(false).unwrap();
    assert_eq!(values(&a.grad()), [0.0]);
}

#[test]
fn zero_grads_follows_torch_and_refuses_non_leaves_before_changing_anything() {
    use crate::optim::zero_grads;
    let (a, b) = (param(&[1.0, 2.0]), param(&[3.0]));
    set_grad(&a, &[4.0, 5.0]);
    // In place: the same gradient tensor, zeroed, not requiring grad.
    let g = a.grad();
    zero_grads(&[a.shallow_clone(), b.shallow_clone()], false).unwrap();
    assert_eq!(values(&g), [0.0, 0.0]);
    assert_eq!(a.grad().data_ptr(), g.data_ptr());
    assert!(!a.grad().requires_grad());
    assert!(!b.grad().defined()); // no gradient: left alone
                                  // A non-leaf tensor (the result of an operation on a tensor requiring grad) is refused,
                                  // naming its index, and the other gradients are unchanged.
    set_grad(&a, &[4.0, 5.0]);
    let non_leaf = &b * 2.0;
    let err = zero_grads(&[a.shallow_clone(), non_leaf], true).unwrap_err();
    assert!(err.to_string().contains("params[1]"), "{err}");
    assert_eq!(values(&a.grad()), [4.0, 5.0]);
    zero_grads(&[a.shallow_clone()], true).unwrap();
    assert!(!a.grad().defined());
    // Nothing to do for no parameters.
    zero_grads(&[], true).unwrap();
}

#[test]
fn state_starts_as_torch_creates_it() {
    let p = Tensor::from_slice(&[1.0f32, 2.0]);
    let st = Rprop {
        lr: 0.25,
        ..Rprop::default()
    }
    .init_state(&p)
    .unwrap();
    assert_eq!(values(&st["step_size"]), [0.25, 0.25]);
    assert_eq!(values(&st["prev"]), [0.0, 0.0]);
    let st = Adagrad {
        initial_accumulator_value: 0.5,
        ..Adagrad::default()
    }
    .init_state(&p)
    .unwrap();
    assert_eq!(values(&st["sum"]), [0.5, 0.5]);
    assert_eq!(st["step"].double_value(&[]), 0.0);
    let st = NAdam::default().init_state(&p).unwrap();
    assert_eq!(st["mu_product"].double_value(&[]), 1.0);
    let st = Asgd::default().init_state(&p).unwrap();
    assert_eq!(st["eta"].double_value(&[]), f64::from(0.01f32));
    assert_eq!(st["mu"].double_value(&[]), 1.0);
    assert_eq!(st["ax"].kind(), Kind::Float);
}

#[test]
fn invalid_hyperparameters_are_rejected_before_anything_changes() {
    let p = param(&[1.0]);
    let bad = Adam {
        beta1: 1.0,
        ..Adam::default()
    };
    let e = Optim::new(vec![p.shallow_clone()], bad).unwrap_err();
    assert_eq!(invalid(e), ("betas[0]", "1".to_string()));
    assert_eq!(
        e_of(Sgd {
            nesterov: true,
            ..Sgd::default()
        })
        .0,
        "nesterov"
    );
    let etas = Rprop {
        etaplus: 0.9,
        ..Rprop::default()
    };
    assert_eq!(e_of(etas), ("etas", "(0.5, 0.9)".to_string()));
    let nan = Adam {
        lr: f64::NAN,
        ..Adam::default()
    };
    assert_eq!(e_of(nan), ("lr", "NaN".to_string()));

    let mut opt = Optim::new(vec![p.shallow_clone()], Adam::default()).unwrap();
    assert_eq!(invalid(opt.set_lr(0, -1.0).unwrap_err()).0, "lr");
    assert_eq!(opt.lr(0).unwrap(), 1e-3);
    assert_eq!(invalid(opt.set_lr(1, 0.1).unwrap_err()).0, "group");
    let e = opt.set_hyperparameter(0, "amsgrad", Hyper::Float(1.0));
    assert_eq!(invalid(e.unwrap_err()).0, "hyperparameter");
    opt.set_hyperparameter(0, "beta2", Hyper::Float(0.99))
        .unwrap();
    assert_eq!(opt.hyperparameter(0, "beta2").unwrap(), Hyper::Float(0.99));
    assert_eq!(opt.config(0).unwrap().beta2, 0.99);
}

fn e_of<R: Algorithm>(cfg: R) -> (&'static str, String) {
    invalid(Optim::new(vec![param(&[1.0])], cfg).unwrap_err())
}

#[test]
fn invalid_parameter_lists_are_rejected() {
    let p = param(&[1.0]);
    let e = Optim::new(Vec::<Tensor>::new(), Sgd::default()).unwrap_err();
    assert_eq!(invalid(e).0, "params");
    let e = Optim::new(vec![p.shallow_clone(), p.shallow_clone()], Sgd::default()).unwrap_err();
    assert!(invalid(e).1.contains("more than one parameter group"));
    let mut opt = Optim::new(vec![p.shallow_clone()], Sgd::default()).unwrap();
    let e = opt.add_param_group(vec![p.shallow_clone()], Sgd::default());
    assert_eq!(invalid(e.unwrap_err()).0, "params");
    let non_leaf = &p * 2.0;
    let e = opt.add_param_group(vec![non_leaf], Sgd::default());
    assert!(invalid(e.unwrap_err()).1.contains("non-leaf"));
    assert_eq!(opt.num_groups(), 1);
}

#[test]
fn a_failed_step_changes_nothing() {
    let p = param(&[1.0]);
    let mut opt = Optim::new(vec![p.shallow_clone()], Adam::default()).unwrap();
    set_grad(&p, &[1.0]);
    opt.step().unwrap();
    let before = values(&p);
    // Switching AMSGrad on needs `max_exp_avg_sq`, which the existing state lacks (torch
    // raises KeyError).
    opt.update_config(0, |c| c.amsgrad = true).unwrap();
    let e = opt.step().unwrap_err();
    assert!(matches!(e, Error::StateMismatch { .. }), "{e:?}");
    assert_eq!(values(&p), before);
    assert_eq!(opt.state(0, 0).unwrap()["step"].double_value(&[]), 1.0);
}

/// A path in the temporary directory unique to this test process.
fn temp(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!(
        "ferroptim-{}-{name}.safetensors",
        std::process::id()
    ))
}

#[test]
fn checkpoint_round_trip_continues_bit_identically() {
    let grads = [
        [0.3, -1.2, 0.7],
        [-0.4, 0.9, 0.1],
        [1.5, -0.2, -0.8],
        [0.2, 0.2, -2.0],
    ];
    let run = |p: &Tensor, opt: &mut Optim<Adam>, steps: &[[f64; 3]]| {
        for g in steps {
            set_grad(p, g);
            opt.step().unwrap();
        }
    };
    let cfg = Adam {
        lr: 0.05,
        amsgrad: true,
        weight_decay: 0.1,
        ..Adam::adamw()
    };
    let p = param(&[1.0, -2.0, 0.5]);
    let mut opt = Optim::new(vec![p.shallow_clone()], cfg).unwrap();
    run(&p, &mut opt, &grads[..2]);
    let path = temp("round-trip");
    opt.save(&path).unwrap();

    let q = param(&values(&p));
    let mut resumed = Optim::new(vec![q.shallow_clone()], Adam::default()).unwrap();
    resumed.load(&path).unwrap();
    assert_eq!(resumed.config(0).unwrap(), &cfg);
    run(&p, &mut opt, &grads[2..]);
    run(&q, &mut resumed, &grads[2..]);
    assert_eq!(values(&p), values(&q));
    for name in ["exp_avg", "exp_avg_sq", "max_exp_avg_sq", "step"] {
        let (a, b) = (
            &opt.state(0, 0).unwrap()[name],
            &resumed.state(0, 0).unwrap()[name],
        );
        assert_eq!((values(a), a.kind()), (values(b), b.kind()), "{name}");
    }

    // The header is torch's state_dict layout.
    let bytes = std::fs::read(&path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let groups = &meta.metadata().as_ref().unwrap()["param_groups"];
    let groups: serde_json::Value = serde_json::from_str(groups).unwrap();
    assert_eq!(groups[0]["betas"], serde_json::json!([0.9, 0.999]));
    assert_eq!(groups[0]["params"], serde_json::json!([0]));
    assert_eq!(groups[0]["decoupled_weight_decay"], serde_json::json!(true));
    let _ = std::fs::remove_file(&path);
}

#[test]
fn checkpoint_for_other_parameters_is_rejected_and_changes_nothing() {
    let p = param(&[1.0]);
    let mut opt = Optim::new(vec![p.shallow_clone()], Sgd::default()).unwrap();
    let path = temp("mismatch");
    opt.save(&path).unwrap();
    let mut two = Optim::new(
        vec![param(&[1.0]), param(&[2.0])],
        Sgd {
            lr: 0.5,
            ..Sgd::default()
        },
    )
    .unwrap();
    let e = two.load(&path).unwrap_err();
    assert!(matches!(e, Error::Checkpoint { .. }), "{e:?}");
    assert_eq!(two.lr(0).unwrap(), 0.5);
    opt.set_lr(0, 0.25).unwrap();
    let _ = std::fs::remove_file(&path);
}

#[test]
fn checkpoint_keeps_non_finite_hyperparameters_and_unknown_group_entries() {
    let cfg = Rprop {
        lr: 0.02,
        step_size_max: f64::INFINITY,
        ..Rprop::default()
    };
    let p = param(&[1.0, 2.0]);
    let mut opt = Optim::new(vec![p.shallow_clone()], cfg).unwrap();
    set_grad(&p, &[1.0, -1.0]);
    opt.step().unwrap();
    let path = temp("non-finite");
    opt.save(&path).unwrap();
    let mut other = Optim::new(vec![param(&[0.0, 0.0])], Rprop::default()).unwrap();
    other.load(&path).unwrap();
    assert_eq!(other.config(0).unwrap(), &cfg);
    let st = other.state(0, 0).unwrap();
    assert_eq!(values(&st["step_size"]), [0.02, 0.02]); // ×1 on the first step
    assert_eq!(values(&st["prev"]), [1.0, -1.0]);
    // Entries the algorithm does not use (here, written by Python) survive a round trip.
    other.groups[0]
        .extra
        .insert("foreach".into(), serde_json::Value::Null);
    other.save(&path).unwrap();
    let mut third = Optim::new(vec![param(&[0.0, 0.0])], Rprop::default()).unwrap();
    third.load(&path).unwrap();
    assert_eq!(third.groups[0].extra["foreach"], serde_json::Value::Null);
    let _ = std::fs::remove_file(&path);
}

#[test]
fn step_unscaling_divides_the_gradients_and_writes_them_back() {
    let (a, b) = (param(&[1.0]), param(&[1.0]));
    let cfg = Sgd {
        lr: 0.1,
        ..Sgd::default()
    };
    let mut plain = Optim::new(vec![a.shallow_clone()], cfg).unwrap();
    let mut scaled = Optim::new(vec![b.shallow_clone()], cfg).unwrap();
    set_grad(&a, &[0.5]);
    set_grad(&b, &[4.0]);
    plain.step().unwrap();
    scaled.step_unscaling(8.0).unwrap();
    assert_eq!(values(&a), [1.0 - 0.1 * 0.5]);
    assert_eq!(values(&b), values(&a));
    assert_eq!(values(&b.grad()), [0.5]);
    let e = scaled.step_unscaling(0.0).unwrap_err();
    assert_eq!(invalid(e).0, "grad_scale");
    assert_eq!(values(&b), values(&a));
}

#[test]
fn three_betas_are_validated_and_checkpointed_as_one_tuple() {
    let p = param(&[1.0, -2.0]);
    let bad = Adan {
        beta3: 1.0,
        ..Adan::default()
    };
    let e = Optim::new(vec![p.shallow_clone()], bad).unwrap_err();
    assert_eq!(invalid(e), ("betas[2]", "1".to_string()));
    let warm = AdEMAMix {
        alpha_warmup: Some(0.0),
        ..AdEMAMix::default()
    };
    let e = Optim::new(vec![p.shallow_clone()], warm).unwrap_err();
    assert_eq!(invalid(e), ("alpha_warmup", "0".to_string()));

    // betas = [β₁, β₂, β₃] in the file; loading it into another config restores all three
    let cfg = Adan {
        beta1: 0.5,
        beta2: 0.6,
        beta3: 0.7,
        ..Adan::default()
    };
    let mut opt = Optim::new(vec![p.shallow_clone()], cfg).unwrap();
    set_grad(&p, &[0.5, 0.25]);
    opt.step().unwrap();
    let dir = std::env::temp_dir().join(format!("ferroptim-adan-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("adan.safetensors");
    opt.save(&path).unwrap();
    let mut other = Optim::new(vec![p.shallow_clone()], Adan::default()).unwrap();
    other.load(&path).unwrap();
    assert_eq!(other.hyperparameter(0, "beta3").unwrap(), Hyper::Float(0.7));
    assert_eq!(other.hyperparameter(0, "beta1").unwrap(), Hyper::Float(0.5));
    std::fs::remove_dir_all(&dir).unwrap();
}
