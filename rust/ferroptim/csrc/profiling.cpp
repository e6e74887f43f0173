// Whether anything observes libtorch's RecordFunction events (see src/profiling.rs).
#include <ATen/record_function.h>

#include <cstdint>

extern "C" {

// 1 if a RecordFunction callback is registered for this thread or globally (a profiler, an
// execution trace observer, ...), 0 if not. Never throws.
int32_t ferroptim_record_function_observed() noexcept {
  try {
    return at::hasCallbacks() ? 1 : 0;
  } catch (...) {
    return 1;  // when in doubt, let the caller record
  }
}

}  // extern "C"
