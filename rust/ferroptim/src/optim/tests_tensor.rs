//! Tests of the stateful optimizers over `tensor_rules`: the same steps as the step functions,
//! torch's state, validation, checkpoints with Python values (`state_values`).

use super::*;
use crate::tensor_rules::{self, adafactor, Adafactor, Lbfgs, Muon, SparseAdam};
use crate::Error;
use tch::{Device, Kind, Tensor};

fn param(values: &[f64], shape: &[i64]) -> Tensor {
    Tensor::from_slice(values)
        .reshape(shape)
        .set_requires_grad(true)
}

fn values(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(&t.to_kind(Kind::Double).flatten(0, -1)).unwrap()
}

fn temp(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ferroptim-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("c.safetensors")
}

fn metadata(path: &std::path::Path, key: &str) -> String {
    let bytes = std::fs::read(path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    meta.metadata().as_ref().unwrap()[key].clone()
}

#[test]
fn adafactor_steps_as_its_step_function_with_torchs_state() {
    let (w, b) = (
        param(&[1.0, -2.0, 3.0, 0.5], &[2, 2]),
        param(&[0.25, 1.0], &[2]),
    );
    let (gw, gb) = ([0.5, 1.0, -1.0, 2.0], [1.0, -0.5]);
    let cfg = Adafactor {
        lr: 0.05.into(),
        weight_decay: 0.1,
        ..Adafactor::default()
    };
    let mut opt = Optim::new(vec![w.shallow_clone(), b.shallow_clone()], cfg.clone()).unwrap();
    // The reference: the step function on copies, with torch's initial state.
    let (rw, rb) = (w.detach().copy(), b.detach().copy());
    let zeros = |s: &[i64]| Tensor::zeros(s, (Kind::Double, Device::Cpu));
    let scalar = || Tensor::zeros([], (Kind::Float, Device::Cpu));
    let (row, col) = adafactor::factor_shapes(&[2, 2]);
    let mut reference = [tensor_rules::AdafactorGroup {
        hyper: cfg,
        params: vec![
            tensor_rules::AdafactorParam {
                param: rw.shallow_clone(),
                grad: Tensor::from_slice(&gw).reshape([2, 2]),
                step: scalar(),
                row_var: Some(zeros(&row)),
                col_var: Some(zeros(&col)),
                variance: None,
            },
            tensor_rules::AdafactorParam {
                param: rb.shallow_clone(),
                grad: Tensor::from_slice(&gb),
                step: scalar(),
                row_var: None,
                col_var: None,
                variance: Some(zeros(&[2])),
            },
        ],
    }];
    for _ in 0..2 {
        set_grad(&w, &Tensor::from_slice(&gw).reshape([2, 2])).unwrap();
        set_grad(&b, &Tensor::from_slice(&gb)).unwrap();
        opt.step().unwrap();
        adafactor::step(&mut reference).unwrap();
    }
    assert_eq!(values(&w), values(&rw));
    assert_eq!(values(&b), values(&rb));
    let keys = |i| -> Vec<String> { opt.state(0, i).unwrap().keys().cloned().collect() };
    assert_eq!(keys(0), ["col_var", "row_var", "step"]);
    assert_eq!(keys(1), ["step", "variance"]);
    assert_eq!(opt.state(0, 0).unwrap()["step"].double_value(&[]), 2.0);

    // `eps` is torch's tuple, with ε₁ None.
    let path = temp("adafactor");
    opt.save(&path).unwrap();
    assert!(metadata(&path, "param_groups").contains("\"eps\":[null,0.001]"));
    let mut other = Optim::new(
        vec![param(&[0.0; 4], &[2, 2]), param(&[0.0; 2], &[2])],
        Adafactor::default(),
    )
    .unwrap();
    other.load(&path).unwrap();
    assert_eq!(other.lr(0).unwrap(), 0.05);
    assert_eq!(
        other.hyperparameter(0, "eps1").unwrap(),
        Hyper::OptionalFloat(None)
    );
    let e = other
        .set_hyperparameter(0, "d", Hyper::Float(0.5))
        .unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { name: "d", .. }));
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
}

#[test]
fn muon_takes_matrices_and_keeps_torchs_names() {
    let e = Optim::new(vec![param(&[1.0, 2.0], &[2])], Muon::default()).unwrap_err();
    assert!(
        matches!(e, Error::InvalidArgument { name: "params", .. }),
        "{e}"
    );
    let w = param(&[1.0, 0.5, -0.5, 2.0, 0.0, 1.0], &[2, 3]);
    let mut opt = Optim::new(vec![w.shallow_clone()], Muon::default()).unwrap();
    opt.set_hyperparameter(0, "adjust_lr_fn", Hyper::Name(Some("match_rms_adamw")))
        .unwrap();
    let e = opt.set_hyperparameter(0, "adjust_lr_fn", Hyper::Name(Some("strong_wolfe")));
    assert!(e.is_err());
    let before = values(&w);
    set_grad(
        &w,
        &Tensor::from_slice(&[1.0, -1.0, 0.5, 0.0, 2.0, 1.0]).reshape([2, 3]),
    )
    .unwrap();
    opt.step().unwrap();
    assert_ne!(values(&w), before);
    let st = opt.state(0, 0).unwrap();
    assert_eq!(st.keys().collect::<Vec<_>>(), ["momentum_buffer"]);
    let path = temp("muon");
    opt.save(&path).unwrap();
    let groups = metadata(&path, "param_groups");
    assert!(
        groups.contains("\"ns_coefficients\":[3.4445,-4.775,2.0315]"),
        "{groups}"
    );
    assert!(
        groups.contains("\"adjust_lr_fn\":\"match_rms_adamw\""),
        "{groups}"
    );
    assert!(groups.contains("\"ns_steps\":5"), "{groups}");
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
}

#[test]
fn sparse_adam_counts_steps_as_an_int_and_checkpoints_it_as_one() {
    let w = param(&[1.0, 2.0, 3.0, 4.0], &[2, 2]);
    let cfg = SparseAdam {
        lr: 0.1.into(),
        ..SparseAdam::default()
    };
    let mut opt = Optim::new(vec![w.shallow_clone()], cfg).unwrap();
    let g = Tensor::from_slice(&[0.0, 0.0, 1.0, -1.0]).reshape([2, 2]);
    set_grad(&w, &g).unwrap();
    let e = opt.step().unwrap_err(); // a dense gradient
    assert!(opt.state(0, 0).unwrap().is_empty(), "{e}");
    for _ in 0..2 {
        set_grad(&w, &g.to_sparse(None, None::<i64>, None::<i64>)).unwrap();
        opt.step().unwrap();
    }
    // Row 0 has no entries: unchanged; row 1 moved by Adam's steps of size lr.
    let v = values(&w);
    assert_eq!(&v[..2], [1.0, 2.0]);
    assert!(
        (v[2] - 2.8).abs() < 1e-6 && (v[3] - 4.2).abs() < 1e-6,
        "{v:?}"
    );
    let step = &opt.state(0, 0).unwrap()["step"];
    assert_eq!((step.kind(), step.int64_value(&[])), (Kind::Int64, 2));
    let path = temp("sparse");
    opt.save(&path).unwrap();
    assert_eq!(metadata(&path, "state_values"), "{\"0\":{\"step\":2}}");
    let mut other = Optim::new(vec![param(&[0.0; 4], &[2, 2])], SparseAdam::default()).unwrap();
    other.load(&path).unwrap();
    let step = &other.state(0, 0).unwrap()["step"];
    assert_eq!((step.kind(), step.int64_value(&[])), (Kind::Int64, 2));
    let bad = SparseAdam {
        eps: 0.0,
        ..SparseAdam::default()
    };
    let e = Optim::new(vec![param(&[1.0], &[1])], bad).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { name: "eps", .. }));
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
}

/// Minimizes Σ wᵢ(xᵢ − cᵢ)² with L-BFGS from `x`.
fn lbfgs_steps(opt: &mut LbfgsOptim, steps: usize) -> Vec<f64> {
    let params: Vec<Tensor> = opt.params().iter().map(Tensor::shallow_clone).collect();
    let c = Tensor::from_slice(&[1.0f32, -2.0, 3.0, 0.5]);
    let w = Tensor::from_slice(&[1.0f32, 4.0, 0.5, 2.0]);
    let mut losses = Vec::new();
    for _ in 0..steps {
        let mut closure = || -> crate::Result<f64> {
            clear_grads(&params)?;
            let r = &params[0] - &c;
            let loss = (&r * &r * &w).sum(Kind::Float);
            loss.backward();
            Ok(loss.double_value(&[]))
        };
        losses.push(opt.step_with(&mut closure).unwrap());
    }
    losses
}

#[test]
fn lbfgs_needs_a_closure_and_resumes_bit_identically_from_a_checkpoint() {
    let cfg = Lbfgs {
        max_iter: 3,
        max_eval: 4,
        history_size: 2,
        strong_wolfe: true,
        ..Lbfgs::default()
    };
    let x = Tensor::zeros([4], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let mut opt = LbfgsOptim::new(vec![x.shallow_clone()], cfg.clone()).unwrap();
    assert!(matches!(
        opt.step(),
        Err(Error::InvalidArgument {
            name: "closure",
            ..
        })
    ));
    assert_eq!(opt.hyperparameter(0, "lr").unwrap(), Hyper::Int(1));
    lbfgs_steps(&mut opt, 2);
    let path = temp("lbfgs");
    opt.save(&path).unwrap();
    let (at2, n_iter) = (x.detach().copy(), opt.state().n_iter);
    let losses = lbfgs_steps(&mut opt, 3);

    let y = at2.copy().set_requires_grad(true);
    let mut other = LbfgsOptim::new(vec![y.shallow_clone()], Lbfgs::default()).unwrap();
    other.load(&path).unwrap();
    assert_eq!(other.config().history_size, 2);
    assert_eq!(other.state().n_iter, n_iter);
    assert_eq!(lbfgs_steps(&mut other, 3), losses);
    assert_eq!(values(&y), values(&x));
    let values_json = metadata(&path, "state_values");
    assert!(
        values_json.contains("\"old_dirs\":[{\"tensor\":\"state.0.old_dirs.0\"}"),
        "{values_json}"
    );
    assert!(losses[2] < losses[0] / 1000.0, "{losses:?}");
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
}
