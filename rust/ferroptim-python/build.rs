//! Link-time settings of the extension module.

fn main() {
    // Find the torch wheel's libtorch next to our package at run time
    // (site-packages/ferroptim/_core.*.so → site-packages/torch/lib), never by absolute path.
    println!("cargo:rustc-link-arg=-Wl,-rpath,$ORIGIN/../torch/lib");
}
