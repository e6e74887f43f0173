// Sets a tensor's gradient to undefined, as `p.grad = None` does in Python (tch exposes only
// zeroing the gradient in place), or to a given tensor. Used by the stateful optimizers'
// `zero_grad` and `ferroptim::optim::set_grad` (src/optim/grad.rs).
#include <ATen/core/Tensor.h>
#include <torch/csrc/autograd/variable.h>

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

// Resets the gradients of `n` parameters as torch.optim.Optimizer.zero_grad does:
// `set_to_none` makes each defined gradient undefined (`p.grad = None`); otherwise each
// defined gradient is detached in place if it has a grad_fn, else made not to require grad,
// and zeroed in place (`zero_()`, dense or sparse). Every parameter is checked first (defined
// and a leaf, as torch.optim's parameters are): returns -1 on success, the index of the first
// parameter that is undefined or not a leaf with nothing changed, or -2 if libtorch threw
// (the parameters before the failing one are done). The caller holds the GIL when a tensor
// may be a Python subclass (zeroing dispatches to Python; dropping a gradient may free a
// Python object).
int64_t ferroptim_zero_grads(const at::Tensor* const* params, int64_t n,
                             int32_t set_to_none) noexcept {
  try {
    for (int64_t i = 0; i < n; ++i) {
      const at::Tensor* p = params[i];
      if (p == nullptr || !p->defined() || !p->is_leaf()) {
        return i;
      }
    }
    for (int64_t i = 0; i < n; ++i) {
      at::Tensor& grad = params[i]->mutable_grad();
      if (!grad.defined()) {
        continue;
      }
      if (set_to_none) {
        grad = at::Tensor();
        continue;
      }
      if (grad.grad_fn()) {
        grad.detach_();
      } else {
        grad.requires_grad_(false);
      }
      grad.zero_();
    }
    return -1;
  } catch (...) {
    return -2;
  }
}

}  // extern "C"
