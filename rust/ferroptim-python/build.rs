//! Link-time settings of the extension module, and `csrc/unpack.cpp` compiled against the
//! headers of the torch (and the Python) it is built with.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    // Find the torch wheel's libtorch next to our package at run time
    // (site-packages/ferroptim/_core.*.so → site-packages/torch/lib), never by absolute path.
    println!("cargo:rustc-link-arg=-Wl,-rpath,$ORIGIN/../torch/lib");
    println!("cargo:rerun-if-changed=csrc/unpack.cpp");
    println!("cargo:rerun-if-env-changed=VIRTUAL_ENV");
    let Some(paths) = python_paths() else {
        panic!("csrc/unpack.cpp needs torch's headers: no python with torch found (VIRTUAL_ENV)");
    };
    let torch_include = PathBuf::from(&paths[0]);
    cc::Build::new()
        .cpp(true)
        .std("c++17")
        .warnings(false)
        .opt_level(2)
        .include(&torch_include)
        .include(torch_include.join("torch/csrc/api/include"))
        .include(&paths[1])
        .define("_GLIBCXX_USE_CXX11_ABI", paths[2].as_str())
        .file("csrc/unpack.cpp")
        .compile("ferroptim_unpack");
}

/// torch's include dir, Python's include dir and torch's C++ ABI flag, from the Python that
/// runs the build (the venv's when one is active, as torch-sys finds it).
fn python_paths() -> Option<Vec<String>> {
    let python = if std::env::var_os("VIRTUAL_ENV").is_some() {
        "python"
    } else {
        "python3"
    };
    let script = "import os, sysconfig, torch\n\
        print(os.path.join(os.path.dirname(torch.__file__), 'include'))\n\
        print(sysconfig.get_paths()['include'])\n\
        print(int(torch._C._GLIBCXX_USE_CXX11_ABI))";
    let out = Command::new(python).args(["-c", script]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    (lines.len() == 3).then_some(lines)
}
