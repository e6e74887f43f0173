// Foreach compositions of the classes torch.optim does not have (Lion, ADOPT, Adan, AdEMAMix,
// Schedule-Free AdamW, LAMB, LARS) for one bucket of the device path. torch has no foreach
// implementation of these to match, so each follows ferroptim's CPU rule
// (rust/ferroptim/src/rules/<name>.rs) and the reference implementation it names, op by op, as
// one `_foreach_*` pass per operation over the bucket's lists (as torch's own foreach
// implementations are written). Results equal the CPU rule to rounding,
// not bit for bit: the CPU rule fuses multiply-adds that these compositions round twice.
// Per-tensor scalars come from the CPU step counters, read on the host (`capturable=False`);
// LAMB's and LARS's per-tensor norms and ratios stay on the device.
#include "aten_foreach.h"
#include "aten_step.h"

#include <ATen/ops/_foreach_add.h>
#include <ATen/ops/_foreach_addcdiv.h>
#include <ATen/ops/_foreach_addcmul.h>
#include <ATen/ops/_foreach_clamp_max.h>
#include <ATen/ops/_foreach_clamp_min.h>
#include <ATen/ops/_foreach_copy.h>
#include <ATen/ops/_foreach_div.h>
#include <ATen/ops/_foreach_lerp.h>
#include <ATen/ops/_foreach_mul.h>
#include <ATen/ops/_foreach_neg.h>
#include <ATen/ops/_foreach_norm.h>
#include <ATen/ops/_foreach_sign.h>
#include <ATen/ops/_foreach_sqrt.h>
#include <ATen/ops/_foreach_zero.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/where.h>

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

// The 2-norm of each tensor of `list`, computed in float64 as the CPU driver sums the squares
// (driver/norms.rs), stacked into one 1-dim tensor on the bucket's device.
at::Tensor norms64(const List& list) {
  return at::stack(at::_foreach_norm(list, 2, at::kDouble));
}

// `list[i] *= coef[i]` with the float64 per-tensor coefficients `coef` rounded to the list's
// dtype first, as the CPU rule rounds its f64 scalars (`F::from_f64`).
void scale_each(List& list, const at::Tensor& coef) {
  const auto rounded = coef.to(list[0].scalar_type()).unbind(0);
  at::_foreach_mul_(list, rounded);
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

// hyper: lr, beta1, beta2, beta3, eps, weight_decay; flags: no_prox, maximize.
// lists: params, grads, exp_avg, exp_avg_sq, exp_avg_diff, neg_pre_grad, step. rules/adan.rs,
// after `pytorch_optimizer.Adan` 4.1.0: Δ = g + neg_pre_grad (0 where the counter read 0);
// m ← lerp(m, g, 1 − β₁); d ← lerp(d, Δ, 1 − β₂); n ← β₃n + (1 − β₃)(g + β₂Δ)²;
// neg_pre_grad ← −g; θ ← θ − η/(1 − β₁ᵗ)·m/denom − η·β₂/(1 − β₂ᵗ)·d/denom with
// denom = √n/√(1 − β₃ᵗ) + ε; weight decay θ(1 − ηλ) before (no_prox) or θ/(1 + ηλ) after.
void foreach_adan(Bucket& b) {
  const double lr = lr_value(b), beta1 = b.hyper[1], beta2 = b.hyper[2], beta3 = b.hyper[3];
  const double eps = b.hyper[4], weight_decay = b.hyper[5];
  const bool no_prox = b.flag(kFlag0), maximize = b.flag(kFlag1);
  auto& params = b.lists[0];
  auto& exp_avgs = b.lists[2];
  auto& exp_avg_sqs = b.lists[3];
  auto& exp_avg_diffs = b.lists[4];
  auto& neg_pre_grads = b.lists[5];
  auto& steps = b.lists[6];
  const auto before = step_values(steps);
  at::_foreach_add_(steps, 1);
  List grads = maximize ? at::_foreach_neg(b.lists[1]) : b.lists[1];
  List diffs = at::_foreach_add(neg_pre_grads, grads);
  std::vector<size_t> first;
  for (size_t i = 0; i < before.size(); ++i) {
    if (before[i] == 0) first.push_back(i);
  }
  if (!first.empty()) {
    List zeroed = pick(diffs, first);
    at::_foreach_zero_(zeroed);
  }
  at::_foreach_lerp_(exp_avgs, grads, 1 - beta1);
  at::_foreach_lerp_(exp_avg_diffs, diffs, 1 - beta2);
  List nesterov = at::_foreach_mul(diffs, beta2);
  at::_foreach_add_(nesterov, grads);
  at::_foreach_mul_(exp_avg_sqs, beta3);
  at::_foreach_addcmul_(exp_avg_sqs, nesterov, nesterov, 1 - beta3);
  at::_foreach_copy_(neg_pre_grads, grads);
  at::_foreach_neg_(neg_pre_grads);
  std::vector<double> bc3_sqrt, step_size, step_size_diff;
  for (double s : before) {
    const double t = s + 1;
    bc3_sqrt.push_back(std::sqrt(1 - std::pow(beta3, t)));
    step_size.push_back(-lr / (1 - std::pow(beta1, t)));
    step_size_diff.push_back(-lr * beta2 / (1 - std::pow(beta2, t)));
  }
  List denom = at::_foreach_sqrt(exp_avg_sqs);
  at::_foreach_div_(denom, scalars(bc3_sqrt));
  at::_foreach_add_(denom, eps);
  const bool decays = weight_decay != 0;
  if (decays && no_prox) at::_foreach_mul_(params, 1 - lr * weight_decay);
  at::_foreach_addcdiv_(params, exp_avgs, denom, scalars(step_size));
  at::_foreach_addcdiv_(params, exp_avg_diffs, denom, scalars(step_size_diff));
  if (decays && !no_prox) at::_foreach_div_(params, 1 + lr * weight_decay);
}

// hyper: lr, beta1, beta2, beta3, alpha, beta3_warmup, alpha_warmup, eps, weight_decay;
// flags: beta3_warmup set, alpha_warmup set, maximize. lists: params, grads, exp_avg_fast,
// exp_avg_slow, exp_avg_sq, step. rules/ademamix.rs (`AdEMAMix::alpha_at`/`beta3_at`, after
// apple/ml-ademamix), order of `pytorch_optimizer.AdEMAMix` 4.1.0: θ ← θ(1 − λη);
// m₁ ← lerp(m₁, g, 1 − β₁); m₂ ← lerp(m₂, g, 1 − β₃(t)); ν ← β₂ν + (1 − β₂)g²;
// θ ← θ − η(m₁/(1 − β₁ᵗ) + α(t)m₂)/(√ν/√(1 − β₂ᵗ) + ε).
void foreach_ademamix(Bucket& b) {
  const double lr = lr_value(b), beta1 = b.hyper[1], beta2 = b.hyper[2], beta3 = b.hyper[3];
  const double alpha = b.hyper[4], beta3_warmup = b.hyper[5], alpha_warmup = b.hyper[6];
  const double eps = b.hyper[7], weight_decay = b.hyper[8];
  const bool has_beta3_warmup = b.flag(kFlag0), has_alpha_warmup = b.flag(kFlag1);
  const bool maximize = b.flag(kFlag2);
  auto& params = b.lists[0];
  auto& fast = b.lists[2];
  auto& slow = b.lists[3];
  auto& exp_avg_sqs = b.lists[4];
  auto& steps = b.lists[5];
  at::_foreach_add_(steps, 1);
  List grads = maximize ? at::_foreach_neg(b.lists[1]) : b.lists[1];
  const auto half_life = [](double beta) { return std::log(0.5) / std::log(beta + 1e-8) - 1.0; };
  std::vector<double> lerp_slow, bc1, bc2_sqrt, alphas;
  for (double t : step_values(steps)) {
    double beta3_t = beta3;
    if (has_beta3_warmup && t < beta3_warmup) {
      const double a = t / beta3_warmup;
      const double h = (1.0 - a) * half_life(beta1) + a * half_life(beta3);
      beta3_t = std::pow(0.5, 1.0 / (h + 1.0));
    }
    lerp_slow.push_back(1.0 - beta3_t);
    bc1.push_back(1.0 - std::pow(beta1, t));
    bc2_sqrt.push_back(std::sqrt(1.0 - std::pow(beta2, t)));
    alphas.push_back(has_alpha_warmup && t < alpha_warmup ? t / alpha_warmup * alpha : alpha);
  }
  if (weight_decay != 0) at::_foreach_mul_(params, 1.0 - weight_decay * lr);
  at::_foreach_lerp_(fast, grads, 1 - beta1);
  at::_foreach_lerp_(slow, grads, scalars(lerp_slow));
  at::_foreach_mul_(exp_avg_sqs, beta2);
  at::_foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2);
  List denom = at::_foreach_sqrt(exp_avg_sqs);
  at::_foreach_div_(denom, scalars(bc2_sqrt));
  at::_foreach_add_(denom, eps);
  List update = at::_foreach_div(fast, scalars(bc1));
  List mixed = at::_foreach_mul(slow, scalars(alphas));
  at::_foreach_add_(update, mixed);
  at::_foreach_addcdiv_(params, update, denom, -lr);
}

// hyper: lr, beta1, beta2, eps, weight_decay, ckp1, step; flags: maximize.
// lists: params (y), grads, z, exp_avg_sq. rules/schedule_free.rs, after the authors'
// `AdamWScheduleFree` (for-loop branch); `lr` (warmed up), `ckp1` and `step` are the group's,
// computed by the Python class: v ← β₂v + (1 − β₂)g²; ĝ = g/(√(v/(1 − β₂ᵗ)) + ε) + λy;
// y ← lerp(y, z, c) + γ(β₁(1 − c) − 1)ĝ; z ← z − γĝ.
void foreach_schedule_free_adamw(Bucket& b) {
  const double lr = lr_value(b), beta1 = b.hyper[1], beta2 = b.hyper[2], eps = b.hyper[3];
  const double weight_decay = b.hyper[4], ckp1 = b.hyper[5], step = b.hyper[6];
  const bool maximize = b.flag(kFlag0);
  auto& params = b.lists[0];
  auto& zs = b.lists[2];
  auto& exp_avg_sqs = b.lists[3];
  List grads = maximize ? at::_foreach_neg(b.lists[1]) : b.lists[1];
  at::_foreach_mul_(exp_avg_sqs, beta2);
  at::_foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2);
  List denom = at::_foreach_div(exp_avg_sqs, 1.0 - std::pow(beta2, step));
  at::_foreach_sqrt_(denom);
  at::_foreach_add_(denom, eps);
  List normed = at::_foreach_div(grads, denom);
  if (weight_decay != 0) at::_foreach_add_(normed, params, weight_decay);
  at::_foreach_lerp_(params, zs, ckp1);
  at::_foreach_add_(zs, normed, -lr);
  at::_foreach_add_(params, normed, lr * (beta1 * (1.0 - ckp1) - 1.0));
}

// hyper: lr, beta1, beta2, eps, weight_decay, max_weight_norm (10); flags: weight_decouple,
// grad_averaging, adam, maximize. lists: params, grads, exp_avg, exp_avg_sq, step.
// rules/lamb.rs, after `pytorch_optimizer.Lamb` 4.1.0: m ← β₁m + (1 − β₁ or 1)g; v ← β₂v + (1 − β₂)g²;
// θ ← θ(1 − λγ) (decoupled); r = m/(√v + ε) (+ λθ, coupled); θ ← θ − γ/(1 − β₁ᵗ)·trust·r,
// trust = min(‖θ‖, 10)/(‖r‖ + ε) (1 if either norm is 0, or with `adam`). The norms and the
// trust ratio stay on the device (float64), never read on the host.
void foreach_lamb(Bucket& b) {
  const double lr = lr_value(b), beta1 = b.hyper[1], beta2 = b.hyper[2], eps = b.hyper[3];
  const double weight_decay = b.hyper[4], max_weight_norm = b.hyper[5];
  const bool decouple = b.flag(kFlag0), grad_averaging = b.flag(kFlag1);
  const bool adam = b.flag(kFlag2), maximize = b.flag(kFlag3);
  auto& params = b.lists[0];
  auto& exp_avgs = b.lists[2];
  auto& exp_avg_sqs = b.lists[3];
  auto& steps = b.lists[4];
  at::_foreach_add_(steps, 1);
  List grads = maximize ? at::_foreach_neg(b.lists[1]) : b.lists[1];
  at::_foreach_mul_(exp_avgs, beta1);
  at::_foreach_add_(exp_avgs, grads, grad_averaging ? 1 - beta1 : 1.0);
  at::_foreach_mul_(exp_avg_sqs, beta2);
  at::_foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2);
  const bool decays = weight_decay != 0;
  if (decays && decouple) at::_foreach_mul_(params, 1.0 - weight_decay * lr);
  List directions = at::_foreach_sqrt(exp_avg_sqs);
  at::_foreach_add_(directions, eps);
  directions = at::_foreach_div(exp_avgs, directions);
  if (decays && !decouple) at::_foreach_add_(directions, params, weight_decay);
  std::vector<double> neg_step_size;
  for (double t : step_values(steps)) {
    neg_step_size.push_back(-(lr / (1.0 - std::pow(beta1, t))));
  }
  if (adam) {
    at::_foreach_mul_(directions, scalars(neg_step_size));
  } else {
    const at::Tensor weight_norm = norms64(params).clamp_max(max_weight_norm);
    const at::Tensor direction_norm = norms64(directions);
    const at::Tensor trust =
        at::where(weight_norm.eq(0).logical_or(direction_norm.eq(0)), 1.0,
                  weight_norm.div(direction_norm.add(eps)));
    const at::Tensor step_sizes =
        at::tensor(at::ArrayRef<double>(neg_step_size), at::kDouble).to(trust.device());
    scale_each(directions, step_sizes.mul(trust));
  }
  at::_foreach_add_(params, directions);
}

// hyper: lr, weight_decay, momentum, dampening, trust_coefficient; flags: nesterov, trust,
// maximize. lists: params, grads[, momentum_buffer]. rules/lars.rs, after
// `pytorch_optimizer.LARS` 4.1.0: with `trust` (the Python class: tensors of 2+ dimensions),
// g ← (g + λθ)·η‖θ‖/(‖g‖ + λ‖θ‖) (1 unless both ‖θ‖ and the denominator are positive); then
// b ← μb + (1 − dampening)g; g ← g + μb (Nesterov) or b; θ ← θ − γg. The norms and the ratio
// stay on the device (float64).
void foreach_lars(Bucket& b) {
  const double lr = lr_value(b), weight_decay = b.hyper[1], momentum = b.hyper[2];
  const double dampening = b.hyper[3], trust_coefficient = b.hyper[4];
  const bool nesterov = b.flag(kFlag0), trust = b.flag(kFlag1), maximize = b.flag(kFlag2);
  auto& params = b.lists[0];
  // `owned`: `grads` is a list of new tensors (safe to update in place), not the gradients.
  bool owned = maximize;
  List grads = maximize ? at::_foreach_neg(b.lists[1]) : b.lists[1];
  if (trust) {
    const at::Tensor param_norm = norms64(params);
    const at::Tensor denom = norms64(b.lists[1]).add(param_norm, weight_decay);
    const at::Tensor ratio = at::where(param_norm.gt(0).logical_and(denom.gt(0)),
                                       param_norm.mul(trust_coefficient).div(denom), 1.0);
    if (owned) {
      at::_foreach_add_(grads, params, weight_decay);
    } else {
      grads = at::_foreach_add(grads, params, weight_decay);
      owned = true;
    }
    scale_each(grads, ratio);
  }
  if (momentum > 0) {
    auto& bufs = b.lists[2];
    at::_foreach_mul_(bufs, momentum);
    at::_foreach_add_(bufs, grads, 1 - dampening);
    if (!nesterov) {
      grads = bufs;
    } else if (owned) {
      at::_foreach_add_(grads, bufs, momentum);
    } else {
      grads = at::_foreach_add(grads, bufs, momentum);
    }
  }
  at::_foreach_add_(params, grads, -lr);
}

}  // namespace ferroptim
