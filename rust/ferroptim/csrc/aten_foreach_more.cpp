// torch's foreach implementations of NAdam, RAdam and ASGD (torch/optim/{nadam,radam,asgd}.py
// `_multi_tensor_<class>`, torch 2.11, non-capturable branch, real tensors) for one bucket of the
// device path, with the conventions of aten_foreach.cpp: the same `_foreach_*` operations with
// the same arguments in the same order, so results are bit-identical to `foreach=True`;
// per-tensor scalars torch computes in Python are computed here in double precision with the
// same expressions (`x ** 0.5` as `std::pow(x, 0.5)`, as CPython does); where torch does
// arithmetic on a tensor (`lr` as a Tensor, ASGD's step counters), the same tensor operations.
#include "aten_foreach.h"
#include "aten_step.h"

#include <ATen/ops/_foreach_add.h>
#include <ATen/ops/_foreach_addcdiv.h>
#include <ATen/ops/_foreach_addcmul.h>
#include <ATen/ops/_foreach_copy.h>
#include <ATen/ops/_foreach_div.h>
#include <ATen/ops/_foreach_lerp.h>
#include <ATen/ops/_foreach_mul.h>
#include <ATen/ops/_foreach_reciprocal.h>
#include <ATen/ops/_foreach_sqrt.h>
#include <ATen/ops/_foreach_sub.h>
#include <ATen/ops/pow.h>
#include <ATen/ops/reciprocal.h>
#include <ATen/ops/rsub.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace ferroptim {
using namespace foreach_util;
namespace {

// torch's `_to_scalar(lr)` for a tensor `lr`: a 0-dim tensor.
at::Tensor lr_tensor(const Bucket& b) { return b.lr->dim() != 0 ? b.lr->squeeze() : *b.lr; }

// `torch._foreach_mul_(params, 1 - lr * weight_decay)` (decoupled weight decay), with a tensor
// `lr` kept a tensor as torch keeps it.
void decoupled_decay(Bucket& b, double weight_decay) {
  if (b.lr.has_value()) {
    at::_foreach_mul_(b.lists[0], at::rsub(lr_tensor(b).mul(weight_decay), 1));
  } else {
    at::_foreach_mul_(b.lists[0], 1 - b.hyper[0] * weight_decay);
  }
}

}  // namespace

// hyper: lr, beta1, beta2, eps, weight_decay, momentum_decay; flags: decoupled_weight_decay,
// maximize. lists: params, grads, exp_avg, exp_avg_sq, step, mu_product.
void foreach_nadam(Bucket& b) {
  const double beta1 = b.hyper[1], beta2 = b.hyper[2], eps = b.hyper[3];
  const double weight_decay = b.hyper[4], momentum_decay = b.hyper[5];
  const bool decoupled = b.flag(kFlag0), maximize = b.flag(kFlag1);
  auto& params = b.lists[0];
  auto& exp_avgs = b.lists[2];
  auto& exp_avg_sqs = b.lists[3];
  auto& steps = b.lists[4];
  auto& mu_products = b.lists[5];
  List grads = prologue(b, steps, maximize, decoupled ? 0.0 : weight_decay, false);
  if (decoupled && weight_decay != 0) decoupled_decay(b, weight_decay);
  at::_foreach_lerp_(exp_avgs, grads, 1 - beta1);
  at::_foreach_mul_(exp_avg_sqs, beta2);
  at::_foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2);
  List exp_avg_sq_sqrt = at::_foreach_sqrt(exp_avg_sqs);
  std::vector<double> bias_correction_sqrt, mus, mu_nexts;
  for (double s : step_values(steps)) {
    bias_correction_sqrt.push_back(std::pow(1 - std::pow(beta2, s), 0.5));
    mus.push_back(beta1 * (1.0 - 0.5 * std::pow(0.96, s * momentum_decay)));
    mu_nexts.push_back(beta1 * (1.0 - 0.5 * std::pow(0.96, (s + 1) * momentum_decay)));
  }
  at::_foreach_mul_(mu_products, scalars(mus));
  at::_foreach_div_(exp_avg_sq_sqrt, scalars(bias_correction_sqrt));
  at::_foreach_add_(exp_avg_sq_sqrt, eps);
  const double lr = lr_value(b);
  std::vector<double> step_size_grads, step_size_expavg;
  for (size_t i = 0; i < mu_products.size(); ++i) {
    const double mu_product = mu_products[i].item<double>();
    step_size_grads.push_back((lr * (1.0 - mus[i]) / (1.0 - mu_product)) * -1);
    step_size_expavg.push_back((lr * mu_nexts[i] / (1.0 - mu_product * mu_nexts[i])) * -1);
  }
  at::_foreach_addcdiv_(params, grads, exp_avg_sq_sqrt, scalars(step_size_grads));
  at::_foreach_addcdiv_(params, exp_avgs, exp_avg_sq_sqrt, scalars(step_size_expavg));
}

// hyper: lr, beta1, beta2, eps, weight_decay; flags: decoupled_weight_decay, maximize.
// lists: params, grads, exp_avg, exp_avg_sq, step. A tensor `lr` makes torch's step sizes
// tensors (`lr * rect / bc`), which are then passed as tensor lists, as here.
void foreach_radam(Bucket& b) {
  const double beta1 = b.hyper[1], beta2 = b.hyper[2], eps = b.hyper[3];
  const double weight_decay = b.hyper[4];
  const bool decoupled = b.flag(kFlag0), maximize = b.flag(kFlag1);
  auto& params = b.lists[0];
  auto& exp_avgs = b.lists[2];
  auto& exp_avg_sqs = b.lists[3];
  auto& steps = b.lists[4];
  List grads = prologue(b, steps, maximize, decoupled ? 0.0 : weight_decay, true);
  if (decoupled && weight_decay != 0) decoupled_decay(b, weight_decay);
  const double rho_inf = 2 / (1 - beta2) - 1;
  const auto t = step_values(steps);
  at::_foreach_lerp_(exp_avgs, grads, 1 - beta1);
  at::_foreach_mul_(exp_avg_sqs, beta2);
  at::_foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2);
  // rect (0 where torch's is the int 0), unrectified, bias_correction1 per tensor.
  std::vector<double> rect, unrectified, bc1;
  for (double s : t) {
    const double rho_t = rho_inf - 2 * s * std::pow(beta2, s) / (1 - std::pow(beta2, s));
    const double r = rho_t > 5 ? std::pow((rho_t - 4) * (rho_t - 2) * rho_inf /
                                              ((rho_inf - 4) * (rho_inf - 2) * rho_t),
                                          0.5)
                               : 0.0;
    rect.push_back(r);
    unrectified.push_back(r > 0 ? 0.0 : 1.0);
    bc1.push_back(1 - std::pow(beta1, s));
  }
  List buffer = at::_foreach_sqrt(exp_avg_sqs);
  at::_foreach_add_(buffer, eps);
  if (b.lr.has_value()) {
    const at::Tensor lr = lr_tensor(b);
    List unrect_step_size, bias_correction2;
    for (size_t i = 0; i < t.size(); ++i) {
      unrect_step_size.push_back(lr.mul(unrectified[i]).div(bc1[i]).mul(-1));
      const double root = std::pow(1 - std::pow(beta2, t[i]), 0.5);
      bias_correction2.push_back(lr.mul(rect[i]).div(bc1[i]).mul(root).mul(-1));
    }
    at::_foreach_div_(buffer, bias_correction2);
    at::_foreach_reciprocal_(buffer);
    at::_foreach_add_(buffer, unrect_step_size);
  } else {
    const double lr = b.hyper[0];
    std::vector<double> unrect_step_size, bias_correction2;
    for (size_t i = 0; i < t.size(); ++i) {
      unrect_step_size.push_back((lr * unrectified[i] / bc1[i]) * -1);
      bias_correction2.push_back(std::pow(1 - std::pow(beta2, t[i]), 0.5) *
                                 (lr * rect[i] / bc1[i]) * -1);
    }
    at::_foreach_div_(buffer, scalars(bias_correction2));
    at::_foreach_reciprocal_(buffer);
    at::_foreach_add_(buffer, scalars(unrect_step_size));
  }
  at::_foreach_addcmul_(params, exp_avgs, buffer);
}

// hyper: lr, lambd, alpha, t0, weight_decay; flags: maximize. lists: params, grads, ax, step,
// eta, mu. The scalar state lives on the parameters' device, as torch's (non-capturable) ASGD
// keeps it: the new `eta` is computed by tensor operations on the step counters (torch's
// `lr / ((1 + lambd * lr * step) ** alpha)`, whose `lr / t` is `t.reciprocal() * lr`), the new
// `mu` from their values read on the host (a device sync off the CPU, as in torch).
void foreach_asgd(Bucket& b) {
  const double lambd = b.hyper[1], alpha = b.hyper[2], t0 = b.hyper[3];
  const double weight_decay = b.hyper[4];
  const bool maximize = b.flag(kFlag0);
  auto& params = b.lists[0];
  auto& axs = b.lists[2];
  auto& steps = b.lists[3];
  auto& etas = b.lists[4];
  auto& mus = b.lists[5];
  List grads = prologue(b, steps, maximize, 0.0, false);
  List intermediate;
  if (weight_decay != 0) {
    if (maximize) {
      at::_foreach_add_(grads, params, weight_decay);
      intermediate = grads;
    } else {
      intermediate = at::_foreach_add(grads, params, weight_decay);
    }
    at::_foreach_add_(intermediate, params, lambd);
  } else {
    intermediate = at::_foreach_add(grads, params, lambd);
  }
  at::_foreach_addcmul_(params, intermediate, etas, -1);
  intermediate = at::_foreach_sub(params, axs);
  at::_foreach_addcmul_(axs, intermediate, mus);
  List new_etas;
  for (const auto& step : steps) {
    at::Tensor base;
    if (b.lr.has_value()) {
      const at::Tensor lr = lr_tensor(b);
      base = at::pow(lr.mul(lambd).mul(step).add(1), alpha);
      new_etas.push_back(base.reciprocal().mul(lr));
    } else {
      const double lr = b.hyper[0];
      base = at::pow(step.mul(lambd * lr).add(1), alpha);
      new_etas.push_back(base.reciprocal().mul(lr));
    }
  }
  std::vector<double> new_mus;
  for (double s : step_values(steps)) new_mus.push_back(1 / std::max(1.0, s - t0));
  at::_foreach_copy_(etas, new_etas);
  for (size_t i = 0; i < mus.size(); ++i) mus[i].fill_(new_mus[i]);
}

}  // namespace ferroptim
