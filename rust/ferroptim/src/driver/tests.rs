//! Driver tests: the fused kernel and the staged path agree with the rule applied by hand.

use super::*;
use crate::error::Error;
use crate::rules::{Adam, Sgd};
use tch::{Device, Kind, Tensor};

fn adam_params(param: &Tensor, grad: &Tensor, amsgrad: bool) -> ParamTensors {
    let n = if amsgrad { 3 } else { 2 };
    ParamTensors {
        param: param.shallow_clone(),
        grad: grad.shallow_clone(),
        state: (0..n).map(|_| param.zeros_like()).collect(),
        scalar_state: vec![Tensor::zeros([], (Kind::Float, Device::Cpu))],
        fresh: true,
    }
}

/// The reference: the rule applied element by element in f64 to f64 copies of the inputs.
fn reference(rule: &Adam, p: &[f64], g: &[f64], steps: usize) -> Vec<f64> {
    let mut out = Vec::new();
    for (&p0, &g0) in p.iter().zip(g) {
        let mut p = p0;
        let mut state = vec![0.0; rule.state_names().len()];
        let mut counter = [ScalarState::new(0.0, Kind::Float)];
        for t in 1..=steps {
            p = Adam::update(&rule.scalars(&mut counter, t == 1), p, g0, &mut state);
        }
        out.push(p);
    }
    out
}

fn to_vec(t: &Tensor) -> Vec<f64> {
    let t = t.to_kind(Kind::Double).contiguous().view([-1]);
    Vec::<f64>::try_from(&t).unwrap_or_default()
}

#[test]
fn contiguous_noncontiguous_and_large_tensors_match_the_reference() {
    let opts = (Kind::Double, Device::Cpu);
    let rule = Adam {
        lr: 0.01,
        weight_decay: 0.1,
        amsgrad: true,
        ..Adam::default()
    };
    let small = Tensor::randn([7, 5], opts);
    let strided = Tensor::randn([6, 9], opts).transpose(0, 1); // non-contiguous
    let large = Tensor::randn([300_000], opts); // several threads
    let empty = Tensor::zeros([0, 3], opts);
    let scalar = Tensor::from(1.5f64);
    let tensors = [small, strided, large, empty, scalar];
    let grads: Vec<Tensor> = tensors.iter().map(|t| t.randn_like()).collect();
    let before: Vec<Vec<f64>> = tensors.iter().map(to_vec).collect();
    let mut groups = [Group {
        rule,
        params: tensors
            .iter()
            .zip(&grads)
            .map(|(p, g)| adam_params(p, g, true))
            .collect(),
    }];
    for _ in 0..3 {
        step(&mut groups).expect("step");
        for pt in &mut groups[0].params {
            pt.fresh = false;
        }
    }
    for ((t, g), p0) in tensors.iter().zip(&grads).zip(&before) {
        assert_eq!(to_vec(t), reference(&rule, p0, &to_vec(g), 3));
    }
    assert_eq!(
        groups[0].params[0]
            .scalar_state
            .first()
            .map(|s| s.double_value(&[])),
        Some(3.0)
    );
}

#[test]
fn half_types_compute_in_f32_and_round_once() {
    for kind in [Kind::BFloat16, Kind::Half] {
        let param = Tensor::randn([1000], (Kind::Float, Device::Cpu)).to_kind(kind);
        let grad = param.randn_like();
        let p32 = param.to_kind(Kind::Float);
        let g32 = grad.to_kind(Kind::Float);
        let mut ours = [Group {
            rule: Adam::adamw(),
            params: vec![adam_params(&param, &grad, false)],
        }];
        let mut wide = [Group {
            rule: Adam::adamw(),
            params: vec![adam_params(&p32, &g32, false)],
        }];
        step(&mut ours).expect("half step");
        step(&mut wide).expect("f32 step");
        // One step from zero state: the f32 result rounded once equals the half result.
        assert!(param.equal(&p32.to_kind(kind)), "{kind:?}");
        assert!(ours[0].params[0].state[1].equal(&wide[0].params[0].state[1].to_kind(kind)));
    }
}

#[test]
fn sgd_momentum_buffer_starts_from_the_gradient() {
    let param = Tensor::from_slice(&[1.0f32, 2.0]);
    let grad = Tensor::from_slice(&[0.5f32, -1.0]);
    let rule = Sgd {
        lr: 0.1,
        momentum: 0.9,
        dampening: 0.5,
        ..Sgd::default()
    };
    let pt = ParamTensors {
        param: param.shallow_clone(),
        grad: grad.shallow_clone(),
        state: vec![param.zeros_like()],
        scalar_state: vec![],
        fresh: true,
    };
    let mut groups = [Group {
        rule,
        params: vec![pt],
    }];
    step(&mut groups).expect("step 1");
    groups[0].params[0].fresh = false;
    step(&mut groups).expect("step 2");
    // b1 = g; b2 = 0.9 g + 0.5 g = 1.4 g; θ = θ0 − 0.1 (g + 1.4 g)
    let buf = Vec::<f32>::try_from(&groups[0].params[0].state[0]).unwrap_or_default();
    assert_eq!(buf, vec![0.5 * 0.9 + 0.5 * 0.5, -0.9 - 0.5]);
    let p = Vec::<f32>::try_from(&param).unwrap_or_default();
    assert_eq!(p, vec![1.0 - 0.05 - 0.1 * 0.7, 2.0 + 0.1 + 0.1 * 1.4]);
}

#[test]
fn invalid_inputs_fail_before_anything_changes() {
    let param = Tensor::ones([4], (Kind::Float, Device::Cpu));
    let other = Tensor::ones([4], (Kind::Float, Device::Cpu));
    let bad_grad = Tensor::ones([5], (Kind::Float, Device::Cpu));
    let good = adam_params(&other, &other.ones_like(), false);
    let bad = adam_params(&param, &bad_grad, false);
    let mut groups = [Group {
        rule: Adam::default(),
        params: vec![good, bad],
    }];
    let err = step(&mut groups).expect_err("shape mismatch");
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
    assert!(other.equal(&Tensor::ones([4], (Kind::Float, Device::Cpu))));
    assert_eq!(
        groups[0].params[0]
            .scalar_state
            .first()
            .map(|s| s.double_value(&[])),
        Some(0.0)
    );

    let mut missing = adam_params(&param, &param.ones_like(), false);
    missing.state.pop();
    let err = step(&mut [Group {
        rule: Adam::default(),
        params: vec![missing],
    }]);
    assert!(matches!(err, Err(Error::StateMismatch { .. })));

    let ints = Tensor::ones([4], (Kind::Int64, Device::Cpu));
    let err = step(&mut [Group {
        rule: Adam::default(),
        params: vec![adam_params(&ints, &ints, false)],
    }]);
    assert!(matches!(err, Err(Error::UnsupportedDtype { .. })));
}

#[test]
fn aliasing_state_is_rejected() {
    let param = Tensor::ones([4], (Kind::Float, Device::Cpu));
    let mut pt = adam_params(&param, &param.ones_like(), false);
    pt.state[1] = pt.state[0].shallow_clone();
    let err = step(&mut [Group {
        rule: Adam::default(),
        params: vec![pt],
    }]);
    assert!(matches!(err, Err(Error::Overlap { .. })));
    assert!(param.equal(&param.ones_like()));
}

#[test]
fn unscaling_divides_the_gradient_in_the_pass_and_writes_it_back() {
    let opts = (Kind::Float, Device::Cpu);
    // contiguous (fused kernel) and transposed (staged path) parameters
    let tensors = [
        Tensor::randn([40, 3], opts),
        Tensor::randn([5, 8], opts).transpose(0, 1),
    ];
    let grads: Vec<Tensor> = tensors.iter().map(|t| t.randn_like()).collect();
    let scaled: Vec<Tensor> = grads.iter().map(|g| g * 8.0).collect();
    let plain: Vec<Tensor> = tensors.iter().map(|t| t.copy()).collect();
    let mut ours = [Group {
        rule: Adam::adamw(),
        params: tensors
            .iter()
            .zip(&scaled)
            .map(|(p, g)| adam_params(p, g, false))
            .collect(),
    }];
    let mut reference = [Group {
        rule: Adam::adamw(),
        params: plain
            .iter()
            .zip(&grads)
            .map(|(p, g)| adam_params(p, g, false))
            .collect(),
    }];
    step_unscaling(&mut ours, 8.0).expect("scaled step");
    step(&mut reference).expect("plain step");
    for i in 0..2 {
        assert!(tensors[i].equal(&plain[i]), "param {i}");
        assert!(scaled[i].equal(&grads[i]), "grad {i} written back unscaled");
    }
    for bad in [0.0, f64::NAN, f64::INFINITY] {
        let err = step_unscaling(&mut ours, bad);
        assert!(matches!(err, Err(Error::InvalidArgument { .. })), "{bad}");
    }
}

#[test]
fn scalar_state_count_and_shape_are_checked() {
    let param = Tensor::ones([4], (Kind::Float, Device::Cpu));
    let mut none = adam_params(&param, &param.ones_like(), false);
    none.scalar_state.clear();
    let err = step(&mut [Group {
        rule: Adam::default(),
        params: vec![none],
    }]);
    assert!(matches!(err, Err(Error::StateMismatch { .. })));
    let mut wide = adam_params(&param, &param.ones_like(), false);
    wide.scalar_state[0] = Tensor::zeros([2], (Kind::Float, Device::Cpu));
    let err = step(&mut [Group {
        rule: Adam::default(),
        params: vec![wide],
    }]);
    assert!(matches!(err, Err(Error::StateMismatch { .. })));
    assert!(param.equal(&param.ones_like()));
}

#[test]
fn scalar_state_of_other_dtypes_is_updated_in_its_dtype() {
    let param = Tensor::ones([4], (Kind::Float, Device::Cpu));
    let mut pt = adam_params(&param, &param.ones_like(), false);
    pt.scalar_state[0] = Tensor::from(41i64);
    let mut groups = [Group {
        rule: Adam::default(),
        params: vec![pt],
    }];
    step(&mut groups).expect("int64 step counter");
    let counter = &groups[0].params[0].scalar_state[0];
    assert_eq!(counter.kind(), Kind::Int64);
    assert_eq!(counter.int64_value(&[]), 42);
}

#[test]
fn step_params_reads_gradients_from_the_parameters_and_skips_those_without() {
    let opts = (Kind::Double, Device::Cpu);
    let with_grad = Tensor::randn([6], opts).set_requires_grad(true);
    let without = Tensor::randn([3], opts).set_requires_grad(true);
    (&with_grad * 2.0).sum(Kind::Double).backward(); // grad = 2
    let plain = with_grad.detach().copy();
    let untouched = without.detach().copy();
    let planned: Vec<ParamState> = [&with_grad, &without]
        .into_iter()
        .map(|p| ParamState {
            param: p.shallow_clone(),
            state: vec![p.zeros_like(), p.zeros_like()],
            scalar_state: vec![Tensor::zeros([], (Kind::Float, Device::Cpu))],
        })
        .collect();
    let rule = Adam::adamw();
    let mut cache = StepCache::default();
    let mut reference = [Group {
        rule,
        params: vec![adam_params(&plain, &plain.full_like(2.0), false)],
    }];
    for _ in 0..3 {
        tch::no_grad(|| step_params(&[(rule, &planned[..])], None, &mut cache))
            .expect("planned step");
        step(&mut reference).expect("reference step");
    }
    assert!(with_grad.detach().equal(&plain));
    assert!(without.detach().equal(&untouched));
    assert_eq!(planned[0].scalar_state[0].double_value(&[]), 3.0);
    assert_eq!(planned[1].scalar_state[0].double_value(&[]), 0.0);
}

#[test]
fn read_grads_matches_f_grad_including_missing_and_shared_gradients() {
    let params: Vec<Tensor> = (0..40)
        .map(|i| {
            Tensor::full([i % 5], i as f64, (Kind::Float, Device::Cpu)).set_requires_grad(true)
        })
        .collect();
    // Every third parameter gets no gradient; the others get `2 * p`.
    for (i, p) in params.iter().enumerate() {
        if i % 3 != 0 {
            (p * p).sum(Kind::Float).backward();
        }
    }
    let no_grad = Tensor::zeros([3], (Kind::Double, Device::Cpu)); // requires_grad false
    let all: Vec<&Tensor> = params.iter().chain(std::iter::once(&no_grad)).collect();
    let grads = read_grads(all.iter().copied()).unwrap();
    assert_eq!(grads.len(), all.len());
    for (p, g) in all.iter().zip(&grads) {
        let expected = p.grad();
        assert_eq!(g.defined(), expected.defined());
        if g.defined() {
            // The same tensor as autograd's, not a copy.
            assert_eq!(g.data_ptr(), expected.data_ptr());
            assert_eq!(to_vec(g), to_vec(&(*p * 2.0)));
        }
    }
    assert!(read_grads(std::iter::empty()).unwrap().is_empty());
}

/// One `StepCache` (its overlap result and scratch buffers) reused across steps over other
/// parameter sets, and after a failed step, gives the results of a fresh cache each time.
#[test]
fn a_step_cache_reused_across_parameter_sets_and_errors_changes_nothing() {
    let opts = (Kind::Double, Device::Cpu);
    let make = |sizes: &[i64], seed: i64| -> Vec<ParamState> {
        tch::manual_seed(seed);
        sizes
            .iter()
            .map(|&n| {
                let p = Tensor::randn([n], opts).set_requires_grad(true);
                (&p * &p).sum(Kind::Double).backward();
                ParamState {
                    state: vec![p.zeros_like(), p.zeros_like()],
                    scalar_state: vec![Tensor::zeros([], (Kind::Float, Device::Cpu))],
                    param: p,
                }
            })
            .collect()
    };
    let copy = |set: &[ParamState]| -> Vec<ParamState> {
        set.iter()
            .map(|ps| {
                let p = ps.param.detach().copy().set_requires_grad(true);
                crate::optim::set_grad(&p, &ps.param.grad().copy()).expect("set_grad");
                ParamState {
                    param: p,
                    state: ps.state.iter().map(Tensor::copy).collect(),
                    scalar_state: ps.scalar_state.iter().map(Tensor::copy).collect(),
                }
            })
            .collect()
    };
    let rule = Adam::adamw();
    let sets = [
        make(&[5, 0, 7], 1),
        make(&[3, 4, 5, 6, 7], 2),
        make(&[2], 3),
    ];
    let fresh: Vec<Vec<ParamState>> = sets.iter().map(|s| copy(s)).collect();
    let mut shared = StepCache::default();
    // An invalid step in between: state aliasing the parameter (rejected, nothing changed).
    let bad = [ParamState {
        param: sets[2][0].param.shallow_clone(),
        state: vec![
            sets[2][0].param.shallow_clone(),
            sets[2][0].state[1].shallow_clone(),
        ],
        scalar_state: vec![sets[2][0].scalar_state[0].shallow_clone()],
    }];
    for round in 0..2 {
        for (set, reference) in sets.iter().zip(&fresh) {
            tch::no_grad(|| step_params(&[(rule, &set[..])], None, &mut shared)).expect("step");
            tch::no_grad(|| {
                step_params(&[(rule, &reference[..])], None, &mut StepCache::default())
            })
            .expect("reference step");
            if round == 0 {
                let failed = tch::no_grad(|| step_params(&[(rule, &bad[..])], None, &mut shared));
                assert!(matches!(failed, Err(Error::Overlap { .. })));
            }
        }
    }
    for (set, reference) in sets.iter().zip(&fresh) {
        for (a, b) in set.iter().zip(reference) {
            assert!(a.param.detach().equal(&b.param.detach()));
            for (s, t) in a.state.iter().zip(&b.state) {
                assert!(s.equal(t));
            }
            assert_eq!(a.scalar_state[0].double_value(&[]), 2.0);
        }
    }
}

fn versions(pt: &ParamTensors) -> Vec<i64> {
    std::iter::once(&pt.param)
        .chain(&pt.state)
        .chain(&pt.scalar_state)
        .chain(std::iter::once(&pt.grad))
        .map(|t| t.f_internal_version().unwrap_or(-1))
        .collect()
}

#[test]
fn written_tensors_change_version_and_gradients_only_when_unscaled() {
    let opts = (Kind::Float, Device::Cpu);
    // contiguous (fused kernel in place), transposed (staged: copied back) and one whose
    // state is float64 (staged, but its gradient and parameter are updated in place)
    let tensors = [
        Tensor::randn([40, 3], opts),
        Tensor::randn([5, 8], opts).transpose(0, 1),
        Tensor::randn([6], opts),
    ];
    let mut params: Vec<ParamTensors> = tensors
        .iter()
        .map(|p| adam_params(p, &p.randn_like(), false))
        .collect();
    params[2].state[0] = params[2].state[0].to_kind(Kind::Double);
    let mut groups = [Group {
        rule: Adam::adamw(),
        params,
    }];
    for unscale in [false, true] {
        let before: Vec<Vec<i64>> = groups[0].params.iter().map(versions).collect();
        if unscale {
            step_unscaling(&mut groups, 4.0).expect("unscaled step");
        } else {
            step(&mut groups).expect("step");
        }
        for (i, (pt, before)) in groups[0].params.iter().zip(&before).enumerate() {
            let after = versions(pt);
            let (grad_before, grad_after) = (before[before.len() - 1], after[after.len() - 1]);
            assert_eq!(grad_after > grad_before, unscale, "grad of param {i}");
            for (k, (a, b)) in after.iter().zip(before).take(after.len() - 1).enumerate() {
                assert!(a > b, "tensor {k} of param {i}: version {b} -> {a}");
            }
        }
    }
}

#[test]
fn staged_leaves_that_require_grad_step_outside_no_grad() {
    // float64 state stages a float32 parameter: copying it back is an in-place ATen op on a
    // leaf that requires grad, which the driver must not record.
    let opts = (Kind::Float, Device::Cpu);
    let param = Tensor::randn([6], opts).set_requires_grad(true);
    let plain = param.detach().copy();
    let grad = param.detach().randn_like();
    let mut pt = adam_params(&param.detach(), &grad, false);
    pt.param = param.shallow_clone();
    pt.state[0] = pt.state[0].to_kind(Kind::Double);
    let mut reference = adam_params(&plain, &grad, false);
    reference.state[0] = reference.state[0].to_kind(Kind::Double);
    step(&mut [Group {
        rule: Adam::default(),
        params: vec![pt],
    }])
    .expect("staged step with grad mode on");
    step(&mut [Group {
        rule: Adam::default(),
        params: vec![reference],
    }])
    .expect("reference step");
    assert!(param.requires_grad() && param.detach().equal(&plain));
}

#[test]
fn chunks_over_many_jobs_give_the_same_result_for_any_thread_count() {
    // Sizes around the chunk bounds (4096 elements, 64-element alignment), empty and
    // one-element tensors, and enough elements in all (> 32768) for several threads: every
    // element must be updated exactly once whichever thread claims which chunk.
    let sizes = [
        0usize, 1, 63, 64, 65, 4095, 4096, 4097, 0, 8191, 12_289, 3, 20_000, 1, 40_000,
    ];
    let opts = (Kind::Float, Device::Cpu);
    let init: Vec<Tensor> = sizes
        .iter()
        .map(|&n| Tensor::randn([n as i64], opts))
        .collect();
    let grads: Vec<Tensor> = init.iter().map(|t| t.randn_like()).collect();
    let threads_before = tch::get_num_threads();
    let mut results: Vec<Vec<Tensor>> = Vec::new();
    for threads in [1, 3, 7, 64] {
        tch::set_num_threads(threads);
        let params: Vec<Tensor> = init.iter().map(|t| t.copy()).collect();
        let mut groups = [Group {
            rule: Adam::adamw(),
            params: params
                .iter()
                .zip(&grads)
                .map(|(p, g)| adam_params(p, g, false))
                .collect(),
        }];
        for _ in 0..2 {
            step(&mut groups).expect("step");
        }
        let mut out = params;
        out.extend(
            groups[0]
                .params
                .iter()
                .flat_map(|pt| pt.state.iter().map(|s| s.copy())),
        );
        results.push(out);
    }
    tch::set_num_threads(threads_before);
    for (k, result) in results.iter().enumerate().skip(1) {
        for (i, (a, b)) in result.iter().zip(&results[0]).enumerate() {
            assert!(a.equal(b), "run {k}, tensor {i} differs from 1 thread");
        }
    }
    // and every element moved (none skipped): AdamW's first steps move each by about lr
    for (p, p0) in results[0].iter().zip(&init) {
        if p0.numel() > 0 {
            let moved = (p - p0).abs().min().double_value(&[]);
            assert!(moved > 0.0, "an element was not updated");
        }
    }
}
