// Helpers shared by the foreach compositions of the device path (aten_foreach*.cpp): the
// per-tensor scalars torch computes on the host from CPU step counters, and the opening that
// every torch `_multi_tensor_<class>` shares.
#pragma once

#include "aten_step.h"

#include <ATen/ops/_foreach_add.h>
#include <ATen/ops/_foreach_neg.h>

#include <vector>

namespace ferroptim {
namespace foreach_util {

using List = std::vector<at::Tensor>;

// `_get_value(step)` for each (CPU) step counter.
inline std::vector<double> step_values(const List& steps) {
  std::vector<double> out;
  out.reserve(steps.size());
  for (const auto& s : steps) out.push_back(s.item<double>());
  return out;
}

inline std::vector<at::Scalar> scalars(const std::vector<double>& v) {
  return std::vector<at::Scalar>(v.begin(), v.end());
}

// The learning rate as a Python float, as torch's `_get_value(lr)` / `alpha=-lr` read it.
inline double lr_value(const Bucket& b) {
  return b.lr.has_value() ? b.lr->item<double>() : b.hyper[0];
}

// Every foreach class's opening, in the order given by `steps_first`: advance the step
// counters; negate the gradients for `maximize` (a new list); add `weight_decay * param`
// (in place on the negated copy, else into a new list). Returns the gradients to use.
inline List prologue(Bucket& b, List& steps, bool maximize, double weight_decay,
                     bool steps_first) {
  List grads = b.lists[1];
  if (steps_first) at::_foreach_add_(steps, 1);
  if (maximize) grads = at::_foreach_neg(grads);
  if (!steps_first) at::_foreach_add_(steps, 1);
  if (weight_decay != 0) {
    if (maximize) {
      at::_foreach_add_(grads, b.lists[0], weight_decay);
    } else {
      grads = at::_foreach_add(grads, b.lists[0], weight_decay);
    }
  }
  return grads;
}

}  // namespace foreach_util
}  // namespace ferroptim
