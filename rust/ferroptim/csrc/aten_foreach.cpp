// torch's foreach implementations (torch/optim/<class>.py `_multi_tensor_<class>`, torch 2.11,
// non-capturable branch, real tensors) for one bucket of the device path: the same `_foreach_*`
// operations with the same arguments in the same order, so results are bit-identical to
// torch.optim's `foreach=True`. Per-tensor scalars that torch computes in Python from the step
// counters (`_get_value(step)`: CPU tensors, read on the host as torch reads them) are computed
// here in double precision with the same expressions. A tensor `lr` is read as torch's
// expressions read it (`lr.item()` where torch takes its value, tensor arithmetic where torch
// does arithmetic on the tensor, as Adagrad's `-lr / (…)`).
#include "aten_foreach.h"
#include "aten_step.h"

#include <ATen/ops/_foreach_abs.h>
#include <ATen/ops/_foreach_add.h>
#include <ATen/ops/_foreach_addcdiv.h>
#include <ATen/ops/_foreach_addcmul.h>
#include <ATen/ops/_foreach_copy.h>
#include <ATen/ops/_foreach_div.h>
#include <ATen/ops/_foreach_lerp.h>
#include <ATen/ops/_foreach_maximum.h>
#include <ATen/ops/_foreach_mul.h>
#include <ATen/ops/_foreach_neg.h>
#include <ATen/ops/_foreach_sign.h>
#include <ATen/ops/_foreach_sqrt.h>
#include <ATen/ops/div.h>
#include <ATen/ops/neg.h>
#include <ATen/ops/where.h>

#include <cmath>
#include <vector>

namespace ferroptim {
using namespace foreach_util;

// hyper: lr, lr_decay, weight_decay, eps; flags: maximize. lists: params, grads, sum, step.
void foreach_adagrad(Bucket& b) {
  const double lr = b.hyper[0], lr_decay = b.hyper[1], weight_decay = b.hyper[2];
  const double eps = b.hyper[3];
  const bool maximize = b.flag(kFlag0);
  auto& params = b.lists[0];
  auto& sums = b.lists[2];
  auto& steps = b.lists[3];
  List grads = prologue(b, steps, maximize, weight_decay, false);
  auto t = step_values(steps);
  List minus_clr_t;
  std::vector<double> minus_clr;
  for (double s : t) {
    const double denom = 1 + (s - 1) * lr_decay;
    if (b.lr.has_value()) {
      minus_clr_t.push_back(at::div(at::neg(*b.lr), denom));
    } else {
      minus_clr.push_back(-lr / denom);
    }
  }
  at::_foreach_addcmul_(sums, grads, grads, 1);
  List std_ = at::_foreach_sqrt(sums);
  at::_foreach_add_(std_, eps);
  List numerator;
  if (weight_decay != 0 || maximize) {
    if (b.lr.has_value()) {
      at::_foreach_mul_(grads, minus_clr_t);
    } else {
      at::_foreach_mul_(grads, scalars(minus_clr));
    }
    numerator = grads;
  } else if (b.lr.has_value()) {
    numerator = at::_foreach_mul(grads, minus_clr_t);
  } else {
    numerator = at::_foreach_mul(grads, scalars(minus_clr));
  }
  at::_foreach_addcdiv_(params, numerator, std_);
}

// hyper: lr, beta1, beta2, eps, weight_decay; flags: maximize.
// lists: params, grads, exp_avg, exp_inf, step.
void foreach_adamax(Bucket& b) {
  const double beta1 = b.hyper[1], beta2 = b.hyper[2], eps = b.hyper[3];
  const double weight_decay = b.hyper[4];
  const bool maximize = b.flag(kFlag0);
  auto& exp_avgs = b.lists[2];
  auto& exp_infs = b.lists[3];
  auto& steps = b.lists[4];
  List grads = prologue(b, steps, maximize, weight_decay, false);
  at::_foreach_lerp_(exp_avgs, grads, 1 - beta1);
  at::_foreach_mul_(exp_infs, beta2);
  if (!maximize && weight_decay == 0) {
    grads = at::_foreach_abs(grads);
  } else {
    at::_foreach_abs_(grads);
  }
  at::_foreach_add_(grads, eps);
  at::_foreach_maximum_(exp_infs, grads);
  const double lr = lr_value(b);
  std::vector<double> step_size;
  for (double s : step_values(steps)) {
    const double bc = 1 - std::pow(beta1, s);
    step_size.push_back((lr / bc) * -1);
  }
  at::_foreach_addcdiv_(b.lists[0], exp_avgs, exp_infs, scalars(step_size));
}

// hyper: lr, alpha, eps, weight_decay, momentum; flags: centered, maximize.
// lists: params, grads, square_avg[, momentum_buffer][, grad_avg], step.
void foreach_rmsprop(Bucket& b) {
  const double alpha = b.hyper[1], eps = b.hyper[2], weight_decay = b.hyper[3];
  const double momentum = b.hyper[4];
  const bool centered = b.flag(kFlag0), maximize = b.flag(kFlag1);
  auto& params = b.lists[0];
  auto& square_avgs = b.lists[2];
  size_t next = 3;
  List* bufs = momentum > 0 ? &b.lists[next++] : nullptr;
  List* grad_avgs = centered ? &b.lists[next++] : nullptr;
  auto& steps = b.lists[next];
  List grads = prologue(b, steps, maximize, weight_decay, false);
  at::_foreach_mul_(square_avgs, alpha);
  at::_foreach_addcmul_(square_avgs, grads, grads, 1 - alpha);
  List avg;
  if (centered) {
    at::_foreach_lerp_(*grad_avgs, grads, 1 - alpha);
    avg = at::_foreach_addcmul(square_avgs, *grad_avgs, *grad_avgs, -1);
    at::_foreach_sqrt_(avg);
    at::_foreach_add_(avg, eps);
  } else {
    avg = at::_foreach_sqrt(square_avgs);
    at::_foreach_add_(avg, eps);
  }
  const double lr = lr_value(b);
  if (bufs != nullptr) {
    at::_foreach_mul_(*bufs, momentum);
    at::_foreach_addcdiv_(*bufs, grads, avg);
    at::_foreach_add_(params, *bufs, -lr);
  } else {
    at::_foreach_addcdiv_(params, grads, avg, -lr);
  }
}

// hyper: lr, rho, eps, weight_decay; flags: maximize.
// lists: params, grads, square_avg, acc_delta, step.
void foreach_adadelta(Bucket& b) {
  const double rho = b.hyper[1], eps = b.hyper[2], weight_decay = b.hyper[3];
  const bool maximize = b.flag(kFlag0);
  auto& square_avgs = b.lists[2];
  auto& acc_deltas = b.lists[3];
  auto& steps = b.lists[4];
  List grads = prologue(b, steps, maximize, weight_decay, true);
  at::_foreach_mul_(square_avgs, rho);
  at::_foreach_addcmul_(square_avgs, grads, grads, 1 - rho);
  List std_ = at::_foreach_add(square_avgs, eps);
  at::_foreach_sqrt_(std_);
  List deltas = at::_foreach_add(acc_deltas, eps);
  at::_foreach_sqrt_(deltas);
  at::_foreach_div_(deltas, std_);
  at::_foreach_mul_(deltas, grads);
  at::_foreach_mul_(acc_deltas, rho);
  at::_foreach_addcmul_(acc_deltas, deltas, deltas, 1 - rho);
  at::_foreach_add_(b.lists[0], deltas, -lr_value(b));
}

// hyper: lr, etaminus, etaplus, step_size_min, step_size_max; flags: maximize.
// lists: params, grads, prev, step_size, step. The sign replacement uses torch's capturable
// form (`torch.where`), which gives the values of its boolean-mask form without a host sync.
void foreach_rprop(Bucket& b) {
  const double etaminus = b.hyper[1], etaplus = b.hyper[2];
  const double step_size_min = b.hyper[3], step_size_max = b.hyper[4];
  const bool maximize = b.flag(kFlag0);
  auto& params = b.lists[0];
  auto& grads_in = b.lists[1];
  auto& prevs = b.lists[2];
  auto& step_sizes = b.lists[3];
  auto& steps = b.lists[4];
  at::_foreach_add_(steps, 1);
  List signs = at::_foreach_mul(grads_in, prevs);
  if (maximize) at::_foreach_neg_(signs);
  at::_foreach_copy_(prevs, grads_in);
  if (maximize) at::_foreach_neg_(prevs);
  List& grads = prevs;
  at::_foreach_sign_(signs);
  for (auto& sign : signs) {
    sign.copy_(at::where(sign.gt(0), etaplus, sign));
    sign.copy_(at::where(sign.lt(0), etaminus, sign));
    sign.copy_(at::where(sign.eq(0), 1, sign));
  }
  at::_foreach_mul_(step_sizes, signs);
  for (auto& step_size : step_sizes) step_size.clamp_(step_size_min, step_size_max);
  for (size_t i = 0; i < grads.size(); ++i) {
    grads[i].copy_(at::where(signs[i].eq(etaminus), 0, grads[i]));
  }
  List grad_signs;
  for (const auto& g : grads) grad_signs.push_back(g.sign());
  at::_foreach_addcmul_(params, grad_signs, step_sizes, -1);
}

}  // namespace ferroptim
