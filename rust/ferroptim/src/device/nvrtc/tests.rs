//! Checks of the generated CUDA on the CPU:
//! * the element functions, compiled as host C++ (`-ffp-contract=off`), equal the Rust rules
//!   bit for bit (NaN as NaN) over random and special inputs, every rule, f32/bf16/f16/f64;
//! * NVRTC compiles every kernel for sm_80 and sm_90 without error or warning (skipped, with a
//!   message, only where libnvrtc is absent).

use super::cases::{cases, Case};
use super::emit::{element_function, Dtype};
use super::kernel::{types, APPLY, STEP_KERNEL};
use super::tests_host::{namespaced_cases, run_host_program};
use std::path::PathBuf;
use std::process::Command;

const HARNESS: &str = r#"
template <typename TT, typename SS, int NS, typename F>
static void run(F apply) {
  unsigned long long n, ns;
  rd(&n, 8); rd(&ns, 8);
  std::vector<TT> sc(ns + 1);
  rd(sc.data(), sizeof(TT) * ns);
  int scaled; float scale;
  rd(&scaled, 4); rd(&scale, 4);
  std::vector<SS> p(n), g(n), st(n * NS + 1);
  rd(p.data(), sizeof(SS) * n); rd(g.data(), sizeof(SS) * n); rd(st.data(), sizeof(SS) * n * NS);
  for (unsigned long long i = 0; i < n; ++i) {
    SS se[NS + 1];
    for (int k = 0; k < NS; ++k) se[k] = st[k * n + i];
    apply(sc.data(), p[i], g[i], se, scaled != 0, (TT)scale);
    for (int k = 0; k < NS; ++k) st[k * n + i] = se[k];
  }
  wr(p.data(), sizeof(SS) * n); wr(g.data(), sizeof(SS) * n); wr(st.data(), sizeof(SS) * n * NS);
}
"#;

fn is_nan(bits: u64, dtype: Dtype) -> bool {
    match dtype {
        Dtype::F32 => (bits & 0x7FFF_FFFF) > 0x7F80_0000,
        Dtype::F64 => (bits & 0x7FFF_FFFF_FFFF_FFFF) > 0x7FF0_0000_0000_0000,
        Dtype::Bf16 => (bits & 0x7FFF) > 0x7F80,
        Dtype::F16 => (bits & 0x7FFF) > 0x7C00,
    }
}

fn elements(bytes: &[u8], size: usize) -> impl Iterator<Item = u64> + '_ {
    bytes.chunks_exact(size).map(move |c| {
        let mut b = [0u8; 8];
        b[..size].copy_from_slice(c);
        u64::from_le_bytes(b)
    })
}

#[test]
fn generated_element_functions_equal_the_rust_rules_bit_for_bit() {
    let all: Vec<Case> = cases();
    let mut src = String::from(HARNESS);
    for (i, c) in all.iter().enumerate() {
        src.push_str(&format!("namespace c{i} {{\n"));
        src.push_str(&types(c.dtype, c.n_state));
        src.push_str(&element_function(&c.trace, c.n_state));
        src.push_str(APPLY);
        src.push_str("}\n");
    }
    src.push_str("int main() {\n  int id;\n  while (std::fread(&id, 4, 1, stdin) == 1) {\n    switch (id) {\n");
    for (i, _) in all.iter().enumerate() {
        src.push_str(&format!(
            "      case {i}: run<c{i}::T, c{i}::S, c{i}::FO_NSTATE>(c{i}::fo_apply); break;\n"
        ));
    }
    src.push_str("      default: return 3;\n    }\n  }\n  std::fflush(stdout);\n  return 0;\n}\n");
    let mut input = Vec::new();
    for (i, c) in all.iter().enumerate() {
        input.extend_from_slice(&(i as i32).to_le_bytes());
        input.extend_from_slice(&c.input);
    }
    let stdout = run_host_program("elements", &src, input);
    let mut at = 0;
    let mut compared = 0usize;
    for c in &all {
        let got = &stdout[at..at + c.expected.len()];
        at += c.expected.len();
        let size = c.dtype.size();
        for (j, (a, b)) in elements(got, size)
            .zip(elements(&c.expected, size))
            .enumerate()
        {
            let same = a == b || (is_nan(a, c.dtype) && is_nan(b, c.dtype));
            assert!(
                same,
                "{} ({:?}): output element {j} is {a:#x} from C, {b:#x} from Rust\n{}",
                c.name,
                c.dtype,
                element_function(&c.trace, c.n_state)
            );
            compared += 1;
        }
    }
    assert_eq!(at, stdout.len());
    // Every rule, in each dtype, with several configurations.
    assert!(all.len() >= 17 * 4 * 2, "{} cases", all.len());
    eprintln!("{} cases, {compared} values equal bit for bit", all.len());
}

#[test]
fn traced_norm_terms_equal_the_rust_rules_bit_for_bit() {
    let all = super::cases::norm_cases();
    let bodies: Vec<String> = all
        .iter()
        .map(|c| {
            format!(
                "{}{}static void run() {{\n  float sc[{}];\n  rd(sc, 4 * {});\n  \
                 for (int i = 0; i < {}; ++i) {{\n    float pg[2];\n    float st[FO_NSTATE + 2];\n    \
                 rd(pg, 4 * 2);\n    rd(st, 4 * FO_NSTATE);\n    \
                 (void)fo_update(sc, pg[0], pg[1], st);\n    wr(st + FO_NSTATE, 4 * 2);\n  }}\n}}\n",
                types(Dtype::F32, c.n_state),
                element_function(&c.trace, c.n_state + 2),
                c.slots.len() + 1,
                c.slots.len(),
                c.inputs.len()
            )
        })
        .collect();
    let src = namespaced_cases(bodies.iter().map(String::as_str));
    let mut input = Vec::new();
    for c in &all {
        for v in &c.slots {
            input.extend_from_slice(&v.to_le_bytes());
        }
        for (p, g, st) in &c.inputs {
            for v in [*p, *g].iter().chain(st) {
                input.extend_from_slice(&v.to_le_bytes());
            }
        }
    }
    let stdout = run_host_program("norm_terms", &src, input);
    let got: Vec<u32> = stdout
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let want: Vec<u32> = all
        .iter()
        .flat_map(|c| {
            c.expected
                .iter()
                .flat_map(|t| [t[0].to_bits(), t[1].to_bits()])
        })
        .collect();
    assert_eq!(got.len(), want.len());
    for (i, (a, b)) in got.iter().zip(&want).enumerate() {
        let nan = |x: u32| (x & 0x7FFF_FFFF) > 0x7F80_0000;
        assert!(
            a == b || (nan(*a) && nan(*b)),
            "norm term {i}: {a:#x} != {b:#x}"
        );
    }
}

/// The folder of torch's CUDA 13 wheels' NVRTC, found from the Python that runs the tests.
fn nvrtc_dirs() -> Vec<PathBuf> {
    let python = if std::env::var_os("VIRTUAL_ENV").is_some() {
        "python"
    } else {
        "python3"
    };
    let code = "import os, nvidia; print('\\n'.join(os.path.join(p, 'cu13', 'lib') for p in nvidia.__path__))";
    Command::new(python)
        .args(["-c", code])
        .output()
        .ok()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(PathBuf::from)
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn nvrtc_compiles_every_kernel_for_sm80_and_sm90_without_warnings() {
    let version = match super::compile::load(&nvrtc_dirs()) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("SKIPPED: libnvrtc is not available here ({e}); nothing compiled");
            return;
        }
    };
    // Every distinct kernel: float32 and bfloat16 ones for sm_80 and sm_90, float16 and
    // float64 ones for sm_90 (one NVRTC program each: batching several kernels into one
    // program measured slower than compiling them one by one).
    let mut jobs: Vec<(String, String, &str)> = Vec::new();
    let mut seen: Vec<String> = Vec::new();
    let sources = cases()
        .into_iter()
        .map(|c| {
            let k = super::kernel::Layout::new(c.n_state, c.trace.slots.len(), c.dtype);
            let body = super::kernel::step_body(&c.trace, &k, STEP_KERNEL);
            (c.name, c.dtype, format!("{}{body}", super::emit::PRELUDE))
        })
        .chain(
            super::cases::norm_kernels()
                .into_iter()
                .map(|(name, dtype, k)| (format!("{name}_norms"), dtype, k.source)),
        )
        .chain(super::cases::capturable_sources())
        .chain(super::tests_scalars_lr::tensor_lr_sources());
    for (name, dtype, src) in sources {
        if seen.contains(&src) {
            continue;
        }
        let archs: &[&str] = match dtype {
            Dtype::F32 | Dtype::Bf16 => &["sm_80", "sm_90"],
            _ => &["sm_90"],
        };
        for arch in archs {
            jobs.push((format!("{name}_{}", dtype.name()), src.clone(), arch));
        }
        seen.push(src);
    }
    let started = std::time::Instant::now();
    let mut times: Vec<f64> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..2)
            .map(|w| {
                let jobs = &jobs;
                scope.spawn(move || {
                    let mut secs = Vec::new();
                    for (name, src, arch) in jobs.iter().skip(w).step_by(2) {
                        let out = super::compile::compile(src, name, arch)
                            .unwrap_or_else(|e| panic!("{e}"));
                        assert!(
                            out.log.is_empty(),
                            "NVRTC warned compiling {name} for {arch}:\n{}",
                            out.log
                        );
                        assert!(
                            out.cubin.len() > 1000,
                            "{name}: {} byte CUBIN",
                            out.cubin.len()
                        );
                        secs.push(out.seconds);
                    }
                    secs
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    });
    let wall = started.elapsed().as_secs_f64();
    times.sort_by(f64::total_cmp);
    eprintln!(
        "NVRTC {}.{}: {} kernels, {} compilations in {wall:.1} s on 2 threads; \
         per kernel: median {:.3} s, max {:.3} s",
        version.0,
        version.1,
        seen.len(),
        jobs.len(),
        times[times.len() / 2],
        times[times.len() - 1]
    );
}
