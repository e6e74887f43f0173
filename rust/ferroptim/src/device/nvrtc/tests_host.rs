//! Scaffolding shared by the host checks (`tests.rs`, `tests_norms.rs`, `tests_pipeline.rs`,
//! `tests_scalars.rs`): generated C++ compiled for the CPU with the same explicitly rounded
//! arithmetic as on the device, fed binary input on stdin, its binary output compared by the
//! caller with the Rust rule's.

use std::io::Write;
use std::process::{Command, Stdio};

/// The host C++ compiler, if any.
pub(super) fn cxx() -> Option<String> {
    let candidates = [
        std::env::var("CXX").ok(),
        Some("c++".into()),
        Some("g++".into()),
    ];
    candidates.into_iter().flatten().find(|c| {
        Command::new(c)
            .arg("--version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    })
}

/// Binary stdin/stdout helpers of every host program: `rd` (exits with status 2 on a short
/// read) and `wr`.
const IO: &str = r#"
#include <cstdio>
#include <cstdlib>
#include <vector>
static void rd(void* p, size_t n) {
  if (n && std::fread(p, 1, n, stdin) != n) { std::fprintf(stderr, "short read\n"); std::exit(2); }
}
static void wr(const void* p, size_t n) { if (n) std::fwrite(p, 1, n, stdout); }
"#;

/// Cases `c0` … `c{n-1}`, each a namespace with a `run()`, run in order by `main`.
pub(super) fn namespaced_cases<'a>(bodies: impl IntoIterator<Item = &'a str>) -> String {
    let mut src = String::new();
    let mut n = 0;
    for (i, body) in bodies.into_iter().enumerate() {
        src.push_str(&format!("namespace c{i} {{\n{body}}}\n"));
        n = i + 1;
    }
    src.push_str("int main() {\n");
    for i in 0..n {
        src.push_str(&format!("  c{i}::run();\n"));
    }
    src.push_str("  std::fflush(stdout);\n  return 0;\n}\n");
    src
}

/// Compiles `prelude.h`, the I/O helpers and `source` (which defines `main`) as host C++
/// (`-ffp-contract=off`: no fused multiply-adds beyond the prelude's explicit ones; warnings
/// are errors), runs the program with `input` on stdin, and returns its stdout. Panics (the
/// test fails) when there is no C++ compiler, the compile fails or warns, or the program
/// exits with an error.
pub(super) fn run_host_program(name: &str, source: &str, input: Vec<u8>) -> Vec<u8> {
    let cxx = cxx().expect("no C++ compiler (CXX, c++ or g++) for the host check");
    let mut src = String::from(super::emit::PRELUDE);
    src.push_str(IO);
    src.push_str(source);
    let dir = std::env::temp_dir().join(format!("ferroptim-nvrtc-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temporary folder");
    let (cpp, exe) = (dir.join(format!("{name}.cpp")), dir.join(name));
    std::fs::write(&cpp, &src).expect("write the C++ source");
    let out = Command::new(&cxx)
        .args(["-std=c++17", "-O1", "-ffp-contract=off", "-fno-math-errno"])
        .args(["-fno-fast-math", "-Wall", "-Wextra", "-Werror"])
        .arg("-Wno-unused-function")
        .arg("-o")
        .arg(&exe)
        .arg(&cpp)
        .output()
        .expect("run the C++ compiler");
    assert!(
        out.status.success(),
        "{name}: host compile failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut child = Command::new(&exe)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the host program");
    let mut stdin = child.stdin.take().expect("piped stdin");
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().expect("host program output");
    writer
        .join()
        .expect("stdin writer")
        .expect("write the input");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "{name}: host program exited with {}",
        out.status
    );
    out.stdout
}
