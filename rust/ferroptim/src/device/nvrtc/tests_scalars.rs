//! Host check of the capturable steps' device scalars (`scalars.rs`): `fo_step_row` — the
//! float32 step increment and the step-dependent slots computed by the rule's C++ — compiled
//! as host C++, equals the Rust rule ([`crate::Rule::scalars`] on a float32 `step`, then a
//! trace of the update) bit for bit, over many steps and hyperparameters, f32 and f64 compute.

use super::emit::{Dtype, PRELUDE};
use super::kernel::Layout;
use super::scalars::{scalars_body, step_slots, DeviceScalars};
use crate::rule::ScalarState;
use crate::rules::Adam;
use std::io::Write;
use std::process::{Command, Stdio};
use tch::Kind;

struct ScalarCase {
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

fn scalar_case<R: DeviceScalars>(rule: &R, dtype: Dtype) -> ScalarCase {
    let n_state = rule.state_names().len();
    let (base, dep) = step_slots(rule, n_state, dtype).unwrap_or_else(|e| panic!("{e}"));
    assert!(!dep.is_empty(), "no step-dependent slot");
    let layout = Layout::new(n_state, base.slots.len(), dtype);
    let consts = rule.step_constants();
    let body = scalars_body(&dep, R::STEP_SOURCE, consts.len(), &layout);
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
        input.extend_from_slice(&before.to_le_bytes());
        let mut ss = [ScalarState::new(f64::from(before), Kind::Float)];
        let s = rule.scalars(&mut ss, false);
        let t = super::trace_update::<R>(&s, n_state, dtype).unwrap_or_else(|e| panic!("{e}"));
        assert!(t.nodes == base.nodes && t.tree == base.tree);
        expected.extend_from_slice(&(ss[0].get() as f32).to_le_bytes());
        for k in 0..layout.slots {
            push(&mut expected, t.slots.get(k).copied().unwrap_or(0.0), dtype);
        }
        // found_inf: the count stays.
        expected.extend_from_slice(&before.to_le_bytes());
    }
    ScalarCase {
        body,
        input,
        expected,
    }
}

#[test]
fn capturable_scalars_equal_the_rust_rules_bit_for_bit() {
    let cxx = super::tests::cxx().expect("no C++ compiler (CXX, c++ or g++) for the host check");
    let rules = [
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
    let mut all = Vec::new();
    for rule in &rules {
        for dtype in [Dtype::F32, Dtype::Bf16, Dtype::F64] {
            all.push(scalar_case(rule, dtype));
        }
    }
    let mut src = String::from(PRELUDE);
    src.push_str(
        "#include <cstdio>\n#include <cstdlib>\n\
         static void rd(void* p, size_t n) { if (n && std::fread(p, 1, n, stdin) != n) std::exit(2); }\n",
    );
    for (i, c) in all.iter().enumerate() {
        src.push_str(&format!("namespace c{i} {{\n{}", c.body));
        src.push_str(
            "static void run() {\n  T base[FO_SLOTS];\n  double c[FO_NCONST];\n  unsigned int n;\n  \
             rd(base, sizeof base); rd(c, sizeof c); rd(&n, 4);\n  \
             for (unsigned int r = 0; r < n; ++r) {\n    float before; rd(&before, 4);\n    \
             T row[FO_SLOTS];\n    const float after = fo_step_row(base, c, before, false, row);\n    \
             std::fwrite(&after, 4, 1, stdout);\n    std::fwrite(row, sizeof row, 1, stdout);\n    \
             const float kept = fo_step_row(base, c, before, true, row);\n    \
             std::fwrite(&kept, 4, 1, stdout);\n  }\n}\n}\n",
        );
    }
    src.push_str("int main() {\n");
    for i in 0..all.len() {
        src.push_str(&format!("  c{i}::run();\n"));
    }
    src.push_str("  std::fflush(stdout);\n  return 0;\n}\n");
    let dir = std::env::temp_dir().join(format!("ferroptim-nvrtc-scalars-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cpp, exe) = (dir.join("scalars.cpp"), dir.join("scalars"));
    std::fs::write(&cpp, &src).unwrap();
    let out = Command::new(&cxx)
        .args(["-std=c++17", "-O1", "-ffp-contract=off", "-fno-math-errno"])
        .args(["-Wall", "-Wextra", "-Werror", "-Wno-unused-function"])
        .arg("-o")
        .arg(&exe)
        .arg(&cpp)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "host compile failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let input: Vec<u8> = all.iter().flat_map(|c| c.input.iter().copied()).collect();
    let mut child = Command::new(&exe)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "host check exited with {}",
        out.status
    );
    let expected: Vec<u8> = all
        .iter()
        .flat_map(|c| c.expected.iter().copied())
        .collect();
    assert_eq!(out.stdout.len(), expected.len());
    let first = out.stdout.iter().zip(&expected).position(|(a, b)| a != b);
    assert!(first.is_none(), "first differing byte at {first:?}");
    eprintln!(
        "{} capturable-scalar cases x {} steps equal bit for bit",
        all.len(),
        befores().len()
    );
}
