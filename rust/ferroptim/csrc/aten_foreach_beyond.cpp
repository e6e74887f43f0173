// Foreach compositions of the classes torch.optim does not have (Lion, ADOPT, …) for one bucket
// of the device path. torch has no foreach implementation of these to match, so each follows
// ferroptim's CPU rule (rust/ferroptim/src/rules/<name>.rs) and the reference implementation
// it names, op by op, as one `_foreach_*` pass per operation over the bucket's lists (as
// torch's own foreach implementations are written). Results equal the CPU rule to rounding,
// not bit for bit: the CPU rule fuses multiply-adds that these compositions round twice.
// Per-tensor scalars come from the CPU step counters, read on the host (`capturable=False`).
#include "aten_foreach.h"
#include "aten_step.h"

#include <ATen/ops/_foreach_add.h>
#include <ATen/ops/_foreach_addcmul.h>
#include <ATen/ops/_foreach_clamp_max.h>
#include <ATen/ops/_foreach_clamp_min.h>
#include <ATen/ops/_foreach_div.h>
#include <ATen/ops/_foreach_lerp.h>
#include <ATen/ops/_foreach_mul.h>
#include <ATen/ops/_foreach_neg.h>
#include <ATen/ops/_foreach_sign.h>
#include <ATen/ops/_foreach_sqrt.h>

#include <cmath>
#include <vector>

namespace ferroptim {
using namespace foreach_util;
namespace {

// The tensors of `l` at `idx`, in order (handles: in-place operations reach the originals).
List pick(const List& l, const std::vector<size_t>& idx) {
  List out;
  out.reserve(idx.size());
  for (size_t i : idx) out.push_back(l[i]);
  return out;
}

}  // namespace

// hyper: lr, beta1, beta2, weight_decay; flags: maximize. lists: params, grads, exp_avg.
// rules/lion.rs, after `lion-pytorch` 0.2.5 `update_fn`: θ ← θ(1 − γλ);
// θ ← θ − γ·sign(β₁m + (1 − β₁)g); m ← β₂m + (1 − β₂)g.
void foreach_lion(Bucket& b) {
  const double beta1 = b.hyper[1], beta2 = b.hyper[2], weight_decay = b.hyper[3];
  const bool maximize = b.flag(kFlag0);
  auto& params = b.lists[0];
  auto& exp_avgs = b.lists[2];
  List grads = maximize ? at::_foreach_neg(b.lists[1]) : b.lists[1];
  const double lr = lr_value(b);
  if (weight_decay != 0) at::_foreach_mul_(params, 1 - lr * weight_decay);
  List update = at::_foreach_mul(exp_avgs, beta1);
  at::_foreach_add_(update, grads, 1 - beta1);
  at::_foreach_sign_(update);
  at::_foreach_add_(params, update, -lr);
  at::_foreach_mul_(exp_avgs, beta2);
  at::_foreach_add_(exp_avgs, grads, 1 - beta2);
}

// hyper: lr, beta1, beta2, eps, weight_decay, clip_exponent; flags: clip, decouple, maximize.
// lists: params, grads, exp_avg, exp_avg_sq, step. rules/adopt.rs, after `torch-adopt` 0.1.0:
// a tensor whose counter reads 0 only initialises `exp_avg_sq = g²`; the others normalise `g`
// by `max(√exp_avg_sq, ε)`, clip it to `±step^e` (the counter before this step), then update
// `exp_avg`, the parameter and `exp_avg_sq`. Tensors of a bucket are split by that test.
void foreach_adopt(Bucket& b) {
  const double lr = lr_value(b), beta1 = b.hyper[1], beta2 = b.hyper[2], eps = b.hyper[3];
  const double weight_decay = b.hyper[4], clip_exponent = b.hyper[5];
  const bool clip = b.flag(kFlag0), decouple = b.flag(kFlag1), maximize = b.flag(kFlag2);
  auto& steps = b.lists[4];
  const auto t = step_values(steps);
  at::_foreach_add_(steps, 1);
  List grads_all = maximize ? at::_foreach_neg(b.lists[1]) : b.lists[1];
  std::vector<size_t> first, later;
  for (size_t i = 0; i < t.size(); ++i) (t[i] == 0 ? first : later).push_back(i);
  for (const auto* part : {&first, &later}) {
    if (part->empty()) continue;
    List params = pick(b.lists[0], *part);
    List grads = pick(grads_all, *part);
    List exp_avgs = pick(b.lists[2], *part);
    List exp_avg_sqs = pick(b.lists[3], *part);
    if (weight_decay != 0 && !decouple) {
      if (maximize) {
        at::_foreach_add_(grads, params, weight_decay);
      } else {
        grads = at::_foreach_add(grads, params, weight_decay);
      }
    }
    if (part == &first) {
      at::_foreach_addcmul_(exp_avg_sqs, grads, grads, 1);
      continue;
    }
    if (weight_decay != 0 && decouple) at::_foreach_add_(params, params, -lr * weight_decay);
    List denom = at::_foreach_sqrt(exp_avg_sqs);
    at::_foreach_clamp_min_(denom, eps);
    List normed = at::_foreach_div(grads, denom);
    if (clip) {
      std::vector<double> lo, hi;
      for (size_t i : *part) {
        const double c = std::pow(t[i], clip_exponent);
        lo.push_back(-c);
        hi.push_back(c);
      }
      at::_foreach_clamp_min_(normed, scalars(lo));
      at::_foreach_clamp_max_(normed, scalars(hi));
    }
    at::_foreach_lerp_(exp_avgs, normed, 1 - beta1);
    at::_foreach_add_(params, exp_avgs, -lr);
    at::_foreach_mul_(exp_avg_sqs, beta2);
    at::_foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2);
  }
}

}  // namespace ferroptim
