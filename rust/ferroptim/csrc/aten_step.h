// The device path's buckets (src/device/aten.rs): the tensors of one (device, dtype) bucket of
// one parameter group, with the group's hyperparameters, handed to ATen's multi-tensor kernels.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <vector>

namespace ferroptim {

// Which composition runs a bucket: the numbering of `Algo` in src/device/aten.rs.
enum Algo : int32_t {
  kSgdFused = 0,
  kAdamFused = 1,
  kAdagradFused = 2,
  kAdagradForeach = 3,
  kAdamaxForeach = 4,
  kRMSpropForeach = 5,
  kRpropForeach = 6,
  kAdadeltaForeach = 7,
  kNAdamForeach = 8,
  kRAdamForeach = 9,
  kAsgdForeach = 10,
  kLionForeach = 11,
  kAdoptForeach = 12,
  kAdanForeach = 13,
  kAdEMAMixForeach = 14,
  kScheduleFreeAdamWForeach = 15,
  kLambForeach = 16,
  kLarsForeach = 17,
};

// Flag bits (`flags`), the meaning of each bit depends on the algorithm (see aten.rs).
constexpr uint32_t kFlag0 = 1u, kFlag1 = 2u, kFlag2 = 4u, kFlag3 = 8u, kFirst = 1u << 31;

struct Bucket {
  // params, grads, then the rule's state lists and scalar state lists, in the rule's order.
  std::vector<std::vector<at::Tensor>> lists;
  // The rule's hyperparameters, in the order of its `AtenRule::hyper`.
  std::vector<double> hyper;
  uint32_t flags = 0;
  // A tensor learning rate (torch's `lr` as a Tensor), else `hyper[0]` is the learning rate.
  std::optional<at::Tensor> lr;
  // GradScaler's hand-over, already on the bucket's device (fused kernels only).
  std::optional<at::Tensor> grad_scale, found_inf;

  bool flag(uint32_t bit) const { return (flags & bit) != 0; }
  at::Device device() const { return lists[0][0].device(); }
};

// torch/optim/<class>.py `_multi_tensor_<class>` (non-capturable, real tensors), one bucket.
void foreach_adagrad(Bucket& b);
void foreach_adamax(Bucket& b);
void foreach_rmsprop(Bucket& b);
void foreach_rprop(Bucket& b);
void foreach_adadelta(Bucket& b);
void foreach_nadam(Bucket& b);
void foreach_radam(Bucket& b);
void foreach_asgd(Bucket& b);

// Compositions of the classes torch.optim lacks (aten_foreach_beyond.cpp): ferroptim's CPU rule
// as `_foreach_*` passes, equal to it to rounding.
void foreach_lion(Bucket& b);
void foreach_adopt(Bucket& b);
void foreach_adan(Bucket& b);
void foreach_ademamix(Bucket& b);
void foreach_schedule_free_adamw(Bucket& b);
void foreach_lamb(Bucket& b);
void foreach_lars(Bucket& b);

}  // namespace ferroptim
