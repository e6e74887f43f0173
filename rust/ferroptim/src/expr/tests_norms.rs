//! Graph rules with per-tensor norms: LAMB written as a graph reproduces the built-in
//! [`crate::rules::Lamb`] bit for bit through the driver (both passes, any thread count), and
//! graphs whose norm terms read the norms are refused.

use super::eval;
use super::*;
use crate::driver::{step, Group, ParamTensors};
use crate::rule::NormSink;
use crate::rules::Lamb;
use tch::{Device, Kind, Tensor};

/// LAMB (decoupled weight decay, gradient averaging) as `rules/lamb.rs` computes it: hypers
/// lr, β₁, β₂, ε, λ; norm terms the decayed parameter and the direction `r`.
fn lamb_graph() -> Graph {
    use ScalarOp as S;
    let scalars = vec![
        S::Hyper(0),          // 0 lr
        S::Hyper(1),          // 1 β₁
        S::Hyper(2),          // 2 β₂
        S::Hyper(3),          // 3 ε
        S::Hyper(4),          // 4 λ
        S::Const(1.0),        // 5
        S::Sub(5, 1),         // 6 1 − β₁
        S::Sub(5, 2),         // 7 1 − β₂
        S::Mul(4, 0),         // 8 λγ
        S::Sub(5, 8),         // 9 1 − λγ
        S::Step,              // 10
        S::Pow(1, 10),        // 11 β₁ᵗ
        S::Sub(5, 11),        // 12
        S::Div(0, 12),        // 13 step size
        S::Neg(13),           // 14
        S::NormSq(0),         // 15
        S::Sqrt(15),          // 16 ‖θ‖
        S::Const(10.0),       // 17
        S::Lt(16, 17),        // 18
        S::Where(18, 16, 17), // 19 min(‖θ‖, 10) as f64::min
        S::NormSq(1),         // 20
        S::Sqrt(20),          // 21 ‖r‖
        S::Add(21, 3),        // 22
        S::Div(19, 22),       // 23
        S::Const(0.0),        // 24
        S::Eq(21, 24),        // 25
        S::Where(25, 5, 23),  // 26
        S::Eq(19, 24),        // 27
        S::Where(27, 5, 26),  // 28 trust ratio
        S::Mul(14, 28),       // 29 −step size · trust
    ];
    use Op::*;
    let nodes = vec![
        Param,            // 0
        Grad,             // 1
        State(0),         // 2 m
        State(1),         // 3 v
        Slot(0),          // 4 β₁
        Slot(1),          // 5 1 − β₁
        Slot(2),          // 6 β₂
        Slot(3),          // 7 1 − β₂
        Slot(4),          // 8 ε
        Slot(5),          // 9 λ
        Slot(6),          // 10 1 − λγ
        Slot(7),          // 11 −step size · trust
        Mul(2, 4),        // 12
        Fma(5, 1, 12),    // 13 m'
        Mul(7, 1),        // 14
        Mul(3, 6),        // 15
        Fma(14, 1, 15),   // 16 v'
        Const(0.0),       // 17
        Eq(9, 17),        // 18
        Mul(0, 10),       // 19
        Where(18, 0, 19), // 20 θ decayed (when λ ≠ 0)
        Sqrt(16),         // 21
        Add(21, 8),       // 22
        Div(13, 22),      // 23 r
        Fma(11, 23, 20),  // 24 θ'
    ];
    Graph {
        state_names: vec!["exp_avg".into(), "exp_avg_sq".into()],
        nodes,
        param_out: 24,
        state_out: vec![13, 16],
        scalars,
        slots: vec![1, 6, 2, 7, 3, 4, 9, 29],
        n_hypers: 5,
        norms: vec![20, 23],
    }
}

const LR: f64 = 0.02;
const WD: f64 = 0.1;

fn params(kind: Kind, sizes: &[i64], seed: i64) -> Vec<Tensor> {
    tch::manual_seed(seed);
    sizes
        .iter()
        .map(|&n| Tensor::randn([n], (Kind::Float, Device::Cpu)).to_kind(kind))
        .collect()
}

fn tensors(p: &Tensor, g: &Tensor, st: &[Tensor], step: &Tensor, fresh: bool) -> ParamTensors {
    ParamTensors {
        param: p.shallow_clone(),
        grad: g.shallow_clone(),
        state: st.iter().map(Tensor::shallow_clone).collect(),
        scalar_state: vec![step.shallow_clone()],
        fresh,
    }
}

/// `steps` steps of `rule` (gradients regenerated per step); returns params and state.
fn run<R: Rule + Copy>(rule: R, kind: Kind, sizes: &[i64], steps: i64) -> Vec<Tensor> {
    let ps = params(kind, sizes, 1);
    let states: Vec<Vec<Tensor>> = ps
        .iter()
        .map(|p| vec![p.zeros_like(), p.zeros_like()])
        .collect();
    let counts: Vec<Tensor> = ps
        .iter()
        .map(|_| Tensor::zeros([], (Kind::Float, Device::Cpu)))
        .collect();
    for t in 0..steps {
        let gs = params(kind, sizes, 100 + t);
        let mut groups = vec![Group {
            rule,
            params: ps
                .iter()
                .zip(&gs)
                .zip(&states)
                .zip(&counts)
                .map(|(((p, g), st), c)| tensors(p, g, st, c, t == 0))
                .collect(),
        }];
        step(&mut groups).expect("step");
    }
    ps.into_iter()
        .zip(states)
        .flat_map(|(p, st)| std::iter::once(p).chain(st))
        .collect()
}

#[test]
fn lamb_graph_is_the_builtin_bit_for_bit() {
    let builtin = Lamb {
        lr: LR,
        weight_decay: WD,
        ..Lamb::default()
    };
    let d = Lamb::default();
    let graph = GraphRule::new(&lamb_graph(), &[LR, d.beta1, d.beta2, d.eps, WD]).unwrap();
    // Sizes around the reduction's lanes and blocks; 40000 makes the step parallel.
    let sizes = [1, 129, 9170, 40_000];
    for kind in [Kind::Float, Kind::BFloat16] {
        let mut first: Option<Vec<Tensor>> = None;
        for threads in [1, 2] {
            tch::set_num_threads(threads);
            let want = run(builtin, kind, &sizes, 6);
            let got = run(graph, kind, &sizes, 6);
            for (k, (a, b)) in want.iter().zip(&got).enumerate() {
                assert!(
                    a.equal(b),
                    "{kind:?}, {threads} threads: tensor {k} differs"
                );
            }
            if let Some(f) = &first {
                assert!(f.iter().zip(&got).all(|(a, b)| a.equal(b)), "thread count");
            }
            first = Some(got);
        }
    }
    tch::set_num_threads(1);
    // The test can fail: without the clamp of ‖θ‖ (the norms of these tensors exceed 10)
    // the results differ.
    let mut g = lamb_graph();
    g.scalars[17] = ScalarOp::Const(1e30);
    let perturbed = GraphRule::new(&g, &[LR, d.beta1, d.beta2, d.eps, WD]).unwrap();
    let want = run(builtin, Kind::Float, &sizes, 2);
    let got = run(perturbed, Kind::Float, &sizes, 2);
    assert!(
        !want[9].equal(&got[9]),
        "an unclamped ‖θ‖ gave the same result"
    );
}

#[test]
fn norm_terms_slice_matches_the_element_terms() {
    let d = Lamb::default();
    let rule = GraphRule::new(&lamb_graph(), &[LR, d.beta1, d.beta2, d.eps, WD]).unwrap();
    let s = rule.scalars(&mut [ScalarState::new(2.0, Kind::Float)], false);
    let n = 300;
    let p: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
    let g: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
    let m: Vec<f32> = (0..n).map(|i| (i as f32 * 0.05).sin() * 0.1).collect();
    let v: Vec<f32> = (0..n)
        .map(|i| (i as f32 * 0.07).cos().abs() * 0.01)
        .collect();
    let mut rows: Vec<Vec<f32>> = vec![vec![], vec![]];
    let done = GraphRule::norm_terms_slice(&s, Some(4.0), &p, &g, &[&m, &v], &mut |t| {
        assert_eq!(t.len(), 2);
        for (r, x) in rows.iter_mut().zip(t) {
            r.extend_from_slice(x);
        }
    });
    assert!(done);
    assert_eq!(rows[0].len(), n);
    for i in 0..n {
        let t = GraphRule::norm_terms(&s, p[i], g[i] / 4.0, &[m[i], v[i]]);
        assert_eq!((rows[0][i], rows[1][i]), (t[0], t[1]), "{i}");
        // The built-in rule's terms (its scalars before the norms: trust 1).
        let mut st = [ScalarState::new(2.0, Kind::Float)];
        let b = Lamb {
            lr: LR,
            weight_decay: WD,
            ..d
        }
        .scalars(&mut st, false);
        let want = Lamb::norm_terms(&b, p[i], g[i] / 4.0, &[m[i], v[i]]);
        assert_eq!((t[0], t[1]), (want[0], want[1]), "{i}");
    }
}

/// The norm pass through the compiled kernel (f32, bf16) and through the interpreter (f64
/// storage, which the kernels do not take, and `eval` directly) gives the same terms.
type Run<'a> = dyn FnMut(&mut NormSink<'_, f32>) -> bool + 'a;

#[test]
fn norm_terms_compiled_and_interpreted_agree() {
    let d = Lamb::default();
    let rule = GraphRule::new(&lamb_graph(), &[LR, d.beta1, d.beta2, d.eps, WD]).unwrap();
    let s = rule.scalars(&mut [ScalarState::new(4.0, Kind::Float)], false);
    let n = 261;
    let f = |a: f32, b: f32| -> Vec<f32> { (0..n).map(|i| (i as f32 * a).sin() * b).collect() };
    let (p, g, m) = (f(0.37, 1.0), f(0.11, 3.0), f(0.05, 0.1));
    let v: Vec<f32> = f(0.07, 0.01).iter().map(|x| x.abs()).collect();
    let collect = |run: &mut Run<'_>| {
        let mut rows: Vec<Vec<f32>> = vec![vec![], vec![]];
        assert!(run(&mut |t| {
            for (r, x) in rows.iter_mut().zip(t) {
                r.extend_from_slice(x);
            }
        }));
        rows
    };
    for scale in [None, Some(8.0)] {
        let driver =
            collect(&mut |sink| GraphRule::norm_terms_slice(&s, scale, &p, &g, &[&m, &v], sink));
        let interp = collect(&mut |sink| {
            eval::norm_terms_slice(s.graph, &s.slots, scale, &p, &g, &[&m, &v], sink);
            true
        });
        assert_eq!(driver, interp);
        // f64 storage: the interpreter, in f64 (compared after rounding to f32 within 1 ulp).
        let w = |x: &[f32]| -> Vec<f64> { x.iter().map(|&y| f64::from(y)).collect() };
        let (p64, g64, m64, v64) = (w(&p), w(&g), w(&m), w(&v));
        let mut r64: Vec<Vec<f64>> = vec![vec![], vec![]];
        assert!(GraphRule::norm_terms_slice(
            &s,
            scale,
            &p64,
            &g64,
            &[&m64, &v64],
            &mut |t| {
                for (r, x) in r64.iter_mut().zip(t) {
                    r.extend_from_slice(x);
                }
            }
        ));
        for (a, b) in r64[1].iter().zip(&driver[1]) {
            assert!(
                (a - f64::from(*b)).abs() <= 1e-5 * a.abs().max(1e-3),
                "{a} {b}"
            );
        }
    }
    // bf16 storage through the kernel: the interpreter's terms.
    let h = |x: &[f32]| -> Vec<half::bf16> { x.iter().map(|&y| half::bf16::from_f32(y)).collect() };
    let (pb, gb, mb, vb) = (h(&p), h(&g), h(&m), h(&v));
    let driver = collect(&mut |sink| {
        GraphRule::norm_terms_slice(&s, Some(2.0), &pb, &gb, &[&mb, &vb], sink)
    });
    let interp = collect(&mut |sink| {
        eval::norm_terms_slice(s.graph, &s.slots, Some(2.0), &pb, &gb, &[&mb, &vb], sink);
        true
    });
    assert_eq!(driver, interp);
}

#[test]
fn norm_terms_that_read_the_norms_are_refused() {
    let mut g = lamb_graph();
    // Node 19 (the decayed θ's factor) made the trust slot: a norm term reading the norms.
    g.nodes[19] = Op::Mul(0, 11);
    let e = GraphRule::new(&g, &[0.0; 5]).unwrap_err().to_string();
    assert!(e.contains("norm term reads node 11"), "{e}");
    let mut g = lamb_graph();
    g.norms.push(23);
    g.norms.push(20); // three terms
    assert!(GraphRule::new(&g, &[0.0; 5]).is_err());
    let mut g = lamb_graph();
    g.norms.truncate(1); // NormSq(1) out of range
    let e = GraphRule::new(&g, &[0.0; 5]).unwrap_err().to_string();
    assert!(e.contains("NormSq(1)"), "{e}");
}

/// The update pass of a graph with norms through the compiled kernel: the norm-dependent slot
/// is a uniform value, and the results are the interpreter's.
#[cfg(target_arch = "x86_64")]
#[test]
fn compiled_update_with_norm_slots_matches_the_interpreter() {
    if !super::jit::enabled() {
        return;
    }
    let d = Lamb::default();
    let rule = GraphRule::new(&lamb_graph(), &[LR, d.beta1, d.beta2, d.eps, WD]).unwrap();
    let mut s = rule.scalars(&mut [ScalarState::new(0.0, Kind::Float)], true);
    GraphRule::with_norms(&mut s, [400.0, 9.0]);
    assert_eq!(s.slots[7], -(LR / (1.0 - d.beta1)) * (10.0 / (3.0 + d.eps)));
    let n = 133;
    let p0: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
    let g0: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
    let (mut p1, mut g1, mut m1, mut v1) = (p0.clone(), g0.clone(), vec![0.0; n], vec![0.0; n]);
    let (mut p2, mut g2, mut m2, mut v2) = (p0.clone(), g0.clone(), vec![0.0; n], vec![0.0; n]);
    assert!(super::compiled::update_slice_compiled(
        s.graph,
        &s.slots,
        None,
        &mut p1,
        &mut g1,
        &mut [&mut m1[..], &mut v1[..]]
    ));
    super::eval::update_slice(
        s.graph,
        &s.slots,
        None,
        &mut p2,
        &mut g2,
        &mut [&mut m2[..], &mut v2[..]],
    );
    for i in 0..n {
        assert_eq!(p1[i].to_bits(), p2[i].to_bits(), "{i}");
        assert_eq!((m1[i], v1[i]), (m2[i], v2[i]), "{i}");
    }
}
