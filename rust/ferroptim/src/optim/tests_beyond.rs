//! Tests of the algorithms whose groups need more than a rule: LARS (split by dimension) and
//! Schedule-Free AdamW (group schedule state, train/eval).

use super::*;
use crate::rules::ScheduleFreeAdamW;
use crate::{Error, Group, Lars, ParamTensors};
use tch::{Kind, Tensor};

fn param(values: &[f64], shape: &[i64]) -> Tensor {
    Tensor::from_slice(values)
        .reshape(shape)
        .set_requires_grad(true)
}

fn set_grad(p: &Tensor, g: &[f64]) {
    super::grad::clear(p).unwrap();
    (p * Tensor::from_slice(g).reshape(p.size()))
        .sum(Kind::Double)
        .backward();
}

fn values(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(&t.to_kind(Kind::Double).flatten(0, -1)).unwrap()
}

fn close(a: &[f64], b: &[f64]) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() <= 1e-15 * y.abs().max(1.0), "{a:?} vs {b:?}");
    }
}

#[test]
fn lars_applies_the_trust_ratio_to_matrices_only() {
    let w = param(&[3.0, 4.0, 0.0, 0.0], &[2, 2]);
    let b = param(&[1.0, 2.0], &[2]);
    let cfg = Lars {
        lr: 0.1,
        momentum: 0.0,
        weight_decay: 0.5,
        ..Lars::default()
    };
    let mut opt = Optim::new(vec![w.shallow_clone(), b.shallow_clone()], cfg).unwrap();
    set_grad(&w, &[0.0, 2.0, 0.0, 0.0]);
    set_grad(&b, &[0.5, 0.5]);
    opt.step().unwrap();
    // ‖θ‖ = 5, ‖g‖ = 2: trust = 1e-3·5/(2 + 0.5·5); θ ← θ − lr·(g + λθ)·trust
    let trust = 1e-3 * 5.0 / 4.5;
    let want: Vec<f64> = [(3.0, 0.0), (4.0, 2.0), (0.0, 0.0), (0.0, 0.0)]
        .iter()
        .map(|(p, g)| p - 0.1 * (g + 0.5 * p) * trust)
        .collect();
    close(&values(&w), &want);
    // The bias: plain SGD, no weight decay, no trust ratio.
    close(&values(&b), &[1.0 - 0.05, 2.0 - 0.05]);
    assert!(opt.state(0, 0).unwrap().is_empty()); // momentum 0: no buffer
    assert_eq!(opt.config(0).unwrap().class_name(), "LARS");
    let e = Optim::new(
        vec![b.shallow_clone()],
        Lars {
            momentum: 1.0,
            ..Lars::default()
        },
    )
    .unwrap_err();
    assert!(matches!(
        e,
        Error::InvalidArgument {
            name: "momentum",
            ..
        }
    ));
}

/// The rule of one Schedule-Free step, from the schedule computed by hand.
fn sf_rule(lr: f64, ckp1: f64, step: f64) -> ScheduleFreeAdamW {
    ScheduleFreeAdamW {
        lr,
        ckp1,
        step,
        weight_decay: 0.01,
        ..ScheduleFreeAdamW::default()
    }
}

#[test]
fn schedule_free_follows_the_reference_schedule_and_switches_modes() {
    let p = param(&[1.0, -2.0, 0.5], &[3]);
    let reference = p.detach().copy();
    let (z, v) = (reference.copy(), reference.zeros_like());
    let cfg = ScheduleFreeAdamWConfig {
        lr: 0.1,
        warmup_steps: 2,
        weight_decay: 0.01,
        ..Default::default()
    };
    let mut opt = Optim::new(vec![p.shallow_clone()], cfg).unwrap();
    // Step 1: lr = 0.1·½, w₁ = 0.05², c = 1. Step 2: lr = 0.1, w₂ = 0.1², c = w₂/(w₁ + w₂).
    let (w1, w2) = (0.05f64.powf(2.0), 0.1f64.powf(2.0));
    let schedule = [(0.05, 1.0, 1.0), (0.1, w2 / (w1 + w2), 2.0)];
    for (k, (lr, ckp1, step)) in schedule.into_iter().enumerate() {
        let g = [0.5, -0.25 * k as f64, 1.0];
        set_grad(&p, &g);
        opt.step().unwrap();
        let mut groups = [Group {
            rule: sf_rule(lr, ckp1, step),
            params: vec![ParamTensors {
                param: reference.shallow_clone(),
                grad: Tensor::from_slice(&g),
                state: vec![z.shallow_clone(), v.shallow_clone()],
                scalar_state: vec![],
                fresh: k == 0,
            }],
        }];
        crate::step(&mut groups).unwrap();
        assert_eq!(values(&p), values(&reference), "step {}", k + 1);
    }
    let c = *opt.config(0).unwrap();
    assert_eq!((c.k, c.lr_max, c.scheduled_lr), (2, 0.1, 0.1));
    assert_eq!(c.weight_sum, w1 + w2);
    assert_eq!(values(&opt.state(0, 0).unwrap()["z"]), values(&z));
    assert_eq!(opt.hyperparameter(0, "k").unwrap(), Hyper::Int(2));

    // eval(): x = lerp(y, z, 1 − 1/β₁); a step in eval mode changes nothing.
    let y = p.detach().copy();
    opt.eval().unwrap();
    let x = y.lerp(&z, 1.0 - 1.0 / 0.9);
    assert_eq!(values(&p), values(&x));
    set_grad(&p, &[1.0, 1.0, 1.0]);
    let e = opt.step().unwrap_err();
    assert!(matches!(e, Error::StateMismatch { .. }), "{e}");
    assert_eq!((opt.config(0).unwrap().k, values(&p)), (2, values(&x)));
    opt.eval().unwrap(); // already in eval mode: nothing moves
    assert_eq!(values(&p), values(&x));
    opt.train().unwrap();
    assert_eq!(values(&p), values(&x.lerp(&z, 1.0 - 0.9)));
    assert!(opt.config(0).unwrap().train_mode);
}

#[test]
fn schedule_free_group_state_survives_a_checkpoint() {
    let p = param(&[1.0, -2.0], &[2]);
    let mut opt = Optim::new(vec![p.shallow_clone()], ScheduleFreeAdamWConfig::default()).unwrap();
    set_grad(&p, &[0.5, 0.5]);
    opt.step().unwrap();
    opt.eval().unwrap();
    let dir = std::env::temp_dir().join(format!("ferroptim-sf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("sf.safetensors");
    opt.save(&path).unwrap();
    let mut other = Optim::new(
        vec![param(&[0.0, 0.0], &[2])],
        ScheduleFreeAdamWConfig::default(),
    )
    .unwrap();
    other.load(&path).unwrap();
    assert_eq!(other.config(0).unwrap(), opt.config(0).unwrap());
    assert!(!other.config(0).unwrap().train_mode);
    let st = other.state(0, 0).unwrap();
    assert_eq!(values(&st["z"]), values(&opt.state(0, 0).unwrap()["z"]));
    // `k` is written as an integer, as Python's `int`.
    let bytes = std::fs::read(&path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let groups = &meta.metadata().as_ref().unwrap()["param_groups"];
    assert!(groups.contains("\"k\":1,"), "{groups}");
    assert!(groups.contains("\"betas\":[0.9,0.999]"), "{groups}");
    std::fs::remove_dir_all(&dir).unwrap();
    let e = Optim::new(
        vec![param(&[0.0], &[1])],
        ScheduleFreeAdamWConfig {
            beta1: 0.0,
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(matches!(
        e,
        Error::InvalidArgument {
            name: "betas[0]",
            ..
        }
    ));
}
