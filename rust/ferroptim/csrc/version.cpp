// Version counters of the tensors the fused kernel writes (see src/driver/version.rs).
//
// Every in-place ATen op bumps the version counter of the tensors it writes; autograd compares
// it with the version it saved for backward and raises "one of the variables needed for
// gradient computation has been modified by an inplace operation" on a mismatch. The fused
// kernel writes through raw pointers, so the driver bumps the counters itself, as the ops it
// replaces would have.
#include <ATen/core/Tensor.h>
#include <c10/core/InferenceMode.h>

#include <cstddef>
#include <cstdint>

extern "C" {

// 1 if `t` may be updated in place on this thread, as an in-place ATen op checks it when it
// bumps the version: any tensor inside InferenceMode, and outside it any tensor that has a
// version counter (inference tensors have none, nor has a normal tensor whose `.data` was set
// to an inference tensor). 0 otherwise, or if `t` is null or undefined.
int32_t ferroptim_inplace_allowed(const at::Tensor* t) noexcept {
  try {
    if (t == nullptr || !t->defined()) {
      return 0;
    }
    return t->unsafeGetTensorImpl()->version_counter().enabled() ||
                   c10::InferenceMode::is_enabled()
               ? 1
               : 0;
  } catch (...) {
    return 0;
  }
}

// Bumps the version counter of every defined tensor of `ts[0..n)` that has one (null entries
// are skipped). Validation, on the caller's thread, admits a tensor without one only inside
// InferenceMode (ferroptim_inplace_allowed), where bumping it is a no-op; skipping those here
// keeps this free of the thread-local InferenceMode check, so it may run on any thread.
// Returns 1, or 0 if libtorch threw: the tensors before it were bumped.
int32_t ferroptim_bump_versions(const at::Tensor* const* ts, size_t n) noexcept {
  try {
    for (size_t i = 0; i < n; ++i) {
      if (ts[i] != nullptr && ts[i]->defined() &&
          ts[i]->unsafeGetTensorImpl()->version_counter().enabled()) {
        ts[i]->unsafeGetTensorImpl()->bump_version();
      }
    }
    return 1;
  } catch (...) {
    return 0;
  }
}

}  // extern "C"
