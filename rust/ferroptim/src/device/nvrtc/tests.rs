//! Checks of the generated CUDA on the CPU:
//! * the element functions, compiled as host C++ (`-ffp-contract=off`), equal the Rust rules
//!   bit for bit (NaN as NaN) over random and special inputs, every rule, f32/bf16/f16/f64;
//! * NVRTC compiles every kernel for sm_80 and sm_90 without error or warning (skipped, with a
//!   message, only where libnvrtc is absent).

use super::cases::{cases, Case};
use super::emit::{element_function, Dtype, PRELUDE};
use super::kernel::{types, APPLY};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// The host C++ compiler, if any.
fn cxx() -> Option<String> {
    let candidates = [std::env::var("CXX").ok(), Some("c++".into()), Some("g++".into())];
    candidates.into_iter().flatten().find(|c| {
        Command::new(c)
            .arg("--version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    })
}

const HARNESS: &str = r#"
#include <cstdio>
#include <cstdlib>
#include <vector>
static void rd(void* p, size_t n) {
  if (n && std::fread(p, 1, n, stdin) != n) { std::fprintf(stderr, "short read\n"); std::exit(2); }
}
static void wr(const void* p, size_t n) { if (n) std::fwrite(p, 1, n, stdout); }
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
    let Some(cxx) = cxx() else {
        panic!("no C++ compiler (CXX, c++ or g++) to build the host check with");
    };
    let all: Vec<Case> = cases();
    let mut src = String::from(PRELUDE);
    src.push_str(HARNESS);
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
    let dir = std::env::temp_dir().join(format!("ferroptim-nvrtc-host-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cpp = dir.join("check.cpp");
    let exe = dir.join("check");
    std::fs::write(&cpp, &src).unwrap();
    let out = Command::new(&cxx)
        .args(["-std=c++17", "-O1", "-ffp-contract=off", "-fno-math-errno", "-fno-fast-math"])
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
    let mut input = Vec::new();
    for (i, c) in all.iter().enumerate() {
        input.extend_from_slice(&(i as i32).to_le_bytes());
        input.extend_from_slice(&c.input);
    }
    let mut child = Command::new(&exe)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(out.status.success(), "host check exited with {}", out.status);
    let _ = std::fs::remove_dir_all(&dir);
    let mut at = 0;
    let mut compared = 0usize;
    for c in &all {
        let got = &out.stdout[at..at + c.expected.len()];
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
    assert_eq!(at, out.stdout.len());
    // Every rule, in each dtype, with several configurations.
    assert!(all.len() >= 17 * 4 * 2, "{} cases", all.len());
    eprintln!("{} cases, {compared} values equal bit for bit", all.len());
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
    let mut sources: Vec<(String, String)> = Vec::new();
    for c in cases() {
        let k = super::kernel::Layout::new(c.n_state, c.trace.slots.len(), c.dtype);
        let src = super::kernel::step_source(&c.trace, &k);
        if !sources.iter().any(|(_, s)| *s == src) {
            sources.push((format!("{}_{:?}", c.name, c.dtype), src));
        }
    }
    for (name, src) in super::cases::norm_sources() {
        sources.push((name, src));
    }
    let mut times = Vec::new();
    for (name, src) in &sources {
        for arch in ["sm_80", "sm_90"] {
            let out = super::compile::compile(src, name, arch)
                .unwrap_or_else(|e| panic!("{e}\n--- source ---\n{src}"));
            assert!(
                out.log.is_empty(),
                "NVRTC warned compiling {name} for {arch}:\n{}",
                out.log
            );
            assert!(out.cubin.len() > 1000, "{name}: {} byte CUBIN", out.cubin.len());
            times.push(out.seconds);
        }
    }
    times.sort_by(f64::total_cmp);
    eprintln!(
        "NVRTC {}.{}: {} kernels x 2 archs, compile time median {:.3} s, max {:.3} s",
        version.0,
        version.1,
        sources.len(),
        times[times.len() / 2],
        times[times.len() - 1]
    );
}
