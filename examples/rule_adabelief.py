r"""Your own optimizer in Python, stepped natively: AdaBelief with ``ferroptim.rules``.

AdaBelief (Zhuang et al., "AdaBelief Optimizer: Adapting Stepsizes by the Belief in Observed
Gradients", NeurIPS 2020; ferroptim ships no AdaBelief class) is Adam with the second moment
of ``g − m`` (the "belief") instead of ``g``. Here it is written twice: once with the rule API
(one element's update + the per-step scalars, traced once and run by ferroptim's fused native
driver), once as the plain torch ops a user would write in ``step()``. Both train the demo's
character-level transformer (``examples/train_charlm.py``) from the same seed, interleaved
step by step; the table shows their losses and optimizer step times::

    python examples/rule_adabelief.py [--steps 300] [any train_charlm.py option]
"""

from __future__ import annotations

import importlib.util
import statistics
import sys
from pathlib import Path

import torch
from ferroptim import rules as R

HERE = Path(__file__).resolve().parent


def adabelief_scalars(h, step):
    beta1, beta2 = h.betas
    return {
        "decay": 1 - h.lr * h.weight_decay,
        "beta1": beta1,
        "beta2": beta2,
        "one_minus_beta1": 1 - beta1,
        "one_minus_beta2": 1 - beta2,
        "neg_step_size": -(h.lr / (1 - beta1**step)),
        "bc2_sqrt": (1 - beta2**step) ** 0.5,
    }


def adabelief_update(p, g, state, s):
    m = state.exp_avg * s.beta1 + s.one_minus_beta1 * g
    belief = g - m
    v = state.exp_avg_var * s.beta2 + s.one_minus_beta2 * belief * belief + s.eps
    state.exp_avg, state.exp_avg_var = m, v
    return p * s.decay + s.neg_step_size * m / (R.sqrt(v) / s.bc2_sqrt + s.eps)


AdaBelief = R.rule_optimizer(
    "AdaBelief",
    adabelief_update,
    adabelief_scalars,
    state=("exp_avg", "exp_avg_var"),
    defaults={"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-16, "weight_decay": 0.0},
    doc="AdaBelief (Zhuang et al., NeurIPS 2020), decoupled weight decay, bias-corrected.",
)


class TorchAdaBelief(torch.optim.Optimizer):
    """The same rule as plain torch ops, one parameter at a time (the baseline)."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-16, weight_decay=0.0):
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_var"] = torch.zeros_like(p)
                state["step"] += 1
                m, v, g = state["exp_avg"], state["exp_avg_var"], p.grad
                m.mul_(beta1).add_(g, alpha=1 - beta1)
                belief = g - m
                v.mul_(beta2).addcmul_(belief, belief, value=1 - beta2).add_(eps)
                bc1 = 1 - beta1 ** state["step"]
                bc2_sqrt = (1 - beta2 ** state["step"]) ** 0.5
                p.mul_(1 - lr * wd)
                p.addcdiv_(m, v.sqrt().div_(bc2_sqrt).add_(eps), value=-lr / bc1)


def main() -> None:
    spec = importlib.util.spec_from_file_location("train_charlm", HERE / "train_charlm.py")
    demo = importlib.util.module_from_spec(spec)
    sys.modules["train_charlm"] = demo
    spec.loader.exec_module(demo)
    if "--steps" not in sys.argv:
        sys.argv += ["--steps", "300"]
    args = demo.parse_args()
    device = torch.device("cpu")
    corpus = demo.build_corpus(demo.read_stdlib_source(int(args.corpus_mb * 1e6))[0])
    names = ["ferroptim.rules AdaBelief", "torch-ops AdaBelief"]
    results = demo.train(
        names, {names[0]: AdaBelief, names[1]: TorchAdaBelief}, corpus, args, device
    )
    print(f"\n{args.steps} steps, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print("| optimizer | final train loss (mean of last 20) | val loss | median step (ms) |")
    print("|---|---:|---:|---:|")
    for r in results:
        print(
            f"| {r.name} | {statistics.mean(r.losses[-20:]):.4f} | {r.val_loss:.4f} | "
            f"{statistics.median(r.opt_step_s) * 1e3:.3f} |"
        )
    ratio = statistics.median(results[1].opt_step_s) / statistics.median(results[0].opt_step_s)
    print(f"torch-ops step time / rule step time: {ratio:.2f}")


if __name__ == "__main__":
    main()
