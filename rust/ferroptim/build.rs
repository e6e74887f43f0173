//! Compiles `csrc/inspect.cpp`, `csrc/prefetch.cpp`, `csrc/ops.cpp`, `csrc/grad.cpp`,
//! `csrc/version.cpp`, `csrc/profiling.cpp` and the device path's `csrc/aten_step.cpp` /
//! `csrc/aten_foreach*.cpp`
//! against the headers of the libtorch that torch-sys links.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=csrc/inspect.cpp");
    println!("cargo:rerun-if-changed=csrc/prefetch.cpp");
    println!("cargo:rerun-if-changed=csrc/ops.cpp");
    println!("cargo:rerun-if-changed=csrc/grad.cpp");
    println!("cargo:rerun-if-changed=csrc/version.cpp");
    println!("cargo:rerun-if-changed=csrc/profiling.cpp");
    println!("cargo:rerun-if-changed=csrc/aten_step.h");
    println!("cargo:rerun-if-changed=csrc/aten_step.cpp");
    println!("cargo:rerun-if-changed=csrc/aten_foreach.cpp");
    println!("cargo:rerun-if-changed=csrc/aten_foreach_more.cpp");
    println!("cargo:rerun-if-changed=csrc/aten_foreach_beyond.cpp");
    println!("cargo:rerun-if-changed=csrc/aten_foreach.h");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=LIBTORCH_USE_PYTORCH");
    // torch-sys (`links = "tch"`) reports the library directory it linked.
    let lib = match std::env::var("DEP_TCH_LIBTORCH_LIB") {
        Ok(dir) => PathBuf::from(dir),
        Err(_) => {
            // doc-only builds of torch-sys report nothing: nothing to compile against.
            println!("cargo:warning=torch-sys reported no libtorch directory; skipping csrc/");
            return;
        }
    };
    let root = lib
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| lib.clone());
    let include = root.join("include");
    cc::Build::new()
        .cpp(true)
        .std("c++17")
        .warnings(false)
        .opt_level(2)
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .define("_GLIBCXX_USE_CXX11_ABI", cxx11_abi())
        .file("csrc/inspect.cpp")
        .file("csrc/prefetch.cpp")
        .file("csrc/ops.cpp")
        .file("csrc/grad.cpp")
        .file("csrc/version.cpp")
        .file("csrc/profiling.cpp")
        .file("csrc/aten_step.cpp")
        .file("csrc/aten_foreach.cpp")
        .file("csrc/aten_foreach_more.cpp")
        .file("csrc/aten_foreach_beyond.cpp")
        .compile("ferroptim_inspect");
}

/// The C++ ABI of the torch wheel's libtorch (torch's own flag), defaulting to the new ABI
/// that torch ≥ 2.7 Linux wheels use.
fn cxx11_abi() -> &'static str {
    let python = if std::env::var_os("VIRTUAL_ENV").is_some() {
        "python"
    } else {
        "python3"
    };
    let out = Command::new(python)
        .args([
            "-c",
            "import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))",
        ])
        .output();
    match out {
        Ok(o) if String::from_utf8_lossy(&o.stdout).trim() == "0" => "0",
        _ => "1",
    }
}
