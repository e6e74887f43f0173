// Sets a tensor's gradient to undefined, as `p.grad = None` does in Python (tch exposes only
// zeroing the gradient in place). Used by the stateful optimizer's `zero_grad` (src/optim/grad.rs).
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

}  // extern "C"
