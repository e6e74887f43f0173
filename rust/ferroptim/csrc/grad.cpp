// Sets a tensor's gradient to undefined, as `p.grad = None` does in Python (tch exposes only
// zeroing the gradient in place), or to a given tensor. Used by the stateful optimizers'
// `zero_grad` and `ferroptim::optim::set_grad` (src/optim/grad.rs).
#include <ATen/core/Tensor.h>

#include <cstdint>

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

}  // extern "C"
