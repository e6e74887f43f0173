// Sets a tensor's gradient to undefined, as `p.grad = None` does in Python (tch exposes only
// zeroing the gradient in place), or to a given tensor. Used by the stateful optimizers'
// `zero_grad` and `ferroptim::optim::set_grad` (src/optim/grad.rs).
#include <ATen/core/Tensor.h>
#include <torch/csrc/autograd/variable.h>

#include <cstdint>
#include <cstring>
#include <typeinfo>
#include <vector>

extern "C" {

// Returns 1 on success, 0 if `t` is null or undefined or libtorch threw.
int32_t ferroptim_clear_grad(const at::Tensor* t) noexcept {
  try {
    if (t == nullptr || !t->defined()) {
      return 0;
    }
    t->mutable_grad() = at::Tensor();
    return 1;
  } catch (...) {
    return 0;
  }
}

// Sets `t`'s gradient to `g` (Python's `p.grad = g`, e.g. a sparse gradient). Returns 1 on
// success, 0 if a tensor is null, `t` is undefined, or libtorch threw (e.g. a shape mismatch).
int32_t ferroptim_set_grad(const at::Tensor* t, const at::Tensor* g) noexcept {
  try {
    if (t == nullptr || g == nullptr || !t->defined()) {
      return 0;
    }
    t->mutable_grad() = *g;
    return 1;
  } catch (...) {
    return 0;
  }
}

// Whether `grad` can be zeroed by writing zero bytes over its elements, with exactly the
// effect of `grad.zero_()`: a plain dense CPU tensor (no tensor subclass or wrapper: the impl
// is a `c10::TensorImpl` itself and no Python dispatch key is set), contiguous, not an
// inference tensor (an in-place update of one raises outside inference mode), not a lazy
// negation or conjugation view (whose stored zero would read back as -0), not requiring
// grad and without `grad_fn` (so detaching is a no-op), with a storage holding its elements.
// All-zero bytes are zero in every dtype torch has (floating, complex, integer, bool).
static bool zero_by_memset(const at::Tensor& grad) {
  const c10::TensorImpl* impl = grad.unsafeGetTensorImpl();
  if (typeid(*impl) != typeid(c10::TensorImpl) || !grad.is_cpu() || grad.is_sparse() ||
      grad.requires_grad() || grad.is_inference() || grad.is_neg() || grad.is_conj() ||
      grad.key_set().has(c10::DispatchKey::Python) ||
      grad.key_set().has(c10::DispatchKey::PythonTLSSnapshot) || !impl->has_storage() ||
      !grad.is_contiguous()) {
    return false;
  }
  return grad.numel() == 0 || grad.data_ptr() != nullptr;
}

// Zeroes one defined gradient in place as torch.optim's `zero_grad(set_to_none=False)` does.
static void zero_in_place(at::Tensor& grad) {
  if (zero_by_memset(grad)) {
    if (grad.numel() > 0) {
      std::memset(grad.data_ptr(), 0, grad.nbytes());
    }
    // `zero_()` bumps the version counter: autograd's saved-tensor checks see the change.
    grad.unsafeGetTensorImpl()->bump_version();
    return;
  }
  if (grad.grad_fn()) {
    grad.detach_();
  } else {
    grad.requires_grad_(false);
  }
  grad.zero_();
}

// How far ahead (in parameters) the loops below ask for the cache lines they will read: after
// a step has streamed the model through the caches every tensor's metadata misses, and asking
// for it ahead overlaps the misses (a hint only: it never faults). Each level of indirection
// (tch's `at::Tensor` handle, its TensorImpl, its autograd metadata, the gradient's impl, its
// storage, its elements) is fetched one stage later than the pointer it is reached through.
static constexpr int64_t kAhead = 8;

static inline void prefetch(const void* p) { __builtin_prefetch(p, 1, 3); }

// The autograd metadata of `t`, or null (a tensor that never required grad has none). Exactly
// what `torch::autograd::impl::get_autograd_meta` returns, without the call through the
// library: every autograd metadata libtorch creates is an `AutogradMeta` (or a subclass).
static inline torch::autograd::AutogradMeta* meta_of(const at::Tensor& t) {
  return static_cast<torch::autograd::AutogradMeta*>(t.unsafeGetTensorImpl()->autograd_meta());
}

// Asks for the lines `zero_in_place` reads of a defined gradient's impl: its storage's impl
// (stage 1), then the first elements (stage 2, once the storage impl is in).
static inline void prefetch_storage(const at::Tensor& grad, bool elements) {
  const c10::TensorImpl* impl = grad.unsafeGetTensorImpl();
  if (!impl->has_storage()) {
    return;
  }
  const c10::StorageImpl* storage = impl->unsafe_storage().unsafeGetStorageImpl();
  if (storage == nullptr) {
    return;
  }
  if (!elements) {
    prefetch(storage);
    return;
  }
  const char* data = static_cast<const char*>(storage->data());
  if (data != nullptr) {
    prefetch(data + impl->storage_offset() * static_cast<int64_t>(impl->itemsize()));
  }
}

// Resets the gradients of `n` parameters as torch.optim.Optimizer.zero_grad does:
// `set_to_none` makes each defined gradient undefined (`p.grad = None`); otherwise each
// defined gradient is detached in place if it has a grad_fn, else made not to require grad,
// and zeroed in place (`zero_()`, dense or sparse; a plain contiguous CPU gradient is zeroed by
// `memset` with the same effect, version counter included). Every parameter is checked first
// (defined and a leaf, as torch.optim's parameters are): returns -1 on success, the index of
// the first parameter that is undefined or not a leaf with nothing changed, or -2 if libtorch
// threw (the parameters before the failing one are done). The caller holds the GIL when a
// tensor may be a Python subclass (zeroing dispatches to Python; dropping a gradient may free
// a Python object).
int64_t ferroptim_zero_grads(const at::Tensor* const* params, int64_t n,
                             int32_t set_to_none) noexcept {
  try {
    // Pass 1 checks every parameter and collects its defined gradient (the `grad_` member of
    // its autograd metadata, which `mutable_grad()` returns); nothing changes yet.
    std::vector<at::Tensor*> grads;
    grads.reserve(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
      if (i + 3 * kAhead < n && params[i + 3 * kAhead] != nullptr) {
        prefetch(params[i + 3 * kAhead]);
      }
      if (i + 2 * kAhead < n && params[i + 2 * kAhead] != nullptr) {
        prefetch(params[i + 2 * kAhead]->unsafeGetTensorImpl());
      }
      if (i + kAhead < n && params[i + kAhead] != nullptr) {
        const torch::autograd::AutogradMeta* meta = meta_of(*params[i + kAhead]);
        if (meta != nullptr) {
          prefetch(meta);
        }
      }
      const at::Tensor* p = params[i];
      if (p == nullptr || !p->defined()) {
        return i;
      }
      torch::autograd::AutogradMeta* meta = meta_of(*p);
      if (meta == nullptr) {
        continue;  // a leaf that never had a gradient
      }
      if (meta->grad_fn_ != nullptr) {
        return i;  // not a leaf (`is_leaf()` is exactly `grad_fn_ == nullptr`)
      }
      if (meta->grad_.defined()) {
        grads.push_back(&meta->grad_);
      }
    }
    // Pass 2 resets them, fetching each gradient's impl (and, to zero it, its storage impl
    // and first elements) ahead.
    const int64_t m = static_cast<int64_t>(grads.size());
    for (int64_t i = 0; i < m; ++i) {
      if (i + 2 * kAhead < m) {
        prefetch(grads[i + 2 * kAhead]->unsafeGetTensorImpl());
      }
      if (!set_to_none) {
        if (i + kAhead < m) {
          prefetch_storage(*grads[i + kAhead], false);
        }
        if (i + kAhead / 2 < m) {
          prefetch_storage(*grads[i + kAhead / 2], true);
        }
      }
      at::Tensor& grad = *grads[i];
      if (set_to_none) {
        grad = at::Tensor();
      } else {
        zero_in_place(grad);
      }
    }
    return -1;
  } catch (...) {
    return -2;
  }
}

}  // extern "C"
