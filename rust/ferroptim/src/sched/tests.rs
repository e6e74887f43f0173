//! Scheduler values by hand (the cross-language test compares them with torch's).

use super::*;
use crate::{Adam, Optim, Sgd};
use tch::Tensor;

fn sgd(lr: f64) -> Optim<Sgd> {
    let p = Tensor::zeros([1], tch::kind::FLOAT_CPU);
    Optim::new(
        vec![p],
        Sgd {
            lr,
            ..Sgd::default()
        },
    )
    .unwrap()
}

#[test]
fn step_lr_decays_every_step_size_epochs() {
    let mut opt = sgd(1.0);
    let mut s = StepLR::new(&mut opt, 2, 0.5).unwrap();
    let mut lrs = vec![opt.lr(0).unwrap()];
    for _ in 0..5 {
        s.step(&mut opt).unwrap();
        lrs.push(opt.lr(0).unwrap());
    }
    assert_eq!(lrs, [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]);
    assert_eq!((s.last_epoch(), s.last_lr()), (5, &[0.25][..]));
}

#[test]
fn linear_warmup_starts_at_start_factor_and_reaches_the_base() {
    let mut opt = sgd(0.5);
    let mut s = LinearLR::new(&mut opt, 0.5, 1.0, 2).unwrap();
    assert_eq!(opt.lr(0).unwrap(), 0.25);
    s.step(&mut opt).unwrap();
    // 0.25·(1 + 0.5/(2·0.5 + 0)) = 0.375
    assert_eq!(opt.lr(0).unwrap(), 0.375);
    s.step(&mut opt).unwrap();
    s.step(&mut opt).unwrap();
    assert_eq!(opt.lr(0).unwrap(), 0.5);
    let e = LinearLR::new(&mut opt, 0.0, 1.0, 2).unwrap_err();
    assert!(e.to_string().contains("start_factor"), "{e}");
}

#[test]
fn cosine_reaches_eta_min_at_t_max() {
    let mut opt = sgd(1.0);
    let mut s = CosineAnnealingLR::new(&mut opt, 2, 0.0).unwrap();
    s.step(&mut opt).unwrap();
    // (1 + cos(π/2))/(1 + cos 0)·1 = 0.5 (up to cos(π/2) ≈ 6e-17)
    assert!((opt.lr(0).unwrap() - 0.5).abs() < 1e-15);
    s.step(&mut opt).unwrap();
    assert!(opt.lr(0).unwrap().abs() < 1e-15);
}

#[test]
fn one_cycle_moves_beta1_inversely_and_stops_after_total_steps() {
    let p = Tensor::zeros([1], tch::kind::FLOAT_CPU);
    let mut opt = Optim::new(vec![p], Adam::default()).unwrap();
    let mut s = OneCycleLR::new(vec![1.0], 4);
    s.pct_start = 0.5;
    s.anneal_linear = true;
    assert!(s.step(&mut opt).is_err()); // not started
    s.start(&mut opt).unwrap();
    assert_eq!(opt.lr(0).unwrap(), 1.0 / 25.0);
    assert_eq!(opt.config(0).unwrap().beta1, 0.95);
    s.step(&mut opt).unwrap(); // end of the first phase (step 1 = 0.5·4 − 1)
    assert_eq!(opt.lr(0).unwrap(), 1.0);
    assert_eq!(opt.config(0).unwrap().beta1, 0.85);
    s.step(&mut opt).unwrap();
    s.step(&mut opt).unwrap(); // last step of the cycle: the minimum, as torch rounds it
    let min = (1.0 / 25.0 / 1e4 - 1.0) * 1.0 + 1.0;
    assert_eq!(opt.lr(0).unwrap(), min);
    assert_eq!(opt.config(0).unwrap().beta1, 0.95);
    // torch allows one more step, which extrapolates (here to a negative learning rate,
    // which is rejected), and raises after it.
    assert!(s.step(&mut opt).is_err());
    assert_eq!(opt.lr(0).unwrap(), min);
}

#[test]
fn plateau_reduces_after_patience_and_respects_min_lr() {
    let mut opt = sgd(1.0);
    let mut s = ReduceLROnPlateau::new();
    (s.patience, s.factor, s.min_lrs) = (1, 0.5, vec![0.3]);
    let mut lrs = Vec::new();
    for m in [1.0, 1.0, 1.0, 1.0, 1.0, 1.0] {
        s.step(&mut opt, m).unwrap();
        lrs.push(opt.lr(0).unwrap());
    }
    assert_eq!(lrs, [1.0, 1.0, 0.5, 0.5, 0.3, 0.3]);
    s.factor = 1.0;
    assert!(s.step(&mut opt, 1.0).is_err());
}
