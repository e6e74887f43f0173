// Batched reads of tensor metadata with software prefetching (see src/driver/fast.rs).
//
// A step over many parameters reads, for each tensor, the `at::Tensor` handle, its TensorImpl
// and its StorageImpl: three dependent loads, each from a different heap block. After the
// previous step's fused pass has streamed the whole model through the caches, every one of
// them misses, and one tensor at a time they are paid in series (measured: ~0.4 µs per tensor,
// most of a step's fixed cost). Here the loads of a batch of tensors are issued level by level,
// so that the misses of the whole batch overlap: each level waits for memory once per batch.
//
// Prefetch instructions never fault, so a stale or odd address costs nothing but a wasted
// line; the functions only read through pointers libtorch guarantees valid (a defined
// tensor's TensorImpl, its StorageImpl when it has one, its autograd metadata when set).
#include <ATen/core/Tensor.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <stdexcept>

namespace {

// Lines of a TensorImpl that the driver's inspection reads (sizes, strides, dtype, device,
// storage, flags): the object is about 200 bytes.
constexpr int kImplLines = 4;

inline void prefetch_lines(const void* p, int lines) {
  const char* c = static_cast<const char*>(p);
  for (int l = 0; l < lines; ++l) {
    __builtin_prefetch(c + 64 * l, 0, 3);
  }
}

inline c10::TensorImpl* impl_of(const at::Tensor* t) {
  return t == nullptr ? nullptr : t->unsafeGetTensorImpl();
}

// A defined tensor with a storage whose offset is a plain field: not a Python subclass, whose
// storage_offset() may call into Python (the driver prefetches from several threads).
inline bool plain(const at::Tensor* t) {
  const c10::TensorImpl* impl = impl_of(t);
  return impl != nullptr && t->defined() && impl->has_storage() && !impl->is_python_dispatch();
}

// The address of a tensor's version counter object, which a step bumps once validation has
// passed (csrc/version.cpp), or null (inference tensors have none). c10::VariableVersion
// holds a single intrusive_ptr to it, so its first word is that address; the bytes are read
// through memcpy, and the result is only ever prefetched, so should the layout change, the
// cost is a wasted line, never a fault.
static_assert(sizeof(c10::VariableVersion) == sizeof(void*),
              "c10::VariableVersion is expected to hold one pointer");
inline const void* version_counter_of(const c10::TensorImpl* impl) {
  const void* counter = nullptr;
  std::memcpy(&counter, static_cast<const void*>(&impl->version_counter()), sizeof(counter));
  return counter;
}

}  // namespace

extern "C" {

// Brings the metadata of `ts[0..n)` (null entries are skipped) into the cache: the handles,
// then their TensorImpls, then their StorageImpls and version counters, then their first
// data lines. Never throws.
void ferroptim_prefetch(const at::Tensor* const* ts, size_t n) noexcept {
  try {
    for (size_t i = 0; i < n; ++i) {
      if (ts[i] != nullptr) {
        __builtin_prefetch(ts[i], 0, 3);
      }
    }
    for (size_t i = 0; i < n; ++i) {
      c10::TensorImpl* impl = impl_of(ts[i]);
      if (impl != nullptr) {
        prefetch_lines(impl, kImplLines);
      }
    }
    for (size_t i = 0; i < n; ++i) {
      c10::TensorImpl* impl = impl_of(ts[i]);
      if (!plain(ts[i])) {
        continue;
      }
      c10::StorageImpl* storage = impl->unsafe_storage().unsafeGetStorageImpl();
      if (storage != nullptr) {
        prefetch_lines(storage, 2);
      }
      if (const void* counter = version_counter_of(impl)) {
        __builtin_prefetch(counter, 1, 3);
      }
    }
    for (size_t i = 0; i < n; ++i) {
      c10::TensorImpl* impl = impl_of(ts[i]);
      if (!plain(ts[i])) {
        continue;
      }
      c10::StorageImpl* storage = impl->unsafe_storage().unsafeGetStorageImpl();
      if (storage != nullptr && storage->data() != nullptr) {
        // The first line of data: a scalar state tensor's value, a big tensor's first line.
        __builtin_prefetch(
            static_cast<const char*>(storage->data()) + impl->storage_offset() * impl->itemsize(), 1,
            3);
      }
    }
  } catch (...) {
    // Only a hint: whatever was not prefetched is read from memory later.
  }
}

// `out[i] = new at::Tensor(params[i]->grad())` for `i < n` (an undefined tensor where there is
// no gradient), as tch's `atg_grad` does one at a time, with the autograd metadata of the
// batch fetched first. Returns 1, or 0 if a parameter is null or libtorch threw: then every
// `out[i]` is null and nothing is left allocated.
int32_t ferroptim_grads(const at::Tensor* const* params, size_t n, at::Tensor** out) noexcept {
  for (size_t i = 0; i < n; ++i) {
    out[i] = nullptr;
  }
  try {
    ferroptim_prefetch(params, n);
    for (size_t i = 0; i < n; ++i) {
      if (params[i] == nullptr) {
        throw std::invalid_argument("null tensor");
      }
      c10::TensorImpl* impl = params[i]->unsafeGetTensorImpl();
      if (params[i]->defined() && impl->autograd_meta() != nullptr) {
        prefetch_lines(impl->autograd_meta(), 2);
      }
    }
    for (size_t i = 0; i < n; ++i) {
      // The gradient's TensorImpl: its reference count is incremented below.
      c10::TensorImpl* grad = params[i]->grad().unsafeGetTensorImpl();
      if (grad != nullptr) {
        __builtin_prefetch(grad, 1, 3);
      }
    }
    for (size_t i = 0; i < n; ++i) {
      out[i] = new at::Tensor(params[i]->grad());
    }
    return 1;
  } catch (...) {
    for (size_t i = 0; i < n; ++i) {
      delete out[i];
      out[i] = nullptr;
    }
    return 0;
  }
}

}  // extern "C"
