//! Host check of the capturable steps' device scalars (`scalars.rs`, `scalars_rules.rs`):
//! `fo_step_row` — the float32 step increment, the other scalar states advanced (NAdam's
//! `mu_product`) and the step-dependent slots computed by the rule's C++ — compiled as host
//! C++, equals the Rust rule ([`crate::Rule::scalars`] on float32 scalar state, then a trace
//! of the update) bit for bit, over many steps and hyperparameters, f32 and f64 compute; with
//! `found_inf` set, the scalar state stays as it was.

use super::emit::Dtype;
use super::kernel::Layout;
use super::scalars::{scalars_body, step_slots, DeviceScalars};
use super::tests_host::{namespaced_cases, run_host_program};
use crate::rule::ScalarState;
use crate::rules::{Adadelta, Adam, Adamax, NAdam, RMSprop, Rprop};
use tch::Kind;

struct ScalarCase {
    name: String,
    body: String,
    input: Vec<u8>,
    expected: Vec<u8>,
}

fn push(out: &mut Vec<u8>, v: f64, dtype: Dtype) {
    if dtype.f32_compute() {
        out.extend_from_slice(&(v as f32).to_le_bytes());
    } else {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

fn push_f32(out: &mut Vec<u8>, v: f64) {
    out.extend_from_slice(&(v as f32).to_le_bytes());
}

/// Step counts before the step: every one up to 300, then large ones (float32 stops counting
/// at 2^24).
fn befores() -> Vec<f32> {
    let mut v: Vec<f32> = (0..300).map(|i| i as f32).collect();
    v.extend([
        999.0,
        1e4,
        65_535.0,
        1e5,
        16_777_215.0,
        16_777_216.0,
        3e7,
        1e9,
    ]);
    v
}

/// The host program's input and expected output for `rule`: per step count, the scalar
/// state before (the other states carried along, so the first 300 steps follow the real
/// trajectory), then the state after, the slot row, and the state kept with `found_inf`.
fn scalar_case<R: DeviceScalars>(name: &str, rule: &R, dtype: Dtype) -> ScalarCase {
    let n_state = rule.state_names().len();
    let (base, dep) = step_slots(rule, n_state, dtype).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(dep.is_empty(), R::STEP_SLOTS == 0, "{name}: {dep:?}");
    let layout = Layout::new(n_state, base.slots.len(), dtype);
    let consts = rule.step_constants();
    let mut extra = rule.extra_initial();
    let counts = (consts.len(), extra.len());
    let body = scalars_body(&dep, R::STEP_SOURCE, counts, &layout, None);
    let mut input = Vec::new();
    for k in 0..layout.slots {
        push(&mut input, base.slots.get(k).copied().unwrap_or(0.0), dtype);
    }
    for k in 0..consts.len().max(1) {
        input.extend_from_slice(&consts.get(k).copied().unwrap_or(0.0).to_le_bytes());
    }
    let steps = befores();
    input.extend_from_slice(&(steps.len() as u32).to_le_bytes());
    let mut expected = Vec::new();
    for &before in &steps {
        push_f32(&mut input, f64::from(before));
        for &e in &extra {
            push_f32(&mut input, e);
        }
        let mut ss: Vec<ScalarState> = std::iter::once(f64::from(before))
            .chain(extra.iter().copied())
            .map(|v| ScalarState::new(v, Kind::Float))
            .collect();
        let s = rule.scalars(&mut ss, false);
        let t = super::trace_update::<R>(&s, n_state, dtype).unwrap_or_else(|e| panic!("{e}"));
        assert!(t.nodes == base.nodes && t.tree == base.tree, "{name}");
        for v in &ss {
            push_f32(&mut expected, v.get());
        }
        for k in 0..layout.slots {
            push(&mut expected, t.slots.get(k).copied().unwrap_or(0.0), dtype);
        }
        // found_inf: the scalar state stays.
        push_f32(&mut expected, f64::from(before));
        for &e in &extra {
            push_f32(&mut expected, e);
        }
        extra = ss[1..].iter().map(|v| v.get()).collect();
    }
    ScalarCase {
        name: format!("{name}_{}", dtype.name()),
        body,
        input,
        expected,
    }
}

/// Reads a case's constants and, per step, the scalar state; writes the state after, the
/// row, and the state kept when the step is skipped.
const RUN: &str = r#"
static void run() {
  T base[FO_SLOTS];
  double c[FO_NCONST];
  unsigned int n;
  rd(base, sizeof base); rd(c, sizeof c); rd(&n, 4);
  for (unsigned int r = 0; r < n; ++r) {
    float before, extra[FO_NEXTRA] = {}, kept[FO_NEXTRA] = {};
    rd(&before, 4); rd(extra, 4 * fo_nextra);
    for (int k = 0; k < FO_NEXTRA; ++k) kept[k] = extra[k];
    T row[FO_SLOTS];
    const float after = fo_step_row(base, c, before, false, extra, row);
    wr(&after, 4); wr(extra, 4 * fo_nextra); wr(row, sizeof row);
    const float same = fo_step_row(base, c, before, true, kept, row);
    wr(&same, 4); wr(kept, 4 * fo_nextra);
  }
}
"#;

fn all_cases() -> Vec<ScalarCase> {
    let mut all = Vec::new();
    let dtypes = [Dtype::F32, Dtype::Bf16, Dtype::F64];
    let adams = [
        Adam::default(),
        Adam {
            lr: 3e-4,
            beta1: 0.9,
            beta2: 0.95,
            weight_decay: 0.1,
            ..Adam::adamw()
        },
        Adam {
            lr: 1.0,
            beta1: 0.0,
            beta2: 0.999_999,
            amsgrad: true,
            maximize: true,
            ..Adam::default()
        },
        Adam {
            lr: 0.0,
            ..Adam::adamw()
        },
        Adam {
            lr: 0.05,
            beta1: 0.5,
            beta2: 0.9999,
            weight_decay: 1e-2,
            eps: 1e-6,
            ..Adam::default()
        },
    ];
    let adamaxes = [
        Adamax::default(),
        Adamax {
            lr: 0.25,
            beta1: 0.5,
            weight_decay: 1e-2,
            maximize: true,
            ..Adamax::default()
        },
        Adamax {
            lr: 0.0,
            beta1: 0.0,
            ..Adamax::default()
        },
    ];
    let nadams = [
        NAdam::default(),
        NAdam {
            lr: 0.01,
            beta1: 0.95,
            beta2: 0.99,
            momentum_decay: 0.1,
            weight_decay: 0.1,
            decoupled_weight_decay: true,
            ..NAdam::default()
        },
        NAdam {
            lr: 1.0,
            beta1: 0.0,
            momentum_decay: 0.0,
            maximize: true,
            ..NAdam::default()
        },
        NAdam {
            lr: 0.0,
            beta1: 0.5,
            beta2: 0.999_999,
            momentum_decay: 2.0,
            weight_decay: 1e-3,
            ..NAdam::default()
        },
    ];
    let rmsprop_centered = RMSprop {
        momentum: 0.9,
        centered: true,
        weight_decay: 1e-2,
        ..RMSprop::default()
    };
    for dtype in dtypes {
        for (i, r) in adams.iter().enumerate() {
            all.push(scalar_case(&format!("adam{i}"), r, dtype));
        }
        for (i, r) in adamaxes.iter().enumerate() {
            all.push(scalar_case(&format!("adamax{i}"), r, dtype));
        }
        for (i, r) in nadams.iter().enumerate() {
            all.push(scalar_case(&format!("nadam{i}"), r, dtype));
        }
        all.push(scalar_case("adadelta", &Adadelta::default(), dtype));
        all.push(scalar_case("rmsprop", &RMSprop::default(), dtype));
        all.push(scalar_case("rmsprop_centered", &rmsprop_centered, dtype));
        all.push(scalar_case("rprop", &Rprop::default(), dtype));
    }
    all
}

#[test]
fn capturable_scalars_equal_the_rust_rules_bit_for_bit() {
    let all = all_cases();
    let bodies: Vec<String> = all.iter().map(|c| format!("{}{RUN}", c.body)).collect();
    let input: Vec<u8> = all.iter().flat_map(|c| c.input.iter().copied()).collect();
    let stdout = run_host_program(
        "scalars",
        &namespaced_cases(bodies.iter().map(String::as_str)),
        input,
    );
    let mut at = 0;
    for c in &all {
        let got = &stdout[at..at + c.expected.len()];
        at += c.expected.len();
        let first = got.iter().zip(&c.expected).position(|(a, b)| a != b);
        assert!(
            first.is_none(),
            "{}: first differing byte at {first:?}",
            c.name
        );
    }
    assert_eq!(at, stdout.len());
    assert_eq!(all.len(), 3 * (5 + 3 + 4 + 4));
    eprintln!(
        "{} capturable-scalar cases x {} steps equal bit for bit",
        all.len(),
        befores().len()
    );
}

/// The probe finds every step-dependent slot: an Adamax claimed to have none is refused.
#[test]
fn capturable_scalars_refuse_a_wrong_slot_count() {
    let err = super::scalars::step_slots_checked(&Adamax::default(), 2, Dtype::F32, 0)
        .expect_err("an Adamax slot depends on the step");
    assert!(err.contains("1 step-dependent values found"), "{err}");
}
