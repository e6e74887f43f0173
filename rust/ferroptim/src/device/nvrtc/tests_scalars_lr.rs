//! Host check of the capturable steps with a learning rate given as a device tensor
//! (`scalars.rs`: `fo_consts` reads it, `fo_step_slots` and `fo_lr_slots` compute every slot
//! that depends on it): the scalar kernel's row, compiled as host C++ from a module built for
//! a placeholder `lr` of 0 (as the Python classes pass it), with the learning rate read from a
//! float32 or float64 value through a pointer, equals the Rust rule with that learning rate
//! (the value `tensor.item()` gives) bit for bit, over many learning rates and steps, f32,
//! bf16 and f64 compute.

use super::emit::Dtype;
use super::kernel::Layout;
use super::scalars::{lr_step_slots, lr_step_slots_checked, scalars_body, DeviceScalars};
use super::scalars::{LrKind, LrRead};
use super::tests_host::{namespaced_cases, run_host_program};
use crate::rule::ScalarState;
use crate::rules::Adam;
use tch::Kind;

struct LrCase {
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

/// Learning rates: usual ones, extremes, and 24 pseudo-random ones spread over 1e-7 … 10.
fn lrs() -> Vec<f64> {
    let mut v = vec![
        0.0, 1e-3, 3e-4, 6e-4, 1e-2, 0.1, 0.37, 1.0, 2.5, 1e-8, 5e-5, 0.999,
    ];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..24 {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let u = (x >> 11) as f64 / (1u64 << 53) as f64;
        v.push(10f64.powf(-7.0 + 8.0 * u));
    }
    v
}

/// Step counts before the step: the first 40, then large ones.
fn befores() -> Vec<f32> {
    let mut v: Vec<f32> = (0..40).map(|i| i as f32).collect();
    v.extend([999.0, 1e4, 65_535.0, 16_777_215.0, 16_777_216.0, 1e9]);
    v
}

/// The case of `rule` (its `lr` is replaced by the placeholder 0 to build the module, and
/// by each learning rate of [`lrs`] for the expected rows).
fn lr_case<R: DeviceScalars>(name: &str, rule: &R, dtype: Dtype, kind: LrKind) -> LrCase {
    let placeholder = rule.with_lr(0.0).expect("a rule with a tensor lr");
    let n_state = rule.state_names().len();
    let (base, dep) =
        lr_step_slots(&placeholder, n_state, dtype).unwrap_or_else(|e| panic!("{name}: {e}"));
    let layout = Layout::new(n_state, base.slots.len(), dtype);
    let consts = placeholder.step_constants();
    let lr = LrRead::of::<R>(kind).expect("LR_CONST");
    let counts = (consts.len(), rule.extra_initial().len());
    let body = scalars_body(&dep, R::STEP_SOURCE, counts, &layout, Some(&lr));
    let mut input = Vec::new();
    for k in 0..layout.slots {
        push(&mut input, base.slots.get(k).copied().unwrap_or(0.0), dtype);
    }
    for k in 0..consts.len().max(1) {
        input.extend_from_slice(&consts.get(k).copied().unwrap_or(0.0).to_le_bytes());
    }
    let width: u32 = if kind == LrKind::F32 { 4 } else { 8 };
    input.extend_from_slice(&width.to_le_bytes());
    let (lrs, steps) = (lrs(), befores());
    input.extend_from_slice(&((lrs.len() * steps.len()) as u32).to_le_bytes());
    let mut expected = Vec::new();
    for &lr in &lrs {
        // The value the host path would read: `tensor.item()` of a float32 or float64 tensor.
        let (value, bytes) = match kind {
            LrKind::F32 => (f64::from(lr as f32), (lr as f32).to_le_bytes().to_vec()),
            LrKind::F64 => (lr, lr.to_le_bytes().to_vec()),
        };
        let r = rule.with_lr(value).expect("a rule with a tensor lr");
        for &before in &steps {
            input.extend_from_slice(&bytes);
            input.extend_from_slice(&before.to_le_bytes());
            let mut ss = [ScalarState::new(f64::from(before), Kind::Float)];
            let s = r.scalars(&mut ss, false);
            let t = super::trace_update::<R>(&s, n_state, dtype).unwrap_or_else(|e| panic!("{e}"));
            assert!(t.nodes == base.nodes && t.tree == base.tree, "{name}");
            expected.extend_from_slice(&(ss[0].get() as f32).to_le_bytes());
            for k in 0..layout.slots {
                push(&mut expected, t.slots.get(k).copied().unwrap_or(0.0), dtype);
            }
        }
    }
    LrCase {
        name: format!("{name}_{}_{kind:?}", dtype.name()),
        body,
        input,
        expected,
    }
}

/// Reads a case's base row and constants (learning rate 0) and, per row, the learning rate
/// (as its tensor's bytes) and the step; writes the step after and the row.
const RUN: &str = r#"
static void run() {
  T base[FO_SLOTS];
  double c[FO_NCONST];
  unsigned int width, n;
  rd(base, sizeof base); rd(c, sizeof c); rd(&width, 4); rd(&n, 4);
  for (unsigned int r = 0; r < n; ++r) {
    alignas(8) unsigned char lr[8] = {};
    float before, extra[FO_NEXTRA] = {};
    rd(lr, width); rd(&before, 4);
    double cc[FO_NCONST];
    fo_consts(c, lr, cc);
    T row[FO_SLOTS];
    const float after = fo_step_row(base, cc, before, false, extra, row);
    wr(&after, 4); wr(row, sizeof row);
  }
}
"#;

fn adams() -> Vec<Adam> {
    vec![
        Adam::default(),
        Adam::adamw(),
        Adam {
            beta1: 0.9,
            beta2: 0.95,
            weight_decay: 0.1,
            ..Adam::adamw()
        },
        Adam {
            beta1: 0.0,
            beta2: 0.999_999,
            amsgrad: true,
            maximize: true,
            weight_decay: 0.5,
            ..Adam::adamw()
        },
        Adam {
            beta1: 0.5,
            beta2: 0.9999,
            weight_decay: 1e-2,
            eps: 1e-6,
            ..Adam::default()
        },
    ]
}

#[test]
fn capturable_tensor_lr_scalars_equal_the_rust_rule_bit_for_bit() {
    let mut all = Vec::new();
    for dtype in [Dtype::F32, Dtype::Bf16, Dtype::F64] {
        for kind in [LrKind::F32, LrKind::F64] {
            for (i, r) in adams().iter().enumerate() {
                all.push(lr_case(&format!("adam{i}"), r, dtype, kind));
            }
        }
    }
    let bodies: Vec<String> = all.iter().map(|c| format!("{}{RUN}", c.body)).collect();
    let input: Vec<u8> = all.iter().flat_map(|c| c.input.iter().copied()).collect();
    let stdout = run_host_program(
        "scalars_lr",
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
    assert_eq!(all.len(), 3 * 2 * 5);
    eprintln!(
        "{} tensor-lr capturable-scalar cases x {} learning rates x {} steps equal bit for bit",
        all.len(),
        lrs().len(),
        befores().len()
    );
}

/// Which slots are read on the device: AdamW's decay factor 1 − lr·wd is found as the one
/// learning-rate-only slot (Adam's coupled decay has none), and a wrong count is refused.
#[test]
fn tensor_lr_slots_are_found() {
    let adamw = Adam::adamw();
    let (_, dep) = lr_step_slots(&adamw, 2, Dtype::F32).expect("AdamW");
    assert_eq!(dep.iter().filter(|d| d.1 == Adam::STEP_SLOTS).count(), 1);
    let (_, dep) = lr_step_slots(&Adam::default(), 2, Dtype::F32).expect("Adam");
    assert!(dep.iter().all(|d| d.1 < Adam::STEP_SLOTS), "{dep:?}");
    let err = lr_step_slots_checked(&adamw, 2, Dtype::F32, 0).expect_err("one lr-only slot");
    assert!(err.contains("1 learning-rate-only values found"), "{err}");
    let adamax = crate::rules::Adamax::default();
    let err = lr_step_slots(&adamax, 2, Dtype::F32).expect_err("no tensor lr for Adamax");
    assert!(err.contains("does not read its learning rate"), "{err}");
}

/// The capturable modules of `rule` with its learning rate read from a float32 and a float64
/// tensor, for each dtype, named `{name}_capturable_lr_{f32,f64}`.
fn capturable_lr_of<R: DeviceScalars>(
    name: &str,
    rule: &R,
    out: &mut Vec<(String, Dtype, String)>,
) {
    use super::scalars::capturable_module;
    for dtype in [Dtype::F32, Dtype::Bf16, Dtype::F16, Dtype::F64] {
        let n_state = rule.state_names().len();
        let (trace, dep) =
            lr_step_slots(rule, n_state, dtype).unwrap_or_else(|e| panic!("{name}: {e}"));
        let layout = super::kernel::Layout::new(n_state, trace.slots.len(), dtype);
        let counts = (rule.step_constants().len(), rule.extra_initial().len());
        for (kind, k) in [(LrKind::F32, "f32"), (LrKind::F64, "f64")] {
            let lr = LrRead::of::<R>(kind).unwrap_or_else(|| panic!("{name}: no tensor lr"));
            let src = capturable_module(&trace, &dep, R::STEP_SOURCE, counts, &layout, Some(&lr));
            out.push((format!("{name}_capturable_lr_{k}"), dtype, src));
        }
    }
}

/// Capturable modules with a tensor learning rate (Adam, AdamW with AMSGrad), for the NVRTC
/// check (`tests.rs`): (name, dtype, source).
pub(super) fn tensor_lr_sources() -> Vec<(String, Dtype, String)> {
    let mut out = Vec::new();
    capturable_lr_of("adam", &Adam::default(), &mut out);
    let adamw_amsgrad = Adam {
        amsgrad: true,
        ..Adam::adamw()
    };
    capturable_lr_of("adamw_amsgrad", &adamw_amsgrad, &mut out);
    out
}
