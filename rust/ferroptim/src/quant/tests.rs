//! The fused 8-bit step against its definition: dequantize, the fp32 driver's step, quantize.

use super::*;
use crate::rule::Rule;
use crate::{step, Adam, Group, Lion, ParamTensors, RMSprop, Sgd};

fn randn(n: i64, kind: Kind, seed: i64) -> Tensor {
    tch::manual_seed(seed);
    Tensor::randn([n], (kind, Device::Cpu))
}

/// Runs `steps` steps of `rule` on a parameter of `n` elements with 8-bit state through
/// [`step_8bit`], and through the definition (dequantize, fp32 `step`, quantize) on copies;
/// asserts both are bit-identical after every step. Returns the 8-bit result.
fn check_against_definition<R: Rule + Copy>(
    rule: R,
    n: i64,
    kind: Kind,
    block: usize,
    threads: i32,
) -> Tensor {
    let names = rule.state_names();
    let compute = if kind == Kind::Double {
        Kind::Double
    } else {
        Kind::Float
    };
    let param = randn(n, kind, 1);
    let reference = param.copy();
    let mut codes = Vec::new();
    let mut absmax = Vec::new();
    for name in names {
        let (c, a) = quantize(&param.zeros_like(), name, block).unwrap();
        codes.push(c);
        absmax.push(a);
    }
    let (mut rc, mut ra): (Vec<Tensor>, Vec<Tensor>) = (
        codes.iter().map(Tensor::copy).collect(),
        absmax.iter().map(Tensor::copy).collect(),
    );
    let step_t = Tensor::zeros([], (Kind::Float, Device::Cpu));
    let ref_step = step_t.copy();
    tch::set_num_threads(threads);
    for t in 0..5 {
        let grad = randn(n, kind, 100 + t);
        let scalar_state = rule
            .scalar_state_names()
            .iter()
            .map(|_| step_t.shallow_clone())
            .collect();
        let groups = [QuantGroup {
            rule,
            block_size: block,
            params: vec![QuantParam {
                param: param.shallow_clone(),
                grad: grad.copy(),
                codes: codes.iter().map(Tensor::shallow_clone).collect(),
                absmax: absmax.iter().map(Tensor::shallow_clone).collect(),
                scalar_state,
                fresh: t == 0,
                state: vec![],
            }],
            bf16_stochastic_round: None,
        }];
        step_8bit(&groups, None).unwrap();
        // The definition, with the fp32 driver.
        let state: Vec<Tensor> = names
            .iter()
            .enumerate()
            .map(|(k, name)| dequantize(&rc[k], &ra[k], name, block, compute).unwrap())
            .collect();
        let p32 = if kind == compute {
            reference.shallow_clone()
        } else {
            reference.to_kind(compute)
        };
        let mut g = [Group {
            rule,
            params: vec![ParamTensors {
                param: p32.shallow_clone(),
                grad: grad.to_kind(p32.kind()),
                state: state.iter().map(Tensor::shallow_clone).collect(),
                scalar_state: rule
                    .scalar_state_names()
                    .iter()
                    .map(|_| ref_step.shallow_clone())
                    .collect(),
                fresh: t == 0,
            }],
        }];
        step(&mut g).unwrap();
        if p32.kind() != reference.kind() {
            reference.shallow_clone().copy_(&p32);
        }
        for (k, name) in names.iter().enumerate() {
            let (c, a) = quantize(&state[k], name, block).unwrap();
            rc[k] = c;
            ra[k] = a;
            assert!(rc[k].equal(&codes[k]), "codes of {name} at step {t}");
            assert!(ra[k].equal(&absmax[k]), "absmax of {name} at step {t}");
        }
        assert!(param.equal(&reference), "param at step {t}");
    }
    param
}

#[test]
fn adam_8bit_is_the_definition_bit_for_bit() {
    for (n, block) in [(1000, 256), (5000, 64), (70_000, 256), (3, 16)] {
        let _ = check_against_definition(Adam::adamw(), n, Kind::Float, block, 2);
    }
    let _ = check_against_definition(
        Adam {
            amsgrad: true,
            ..Adam::default()
        },
        3000,
        Kind::Float,
        128,
        1,
    );
    let _ = check_against_definition(Adam::adamw(), 3000, Kind::BFloat16, 256, 2);
    let _ = check_against_definition(Adam::adamw(), 3000, Kind::Half, 256, 2);
    let _ = check_against_definition(Adam::adamw(), 3000, Kind::Double, 256, 2);
}

#[test]
fn other_rules_8bit_are_the_definition() {
    let _ = check_against_definition(Lion::default(), 4000, Kind::Float, 256, 2);
    let _ = check_against_definition(
        Sgd {
            momentum: 0.9,
            ..Sgd::default()
        },
        4000,
        Kind::Float,
        256,
        2,
    );
    let rms = RMSprop {
        momentum: 0.5,
        centered: true,
        ..RMSprop::default()
    };
    let _ = check_against_definition(rms, 4000, Kind::Float, 256, 2);
}

#[test]
fn thread_count_does_not_change_the_result() {
    let n = 300_001;
    let one = check_against_definition(Adam::adamw(), n, Kind::Float, 256, 1);
    for threads in [2, 3, 7] {
        let many = check_against_definition(Adam::adamw(), n, Kind::Float, 256, threads);
        assert!(one.equal(&many), "{threads} threads");
    }
}

#[test]
fn invalid_inputs_change_nothing() {
    let p = randn(100, Kind::Float, 3);
    let before = p.copy();
    let (c, a) = quantize(&p.zeros_like(), "exp_avg", 256).unwrap();
    let bad_absmax = Tensor::zeros([2], (Kind::Float, Device::Cpu));
    let step_t = Tensor::zeros([], (Kind::Float, Device::Cpu));
    let group = |absmax: &Tensor, block| QuantGroup {
        rule: Adam::default(),
        block_size: block,
        params: vec![QuantParam {
            param: p.shallow_clone(),
            grad: p.ones_like(),
            codes: vec![c.shallow_clone(), c.copy()],
            absmax: vec![a.shallow_clone(), absmax.shallow_clone()],
            scalar_state: vec![step_t.shallow_clone()],
            fresh: false,
            state: vec![],
        }],
        bf16_stochastic_round: None,
    };
    assert!(matches!(
        step_8bit(&[group(&bad_absmax, 256)], None),
        Err(Error::StateMismatch { .. })
    ));
    assert!(matches!(
        step_8bit(&[group(&a, 100)], None),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        step_8bit(&[group(&a, 256)], Some(0.0)),
        Err(Error::InvalidArgument { .. })
    ));
    // Codes shared by two state tensors: an overlap.
    let shared = QuantGroup {
        params: vec![QuantParam {
            codes: vec![c.shallow_clone(), c.shallow_clone()],
            ..group(&a.copy(), 256).params.remove(0)
        }],
        ..group(&a, 256)
    };
    assert!(matches!(
        step_8bit(&[shared], None),
        Err(Error::Overlap { .. })
    ));
    assert!(p.equal(&before));
    assert_eq!(step_t.double_value(&[]), 0.0);
    assert!(step_8bit(&[group(&a.copy(), 256)], None).is_ok());
    assert_eq!(step_t.double_value(&[]), 1.0);
}

/// An invalid tensor among the fp32-state parameters of a mixed step: the 8-bit parameters,
/// validated and run first, are not modified either.
#[test]
fn mixed_step_validates_both_sets_before_modifying_either() {
    let p = randn(1000, Kind::Float, 3);
    let before = p.copy();
    let (c, a) = quantize(&randn(1000, Kind::Float, 4), "exp_avg", 256).unwrap();
    let (c2, a2) = quantize(&randn(1000, Kind::Float, 5).abs(), "exp_avg_sq", 256).unwrap();
    let saved = [c.copy(), a.copy(), c2.copy(), a2.copy()];
    let step_t = Tensor::zeros([], (Kind::Float, Device::Cpu));
    let eight = [QuantGroup {
        rule: Adam::default(),
        block_size: 256,
        params: vec![QuantParam {
            param: p.shallow_clone(),
            grad: p.ones_like(),
            codes: vec![c.shallow_clone(), c2.shallow_clone()],
            absmax: vec![a.shallow_clone(), a2.shallow_clone()],
            scalar_state: vec![step_t.shallow_clone()],
            fresh: false,
            state: vec![],
        }],
        bf16_stochastic_round: None,
    }];
    let small = randn(10, Kind::Float, 6);
    let small_before = small.copy();
    let small_step = Tensor::zeros([], (Kind::Float, Device::Cpu));
    let fp32 = |exp_avg_sq: Tensor| {
        [Group {
            rule: Adam::default(),
            params: vec![ParamTensors {
                param: small.shallow_clone(),
                grad: small.ones_like(),
                state: vec![small.zeros_like(), exp_avg_sq],
                scalar_state: vec![small_step.shallow_clone()],
                fresh: false,
            }],
        }]
    };
    // exp_avg_sq of the wrong shape in the second set.
    let bad = Tensor::zeros([11], (Kind::Float, Device::Cpu));
    assert!(matches!(
        step_8bit_mixed(&eight, &fp32(bad), None),
        Err(Error::ShapeMismatch { .. })
    ));
    assert!(p.equal(&before) && small.equal(&small_before));
    for (t, s) in [&c, &a, &c2, &a2].into_iter().zip(&saved) {
        assert!(t.equal(s));
    }
    assert_eq!(step_t.double_value(&[]), 0.0);
    assert_eq!(small_step.double_value(&[]), 0.0);
    // Valid: both sets step, the 8-bit one exactly as `step_8bit` alone.
    let p_ref = p.copy();
    let (rc, ra, rc2, ra2) = (c.copy(), a.copy(), c2.copy(), a2.copy());
    let ref_step = step_t.copy();
    let reference = [QuantGroup {
        rule: Adam::default(),
        block_size: 256,
        bf16_stochastic_round: None,
        params: vec![QuantParam {
            param: p_ref.shallow_clone(),
            grad: p.ones_like(),
            codes: vec![rc.shallow_clone(), rc2.shallow_clone()],
            absmax: vec![ra.shallow_clone(), ra2.shallow_clone()],
            scalar_state: vec![ref_step.shallow_clone()],
            fresh: false,
            state: vec![],
        }],
    }];
    step_8bit(&reference, None).unwrap();
    step_8bit_mixed(&eight, &fp32(small.zeros_like()), None).unwrap();
    assert!(p.equal(&p_ref) && c.equal(&rc) && a.equal(&ra) && c2.equal(&rc2) && a2.equal(&ra2));
    assert_eq!(step_t.double_value(&[]), 1.0);
    assert_eq!(small_step.double_value(&[]), 1.0);
    assert!(!small.equal(&small_before));
}

#[test]
fn quantize_round_trip() {
    let x = randn(10_000, Kind::Float, 5);
    let (c, a) = quantize(&x, "exp_avg", 256).unwrap();
    let back = dequantize(&c, &a, "exp_avg", 256, Kind::Float).unwrap();
    let err = (&back - &x).abs().max().double_value(&[]);
    let amax = x.abs().max().double_value(&[]);
    assert!(err <= amax * 0.9 / 128.0 * 1.0001, "{err}");
    let (c2, a2) = quantize(&back, "exp_avg", 256).unwrap();
    assert!(c2.equal(&c) && a2.equal(&a), "quantize(dequantize(q)) == q");
    let v = x.square();
    let (c, a) = quantize(&v, "exp_avg_sq", 256).unwrap();
    let back = dequantize(&c, &a, "exp_avg_sq", 256, Kind::Float).unwrap();
    assert!(back.ge(0.0).all().int64_value(&[]) == 1);
}

/// bf16 parameters rounded stochastically: unbiased on average, independent of the thread
/// count, and a pure function of the seed.
#[test]
fn bf16_stochastic_rounding() {
    let n = 100_000i64;
    // p = 1, an update of 0.3 bf16 ulp (2^-7 · 0.3) per step: SGD with lr·g = −0.3 ulp.
    let ulp = 2f64.powi(-7);
    let run = |seed: u64, threads: i32, plain: bool| {
        tch::set_num_threads(threads);
        let p = Tensor::ones([n], (Kind::BFloat16, Device::Cpu));
        let grad = Tensor::full([n], -0.3 * ulp, (Kind::BFloat16, Device::Cpu));
        let mom = p.zeros_like();
        let (c, a) = quantize(&mom, "momentum_buffer", 256).unwrap();
        let (codes, absmax, state) = if plain {
            (vec![], vec![], vec![mom.shallow_clone()])
        } else {
            (vec![c], vec![a], vec![])
        };
        let g = [QuantGroup {
            rule: Sgd {
                lr: 1.0,
                momentum: 1e-30,
                ..Sgd::default()
            },
            block_size: 256,
            params: vec![QuantParam {
                param: p.shallow_clone(),
                grad: grad.copy(),
                codes,
                absmax,
                state,
                scalar_state: vec![],
                fresh: true,
            }],
            bf16_stochastic_round: Some(seed),
        }];
        step_8bit(&g, None).unwrap();
        p
    };
    let p = run(7, 2, false);
    let mean = p.to_kind(Kind::Double).mean(Kind::Double).double_value(&[]);
    // Each element is 1 or 1 + ulp, the latter with probability 0.3 (grad rounded to bf16:
    // 0.30078125 ulp): 5 standard errors of the mean of n Bernoulli draws.
    let expected = 1.0 + 0.30078125 * ulp;
    assert!(
        (mean - expected).abs() < 5.0 * ulp * (0.21 / n as f64).sqrt(),
        "{mean}"
    );
    // Round-to-nearest would leave every element at 1.
    assert!(p.ne(1.0).any().int64_value(&[]) == 1);
    assert!(p.equal(&run(7, 1, false)) && p.equal(&run(7, 3, false)));
    assert!(p.equal(&run(7, 2, true)), "plain state rounds the same");
    assert!(!p.equal(&run(8, 2, false)));
}
