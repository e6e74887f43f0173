// One call per tensor for everything the driver checks before a step (see src/driver/fast.rs).
//
// tch exposes each tensor property as its own FFI call with an error check after each; the
// driver needs ~10 of them per tensor, which made validation the dominant per-parameter cost.
// This reads them all inline from the at::Tensor, and never throws: any exception, or any
// tensor that is not a plain defined dense tensor, is reported as "not fast" and the Rust side
// falls back to the tch calls (which also produce the precise error message).
#include <ATen/core/Tensor.h>
#include <c10/core/InferenceMode.h>
#include <c10/core/impl/COW.h>

#include <cstdint>

extern "C" {

struct FerroptimInspect {
  int32_t scalar_type;   // c10::ScalarType
  int32_t device_type;   // c10::DeviceType (0 = CPU)
  int32_t device_index;
  int32_t contiguous;    // row-major contiguous
  int32_t same_shape;    // sizes equal those of `like` (1 if `like` is null)
  int32_t same_device;   // device equals that of `like` (1 if `like` is null)
  int64_t numel;
  uint64_t ptr;          // address of the first element (0 if empty)
  uint64_t span;         // bytes from the first to one past the last addressable element
};

// Returns 1 and fills `out` if `t` is a defined strided tensor with a storage; 0 otherwise.
// `writable`: the tensor will be updated in place, so outside InferenceMode it must have a
// version counter (not be an inference tensor), as an in-place ATen op checks, and its address
// is taken through mutable_data_ptr().
//
// The driver calls this from several threads at once, for distinct tensors, while their
// metadata stays put (csrc's callers hold them for the step). It therefore only reads, and
// refuses (0: the caller's thread then takes the tch path) the two kinds of tensor whose reads
// are not plain: Python tensor subclasses, whose layout, sizes and strides may call into
// Python, and copy-on-write storage, whose mutable_data_ptr() copies the data.
int32_t ferroptim_inspect(const at::Tensor* t, const at::Tensor* like, int32_t writable,
                          FerroptimInspect* out) noexcept {
  try {
    // Python subclasses first: even their layout() may call into Python.
    if (t == nullptr || !t->defined() || t->unsafeGetTensorImpl()->is_python_dispatch()) {
      return 0;
    }
    if (t->layout() != c10::kStrided || t->is_mkldnn() || t->is_nested() || !t->has_storage()) {
      return 0;
    }
    // Copy-on-write storage, read or written: the caller's path materialises it, so that a
    // tensor read here and written through another handle has one address.
    if (c10::impl::cow::is_cow_data_ptr(t->storage().data_ptr())) {
      return 0;
    }
    // As ferroptim_inplace_allowed (csrc/version.cpp). InferenceMode is thread-local and off
    // on libtorch's worker threads: there, such tensors are left to the caller's thread.
    if (writable && !t->unsafeGetTensorImpl()->version_counter().enabled() &&
        !c10::InferenceMode::is_enabled()) {
      return 0;
    }
    const auto sizes = t->sizes();
    const auto strides = t->strides();
    const int64_t numel = t->numel();
    uint64_t span = 0;
    if (numel > 0) {
      int64_t last = 0;
      for (size_t d = 0; d < sizes.size(); ++d) {
        const int64_t s = strides[d] < 0 ? -strides[d] : strides[d];
        last += (sizes[d] - 1) * s;
      }
      span = static_cast<uint64_t>(last + 1) * t->element_size();
    }
    const c10::Device device = t->device();
    out->scalar_type = static_cast<int32_t>(t->scalar_type());
    out->device_type = static_cast<int32_t>(device.type());
    out->device_index = static_cast<int32_t>(device.index());
    out->contiguous = t->is_contiguous() ? 1 : 0;
    out->same_shape = like == nullptr || like->sizes() == sizes ? 1 : 0;
    out->same_device = like == nullptr || like->device() == device ? 1 : 0;
    out->numel = numel;
    const void* ptr = nullptr;
    if (numel > 0) {
      ptr = writable ? t->mutable_data_ptr() : t->const_data_ptr();
    }
    out->ptr = reinterpret_cast<uint64_t>(ptr);
    out->span = span;
    return 1;
  } catch (...) {
    return 0;
  }
}

}  // extern "C"
