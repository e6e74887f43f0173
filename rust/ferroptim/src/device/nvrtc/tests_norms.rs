//! Host check of the norm rules' trust-ratio code (LAMB, LARS; `norms.rs`): the slot row the
//! trust-ratio kernel writes for a tensor — its block sums added in block order, then the
//! rule's `fo_trust_slots` — compiled as host C++, equals bit for bit what the CPU driver does
//! (`driver/norms.rs`: the same sums in the same order, [`Rule::with_norms`]) followed by a
//! trace of the Rust update (the slot values its `from_f64` calls produce), over random and
//! special sums, for f32/bf16/f64 compute.

use super::emit::Dtype;
use super::kernel::Layout;
use super::norms::{dependent_slots, trust_body, DeviceNorms, PARTIALS_PER_CHUNK};
use super::tests_host::{namespaced_cases, run_host_program};
use crate::rule::ScalarState;
use crate::rules::{Lamb, Lars};
use tch::Kind;

struct TrustCase {
    name: String,
    body: String,
    input: Vec<u8>,
    expected: Vec<u8>,
    row_bytes: usize,
}

/// A sum of squares: mostly ordinary magnitudes, sometimes 0, ∞, NaN, subnormal or huge.
fn sum_value(x: &mut u64) -> f64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    let u = (*x >> 11) as f64 / (1u64 << 53) as f64;
    const SPECIAL: [f64; 7] = [0.0, f64::INFINITY, f64::NAN, 5e-324, 1e-310, 1e300, 1.0];
    if (*x & 0xFF) < 20 {
        return SPECIAL[(*x % SPECIAL.len() as u64) as usize];
    }
    10f64.powf(u * 40.0 - 20.0)
}

fn push_compute(out: &mut Vec<u8>, v: f64, dtype: Dtype) {
    if dtype.f32_compute() {
        out.extend_from_slice(&(v as f32).to_le_bytes());
    } else {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

fn trust_case<R: DeviceNorms>(name: &str, rule: &R, dtype: Dtype, seed: u64) -> TrustCase {
    let n_state = rule.state_names().len();
    let mut ss: Vec<ScalarState> = (0..rule.scalar_state_names().len())
        .map(|_| ScalarState::new(0.0, Kind::Float))
        .collect();
    let mut s = rule.scalars(&mut ss, true);
    for _ in 0..4 {
        s = rule.scalars(&mut ss, false);
    }
    let (base, dep) =
        dependent_slots::<R>(rule, &s, n_state, dtype).unwrap_or_else(|e| panic!("{e}"));
    let layout = Layout::new(n_state, base.slots.len(), dtype);
    let consts = R::trust_constants(&s);
    let body = trust_body(&dep, R::TRUST_SOURCE, consts.len(), &layout);
    let mut input = Vec::new();
    for k in 0..layout.slots {
        push_compute(&mut input, base.slots.get(k).copied().unwrap_or(0.0), dtype);
    }
    for k in 0..consts.len().max(1) {
        input.extend_from_slice(&consts.get(k).copied().unwrap_or(0.0).to_le_bytes());
    }
    const ROWS: u32 = 400;
    input.extend_from_slice(&ROWS.to_le_bytes());
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut expected = Vec::new();
    for row in 0..ROWS {
        let nchunks = 1 + (row % 3) as usize;
        let blocks = nchunks * PARTIALS_PER_CHUNK / 2;
        // The last chunk's trailing blocks past a tensor's end hold 0, as the kernel writes.
        let real = blocks - (row as usize / 3) % 3;
        let mut part = vec![0.0f64; 2 * blocks];
        for (b, pair) in part.chunks_mut(2).enumerate().take(real) {
            // Zero norms are common (zero-initialised weights, zero gradients).
            pair[0] = if row % 7 == 0 { 0.0 } else { sum_value(&mut x) };
            pair[1] = if row % 11 == 0 && b < real {
                0.0
            } else {
                sum_value(&mut x)
            };
        }
        input.extend_from_slice(&(nchunks as u32).to_le_bytes());
        for v in &part {
            input.extend_from_slice(&v.to_le_bytes());
        }
        // The CPU driver: block sums added in order from 0, then `with_norms`.
        let mut totals = [0.0f64; 2];
        for pair in part.chunks(2).take(real) {
            totals[0] += pair[0];
            totals[1] += pair[1];
        }
        let mut s2 = s;
        R::with_norms(&mut s2, totals);
        let t = super::trace_update::<R>(&s2, n_state, dtype).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            t.nodes == base.nodes && t.tree == base.tree,
            "{name}: graph changed"
        );
        for k in 0..layout.slots {
            push_compute(&mut expected, t.slots.get(k).copied().unwrap_or(0.0), dtype);
        }
    }
    let row_bytes = layout.slots * if dtype.f32_compute() { 4 } else { 8 };
    TrustCase {
        name: format!("{name}_{}", dtype.name()),
        body,
        input,
        expected,
        row_bytes,
    }
}

fn all_cases() -> Vec<TrustCase> {
    let mut out = Vec::new();
    for (i, dtype) in [Dtype::F32, Dtype::Bf16, Dtype::F64]
        .into_iter()
        .enumerate()
    {
        let seed = 100 * i as u64;
        out.push(trust_case("lamb", &Lamb::default(), dtype, seed + 1));
        let lamb_l2 = Lamb {
            lr: 0.02,
            weight_decay: 1e-2,
            weight_decouple: false,
            ..Lamb::default()
        };
        out.push(trust_case("lamb_l2", &lamb_l2, dtype, seed + 2));
        let lamb_wd = Lamb {
            weight_decay: 0.1,
            eps: 1e-8,
            maximize: true,
            ..Lamb::default()
        };
        out.push(trust_case("lamb_decoupled", &lamb_wd, dtype, seed + 3));
        out.push(trust_case("lars", &Lars::default(), dtype, seed + 4));
        let lars_wd = Lars {
            weight_decay: 1e-2,
            trust_coefficient: 0.02,
            nesterov: true,
            ..Lars::default()
        };
        out.push(trust_case("lars_wd", &lars_wd, dtype, seed + 5));
        let lars_plain = Lars {
            momentum: 0.0,
            weight_decay: 5e-4,
            ..Lars::default()
        };
        out.push(trust_case("lars_no_momentum", &lars_plain, dtype, seed + 6));
        // Degenerate hyperparameters: the norm-dependent slot is a constant, still written.
        let lamb_lr0 = Lamb {
            lr: 0.0,
            ..Lamb::default()
        };
        out.push(trust_case("lamb_lr0", &lamb_lr0, dtype, seed + 7));
        let lars_tc0 = Lars {
            trust_coefficient: 0.0,
            ..Lars::default()
        };
        out.push(trust_case("lars_tc0", &lars_tc0, dtype, seed + 8));
    }
    out
}

#[test]
fn trust_ratio_rows_equal_the_rust_rules_bit_for_bit() {
    let all = all_cases();
    let bodies: Vec<String> = all
        .iter()
        .map(|c| {
            format!(
                "{}static void run() {{\n  T base[FO_SLOTS];\n  double c[FO_NCONST];\n  \
                 unsigned int rows;\n  rd(base, sizeof base); rd(c, sizeof c); rd(&rows, 4);\n  \
                 for (unsigned int r = 0; r < rows; ++r) {{\n    unsigned int nch; rd(&nch, 4);\n    \
                 std::vector<double> part(nch * FO_PER_CHUNK); rd(part.data(), 8 * part.size());\n    \
                 T row[FO_SLOTS];\n    fo_trust_row(base, c, part.data(), (int)nch, row);\n    \
                 wr(row, sizeof row);\n  }}\n}}\n",
                c.body
            )
        })
        .collect();
    let input: Vec<u8> = all.iter().flat_map(|c| c.input.iter().copied()).collect();
    let stdout = run_host_program(
        "trust",
        &namespaced_cases(bodies.iter().map(String::as_str)),
        input,
    );
    let mut at = 0;
    let mut rows = 0;
    for c in &all {
        let got = &stdout[at..at + c.expected.len()];
        at += c.expected.len();
        for (r, (a, b)) in got
            .chunks(c.row_bytes)
            .zip(c.expected.chunks(c.row_bytes))
            .enumerate()
        {
            // Slot values are never NaN here (sums of NaN give trust 1 or a NaN product
            // compared by bits: the C and Rust NaNs are both the default quiet NaN).
            assert_eq!(a, b, "{}: row {r} differs (C {a:?}, Rust {b:?})", c.name);
            rows += 1;
        }
    }
    assert_eq!(at, stdout.len());
    assert_eq!(all.len(), 24);
    eprintln!(
        "{} trust-ratio cases, {rows} slot rows equal bit for bit",
        all.len()
    );
}
