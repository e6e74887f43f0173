// Sets a tensor's gradient to undefined, as `p.grad = None` does in Python (tch exposes only
// zeroing the gradient in place), or to a given tensor. Used by the stateful optimizers'
// `zero_grad` and `ferroptim::optim::set_grad` (src/optim/grad.rs).
#include <ATen/core/Tensor.h>
#include <torch/csrc/autograd/variable.h>

#include <cstdint>
#include <cstring>
#include <typeinfo>

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

// How many parameters ahead the loops below ask for the cache lines they will read: after a
// step has streamed the model through the caches every tensor's metadata misses, and fetching
// them ahead overlaps the misses (a hint only: it never faults).
static constexpr int64_t kAhead = 8;

static inline void prefetch(const void* p) { __builtin_prefetch(p, 1, 3); }

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
    for (int64_t i = 0; i < n; ++i) {
      // Two levels ahead: the TensorImpl of parameter i + 2k, then (its impl fetched by now)
      // the autograd metadata of parameter i + k, which `is_leaf` and `mutable_grad` read.
      if (i + 2 * kAhead < n && params[i + 2 * kAhead] != nullptr) {
        prefetch(params[i + 2 * kAhead]->unsafeGetTensorImpl());
      }
      if (i + kAhead < n && params[i + kAhead] != nullptr) {
        const c10::AutogradMetaInterface* meta =
            params[i + kAhead]->unsafeGetTensorImpl()->autograd_meta();
        if (meta != nullptr) {
          prefetch(meta);
        }
      }
      const at::Tensor* p = params[i];
      if (p == nullptr || !p->defined() || !p->is_leaf()) {
        return i;
      }
    }
    for (int64_t i = 0; i < n; ++i) {
      if (i + kAhead < n) {
        // The gradient's impl (its reference count, or its metadata to zero it).
        const at::Tensor& ahead = params[i + kAhead]->grad();
        if (ahead.defined()) {
          prefetch(ahead.unsafeGetTensorImpl());
        }
      }
      at::Tensor& grad = params[i]->mutable_grad();
      if (!grad.defined()) {
        continue;
      }
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
