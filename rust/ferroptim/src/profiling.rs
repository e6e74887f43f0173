//! Whether libtorch's `RecordFunction` events are observed (`csrc/profiling.cpp`).

extern "C" {
    fn ferroptim_record_function_observed() -> i32;
}

/// True if a `RecordFunction` callback is registered, for the calling thread or globally: a
/// running profiler (`torch.profiler.profile`, `emit_nvtx`, …), an execution trace observer,
/// or any other observer of libtorch's `RecordFunction` events. When this is false, entering
/// a `record_function` region records nothing, so callers may skip it (ferroptim's Python
/// `step` wrapper does, see `python/ferroptim/_step_hooks.py`). Never fails; in doubt it is
/// true.
pub fn record_function_observed() -> bool {
    // SAFETY: a plain query of libtorch's callback registry; the function catches every
    // exception.
    unsafe { ferroptim_record_function_observed() != 0 }
}
