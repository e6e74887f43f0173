//! The ATen device path on CPU tensors: against the CPU driver (same formulas, other
//! rounding), bucketing invariance (bit-identical), GradScaler's skipped step, and errors
//! before any modification. Bit-identity with torch.optim's fused/foreach implementations is
//! tested from Python (tests/python/device/test_aten_path.py), where torch's are at hand.

use super::{step, AtenOptions, AtenRule, DeviceGroup};
use crate::{Adam, Adamax, Adan, Asgd, Group, Lamb, Lars, NAdam, ParamTensors};
use tch::{Device, Kind, Tensor};

fn params(kind: Kind, n_state: usize, seed: i64) -> Vec<ParamTensors> {
    tch::manual_seed(seed);
    [[7_i64].as_slice(), &[3, 5], &[130]]
        .iter()
        .map(|shape| {
            let param = Tensor::randn(*shape, (kind, Device::Cpu));
            ParamTensors {
                grad: Tensor::randn(*shape, (kind, Device::Cpu)),
                state: (0..n_state).map(|_| param.zeros_like()).collect(),
                scalar_state: vec![Tensor::zeros([], (Kind::Float, Device::Cpu))],
                fresh: true,
                param,
            }
        })
        .collect()
}

fn deep_copy(ps: &[ParamTensors]) -> Vec<ParamTensors> {
    ps.iter()
        .map(|p| ParamTensors {
            param: p.param.copy(),
            grad: p.grad.copy(),
            state: p.state.iter().map(Tensor::copy).collect(),
            scalar_state: p.scalar_state.iter().map(Tensor::copy).collect(),
            fresh: p.fresh,
        })
        .collect()
}

fn adam() -> Adam {
    Adam {
        lr: 1e-2,
        weight_decay: 0.1,
        amsgrad: true,
        ..Adam::adamw()
    }
}

fn all_tensors(ps: &[ParamTensors]) -> Vec<Tensor> {
    ps.iter()
        .flat_map(|p| {
            std::iter::once(p.param.shallow_clone())
                .chain(p.state.iter().map(Tensor::shallow_clone))
                .chain(p.scalar_state.iter().map(Tensor::shallow_clone))
        })
        .collect()
}

#[test]
fn adam_through_aten_matches_the_cpu_driver() -> crate::Result<()> {
    for kind in [Kind::Float, Kind::Double] {
        let ours = params(kind, 3, 1);
        let mut cpu = [Group {
            rule: adam(),
            params: deep_copy(&ours),
        }];
        let device = [DeviceGroup {
            rule: adam(),
            lr: None,
            params: ours,
        }];
        for _ in 0..5 {
            step(&device, None, None, AtenOptions::default())?;
            crate::step(&mut cpu)?;
        }
        let tol = if kind == Kind::Float { 1e-6 } else { 1e-13 };
        for (a, b) in all_tensors(&device[0].params)
            .iter()
            .zip(all_tensors(&cpu[0].params))
        {
            assert!(a.allclose(&b, tol, tol, false), "{kind:?}: {a} vs {b}");
        }
        assert_eq!(device[0].params[0].scalar_state[0].double_value(&[]), 5.0);
    }
    Ok(())
}

/// Five steps of `rule` through ATen and through the CPU driver, from parameters with the
/// (float32) scalar state `scalar_init`: equal to rounding (the foreach compositions round
/// some multiply-adds twice that the CPU rule fuses), float32 to rtol 1e-5 / atol 1e-6,
/// float64 to rtol 1e-10 / atol 1e-12 unless `f32_scalars` (the float32 tolerance: a float32
/// scalar state computed differently, see ASGD below).
fn through_aten_matches_the_cpu_driver<R: AtenRule + Copy>(
    rule: R,
    scalar_init: &[f64],
    f32_scalars: bool,
) -> crate::Result<()> {
    for kind in [Kind::Float, Kind::Double] {
        let mut ours = params(kind, rule.state_names().len(), 4);
        for p in &mut ours {
            p.scalar_state = scalar_init
                .iter()
                .map(|&v| Tensor::from(v as f32))
                .collect();
        }
        let mut cpu = [Group {
            rule,
            params: deep_copy(&ours),
        }];
        let device = [DeviceGroup {
            rule,
            lr: None,
            params: ours,
        }];
        for _ in 0..5 {
            step(&device, None, None, AtenOptions::default())?;
            crate::step(&mut cpu)?;
        }
        let (rtol, atol) = if kind == Kind::Float || f32_scalars {
            (1e-5, 1e-6)
        } else {
            (1e-10, 1e-12)
        };
        for (a, b) in all_tensors(&device[0].params)
            .iter()
            .zip(all_tensors(&cpu[0].params))
        {
            assert!(a.allclose(&b, rtol, atol, false), "{kind:?}: {a} vs {b}");
        }
    }
    Ok(())
}

#[test]
fn torch_foreach_compositions_match_the_cpu_driver() -> crate::Result<()> {
    let nadam = NAdam {
        lr: 1e-2,
        weight_decay: 0.1,
        decoupled_weight_decay: true,
        ..NAdam::default()
    };
    through_aten_matches_the_cpu_driver(nadam, &[0.0, 1.0], false)?;
    let asgd = Asgd {
        t0: 2.0,
        ..Asgd::default()
    };
    // torch's foreach ASGD computes the next float32 `eta` by float32 tensor arithmetic on the
    // step counters (`lr / t` as `t.reciprocal() * lr`), its for-loop (the CPU rule) in double
    // rounded once: an ulp of float32 apart, as torch's foreach=True and foreach=False are.
    through_aten_matches_the_cpu_driver(asgd, &[0.0, asgd.lr, 1.0], true)
}

#[test]
fn beyond_torch_compositions_match_the_cpu_driver() -> crate::Result<()> {
    let adan = Adan {
        lr: 1e-2,
        weight_decay: 0.02,
        ..Adan::default()
    };
    through_aten_matches_the_cpu_driver(adan, &[0.0], false)?;
    let lamb = Lamb {
        lr: 1e-2,
        weight_decay: 0.1,
        ..Lamb::default()
    };
    through_aten_matches_the_cpu_driver(lamb, &[0.0], false)?;
    let lars = Lars {
        lr: 0.1,
        weight_decay: 0.01,
        nesterov: true,
        ..Lars::default()
    };
    through_aten_matches_the_cpu_driver(lars, &[], false)
}

#[test]
fn buckets_do_not_change_results_bit_for_bit() -> crate::Result<()> {
    let together = params(Kind::Float, 3, 2);
    let apart = deep_copy(&together);
    let one = [DeviceGroup {
        rule: adam(),
        lr: Some(Tensor::from(1e-2_f32)),
        params: together,
    }];
    let many: Vec<_> = apart
        .into_iter()
        .map(|p| DeviceGroup {
            rule: adam(),
            lr: Some(Tensor::from(1e-2_f32)),
            params: vec![p],
        })
        .collect();
    for _ in 0..3 {
        step(&one, None, None, AtenOptions::default())?;
        step(&many, None, None, AtenOptions::default())?;
    }
    let apart: Vec<ParamTensors> = many.into_iter().flat_map(|g| g.params).collect();
    for (a, b) in all_tensors(&one[0].params).iter().zip(all_tensors(&apart)) {
        assert!(a.equal(&b));
    }
    Ok(())
}

#[test]
fn found_inf_skips_the_step_on_the_device() -> crate::Result<()> {
    let ps = params(Kind::Float, 3, 3);
    let before = all_tensors(&deep_copy(&ps));
    let group = [DeviceGroup {
        rule: adam(),
        lr: None,
        params: ps,
    }];
    let scale = Tensor::from(1024.0_f32);
    let found_inf = Tensor::from(1.0_f32);
    step(
        &group,
        Some(&scale),
        Some(&found_inf),
        AtenOptions::default(),
    )?;
    for (a, b) in all_tensors(&group[0].params).iter().zip(&before) {
        assert!(a.equal(b), "{a} vs {b}");
    }
    Ok(())
}

#[test]
fn errors_come_before_any_change() {
    // A foreach composition takes no GradScaler hand-over; a bad state shape is refused.
    let mut ps = params(Kind::Float, 2, 4);
    let before = all_tensors(&deep_copy(&ps));
    let scale = Tensor::from(2.0_f32);
    let group = [DeviceGroup {
        rule: Adamax::default(),
        lr: None,
        params: deep_copy(&ps),
    }];
    assert!(step(&group, Some(&scale), None, AtenOptions::default()).is_err());
    ps[2].state[1] = Tensor::zeros([3], (Kind::Float, Device::Cpu));
    let group = [DeviceGroup {
        rule: Adamax::default(),
        lr: None,
        params: ps,
    }];
    let err = step(&group, None, None, AtenOptions::default());
    assert!(
        matches!(err, Err(crate::Error::ShapeMismatch { .. })),
        "{err:?}"
    );
    for (a, b) in all_tensors(&group[0].params[..2]).iter().zip(&before) {
        assert!(a.equal(b));
    }
}
