//! NVRTC, loaded at run time (cudarc's `dynamic-loading`): nothing CUDA is needed to build
//! ferroptim or to import it; a CPU-only user never loads a CUDA library.
//!
//! torch's CUDA wheels install NVRTC as `site-packages/nvidia/cu13/lib/libnvrtc.so.13`, next
//! to `libnvrtc-builtins.so.13.0`, which NVRTC opens by name while compiling. That folder is
//! not on the loader path, so [`load`] first opens both by full path from the folders it is
//! given (the Python package passes the `nvidia` wheel's folder; `FERROPTIM_NVRTC_DIR` may name
//! another): once a library with that soname is loaded, opening it by name finds it.

use std::ffi::{c_char, CStr, CString};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use cudarc::nvrtc::sys;

/// Options every kernel is compiled with: IEEE division and square root, no flush to zero,
/// and no contraction of `a·b + c` into a multiply-add (the rule says where it fuses).
pub const OPTIONS: [&str; 5] = [
    "--fmad=false",
    "--prec-div=true",
    "--prec-sqrt=true",
    "--ftz=false",
    "-std=c++17",
];

/// Libraries opened by full path, kept loaded for the life of the process.
static PRELOADED: Mutex<Vec<libloading::Library>> = Mutex::new(Vec::new());
static AVAILABLE: OnceLock<Result<(i32, i32), String>> = OnceLock::new();

/// Folders where NVRTC may be: `FERROPTIM_NVRTC_DIR`, then `dirs`.
fn candidate_dirs(dirs: &[PathBuf]) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::env::var_os("FERROPTIM_NVRTC_DIR")
        .map(|d| vec![PathBuf::from(d)])
        .unwrap_or_default();
    out.extend(dirs.iter().cloned());
    out
}

fn preload(dir: &Path) -> bool {
    let mut loaded = false;
    let Ok(mut held) = PRELOADED.lock() else {
        return false;
    };
    for name in ["libnvrtc-builtins.so.13.0", "libnvrtc.so.13"] {
        let path = dir.join(name);
        if path.is_file() {
            // SAFETY: NVRTC's initialisers only set up its own state; the handle is kept for
            // the life of the process, so no symbol resolved from it outlives it.
            if let Ok(lib) = unsafe { libloading::Library::new(&path) } {
                held.push(lib);
                loaded = name == "libnvrtc.so.13";
            }
        }
    }
    loaded
}

/// Loads NVRTC (once per process; `dirs` are searched on the first call only) and returns
/// its version, or why it is not available.
pub fn load(dirs: &[PathBuf]) -> Result<(i32, i32), String> {
    AVAILABLE
        .get_or_init(|| {
            let dirs = candidate_dirs(dirs);
            let found = dirs.iter().any(|d| preload(d));
            // SAFETY: only tries to open the library; no symbol is used.
            if !found && !unsafe { sys::is_culib_present() } {
                return Err(format!(
                    "libnvrtc not found (looked in {dirs:?} and on the loader path)"
                ));
            }
            let (mut major, mut minor) = (0, 0);
            // SAFETY: the library is loaded (checked above); both pointers are valid.
            let r = unsafe { sys::nvrtcVersion(&mut major, &mut minor) };
            if r != sys::nvrtcResult::NVRTC_SUCCESS {
                return Err(format!("nvrtcVersion failed: {r:?}"));
            }
            Ok((major, minor))
        })
        .clone()
}

/// A compiled kernel image.
#[derive(Clone, Debug)]
pub struct Compiled {
    /// The CUBIN for the requested `sm_XY` (loadable with `cuModuleLoadData`).
    pub cubin: Vec<u8>,
    /// NVRTC's log (empty when there was neither error nor warning).
    pub log: String,
    /// Seconds NVRTC took.
    pub seconds: f64,
}

/// Compiles `src` for `arch` (e.g. `"sm_90"`) with [`OPTIONS`]. An error carries NVRTC's log.
/// [`load`] must have succeeded.
pub fn compile(src: &str, name: &str, arch: &str) -> Result<Compiled, String> {
    load(&[])?;
    let csrc = CString::new(src).map_err(|e| e.to_string())?;
    let cname = CString::new(name).map_err(|e| e.to_string())?;
    let mut opts: Vec<CString> = OPTIONS
        .iter()
        .map(|o| CString::new(*o))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    opts.push(CString::new(format!("--gpu-architecture={arch}")).map_err(|e| e.to_string())?);
    let ptrs: Vec<*const c_char> = opts.iter().map(|o| o.as_ptr()).collect();
    let start = Instant::now();
    let mut prog: sys::nvrtcProgram = std::ptr::null_mut();
    // SAFETY: NVRTC is loaded (`load`); the strings outlive the calls; `prog` is created
    // before use and destroyed exactly once below.
    unsafe {
        let r = sys::nvrtcCreateProgram(
            &mut prog,
            csrc.as_ptr(),
            cname.as_ptr(),
            0,
            std::ptr::null(),
            std::ptr::null(),
        );
        if r != sys::nvrtcResult::NVRTC_SUCCESS {
            return Err(format!("nvrtcCreateProgram: {r:?}"));
        }
        let r = sys::nvrtcCompileProgram(prog, ptrs.len() as i32, ptrs.as_ptr());
        let seconds = start.elapsed().as_secs_f64();
        let log = program_log(prog);
        let out = if r != sys::nvrtcResult::NVRTC_SUCCESS {
            Err(format!(
                "NVRTC failed ({r:?}) compiling {name} for {arch}:\n{log}"
            ))
        } else {
            let mut size = 0usize;
            let r = sys::nvrtcGetCUBINSize(prog, &mut size);
            if r != sys::nvrtcResult::NVRTC_SUCCESS {
                Err(format!("nvrtcGetCUBINSize: {r:?}"))
            } else {
                let mut cubin = vec![0u8; size];
                let r = sys::nvrtcGetCUBIN(prog, cubin.as_mut_ptr() as *mut c_char);
                if r != sys::nvrtcResult::NVRTC_SUCCESS {
                    Err(format!("nvrtcGetCUBIN: {r:?}"))
                } else {
                    Ok(Compiled {
                        cubin,
                        log,
                        seconds,
                    })
                }
            }
        };
        sys::nvrtcDestroyProgram(&mut prog);
        out
    }
}

/// NVRTC's log of `prog`, trimmed.
///
/// # Safety
/// `prog` must be a live program that has been compiled.
unsafe fn program_log(prog: sys::nvrtcProgram) -> String {
    let mut size = 0usize;
    if sys::nvrtcGetProgramLogSize(prog, &mut size) != sys::nvrtcResult::NVRTC_SUCCESS || size == 0
    {
        return String::new();
    }
    let mut buf = vec![0 as c_char; size + 1];
    if sys::nvrtcGetProgramLog(prog, buf.as_mut_ptr()) != sys::nvrtcResult::NVRTC_SUCCESS {
        return String::new();
    }
    CStr::from_ptr(buf.as_ptr())
        .to_string_lossy()
        .trim()
        .to_string()
}
