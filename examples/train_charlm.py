"""Train a small character-level transformer on the Python standard library's source code.

The text is the standard library of the running interpreter: a deterministic, sorted subset
of its top-level ``*.py`` files, so nothing is downloaded. Characters are bytes here (the source
is nearly all ASCII) and the vocabulary is the set of byte values that occur; the last 10% of
the text is held out for validation. The model (token and learned positional embeddings,
pre-LayerNorm blocks of causal self-attention and MLP) learns to continue Python source. The
optimizer is AdamW with the usual GPT recipe (weight decay on the matrices of the linear layers
only; biases, LayerNorm and embeddings undecayed) under a linear warmup + cosine learning-rate
schedule, used exactly like a ``torch.optim`` optimizer.

Usage::

    python examples/train_charlm.py --compare             # ferroptim vs torch.optim, same seed
    python examples/train_charlm.py --optimizer torch --steps 500
    python examples/train_charlm.py --optimizer ferroptim --device cuda --batch-size 64

``--optimizer torch`` is ``torch.optim.AdamW`` in its fused implementation (the fastest one on
CPU and CUDA), ``--optimizer ferroptim`` is ``ferroptim.AdamW`` with the same hyperparameters,
``--optimizer AdamW8bit`` is ``ferroptim.AdamW8bit`` (8-bit block-wise state on the CPU);
``--with-8bit`` adds an ``AdamW8bit`` run from the same seed, its loss shown beside the others.
``--compare`` trains both from the same seed (identical initial weights, identical batches),
interleaved step by step so that machine noise hits both alike, then prints the loss curves
side by side, the median time of ``opt.step()`` alone and of a whole training step (forward,
backward, step, zero_grad), and the largest difference between the two trained models'
parameters. A PNG with the loss curves and the step times is written to ``--out``.
"""

from __future__ import annotations

import argparse
import functools
import math
import statistics
import sysconfig
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter
from torch import nn
from tqdm import tqdm

OPTIMIZERS = ("torch", "ferroptim", "AdamW8bit")
COMPARED = ("torch", "ferroptim")  # what --compare trains
FUSED_DEVICES = ("cpu", "cuda")  # device types with a fused torch.optim.AdamW
BETAS = (0.9, 0.95)
SAMPLE_PROMPT = "\ndef "


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--optimizer", choices=OPTIMIZERS, default="ferroptim", help="AdamW implementation"
    )
    parser.add_argument(
        "--with-8bit",
        action="store_true",
        help="also train with ferroptim.AdamW8bit (8-bit state) from the same seed",
    )
    parser.add_argument(
        "--compare", action="store_true", help="train with both optimizers from the same seed"
    )
    parser.add_argument("--steps", type=int, default=1500, help="training steps per optimizer")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights and batches")
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device"
    )
    parser.add_argument("--batch-size", type=int, default=16, help="sequences per batch")
    parser.add_argument("--block-size", type=int, default=64, help="context length in bytes")
    parser.add_argument("--d-model", type=int, default=128, help="embedding width")
    parser.add_argument("--n-layer", type=int, default=3, help="transformer blocks")
    parser.add_argument("--n-head", type=int, default=4, help="attention heads")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    parser.add_argument("--weight-decay", type=float, default=0.1, help="for weight matrices")
    parser.add_argument("--corpus-mb", type=float, default=3.0, help="size of the text used")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent / "out",
        help="directory for the plot",
    )
    return parser.parse_args()


# --------------------------------------------------------------------------- data


@dataclass
class Corpus:
    """Byte-level text: token ``i`` stands for the byte ``vocab[i]``."""

    vocab: torch.Tensor  # sorted byte values occurring in the text
    train: torch.Tensor
    val: torch.Tensor

    def encode(self, text: str) -> torch.Tensor:
        raw = torch.tensor(list(text.encode()), dtype=torch.uint8)
        return torch.searchsorted(self.vocab, raw)

    def decode(self, ids: torch.Tensor) -> str:
        return bytes(self.vocab[ids.cpu()].tolist()).decode(errors="replace")


def read_stdlib_source(max_bytes: int) -> tuple[bytes, int, Path]:
    """Concatenate the sorted top-level ``*.py`` files of the stdlib up to ``max_bytes``."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    chunks, size = [], 0
    for path in sorted(stdlib.glob("*.py")):
        if size >= max_bytes:
            break
        chunks.append(path.read_bytes())
        size += len(chunks[-1])
    return b"".join(chunks)[:max_bytes], len(chunks), stdlib


def build_corpus(raw: bytes, val_fraction: float = 0.1) -> Corpus:
    """Tokenize ``raw`` byte-wise and hold out its last ``val_fraction`` for validation."""
    data = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
    vocab = torch.unique(data)
    ids = torch.searchsorted(vocab, data)
    split = int(len(ids) * (1 - val_fraction))
    return Corpus(vocab=vocab, train=ids[:split], val=ids[split:])


def sample_batch(
    data: torch.Tensor,
    block_size: int,
    batch_size: int,
    gen: torch.Generator,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows of ``data``: inputs and the same windows shifted by one byte."""
    starts = torch.randint(len(data) - block_size, (batch_size,), generator=gen)
    windows = data[starts[:, None] + torch.arange(block_size + 1)].to(device)
    return windows[:, :-1], windows[:, 1:]


# --------------------------------------------------------------------------- model


class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        qkv = self.qkv(x).view(b, t, 3, self.n_head, c // self.n_head).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, t, c))


class Block(nn.Module):
    def __init__(self, d_model: int, n_head: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_head)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class CharTransformer(nn.Module):
    def __init__(self, vocab_size: int, block_size: int, d_model: int, n_layer: int, n_head: int):
        super().__init__()
        self.tok_emb = nn.Embedding(vocab_size, d_model)
        self.pos_emb = nn.Embedding(block_size, d_model)
        self.blocks = nn.Sequential(*(Block(d_model, n_head) for _ in range(n_layer)))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        self.apply(init_weights)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.tok_emb(idx) + self.pos_emb(pos)
        return self.head(self.ln_f(self.blocks(x)))


def init_weights(module: nn.Module) -> None:
    """GPT-2 style initialisation: N(0, 0.02) weights, zero biases."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


def lm_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x).flatten(0, 1), y.flatten())


# --------------------------------------------------------------------------- optimization


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay the weight matrices of linear layers; not biases, LayerNorm or embeddings."""
    decay = [m.weight for m in model.modules() if isinstance(m, nn.Linear)]
    decay_ids = {id(p) for p in decay}
    no_decay = [p for p in model.parameters() if id(p) not in decay_ids]
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def warmup_cosine(warmup: int, total: int, floor: float = 0.1) -> Callable[[int], float]:
    """LR factor: linear warmup to 1, then cosine decay to ``floor`` at step ``total``."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def optimizer_class(name: str, device: torch.device) -> Callable[..., torch.optim.Optimizer]:
    """The AdamW constructor for ``name``; fails here, before training, if it is missing."""
    if name == "torch":
        return functools.partial(torch.optim.AdamW, fused=device.type in FUSED_DEVICES)
    try:
        import ferroptim
    except ImportError as err:
        raise SystemExit(
            f"--optimizer ferroptim needs the ferroptim package ({err}); "
            "build and install it with `bash .ci/dev build`"
        ) from err
    # AdamW8bit: 8-bit block-wise state for the CPU parameters of at least 4096 elements.
    return ferroptim.AdamW8bit if name == "AdamW8bit" else ferroptim.AdamW


# --------------------------------------------------------------------------- training


@dataclass
class RunResult:
    name: str
    model: nn.Module
    losses: list[float]  # train loss of every step
    val_loss: float
    opt_step_s: list[float]  # opt.step() alone
    train_step_s: list[float]  # forward + backward + step + zero_grad


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Trainer:
    """One model + optimizer + scheduler, advanced one training step at a time."""

    def __init__(
        self,
        name: str,
        adamw: Callable[..., torch.optim.Optimizer],
        corpus: Corpus,
        args: argparse.Namespace,
        device: torch.device,
    ) -> None:
        torch.manual_seed(args.seed)  # identical initial weights for every optimizer
        self.name, self.corpus, self.args, self.device = name, corpus, args, device
        self.model = CharTransformer(
            len(corpus.vocab), args.block_size, args.d_model, args.n_layer, args.n_head
        ).to(device)
        self.opt = adamw(param_groups(self.model, args.weight_decay), lr=args.lr, betas=BETAS)
        warmup = max(1, args.steps // 10)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.opt, warmup_cosine(warmup, args.steps)
        )
        self.batches = torch.Generator().manual_seed(args.seed)  # identical batches too
        self.losses: list[float] = []
        self.opt_times: list[float] = []
        self.step_times: list[float] = []

    def step(self) -> None:
        args, device = self.args, self.device
        x, y = sample_batch(
            self.corpus.train, args.block_size, args.batch_size, self.batches, device
        )
        synchronize(device)
        start = time.perf_counter()
        loss = lm_loss(self.model, x, y)
        loss.backward()
        synchronize(device)
        step_start = time.perf_counter()
        self.opt.step()
        synchronize(device)
        step_end = time.perf_counter()
        self.opt.zero_grad()
        synchronize(device)
        end = time.perf_counter()
        self.scheduler.step()
        self.opt_times.append(step_end - step_start)
        self.step_times.append(end - start)
        self.losses.append(loss.item())

    def result(self) -> RunResult:
        val_loss = evaluate(self.model, self.corpus.val, self.args, self.device)
        return RunResult(
            self.name, self.model, self.losses, val_loss, self.opt_times, self.step_times
        )


def train(
    names: list[str],
    adamws: dict[str, Callable[..., torch.optim.Optimizer]],
    corpus: Corpus,
    args: argparse.Namespace,
    device: torch.device,
) -> list[RunResult]:
    """Trains one model per optimizer, interleaved step by step (alternating which goes first),
    so that machine noise and warm-up affect every optimizer's timings alike."""
    trainers = [Trainer(name, adamws[name], corpus, args, device) for name in names]
    bar = tqdm(range(args.steps), desc="training", unit="step", dynamic_ncols=True)
    for i in bar:
        for trainer in trainers if i % 2 == 0 else trainers[::-1]:
            trainer.step()
        bar.set_postfix_str(
            " ".join(f"{t.name} {t.losses[-1]:.3f}" for t in trainers), refresh=False
        )
    return [trainer.result() for trainer in trainers]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: torch.Tensor,
    args: argparse.Namespace,
    device: torch.device,
    n_batches: int = 20,
) -> float:
    """Mean loss over fixed random windows of ``data`` (the same ones for every run)."""
    gen = torch.Generator().manual_seed(args.seed)
    losses = [
        lm_loss(model, *sample_batch(data, args.block_size, args.batch_size, gen, device)).item()
        for _ in range(n_batches)
    ]
    return statistics.fmean(losses)


@torch.no_grad()
def generate(
    model: nn.Module,
    corpus: Corpus,
    args: argparse.Namespace,
    device: torch.device,
    length: int = 240,
) -> str:
    """Sample a continuation of ``SAMPLE_PROMPT`` at temperature 0.8."""
    gen = torch.Generator(device=device).manual_seed(args.seed)
    idx = corpus.encode(SAMPLE_PROMPT)[None].to(device)
    for _ in range(length):
        logits = model(idx[:, -args.block_size :])[:, -1]
        probs = F.softmax(logits / 0.8, dim=-1)
        idx = torch.cat([idx, torch.multinomial(probs, 1, generator=gen)], dim=1)
    return corpus.decode(idx[0])


# --------------------------------------------------------------------------- reporting


def print_loss_table(results: list[RunResult], rows: int = 10) -> None:
    """Train loss averaged over windows of steps, then the validation loss."""
    steps = len(results[0].losses)
    every = max(1, steps // rows)
    print(f"\ntrain loss (mean of the last {every} steps)")
    print(f"{'step':>6}" + "".join(f"{r.name:>12}" for r in results))
    for end in range(every, steps + 1, every):
        means = [statistics.fmean(r.losses[end - every : end]) for r in results]
        print(f"{end:>6}" + "".join(f"{m:>12.4f}" for m in means))
    print(f"{'val':>6}" + "".join(f"{r.val_loss:>12.4f}" for r in results))


def median_ms(times: list[float]) -> float:
    return 1e3 * statistics.median(times)


def print_timing_table(results: list[RunResult]) -> None:
    compare = set(COMPARED) <= {r.name for r in results}
    print("\nmedian time per step (ms)")
    header = f"{'':<16}" + "".join(f"{r.name:>12}" for r in results)
    print(header + (f"{'torch/ferroptim':>17}" if compare else ""))
    for label, attr in (("optimizer step", "opt_step_s"), ("training step", "train_step_s")):
        medians = {r.name: median_ms(getattr(r, attr)) for r in results}
        line = f"{label:<16}" + "".join(f"{medians[r.name]:>12.3f}" for r in results)
        if compare:
            line += f"{medians['torch'] / medians['ferroptim']:>16.2f}x"
        print(line)
    if compare:
        print("(a ratio above 1 means ferroptim is faster)")


def max_param_difference(a: nn.Module, b: nn.Module) -> float:
    return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))


def plot_results(results: list[RunResult], path: Path) -> None:
    """Two panels: the loss curves, and the median step times as grouped bars."""
    fig = Figure(figsize=(12, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    loss_ax, time_ax = fig.subplots(1, 2)

    steps = len(results[0].losses)
    window = max(1, steps // 50)
    for r, style, marker in zip(results, ("-", "--", ":"), ("o", "x", "s")):
        smooth = np.convolve(r.losses, np.ones(window) / window, mode="valid")
        line = loss_ax.plot(range(window, steps + 1), smooth, style, label=f"{r.name} train")[0]
        loss_ax.plot(steps, r.val_loss, marker, color=line.get_color(), label=f"{r.name} val")
    loss_ax.set(title=f"train loss ({window}-step moving mean), final validation loss")
    loss_ax.set(xlabel="step", ylabel="cross-entropy (nats/byte)")
    loss_ax.legend()

    width = 0.8 / len(results)
    for i, r in enumerate(results):
        medians = [median_ms(r.opt_step_s), median_ms(r.train_step_s)]
        bars = time_ax.bar([j + i * width for j in range(2)], medians, width, label=r.name)
        time_ax.bar_label(bars, fmt="%.2f")
    time_ax.set_xticks([j + (len(results) - 1) * width / 2 for j in range(2)])
    time_ax.set_xticklabels(["optimizer step", "whole training step"])
    time_ax.set(title="median time per step", ylabel="ms (log scale)", yscale="log")
    time_ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    time_ax.yaxis.set_minor_formatter(NullFormatter())
    time_ax.legend()

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    names = list(COMPARED) if args.compare else [args.optimizer]
    if args.with_8bit and "AdamW8bit" not in names:
        names.append("AdamW8bit")
    adamws = {name: optimizer_class(name, device) for name in names}

    raw, n_files, stdlib = read_stdlib_source(int(args.corpus_mb * 2**20))
    corpus = build_corpus(raw)
    print(
        f"corpus: {len(raw):,} bytes from {n_files} files in {stdlib}, vocab {len(corpus.vocab)}, "
        f"train/val {len(corpus.train):,}/{len(corpus.val):,}; device {device}"
    )

    results = train(names, adamws, corpus, args, device)

    print_loss_table(results)
    print_timing_table(results)
    if args.compare:
        diff = max_param_difference(results[0].model, results[1].model)  # torch, ferroptim
        print(f"\nmax |torch - ferroptim| over all final parameters: {diff:.3e}")

    path = args.out / f"train_charlm_{'_vs_'.join(names)}.png"
    plot_results(results, path)
    print(f"\nplot: {path}")

    sampler = results[-1]  # the last model trained (ferroptim's with --compare)
    print(f"\nsample from the {sampler.name} model:")
    print(generate(sampler.model, corpus, args, device))


if __name__ == "__main__":
    main()
