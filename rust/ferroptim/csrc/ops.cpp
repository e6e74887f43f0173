// ATen operations whose tch wrappers drop an argument the tensor rules need (src/tensor_rules/).
//
// tch's generated API omits defaulted Scalar arguments, so `add_` has no `alpha` and `addmm` no
// `beta`/`alpha`; `linalg_vector_norm` (what `torch.norm` and `Tensor.norm` call) is missing;
// and `t.mul_(0.5)` in Python passes the float as a *wrapped number tensor* to the Tensor
// overload, which for float16/bfloat16 rounds differently from tch's `mul_scalar_` (the Scalar
// overload); `_amp_foreach_non_finite_check_and_unscale_` (how GradScaler unscales gradients)
// is not wrapped at all. All of these matter for bit-parity with torch.optim: ATen's CPU
// kernels fuse `a + alpha * b` into one multiply-add, GEMM scales with beta/alpha inside its
// accumulation, and GradScaler multiplies by a float32 reciprocal. These wrappers call the very same ATen operators. They never throw: an
// exception's message is copied into `err` (NUL-terminated, truncated to `cap` bytes) and 0 is
// returned.
#include <ATen/core/Tensor.h>
#include <ATen/ops/_amp_foreach_non_finite_check_and_unscale.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/full.h>
#include <ATen/ops/linalg_vector_norm.h>
#include <ATen/ops/scalar_tensor.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>

namespace {

int32_t report(const char* what, char* err, size_t cap) noexcept {
  if (err != nullptr && cap > 0) {
    std::strncpy(err, what, cap - 1);
    err[cap - 1] = '\0';
  }
  return 0;
}

}  // namespace

extern "C" {

// `self.add_(other, alpha=alpha)`, in place. Returns 1 on success.
int32_t ferroptim_add_alpha_(const at::Tensor* self, const at::Tensor* other, double alpha,
                             char* err, size_t cap) noexcept {
  try {
    self->add_(*other, alpha);
    return 1;
  } catch (const std::exception& e) {
    return report(e.what(), err, cap);
  } catch (...) {
    return report("unknown C++ exception in add_", err, cap);
  }
}

// `*out = torch.addmm(self, mat1, mat2, beta=beta, alpha=alpha)` (a new heap tensor handle,
// owned by the caller as a tch::Tensor). Returns 1 on success.
int32_t ferroptim_addmm(const at::Tensor* self, const at::Tensor* mat1, const at::Tensor* mat2,
                        double beta, double alpha, at::Tensor** out, char* err,
                        size_t cap) noexcept {
  try {
    *out = new at::Tensor(at::addmm(*self, *mat1, *mat2, beta, alpha));
    return 1;
  } catch (const std::exception& e) {
    return report(e.what(), err, cap);
  } catch (...) {
    return report("unknown C++ exception in addmm", err, cap);
  }
}

// `*out = torch.linalg.vector_norm(self, ord, dim, keepdim)` over all elements when `all` is
// nonzero, else over the one dimension `dim`. Returns 1 on success.
int32_t ferroptim_vector_norm(const at::Tensor* self, double ord, int64_t dim, int32_t all,
                              int32_t keepdim, at::Tensor** out, char* err, size_t cap) noexcept {
  try {
    at::OptionalIntArrayRef dims = std::nullopt;
    if (all == 0) {
      dims = at::IntArrayRef(&dim, 1);
    }
    *out = new at::Tensor(at::linalg_vector_norm(*self, ord, dims, keepdim != 0, std::nullopt));
    return 1;
  } catch (const std::exception& e) {
    return report(e.what(), err, cap);
  } catch (...) {
    return report("unknown C++ exception in linalg_vector_norm", err, cap);
  }
}

// Python's `self <op> value` / `self.<op>_(value)` for a Python float `value`: the Tensor
// overload with a wrapped-number double tensor, as torch's argument parser passes it.
// op: 0 mul, 1 add, 2 div, 3 sub, 4 gt, 5 lt, 6 ge, 7 le (comparisons out of place). In place when `inplace` (then `out` is untouched), else `*out`
// receives the result. Returns 1 on success.
int32_t ferroptim_scalar_op(const at::Tensor* self, int32_t op, double value, int32_t inplace,
                            at::Tensor** out, char* err, size_t cap) noexcept {
  try {
    at::Tensor s = at::scalar_tensor(value, at::TensorOptions().dtype(at::kDouble));
    s.unsafeGetTensorImpl()->set_wrapped_number(true);
    if (inplace != 0) {
      switch (op) {
        case 0: self->mul_(s); break;
        case 1: self->add_(s); break;
        case 2: self->div_(s); break;
        case 3: self->sub_(s); break;
        default: return report("comparison cannot be in place", err, cap);
      }
      return 1;
    }
    switch (op) {
      case 0: *out = new at::Tensor(self->mul(s)); break;
      case 1: *out = new at::Tensor(self->add(s)); break;
      case 2: *out = new at::Tensor(self->div(s)); break;
      case 3: *out = new at::Tensor(self->sub(s)); break;
      case 4: *out = new at::Tensor(self->gt(s)); break;
      case 5: *out = new at::Tensor(self->lt(s)); break;
      case 6: *out = new at::Tensor(self->ge(s)); break;
      default: *out = new at::Tensor(self->le(s)); break;
    }
    return 1;
  } catch (const std::exception& e) {
    return report(e.what(), err, cap);
  } catch (...) {
    return report("unknown C++ exception in a scalar operation", err, cap);
  }
}

// `torch._amp_foreach_non_finite_check_and_unscale_([self], found_inf, inv_scale)` with a
// float32 `inv_scale` and a scratch `found_inf` on `self`'s device: multiplies `self` in place
// by `inv_scale` exactly as `GradScaler.unscale_` does (in the compute type of `self`'s dtype).
// Whether a value was not finite is not reported (reading it would synchronize a GPU).
// Returns 1 on success.
int32_t ferroptim_amp_unscale_(const at::Tensor* self, float inv_scale, char* err,
                               size_t cap) noexcept {
  try {
    at::TensorOptions opts = at::TensorOptions().dtype(at::kFloat).device(self->device());
    at::Tensor inv = at::full({}, inv_scale, opts);
    at::Tensor found_inf = at::full({}, 0.0, opts);
    at::_amp_foreach_non_finite_check_and_unscale_({*self}, found_inf, inv);
    return 1;
  } catch (const std::exception& e) {
    return report(e.what(), err, cap);
  } catch (...) {
    return report("unknown C++ exception in _amp_foreach_non_finite_check_and_unscale_", err,
                  cap);
  }
}

}  // extern "C"
