//! Every instruction-set variant of the fused loop gives the baseline loop's bits, on inputs
//! chosen to hit the edge cases of rounding to half types: NaN, infinities, subnormals, zeros
//! of both signs, bfloat16 ties, and values whose results are subnormal.

use super::kernel::{piece_isa, supported_isas, Isa, Job};
use crate::element::Storage;
use crate::rule::{Rule, ScalarState, MAX_STATE};
use crate::rules::{AdEMAMix, Adam, Adan, Lion, Sgd};
use half::{bf16, f16};
use tch::Kind;

/// Deterministic adversarial values: mostly normal numbers over a wide range of magnitudes,
/// one in three a special value.
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let r = (x >> 11) as f64 / (1u64 << 53) as f64; // [0, 1)
            match x % 30 {
                0 => f32::NAN,
                1 => -f32::NAN,
                2 => f32::INFINITY,
                3 => f32::NEG_INFINITY,
                4 => 1.0e-40,  // subnormal
                5 => -3.0e-39, // subnormal
                6 => 0.0,
                7 => -0.0,
                8 => 1.0 + 2f32.powi(-8), // bfloat16 tie, rounds to even (down)
                9 => 1.0 + 3.0 * 2f32.powi(-8), // bfloat16 tie, rounds up
                10 => 1.2e-38,            // results near the smallest normal
                _ => ((r - 0.5) * 2f64.powi((x % 40) as i32 - 20)) as f32,
            }
        })
        .collect()
}

/// Runs `steps` steps of `rule` on `n` elements stored as `S` with the variant `isa`, as one
/// piece (with `grad_scale` when given); returns the bits of the parameter, the gradient and
/// the state tensors, NaNs made canonical (the variants may carry different NaN payloads and
/// signs for f32 and f16, as they already did before the AVX512_BF16 variant).
fn run<R: Rule, S: Storage, const N: usize>(
    rule: &R,
    isa: Isa,
    n: usize,
    steps: usize,
    grad_scale: Option<f64>,
) -> Vec<u64> {
    assert_eq!(rule.state_names().len(), N);
    let conv = |v: Vec<f32>| -> Vec<S> {
        v.into_iter()
            .map(|x| {
                S::store(<S::Compute as crate::element::Float>::from_f64(f64::from(
                    x,
                )))
            })
            .collect()
    };
    let mut param = conv(values(n, 1));
    let mut state: Vec<Vec<S>> = (0..N)
        .map(|k| conv(values(n, 10 + k as u64)).into_iter().collect())
        .collect();
    // (Second moments are non-negative in training; negative ones here exercise NaN paths.)
    let mut scalar_state =
        vec![ScalarState::new(0.0, Kind::Float); rule.scalar_state_names().len()];
    let mut grad = Vec::new();
    for t in 0..steps {
        grad = conv(values(n, 100 + t as u64));
        let scalars = rule.scalars(&mut scalar_state, t == 0);
        let mut ptrs = [std::ptr::null_mut::<u8>(); MAX_STATE];
        for (k, s) in state.iter_mut().enumerate() {
            ptrs[k] = s.as_mut_ptr() as *mut u8;
        }
        let job = Job {
            scalars,
            kind: S::KIND,
            numel: n,
            n_state: N,
            param: param.as_mut_ptr() as *mut u8,
            grad: grad.as_mut_ptr() as *mut u8,
            grad_scale,
            state: ptrs,
        };
        // SAFETY: `isa` comes from `supported_isas()`; the buffers are distinct, `n` elements
        // long, of the storage type the job names, and only this thread touches them.
        unsafe { piece_isa::<R, S, N>(isa, &job, 0, n) };
    }
    let bits = |v: &[S]| -> Vec<u64> {
        v.iter()
            .map(|&x| {
                let f = <S::Compute as crate::element::Float>::to_f64(x.load());
                if f.is_nan() {
                    u64::MAX
                } else {
                    f.to_bits()
                }
            })
            .collect::<Vec<_>>()
    };
    let mut out = bits(&param);
    out.extend(bits(&grad));
    for s in &state {
        out.extend(bits(s));
    }
    out
}

/// Raw bfloat16 bits (NaN included): the bfloat16 store writes the canonical NaN on every
/// variant, so here even NaN bits must agree.
fn run_bf16_raw<R: Rule, const N: usize>(rule: &R, isa: Isa, n: usize) -> Vec<u16> {
    let mut param: Vec<bf16> = values(n, 1).into_iter().map(bf16::store).collect();
    let mut grad: Vec<bf16> = values(n, 2).into_iter().map(bf16::store).collect();
    let mut state: Vec<Vec<bf16>> = (0..N)
        .map(|k| {
            values(n, 3 + k as u64)
                .into_iter()
                .map(bf16::store)
                .collect()
        })
        .collect();
    let mut scalar_state =
        vec![ScalarState::new(0.0, Kind::Float); rule.scalar_state_names().len()];
    let mut ptrs = [std::ptr::null_mut::<u8>(); MAX_STATE];
    for (k, s) in state.iter_mut().enumerate() {
        ptrs[k] = s.as_mut_ptr() as *mut u8;
    }
    let job = Job {
        scalars: rule.scalars(&mut scalar_state, false),
        kind: Kind::BFloat16,
        numel: n,
        n_state: N,
        param: param.as_mut_ptr() as *mut u8,
        grad: grad.as_mut_ptr() as *mut u8,
        grad_scale: Some(0.5),
        state: ptrs,
    };
    // SAFETY: as in `run`.
    unsafe { piece_isa::<R, bf16, N>(isa, &job, 0, n) };
    let mut out: Vec<u16> = param.iter().map(|x| x.to_bits()).collect();
    out.extend(grad.iter().map(|x| x.to_bits()));
    for s in &state {
        out.extend(s.iter().map(|x| x.to_bits()));
    }
    out
}

fn check_rule<R: Rule, const N: usize>(name: &str, rule: &R) {
    let isas = supported_isas();
    // 1000 elements: 62 whole chunks of 16 and a tail of 8.
    let n = 1000;
    for grad_scale in [None, Some(0.25)] {
        let base32 = run::<R, f32, N>(rule, Isa::Baseline, n, 3, grad_scale);
        let base16 = run::<R, f16, N>(rule, Isa::Baseline, n, 3, grad_scale);
        let baseb = run::<R, bf16, N>(rule, Isa::Baseline, n, 3, grad_scale);
        for &isa in &isas[1..] {
            assert!(
                base32 == run::<R, f32, N>(rule, isa, n, 3, grad_scale),
                "{name} f32 {isa:?}"
            );
            assert!(
                base16 == run::<R, f16, N>(rule, isa, n, 3, grad_scale),
                "{name} f16 {isa:?}"
            );
            assert!(
                baseb == run::<R, bf16, N>(rule, isa, n, 3, grad_scale),
                "{name} bf16 {isa:?}"
            );
        }
    }
    let raw = run_bf16_raw::<R, N>(rule, Isa::Baseline, n);
    for &isa in &isas[1..] {
        assert!(
            raw == run_bf16_raw::<R, N>(rule, isa, n),
            "{name} bf16 raw bits {isa:?}"
        );
    }
}

#[test]
fn every_variant_gives_the_baseline_bits() {
    let isas = supported_isas();
    assert_eq!(isas[0], Isa::Baseline);
    check_rule::<Adam, 3>(
        "Adam amsgrad maximize",
        &Adam {
            lr: 0.01,
            weight_decay: 0.1,
            amsgrad: true,
            maximize: true,
            ..Adam::default()
        },
    );
    check_rule::<Adam, 2>("AdamW", &Adam::adamw());
    check_rule::<Sgd, 1>(
        "SGD nesterov",
        &Sgd {
            lr: 0.1,
            momentum: 0.9,
            nesterov: true,
            weight_decay: 0.01,
            ..Sgd::default()
        },
    );
    check_rule::<Sgd, 0>("SGD", &Sgd::default());
    check_rule::<Lion, 1>(
        "Lion",
        &Lion {
            weight_decay: 0.1,
            ..Lion::default()
        },
    );
    check_rule::<Adan, 4>(
        "Adan",
        &Adan {
            weight_decay: 0.02,
            ..Adan::default()
        },
    );
    check_rule::<AdEMAMix, 3>("AdEMAMix", &AdEMAMix::default());
}

/// The dispatch picks the best variant the CPU has, and on a CPU with AVX512_BF16 that is the
/// variant with hardware bfloat16 rounding.
#[test]
fn dispatch_lists_the_variants_the_cpu_has() {
    let isas = supported_isas();
    assert!(isas.windows(2).all(|w| w[0] != w[1]));
    #[cfg(target_arch = "x86_64")]
    {
        let bf16 = std::fs::read_to_string("/proc/cpuinfo")
            .map(|c| c.contains(" avx512_bf16"))
            .unwrap_or(false);
        if bf16 && is_x86_feature_detected!("avx512f") {
            assert_eq!(isas.last(), Some(&Isa::Avx512Bf16));
        }
    }
}
