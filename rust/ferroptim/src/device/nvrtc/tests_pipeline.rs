//! Host check of a whole LAMB/LARS step as the three kernels compute it (`norms.rs`): the
//! reduction's per-thread lane sums and per-block combination (`fo_norm_lane`,
//! `fo_norm_combine`, called for every thread and block of every chunk exactly as the kernel's
//! grid does), the trust-ratio row (`fo_trust_row`) and the update (`fo_apply` with that row),
//! compiled as host C++ from the generated module, equal the CPU driver's step
//! ([`crate::step`], [`crate::step_unscaling`]) bit for bit, f32 and bf16, with tensors that
//! span several chunks and end inside a chunk's first block.

use super::emit::Dtype;
use super::norms::DeviceNorms;
use super::tests_host::{namespaced_cases, run_host_program};
use crate::rule::ScalarState;
use crate::rules::{Lamb, Lars};
use crate::{Group, ParamTensors};
use tch::{Device, Kind, Tensor};

struct PipeCase {
    name: String,
    body: String,
    input: Vec<u8>,
    expected: Vec<u8>,
}

fn raw(t: &Tensor) -> Vec<u8> {
    let n = t.numel();
    let mut out = vec![0u8; n * t.kind().elt_size_in_bytes()];
    t.copy_data_u8(&mut out, n);
    out
}

const SIZES: [i64; 5] = [70_000, 16_385, 3, 150_001, 40];

fn pipe_case<R: DeviceNorms + Clone>(
    name: &str,
    rule: &R,
    kind: Kind,
    scale: Option<f64>,
    seed: i64,
) -> PipeCase {
    let dtype = if kind == Kind::BFloat16 {
        Dtype::Bf16
    } else {
        Dtype::F32
    };
    let n_state = rule.state_names().len();
    let n_scalar = rule.scalar_state_names().len();
    tch::manual_seed(seed);
    let opts = (Kind::Float, Device::Cpu);
    let mut params = Vec::new();
    for (i, &n) in SIZES.iter().enumerate() {
        let mut p = Tensor::randn([n], opts);
        if i == 4 {
            p = p.zeros_like(); // ‖θ‖ = 0: trust ratio 1
        }
        let g = Tensor::randn([n], opts) * scale.unwrap_or(1.0);
        let state: Vec<Tensor> = (0..n_state)
            .map(|k| {
                let s = Tensor::randn([n], opts) * 0.1;
                if k == 1 {
                    s.abs()
                } else {
                    s
                }
            })
            .collect();
        params.push(ParamTensors {
            param: p.to_kind(kind),
            grad: g.to_kind(kind),
            state: state.iter().map(|s| s.to_kind(kind)).collect(),
            scalar_state: (0..n_scalar)
                .map(|_| Tensor::from_slice(&[3.0f32]))
                .collect(),
            fresh: false,
        });
    }
    // The kernel as the launch path makes it: scalars from the scalar state (step 3 → 4).
    let mut ss: Vec<ScalarState> = (0..n_scalar)
        .map(|_| ScalarState::new(3.0, Kind::Float))
        .collect();
    let s = rule.scalars(&mut ss, false);
    let k =
        super::norm_step_kernel::<R>(rule, &s, n_state, dtype).unwrap_or_else(|e| panic!("{e}"));
    let norms = k.norms.as_ref().expect("a norm kernel");
    let body = k.source[k.source.find("namespace fo_u {").expect("module body")..].to_string();
    let mut input = Vec::new();
    let push_slots = |out: &mut Vec<u8>, v: &[f64], len: usize| {
        for i in 0..len {
            let x = v.get(i).copied().unwrap_or(0.0);
            if dtype.f32_compute() {
                out.extend_from_slice(&(x as f32).to_le_bytes());
            } else {
                out.extend_from_slice(&x.to_le_bytes());
            }
        }
    };
    push_slots(&mut input, &k.slots, k.layout.slots);
    push_slots(&mut input, &norms.term_slots, norms.term_layout.slots);
    for i in 0..norms.constants.len().max(1) {
        let c = norms.constants.get(i).copied().unwrap_or(0.0);
        input.extend_from_slice(&c.to_le_bytes());
    }
    input.extend_from_slice(&i32::from(scale.is_some()).to_le_bytes());
    input.extend_from_slice(&(scale.unwrap_or(1.0) as f32).to_le_bytes());
    input.extend_from_slice(&(SIZES.len() as u64).to_le_bytes());
    for pt in &params {
        input.extend_from_slice(&(pt.param.numel() as u64).to_le_bytes());
        input.extend(raw(&pt.param));
        input.extend(raw(&pt.grad));
        for st in &pt.state {
            input.extend(raw(st));
        }
    }
    let keep: Vec<(Tensor, Tensor, Vec<Tensor>)> = params
        .iter()
        .map(|pt| {
            (
                pt.param.shallow_clone(),
                pt.grad.shallow_clone(),
                pt.state.iter().map(Tensor::shallow_clone).collect(),
            )
        })
        .collect();
    let mut groups = vec![Group {
        rule: rule.clone(),
        params,
    }];
    match scale {
        None => crate::step(&mut groups),
        Some(sc) => crate::step_unscaling(&mut groups, sc),
    }
    .unwrap_or_else(|e| panic!("{name}: CPU step: {e}"));
    let mut expected = Vec::new();
    for (p, g, st) in &keep {
        expected.extend(raw(p));
        expected.extend(raw(g));
        for s in st {
            expected.extend(raw(s));
        }
    }
    PipeCase {
        name: format!(
            "{name}_{}{}",
            dtype.name(),
            if scale.is_some() { "_scaled" } else { "" }
        ),
        body,
        input,
        expected,
    }
}

const HARNESS: &str = r#"
static void run() {
  typedef fo_u::T T;
  typedef fo_u::S S;
  const int NS = fo_u::FO_NSTATE;
  T su[fo_u::FO_SLOTS], sn[fo_n::FO_SLOTS];
  double c[fo_t::FO_NCONST];
  int scaled; float scale; unsigned long long nt;
  rd(su, sizeof su); rd(sn, sizeof sn); rd(c, sizeof c); rd(&scaled, 4); rd(&scale, 4); rd(&nt, 8);
  for (unsigned long long t = 0; t < nt; ++t) {
    unsigned long long un; rd(&un, 8);
    const long long n = (long long)un;
    std::vector<S> p(un), g(un), st(un * NS + 1);
    rd(p.data(), un * sizeof(S)); rd(g.data(), un * sizeof(S)); rd(st.data(), un * NS * sizeof(S));
    const S* stp[NS + 1];
    for (int k = 0; k < NS; ++k) stp[k] = st.data() + k * un;
    const long long nch = (n + fo_n::FO_CHUNK - 1) / fo_n::FO_CHUNK;
    std::vector<double> part(nch * fo_n::FO_PER_CHUNK);
    for (long long ch = 0; ch < nch; ++ch) {  // one CUDA block per chunk
      double l0[fo_n::FO_THREADS], l1[fo_n::FO_THREADS];
      for (int th = 0; th < fo_n::FO_THREADS; ++th) {
        const int sub = th >> 4, lane = th & 15;
        const long long first = ch * fo_n::FO_CHUNK + (long long)sub * fo_n::FO_SUB;
        const long long last = (n - first < fo_n::FO_SUB) ? n : first + fo_n::FO_SUB;
        double acc[2];
        fo_n::fo_norm_lane(sn, p.data(), g.data(), stp, first, last, lane, scaled != 0, (T)scale, acc);
        l0[th] = acc[0];
        l1[th] = acc[1];
      }
      for (int b = 0; b < fo_n::FO_THREADS / 16; ++b)
        fo_n::fo_norm_combine(l0 + 16 * b, l1 + 16 * b, &part[ch * fo_n::FO_PER_CHUNK + 2 * b]);
    }
    T row[fo_u::FO_SLOTS];
    fo_t::fo_trust_row(su, c, part.data(), (int)nch, row);
    for (long long i = 0; i < n; ++i) {
      S se[NS + 1];
      for (int k = 0; k < NS; ++k) se[k] = st[k * un + i];
      fo_u::fo_apply(row, p[i], g[i], se, scaled != 0, (T)scale);
      for (int k = 0; k < NS; ++k) st[k * un + i] = se[k];
    }
    wr(p.data(), un * sizeof(S)); wr(g.data(), un * sizeof(S)); wr(st.data(), un * NS * sizeof(S));
  }
}
"#;

#[test]
fn norm_rule_pipeline_equals_the_cpu_driver_bit_for_bit() {
    tch::set_num_threads(2);
    let lamb_l2 = Lamb {
        lr: 0.02,
        weight_decay: 1e-2,
        weight_decouple: false,
        ..Lamb::default()
    };
    let lars_wd = Lars {
        lr: 0.1,
        weight_decay: 1e-2,
        nesterov: true,
        ..Lars::default()
    };
    let mut all = Vec::new();
    for (i, kind) in [Kind::Float, Kind::BFloat16].into_iter().enumerate() {
        let seed = 10 * i as i64;
        all.push(pipe_case("lamb", &Lamb::default(), kind, None, seed + 1));
        all.push(pipe_case("lamb_l2", &lamb_l2, kind, Some(1024.0), seed + 2));
        all.push(pipe_case("lars", &Lars::default(), kind, None, seed + 3));
        all.push(pipe_case("lars_wd", &lars_wd, kind, Some(4096.0), seed + 4));
    }
    let bodies: Vec<String> = all.iter().map(|c| format!("{}{HARNESS}", c.body)).collect();
    let input: Vec<u8> = all.iter().flat_map(|c| c.input.iter().copied()).collect();
    let stdout = run_host_program(
        "pipeline",
        &namespaced_cases(bodies.iter().map(String::as_str)),
        input,
    );
    let mut at = 0;
    for c in &all {
        let got = &stdout[at..at + c.expected.len()];
        at += c.expected.len();
        let diff = got.iter().zip(&c.expected).filter(|(a, b)| a != b).count();
        assert!(
            diff == 0,
            "{}: {diff} of {} bytes differ from the CPU driver",
            c.name,
            got.len()
        );
    }
    assert_eq!(at, stdout.len());
    eprintln!(
        "{} LAMB/LARS steps ({} tensors each) equal the CPU driver bit for bit",
        all.len(),
        SIZES.len()
    );
}
