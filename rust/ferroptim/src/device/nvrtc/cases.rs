//! Test catalogue: every elementwise rule in several configurations, traced, with random and
//! special inputs and the Rust rule's outputs (the CPU kernel's element loop, `driver/kernel.rs`).

use super::emit::Dtype;
use super::sym::Trace;
use super::trace_update;
use crate::element::{Float, Storage};
use crate::rule::{Rule, ScalarState};
use crate::rules::*;
use half::{bf16, f16};
use tch::Kind;

/// One traced configuration with its inputs (in the harness's format) and expected outputs.
pub(crate) struct Case {
    pub name: String,
    pub dtype: Dtype,
    pub n_state: usize,
    pub trace: Trace,
    pub input: Vec<u8>,
    pub expected: Vec<u8>,
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// A value: mostly random magnitudes over 12 decades, sometimes special.
    fn value(&mut self, nonnegative: bool) -> f64 {
        const SPECIAL: [f64; 14] = [
            0.0,
            -0.0,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
            1e-40,  // f32 subnormal
            -3e-42, // f32 subnormal
            6e-8,   // f16 subnormal
            3e38,
            -3e38,
            1.0,
            0.5,
            1.0 + 1.0 / 256.0, // bf16 tie
            65504.0,
        ];
        if self.unit() < 0.08 {
            return SPECIAL[(self.next() % SPECIAL.len() as u64) as usize];
        }
        let mag = 10f64.powf(self.unit() * 12.0 - 9.0);
        if nonnegative || self.next() & 1 == 0 {
            mag
        } else {
            -mag
        }
    }
}

fn bytes<S: Copy>(v: &[S]) -> &[u8] {
    // SAFETY: `S` is one of f32, f64, bf16, f16: plain data without padding; the slice is
    // borrowed for the returned lifetime and its length in bytes is `size_of_val(v)`.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
}

fn dtype_of(kind: Kind) -> Dtype {
    match kind {
        Kind::Double => Dtype::F64,
        Kind::BFloat16 => Dtype::Bf16,
        Kind::Half => Dtype::F16,
        _ => Dtype::F32,
    }
}

const N: usize = 512;

/// Traces `rule` after `steps` steps and runs it on random inputs.
fn case<R: Rule, S: Storage>(
    name: &str,
    rule: &R,
    steps: usize,
    scale: Option<f32>,
    seed: u64,
) -> Case {
    let dtype = dtype_of(S::KIND);
    let n_state = rule.state_names().len();
    let mut ss: Vec<ScalarState> = (0..rule.scalar_state_names().len())
        .map(|k| ScalarState::new(if k == 0 { 0.0 } else { 1.0 }, Kind::Float))
        .collect();
    let mut s = rule.scalars(&mut ss, true);
    for _ in 1..steps {
        s = rule.scalars(&mut ss, false);
    }
    R::with_norms(&mut s, [4.0, 9.0]);
    let trace = trace_update::<R>(&s, n_state, dtype)
        .unwrap_or_else(|e| panic!("{name}: trace failed: {e}"));
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let store = |v: f64| S::store(<S::Compute as Float>::from_f64(v));
    let mut p: Vec<S> = (0..N).map(|_| store(rng.value(false))).collect();
    let mut g: Vec<S> = (0..N).map(|_| store(rng.value(false))).collect();
    let mut st: Vec<Vec<S>> = (0..n_state)
        .map(|_| {
            (0..N)
                .map(|_| {
                    let nonnegative = rng.unit() < 0.8;
                    store(rng.value(nonnegative))
                })
                .collect()
        })
        .collect();
    let mut input = Vec::new();
    input.extend_from_slice(&(N as u64).to_le_bytes());
    input.extend_from_slice(&(trace.slots.len() as u64).to_le_bytes());
    for &v in &trace.slots {
        if dtype.f32_compute() {
            input.extend_from_slice(&(v as f32).to_le_bytes());
        } else {
            input.extend_from_slice(&v.to_le_bytes());
        }
    }
    input.extend_from_slice(&i32::from(scale.is_some()).to_le_bytes());
    input.extend_from_slice(&scale.unwrap_or(1.0).to_le_bytes());
    input.extend_from_slice(bytes(&p));
    input.extend_from_slice(bytes(&g));
    for k in &st {
        input.extend_from_slice(bytes(k));
    }
    // The CPU kernel's element loop (driver/kernel.rs).
    for i in 0..N {
        let mut gv = g[i].load();
        if let Some(sc) = scale {
            gv = gv / <S::Compute as Float>::from_f64(f64::from(sc));
            g[i] = S::store(gv);
        }
        let mut sv: Vec<S::Compute> = st.iter().map(|k| k[i].load()).collect();
        p[i] = S::store(R::update(&s, p[i].load(), gv, &mut sv));
        for (k, v) in sv.into_iter().enumerate() {
            st[k][i] = S::store(v);
        }
    }
    let mut expected = Vec::new();
    expected.extend_from_slice(bytes(&p));
    expected.extend_from_slice(bytes(&g));
    for k in &st {
        expected.extend_from_slice(bytes(k));
    }
    Case {
        name: format!(
            "{name}@{steps}{}",
            if scale.is_some() { "/scaled" } else { "" }
        ),
        dtype,
        n_state,
        trace,
        input,
        expected,
    }
}

/// The rule in every dtype, at its first step and at a later one (with a grad scale).
fn all_dtypes<R: Rule>(out: &mut Vec<Case>, name: &str, rule: R, later: usize) {
    let seed = out.len() as u64 + 1;
    for (steps, scale) in [(1, None), (later, Some(3000.0f32))] {
        out.push(case::<R, f32>(name, &rule, steps, scale, seed));
        out.push(case::<R, bf16>(name, &rule, steps, scale, seed + 1));
        out.push(case::<R, f16>(name, &rule, steps, scale, seed + 2));
        out.push(case::<R, f64>(name, &rule, steps, scale, seed + 3));
    }
}

/// Every elementwise rule, in the configurations that change its graph.
pub(crate) fn cases() -> Vec<Case> {
    let mut c = Vec::new();
    let o = &mut c;
    all_dtypes(o, "sgd", Sgd::default(), 3);
    all_dtypes(
        o,
        "sgd_momentum",
        Sgd {
            momentum: 0.9,
            dampening: 0.1,
            weight_decay: 1e-2,
            ..Sgd::default()
        },
        3,
    );
    all_dtypes(
        o,
        "sgd_nesterov_max",
        Sgd {
            momentum: 0.9,
            nesterov: true,
            maximize: true,
            ..Sgd::default()
        },
        3,
    );
    all_dtypes(o, "adam", Adam::default(), 4);
    all_dtypes(
        o,
        "adamw_amsgrad",
        Adam {
            amsgrad: true,
            ..Adam::adamw()
        },
        4,
    );
    all_dtypes(
        o,
        "adam_l2_max",
        Adam {
            weight_decay: 1e-2,
            maximize: true,
            ..Adam::default()
        },
        4,
    );
    all_dtypes(o, "adagrad", Adagrad::default(), 4);
    all_dtypes(
        o,
        "adagrad_decay",
        Adagrad {
            lr_decay: 1e-2,
            weight_decay: 1e-2,
            maximize: true,
            ..Adagrad::default()
        },
        4,
    );
    all_dtypes(o, "adamax", Adamax::default(), 4);
    all_dtypes(
        o,
        "adamax_wd",
        Adamax {
            weight_decay: 1e-2,
            maximize: true,
            ..Adamax::default()
        },
        4,
    );
    all_dtypes(o, "adadelta", Adadelta::default(), 4);
    all_dtypes(
        o,
        "adadelta_wd",
        Adadelta {
            weight_decay: 1e-2,
            maximize: true,
            ..Adadelta::default()
        },
        4,
    );
    all_dtypes(o, "rmsprop", RMSprop::default(), 4);
    all_dtypes(
        o,
        "rmsprop_centered",
        RMSprop {
            centered: true,
            momentum: 0.9,
            weight_decay: 1e-2,
            ..RMSprop::default()
        },
        4,
    );
    all_dtypes(o, "rprop", Rprop::default(), 4);
    all_dtypes(
        o,
        "rprop_max",
        Rprop {
            maximize: true,
            ..Rprop::default()
        },
        4,
    );
    all_dtypes(o, "nadam", NAdam::default(), 4);
    all_dtypes(
        o,
        "nadam_decoupled",
        NAdam {
            weight_decay: 1e-2,
            decoupled_weight_decay: true,
            ..NAdam::default()
        },
        4,
    );
    all_dtypes(o, "radam", RAdam::default(), 8);
    all_dtypes(
        o,
        "radam_decoupled",
        RAdam {
            weight_decay: 1e-2,
            decoupled_weight_decay: true,
            ..RAdam::default()
        },
        8,
    );
    all_dtypes(o, "asgd", Asgd::default(), 4);
    all_dtypes(
        o,
        "asgd_wd",
        Asgd {
            weight_decay: 1e-2,
            maximize: true,
            t0: 2.0,
            ..Asgd::default()
        },
        4,
    );
    all_dtypes(o, "lion", Lion::default(), 4);
    all_dtypes(
        o,
        "lion_wd",
        Lion {
            weight_decay: 1e-2,
            maximize: true,
            ..Lion::default()
        },
        4,
    );
    all_dtypes(o, "adopt", Adopt::default(), 4);
    all_dtypes(
        o,
        "adopt_decoupled",
        Adopt {
            clip_exponent: None,
            weight_decay: 1e-2,
            decouple: true,
            ..Adopt::default()
        },
        4,
    );
    all_dtypes(
        o,
        "adopt_l2",
        Adopt {
            weight_decay: 1e-2,
            maximize: true,
            ..Adopt::default()
        },
        4,
    );
    all_dtypes(o, "adan", Adan::default(), 4);
    all_dtypes(
        o,
        "adan_no_prox",
        Adan {
            weight_decay: 1e-2,
            no_prox: true,
            maximize: true,
            ..Adan::default()
        },
        4,
    );
    all_dtypes(
        o,
        "adan_prox",
        Adan {
            weight_decay: 1e-2,
            ..Adan::default()
        },
        4,
    );
    all_dtypes(o, "ademamix", AdEMAMix::default(), 4);
    all_dtypes(
        o,
        "ademamix_warmup",
        AdEMAMix {
            alpha_warmup: Some(10.0),
            beta3_warmup: Some(10.0),
            weight_decay: 1e-2,
            ..AdEMAMix::default()
        },
        4,
    );
    all_dtypes(o, "schedule_free", ScheduleFreeAdamW::default(), 1);
    all_dtypes(
        o,
        "schedule_free_wd",
        ScheduleFreeAdamW {
            weight_decay: 1e-2,
            maximize: true,
            ckp1: 0.25,
            step: 4.0,
            ..ScheduleFreeAdamW::default()
        },
        1,
    );
    all_dtypes(o, "lamb", Lamb::default(), 4);
    all_dtypes(
        o,
        "lamb_adam_l2",
        Lamb {
            adam: true,
            weight_decay: 1e-2,
            weight_decouple: false,
            ..Lamb::default()
        },
        4,
    );
    all_dtypes(o, "lars", Lars::default(), 4);
    all_dtypes(
        o,
        "lars_nesterov",
        Lars {
            nesterov: true,
            weight_decay: 1e-2,
            maximize: true,
            ..Lars::default()
        },
        4,
    );
    c
}

/// Traced norm terms of `rule` (LAMB, LARS) on random f32 inputs: (trace, n_state, inputs
/// p, g, state, and the Rust rule's terms).
pub(crate) struct NormCase {
    pub n_state: usize,
    pub trace: Trace,
    pub slots: Vec<f32>,
    pub inputs: Vec<(f32, f32, Vec<f32>)>,
    pub expected: Vec<[f32; 2]>,
}

fn norm_case<R: Rule>(name: &str, rule: &R, seed: u64) -> NormCase {
    let n_state = rule.state_names().len();
    let mut ss: Vec<ScalarState> = (0..rule.scalar_state_names().len())
        .map(|_| ScalarState::new(0.0, Kind::Float))
        .collect();
    let _ = rule.scalars(&mut ss, true);
    let s = rule.scalars(&mut ss, false);
    let trace = super::trace_norm_terms::<R>(&s, n_state, Dtype::F32)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let mut rng = Rng(seed | 1);
    let mut inputs = Vec::new();
    let mut expected = Vec::new();
    for _ in 0..N {
        let p = rng.value(false) as f32;
        let g = rng.value(false) as f32;
        let st: Vec<f32> = (0..n_state).map(|_| rng.value(true) as f32).collect();
        let t = R::norm_terms::<f32>(&s, p, g, &st);
        inputs.push((p, g, st));
        expected.push([t[0], t[1]]);
    }
    NormCase {
        n_state,
        slots: trace.slots.iter().map(|&v| v as f32).collect(),
        trace,
        inputs,
        expected,
    }
}

/// LAMB and LARS norm terms, for the host check and the NVRTC check.
pub(crate) fn norm_cases() -> Vec<NormCase> {
    vec![
        norm_case("lamb_norms", &Lamb::default(), 11),
        norm_case(
            "lamb_l2_norms",
            &Lamb {
                weight_decay: 1e-2,
                weight_decouple: false,
                ..Lamb::default()
            },
            12,
        ),
        norm_case("lars_norms", &Lars::default(), 13),
        norm_case(
            "lars_wd_norms",
            &Lars {
                weight_decay: 1e-2,
                maximize: true,
                ..Lars::default()
            },
            14,
        ),
    ]
}

/// Norm-rule configurations for the trust-ratio and NVRTC checks: (name, dtype, kernel)
/// after 3 steps.
pub(crate) fn norm_kernels() -> Vec<(String, Dtype, super::StepKernel)> {
    fn one<R: super::norms::DeviceNorms>(
        out: &mut Vec<(String, Dtype, super::StepKernel)>,
        name: &str,
        rule: &R,
    ) {
        for dtype in [Dtype::F32, Dtype::Bf16, Dtype::F16, Dtype::F64] {
            let mut ss: Vec<ScalarState> = (0..rule.scalar_state_names().len())
                .map(|_| ScalarState::new(0.0, Kind::Float))
                .collect();
            let mut s = rule.scalars(&mut ss, true);
            for _ in 0..2 {
                s = rule.scalars(&mut ss, false);
            }
            let k = super::norm_step_kernel::<R>(rule, &s, rule.state_names().len(), dtype)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            out.push((name.to_string(), dtype, k));
        }
    }
    let mut out = Vec::new();
    one(&mut out, "lamb", &Lamb::default());
    one(
        &mut out,
        "lamb_l2",
        &Lamb {
            lr: 0.01,
            weight_decay: 1e-2,
            weight_decouple: false,
            grad_averaging: false,
            ..Lamb::default()
        },
    );
    one(
        &mut out,
        "lamb_decoupled_max",
        &Lamb {
            weight_decay: 1e-1,
            maximize: true,
            ..Lamb::default()
        },
    );
    one(&mut out, "lars", &Lars::default());
    one(
        &mut out,
        "lars_wd_nesterov",
        &Lars {
            weight_decay: 1e-2,
            nesterov: true,
            maximize: true,
            ..Lars::default()
        },
    );
    one(
        &mut out,
        "lars_no_momentum",
        &Lars {
            momentum: 0.0,
            weight_decay: 5e-4,
            trust_coefficient: 0.02,
            ..Lars::default()
        },
    );
    out
}

/// The capturable module (scalar kernel and update) of `rule` for each dtype, named
/// `{name}_capturable`.
fn capturable_of<R: super::scalars::DeviceScalars>(
    name: &str,
    rule: &R,
    out: &mut Vec<(String, Dtype, String)>,
) {
    use super::scalars::{capturable_module, step_slots};
    for dtype in [Dtype::F32, Dtype::Bf16, Dtype::F16, Dtype::F64] {
        let n_state = rule.state_names().len();
        let (trace, dep) =
            step_slots(rule, n_state, dtype).unwrap_or_else(|e| panic!("{name}: {e}"));
        let layout = super::kernel::Layout::new(n_state, trace.slots.len(), dtype);
        let counts = (rule.step_constants().len(), rule.extra_initial().len());
        let src = capturable_module(&trace, &dep, R::STEP_SOURCE, counts, &layout, None);
        out.push((format!("{name}_capturable"), dtype, src));
    }
}

/// Capturable modules of every rule with device step scalars, for the NVRTC check:
/// (name, dtype, source).
pub(crate) fn capturable_sources() -> Vec<(String, Dtype, String)> {
    let mut out = Vec::new();
    capturable_of("adam", &Adam::default(), &mut out);
    let adamw_amsgrad = Adam {
        amsgrad: true,
        ..Adam::adamw()
    };
    capturable_of("adamw_amsgrad", &adamw_amsgrad, &mut out);
    capturable_of("adamax", &Adamax::default(), &mut out);
    capturable_of("nadam", &NAdam::default(), &mut out);
    capturable_of("adadelta", &Adadelta::default(), &mut out);
    capturable_of("rmsprop", &RMSprop::default(), &mut out);
    let rmsprop_centered = RMSprop {
        momentum: 0.9,
        centered: true,
        ..RMSprop::default()
    };
    capturable_of("rmsprop_centered", &rmsprop_centered, &mut out);
    capturable_of("rprop", &Rprop::default(), &mut out);
    out
}
