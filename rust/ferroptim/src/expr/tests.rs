use super::*;
use half::bf16;

/// `p ← p − lr·(g / (√v + ε))` with `v ← βv + (1 − β)g²` (RMSprop-like, one state): slots
/// lr, β, 1 − β, ε from hyperparameters lr, β, ε.
fn rms_graph() -> Graph {
    use Op::*;
    Graph {
        state_names: vec!["square_avg".into()],
        nodes: vec![
            Param,        // 0
            Grad,         // 1
            State(0),     // 2
            Slot(0),      // 3 lr
            Slot(1),      // 4 β
            Slot(2),      // 5 1 − β
            Slot(3),      // 6 ε
            Mul(2, 4),    // 7 βv
            Mul(5, 1),    // 8 (1 − β)g
            Fma(8, 1, 7), // 9 v'
            Sqrt(9),      // 10
            Add(10, 6),   // 11
            Div(1, 11),   // 12
            Mul(3, 12),   // 13
            Sub(0, 13),   // 14 p'
        ],
        param_out: 14,
        state_out: vec![9],
        scalars: vec![
            ScalarOp::Hyper(0),
            ScalarOp::Hyper(1),
            ScalarOp::Const(1.0),
            ScalarOp::Sub(2, 1),
            ScalarOp::Hyper(2),
        ],
        slots: vec![0, 1, 3, 4],
        n_hypers: 3,
        norms: vec![],
    }
}

fn reference(p: f32, g: f32, v: f32, lr: f32, beta: f32, omb: f32, eps: f32) -> (f32, f32) {
    let v2 = (omb * g).mul_add(g, v * beta);
    (p - lr * (g / (v2.sqrt() + eps)), v2)
}

#[test]
fn blocks_match_the_element_formula_at_every_length() {
    let rule = GraphRule::new(&rms_graph(), &[0.01, 0.9, 1e-8]).unwrap();
    let mut steps = [ScalarState::new(0.0, tch::Kind::Float)];
    let s = rule.scalars(&mut steps, false);
    assert_eq!(steps[0].get(), 1.0);
    let (lr, beta, eps) = (0.01f64 as f32, 0.9f64 as f32, 1e-8f64 as f32);
    let omb = (1.0 - 0.9f64) as f32;
    for len in [0usize, 1, 7, 127, 128, 129, 300] {
        let p0: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37).sin()).collect();
        let mut g: Vec<f32> = (0..len).map(|i| (i as f32 * 0.11).cos()).collect();
        let v0: Vec<f32> = (0..len).map(|i| (i as f32 * 0.05).sin().abs()).collect();
        let (mut p, mut v) = (p0.clone(), v0.clone());
        assert!(GraphRule::update_slice(
            &s,
            None,
            &mut p,
            &mut g,
            &mut [&mut v[..]]
        ));
        for i in 0..len {
            let (pe, ve) = reference(p0[i], g[i], v0[i], lr, beta, omb, eps);
            assert_eq!(
                (p[i].to_bits(), v[i].to_bits()),
                (pe.to_bits(), ve.to_bits()),
                "{i}"
            );
            let mut st = [v0[i]];
            let one = GraphRule::update(&s, p0[i], g[i], &mut st);
            assert_eq!(
                (one.to_bits(), st[0].to_bits()),
                (pe.to_bits(), ve.to_bits())
            );
        }
    }
}

#[test]
fn half_storage_rounds_once_and_unscales_the_gradient() {
    let rule = GraphRule::new(&rms_graph(), &[0.01, 0.9, 1e-8]).unwrap();
    let s = rule.scalars(&mut [ScalarState::new(0.0, tch::Kind::Float)], false);
    let mut p = [bf16::from_f32(0.5); 3];
    let mut g = [bf16::from_f32(4.0); 3];
    let mut v = [bf16::from_f32(0.25); 3];
    assert!(GraphRule::update_slice(
        &s,
        Some(2.0),
        &mut p,
        &mut g,
        &mut [&mut v[..]]
    ));
    let omb = (1.0 - 0.9f64) as f32;
    let (pe, ve) = reference(0.5, 2.0, 0.25, 0.01, 0.9, omb, 1e-8);
    assert_eq!(g[0], bf16::from_f32(2.0));
    assert_eq!((p[2], v[2]), (bf16::from_f32(pe), bf16::from_f32(ve)));
}

#[test]
fn scalar_graph_follows_python_float_arithmetic() {
    use ScalarOp::*;
    let mut g = rms_graph();
    // slot 0 ← lr / (1 − β^step), as Adam's step size.
    g.scalars = vec![
        Hyper(0),
        Hyper(1),
        Step,
        Pow(1, 2),
        Const(1.0),
        Sub(4, 3),
        Div(0, 5),
        Hyper(2),
    ];
    g.slots = vec![6, 1, 5, 7];
    let rule = GraphRule::new(&g, &[0.01, 0.9, 1e-8]).unwrap();
    let slots = g.slot_values(&[0.01, 0.9, 1e-8], 3.0, false, &[0.0; 2]);
    assert_eq!(slots[0], 0.01 / (1.0 - 0.9f64.powf(3.0)));
    assert_eq!(slots[2], 1.0 - 0.9f64.powf(3.0));
    let mut steps = [ScalarState::new(2.0, tch::Kind::Float)];
    assert_eq!(rule.scalars(&mut steps, false).slots[0], slots[0]);
}

#[test]
fn bad_graphs_are_refused_naming_the_node() {
    let mut g = rms_graph();
    g.nodes[7] = Op::Mul(2, 9); // a later node
    let e = GraphRule::new(&g, &[0.0; 3]).unwrap_err().to_string();
    assert!(e.contains("node 7"), "{e}");
    let mut g = rms_graph();
    g.nodes[2] = Op::State(1); // one state tensor only
    assert!(GraphRule::new(&g, &[0.0; 3]).is_err());
    assert!(GraphRule::new(&rms_graph(), &[0.0; 2]).is_err()); // hyperparameter count
    let mut g = rms_graph();
    g.state_out.clear();
    assert!(GraphRule::new(&g, &[0.0; 3]).is_err());
}

#[test]
fn equal_graphs_are_interned_once() {
    let a = GraphRule::new(&rms_graph(), &[0.1, 0.9, 1e-8]).unwrap();
    let b = GraphRule::new(&rms_graph(), &[0.2, 0.5, 1e-6]).unwrap();
    assert!(std::ptr::eq(a.graph(), b.graph()));
    assert_eq!(a.state_names(), &["square_avg"]);
}
