//! The compiled kernels (`jit.rs`) against the interpreter (`eval.rs`): every operation, on
//! special values (NaN, ±∞, ±0, subnormals, ties), in `f32`, `bf16` and `f16` storage, with
//! and without a loss scale, at lengths around the vector and block sizes.

use super::*;
use super::{compiled, eval};
use half::{bf16, f16};

/// Every element operation once, a `where` on an element mask and one on a uniform mask
/// (hyperparameter 1), and a node from slots and constants only.
fn every_op_graph() -> Graph {
    use Op::*;
    Graph {
        state_names: vec!["a".into(), "b".into()],
        nodes: vec![
            Param,             // 0
            Grad,              // 1
            State(0),          // 2
            State(1),          // 3
            Slot(0),           // 4
            Slot(1),           // 5 the uniform mask
            Const(0.5),        // 6
            Neg(0),            // 7
            Abs(1),            // 8
            Sqrt(8),           // 9
            Exp(2),            // 10
            Log(8),            // 11
            Sign(1),           // 12
            Add(7, 9),         // 13
            Sub(10, 11),       // 14
            Mul(12, 4),        // 15
            Div(0, 8),         // 16
            Max(13, 14),       // 17
            Min(15, 16),       // 18
            Lt(0, 1),          // 19
            Le(2, 3),          // 20
            Eq(12, 6),         // 21
            Fma(17, 18, 3),    // 22
            Where(19, 22, 16), // 23
            Where(5, 23, 17),  // 24
            Add(24, 20),       // 25
            Mul(21, 6),        // 26
            Add(25, 26),       // 27
            Mul(4, 6),         // 28 uniform
            Sub(27, 28),       // 29
        ],
        param_out: 29,
        state_out: vec![22, 23],
        scalars: vec![ScalarOp::Hyper(0), ScalarOp::Hyper(1)],
        slots: vec![0, 1],
        n_hypers: 2,
        norms: vec![],
    }
}

/// Deterministic values: special ones first, then pseudo-random magnitudes over many binades.
fn values(len: usize, seed: u32) -> Vec<f32> {
    let special = [
        f32::NAN,
        -f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        0.0,
        -0.0,
        1e-40,
        -1e-41,
        0.5,
        1.0,
        -1.0,
        f32::MAX,
        f32::MIN_POSITIVE,
        1.0 + f32::EPSILON,
        100.0,
        -3.0,
    ];
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(12345);
    (0..len)
        .map(|i| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            if (x >> 28) == 0 {
                special[((x >> 8) as usize + i) % special.len()]
            } else {
                let mant = (x >> 9) as f32 / (1u32 << 23) as f32 + 1.0;
                let exp = ((x >> 2) % 24) as i32 - 12;
                let sign = if x & 1 == 0 { 1.0 } else { -1.0 };
                sign * mant * 2f32.powi(exp)
            }
        })
        .collect()
}

fn bits<S: Storage>(xs: &[S]) -> Vec<u64> {
    xs.iter().map(|x| x.load().to_f64().to_bits()).collect()
}

fn compare<S: Storage>(to: impl Fn(f32) -> S, mask: f64, scale: Option<f64>) {
    let g: &'static Graph = intern(&every_op_graph()).unwrap();
    let slots = g.slot_values(&[0.75, mask], 1.0, false, &[0.0; 2]);
    for len in [0usize, 1, 3, 4, 5, 127, 128, 129, 300] {
        let make = |seed| values(len, seed).into_iter().map(&to).collect::<Vec<S>>();
        let (p0, g0, a0, b0) = (make(1), make(2), make(3), make(4));
        let run = |compiled: bool| {
            let (mut p, mut gr, mut a, mut b) = (p0.clone(), g0.clone(), a0.clone(), b0.clone());
            let mut st = [&mut a[..], &mut b[..]];
            if compiled {
                assert!(compiled::update_slice_compiled(
                    g, &slots, scale, &mut p, &mut gr, &mut st
                ));
            } else {
                eval::update_slice(g, &slots, scale, &mut p, &mut gr, &mut st);
            }
            [bits(&p), bits(&gr), bits(&a), bits(&b)]
        };
        let (want, got) = (run(false), run(true));
        for (k, (w, o)) in want.iter().zip(&got).enumerate() {
            for (i, (x, y)) in w.iter().zip(o).enumerate() {
                // A NaN is a NaN: which operand's payload (and sign) an instruction passes on
                // depends on the form the code generator picked (see jit.rs).
                let nan = |b: u64| f64::from_bits(b).is_nan();
                assert!(
                    x == y || (nan(*x) && nan(*y)),
                    "len {len} output {k} element {i}: interpreter {:e}, compiled {:e}",
                    f64::from_bits(*x),
                    f64::from_bits(*y)
                );
            }
        }
    }
}

#[test]
fn compiled_kernels_match_the_interpreter() {
    if !jit::enabled() {
        return; // no SSE4.1 + FMA: the interpreter is the only path
    }
    for mask in [1.0, 0.0] {
        for scale in [None, Some(0.25), Some(3.0)] {
            compare::<f32>(|x| x, mask, scale);
            compare::<bf16>(bf16::from_f32, mask, scale);
            compare::<f16>(f16::from_f32, mask, scale);
        }
    }
}
