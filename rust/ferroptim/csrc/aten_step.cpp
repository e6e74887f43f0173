// The device path's entry point (src/device/aten.rs) and the fused compositions: one bucket of
// tensors (one device and dtype of one parameter group) through ATen's fused multi-tensor
// kernels exactly as torch/optim/{sgd,adam,adagrad}.py `_fused_<class>` calls them, so results
// are bit-identical to torch.optim's `fused=True`. Nothing here reads a device value on the
// host: `grad_scale`/`found_inf` are passed to the kernels as tensors, and step counters are
// advanced (and, on a skipped step, moved back) with `_foreach_add_`/`_foreach_sub_` on their
// own device. Never throws: an exception's message is copied into `err` and 0 is returned.
#include "aten_step.h"

#include <ATen/ops/_foreach_add.h>
#include <ATen/ops/_foreach_sub.h>
#include <ATen/ops/_fused_adagrad.h>
#include <ATen/ops/_fused_adam.h>
#include <ATen/ops/_fused_adamw.h>
#include <ATen/ops/_fused_sgd.h>

#include <cstddef>
#include <cstring>
#include <exception>
#include <stdexcept>
#include <string>

namespace ferroptim {
namespace {

int32_t report(const char* what, char* err, size_t cap) noexcept {
  if (err != nullptr && cap > 0) {
    std::strncpy(err, what, cap - 1);
    err[cap - 1] = '\0';
  }
  return 0;
}

// A CUDA (or other non-CPU) `lr` moved to the bucket's device, as torch's `lr_dict` does; a
// CPU tensor is passed as is (ATen's kernels read it on the host).
std::optional<at::Tensor> lr_on(const Bucket& b) {
  if (!b.lr.has_value() || b.lr->is_cpu() || b.lr->device() == b.device()) {
    return b.lr;
  }
  return b.lr->to(b.device(), /*non_blocking=*/true);
}

// `torch._foreach_sub_(steps, [found_inf] * len(steps))`: a skipped step does not count.
void uncount_skipped(const Bucket& b, std::vector<at::Tensor>& steps) {
  if (b.found_inf.has_value()) {
    at::_foreach_sub_(steps, std::vector<at::Tensor>(steps.size(), *b.found_inf));
  }
}

// hyper: lr, momentum, dampening, weight_decay; flags: nesterov, maximize, first step.
// lists: params, grads[, momentum_buffer].
void fused_sgd(Bucket& b) {
  const double lr = b.hyper[0], momentum = b.hyper[1], dampening = b.hyper[2];
  const double weight_decay = b.hyper[3];
  const bool nesterov = b.flag(kFlag0), maximize = b.flag(kFlag1);
  const bool first = b.flag(kFirst) && momentum != 0;
  std::vector<at::Tensor> none;
  auto& bufs = momentum != 0 ? b.lists[2] : none;
  auto tensor_lr = lr_on(b);
  if (tensor_lr.has_value()) {
    at::_fused_sgd_(b.lists[0], b.lists[1], bufs, weight_decay, momentum, *tensor_lr, dampening,
                    nesterov, maximize, first, b.grad_scale, b.found_inf);
  } else {
    at::_fused_sgd_(b.lists[0], b.lists[1], bufs, weight_decay, momentum, lr, dampening,
                    nesterov, maximize, first, b.grad_scale, b.found_inf);
  }
}

// hyper: lr, beta1, beta2, eps, weight_decay; flags: amsgrad, maximize, decoupled (AdamW).
// lists: params, grads, exp_avg, exp_avg_sq[, max_exp_avg_sq], step.
void fused_adam(Bucket& b) {
  const double lr = b.hyper[0], beta1 = b.hyper[1], beta2 = b.hyper[2], eps = b.hyper[3];
  const double weight_decay = b.hyper[4];
  const bool amsgrad = b.flag(kFlag0), maximize = b.flag(kFlag1), adamw = b.flag(kFlag2);
  std::vector<at::Tensor> none;
  auto& maxs = amsgrad ? b.lists[4] : none;
  auto& steps = b.lists[amsgrad ? 5 : 4];
  at::_foreach_add_(steps, 1);
  auto tensor_lr = lr_on(b);
  auto& p = b.lists[0];
  auto& g = b.lists[1];
  if (tensor_lr.has_value()) {
    if (adamw) {
      at::_fused_adamw_(p, g, b.lists[2], b.lists[3], maxs, steps, *tensor_lr, beta1, beta2,
                        weight_decay, eps, amsgrad, maximize, b.grad_scale, b.found_inf);
    } else {
      at::_fused_adam_(p, g, b.lists[2], b.lists[3], maxs, steps, *tensor_lr, beta1, beta2,
                       weight_decay, eps, amsgrad, maximize, b.grad_scale, b.found_inf);
    }
  } else if (adamw) {
    at::_fused_adamw_(p, g, b.lists[2], b.lists[3], maxs, steps, lr, beta1, beta2, weight_decay,
                      eps, amsgrad, maximize, b.grad_scale, b.found_inf);
  } else {
    at::_fused_adam_(p, g, b.lists[2], b.lists[3], maxs, steps, lr, beta1, beta2, weight_decay,
                     eps, amsgrad, maximize, b.grad_scale, b.found_inf);
  }
  uncount_skipped(b, steps);
}

// hyper: lr, lr_decay, weight_decay, eps; flags: maximize. lists: params, grads, sum, step.
void fused_adagrad(Bucket& b) {
  const double lr = b.hyper[0], lr_decay = b.hyper[1], weight_decay = b.hyper[2];
  const double eps = b.hyper[3];
  const bool maximize = b.flag(kFlag0);
  auto& steps = b.lists[3];
  at::_foreach_add_(steps, 1);
  // torch's `_to_scalar(lr)` keeps a tensor lr a tensor: the Tensor overload.
  if (b.lr.has_value()) {
    at::_fused_adagrad_(b.lists[0], b.lists[1], b.lists[2], steps, *b.lr, lr_decay, weight_decay,
                        eps, maximize, b.grad_scale, b.found_inf);
  } else {
    at::_fused_adagrad_(b.lists[0], b.lists[1], b.lists[2], steps, lr, lr_decay, weight_decay,
                        eps, maximize, b.grad_scale, b.found_inf);
  }
  uncount_skipped(b, steps);
}

void run(int32_t algo, Bucket& b) {
  switch (algo) {
    case kSgdFused: return fused_sgd(b);
    case kAdamFused: return fused_adam(b);
    case kAdagradFused: return fused_adagrad(b);
    case kAdagradForeach: return foreach_adagrad(b);
    case kAdamaxForeach: return foreach_adamax(b);
    case kRMSpropForeach: return foreach_rmsprop(b);
    case kRpropForeach: return foreach_rprop(b);
    case kAdadeltaForeach: return foreach_adadelta(b);
    case kNAdamForeach: return foreach_nadam(b);
    case kRAdamForeach: return foreach_radam(b);
    case kAsgdForeach: return foreach_asgd(b);
    case kLionForeach: return foreach_lion(b);
    case kAdoptForeach: return foreach_adopt(b);
    case kAdanForeach: return foreach_adan(b);
    case kAdEMAMixForeach: return foreach_ademamix(b);
    case kScheduleFreeAdamWForeach: return foreach_schedule_free_adamw(b);
    case kLambForeach: return foreach_lamb(b);
    case kLarsForeach: return foreach_lars(b);
    default: throw std::runtime_error("ferroptim: unknown device-path algorithm " +
                                      std::to_string(algo));
  }
}

// The compositions of the classes torch lacks (kLionForeach and after) compute a float16 or
// bfloat16 bucket in float32 and round once when storing, as ferroptim's CPU rule does (a
// half-precision `eps` such as 1e-8 would otherwise round to 0): float32 copies of the
// bucket's tensor lists, the composition on them, then the parameters and state copied back
// (the gradients are not written). torch's own compositions work in the parameters' dtype, as
// torch's do.
void run_beyond(int32_t algo, Bucket& b) {
  const auto dtype = b.lists[0][0].scalar_type();
  if (algo < kLionForeach || (dtype != at::kHalf && dtype != at::kBFloat16)) {
    return run(algo, b);
  }
  std::vector<std::vector<at::Tensor>> originals = b.lists;
  for (auto& list : b.lists) {
    if (list[0].scalar_type() != dtype) continue;  // scalar state (float32 counters)
    for (auto& t : list) t = t.to(at::kFloat);
  }
  run(algo, b);
  for (size_t l = 0; l < b.lists.size(); ++l) {
    if (l == 1 || originals[l][0].scalar_type() != dtype) continue;
    for (size_t i = 0; i < b.lists[l].size(); ++i) originals[l][i].copy_(b.lists[l][i]);
  }
}

const at::Tensor* opt(const void* t) { return static_cast<const at::Tensor*>(t); }

}  // namespace
}  // namespace ferroptim

extern "C" {

// One bucket: `tensors` holds `n_lists` lists of `n` tensor handles each (list-major: params,
// grads, state…, scalar state…); `hyper` `n_hyper` doubles; `lr`, `grad_scale`, `found_inf`
// nullable tensor handles (the last two already on the bucket's device). Returns 1 on success.
int32_t ferroptim_aten_step(int32_t algo, const void* const* tensors, int64_t n, int32_t n_lists,
                            const double* hyper, int32_t n_hyper, uint32_t flags, const void* lr,
                            const void* grad_scale, const void* found_inf, char* err,
                            size_t cap) noexcept {
  using ferroptim::opt;
  try {
    if (n <= 0 || n_lists < 2) {
      return 1;
    }
    ferroptim::Bucket b;
    b.lists.resize(static_cast<size_t>(n_lists));
    for (int32_t l = 0; l < n_lists; ++l) {
      auto& list = b.lists[static_cast<size_t>(l)];
      list.reserve(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i) {
        list.push_back(*opt(tensors[static_cast<size_t>(l) * static_cast<size_t>(n) +
                                    static_cast<size_t>(i)]));
      }
    }
    b.hyper.assign(hyper, hyper + n_hyper);
    b.flags = flags;
    if (lr != nullptr) b.lr = *opt(lr);
    if (grad_scale != nullptr) b.grad_scale = *opt(grad_scale);
    if (found_inf != nullptr) b.found_inf = *opt(found_inf);
    // torch's `grad_scale.to(device, non_blocking=True)` per device (a no-op on its own).
    for (auto* t : {&b.grad_scale, &b.found_inf}) {
      if (t->has_value() && (*t)->device() != b.device()) {
        *t = (*t)->to(b.device(), /*non_blocking=*/true);
      }
    }
    ferroptim::run_beyond(algo, b);
    return 1;
  } catch (const std::exception& e) {
    return ferroptim::report(e.what(), err, cap);
  } catch (...) {
    return ferroptim::report("unknown C++ exception in the device path", err, cap);
  }
}

}  // extern "C"
