"""The built-in example: a small GPT-style transformer and a small CNN, synthetic data, brief CPU training.

Both models use plain ``nn.Linear``/``nn.Conv2d`` and hand-written attention (no fused SDPA kernel), so
their losses are twice differentiable on any backend. Parameter names follow common conventions
(``attn.q_proj``, ``mlp.fc_in``, ``wte``, ``ln_1``, ``conv1``, ``fc``) so block groups are recognised.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from hessian_spectra.curvature.losses import cross_entropy
from torch import nn

__all__ = [
    "TinyGPT",
    "TinyCNN",
    "TinyMLP",
    "DemoCase",
    "DemoBudget",
    "markov_tokens",
    "template_images",
    "train",
    "demo_cases",
]


class _Attention(nn.Module):
    """Causal multi-head self-attention with separate Q/K/V/O projections, written out explicitly."""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        if d_model % n_heads:
            raise ValueError("d_model must be divisible by n_heads")
        self.n_heads = n_heads
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, d_model, bias=False)
        self.o_proj = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        h = self.n_heads

        def split(z: torch.Tensor) -> torch.Tensor:
            return z.view(b, t, h, d // h).transpose(1, 2)

        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(d // h)
        mask = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
        att = att.masked_fill(mask, float("-inf")).softmax(-1)
        return self.o_proj((att @ v).transpose(1, 2).reshape(b, t, d))


class _MLP(nn.Module):
    def __init__(self, d_model: int, d_ff: int):
        super().__init__()
        self.fc_in = nn.Linear(d_model, d_ff)
        self.fc_out = nn.Linear(d_ff, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_out(F.gelu(self.fc_in(x)))


class _Block(nn.Module):
    def __init__(self, d_model: int, n_heads: int, d_ff: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(d_model)
        self.attn = _Attention(d_model, n_heads)
        self.ln_2 = nn.LayerNorm(d_model)
        self.mlp = _MLP(d_model, d_ff)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class TinyGPT(nn.Module):
    """Pre-norm decoder-only transformer: ``wte``/``wpe`` embeddings, ``h.{i}`` blocks, ``ln_f``, ``lm_head``."""

    def __init__(
        self, vocab: int = 32, d_model: int = 32, n_heads: int = 4, n_layers: int = 2, seq_len: int = 16
    ):
        super().__init__()
        self.n_heads = n_heads
        self.wte = nn.Embedding(vocab, d_model)
        self.wpe = nn.Embedding(seq_len, d_model)
        self.h = nn.ModuleList(_Block(d_model, n_heads, 4 * d_model) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.lm_head = nn.Linear(d_model, vocab, bias=False)
        for name, p in self.named_parameters():
            if p.ndim >= 2:
                nn.init.normal_(
                    p, std=0.02 if "wte" in name or "wpe" in name else 1.0 / math.sqrt(p.shape[1])
                )

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.wte(idx) + self.wpe(pos)[None]
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))


class TinyCNN(nn.Module):
    """``depth`` 3x3 convolutions of equal width with ReLU (pooling after the first two), then a linear
    classifier ``fc`` (the equal-width conv stack is what makes CNN blocks alike)."""

    def __init__(self, channels: int = 1, width: int = 8, classes: int = 4, size: int = 8, depth: int = 3):
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(channels if i == 0 else width, width, 3, padding=1) for i in range(depth)
        )
        self.fc = nn.Linear(width * (size // 4) ** 2, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, conv in enumerate(self.convs):
            x = F.relu(conv(x))
            if i < 2:
                x = F.max_pool2d(x, 2)
        return self.fc(x.flatten(1))


class TinyMLP(nn.Module):
    """A tanh MLP classifier with ``depth`` equal-width hidden layers (``layers.{i}``) and ``classifier``."""

    def __init__(self, inputs: int = 16, hidden: int = 16, classes: int = 4, depth: int = 3):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(inputs if i == 0 else hidden, hidden) for i in range(depth))
        self.classifier = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return self.classifier(x)


def markov_tokens(
    num_batches: int, batch_size: int, seq_len: int, vocab: int, seed: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(inputs, next-token targets)`` batches from a fixed sparse random bigram chain (learnable text)."""
    gen = torch.Generator().manual_seed(seed)
    chain_gen = torch.Generator().manual_seed(12345)  # the "language" is fixed; only samples vary
    logits = torch.randn(vocab, vocab, generator=chain_gen) * 3.0
    probs = logits.softmax(-1)
    out = []
    for _ in range(num_batches):
        seq = torch.empty(batch_size, seq_len + 1, dtype=torch.long)
        seq[:, 0] = torch.randint(vocab, (batch_size,), generator=gen)
        for t in range(seq_len):
            seq[:, t + 1] = torch.multinomial(probs[seq[:, t]], 1, generator=gen).squeeze(1)
        out.append((seq[:, :-1].contiguous(), seq[:, 1:].contiguous()))
    return out


def template_images(
    num_batches: int, batch_size: int, classes: int, size: int, seed: int, channels: int = 1
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(images, labels)`` batches: a fixed random template per class plus Gaussian noise."""
    gen = torch.Generator().manual_seed(seed)
    templates = torch.randn(classes, channels, size, size, generator=torch.Generator().manual_seed(54321))
    out = []
    for _ in range(num_batches):
        y = torch.randint(classes, (batch_size,), generator=gen)
        x = templates[y] + 0.8 * torch.randn(batch_size, channels, size, size, generator=gen)
        out.append((x, y))
    return out


def train(
    model: nn.Module,
    batches: list[Any],
    loss: Callable[[nn.Module, Any], torch.Tensor],
    *,
    steps: int,
    lr: float,
    seed: int = 0,
) -> list[float]:
    """Brief Adam training (cycling through ``batches``); returns the loss curve. Leaves eval mode on."""
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    curve = []
    for step in range(steps):
        opt.zero_grad(set_to_none=True)
        value = loss(model, batches[step % len(batches)])
        value.backward()
        opt.step()
        curve.append(float(value.detach()))
    model.eval()
    return curve


@dataclass(frozen=True)
class DemoBudget:
    """Sizes of the demo: training steps, batches used for training and for the Hessian, batch size."""

    train_steps: int = 300
    train_batches: int = 32
    hessian_batches: int = 2
    batch_size: int = 32

    @classmethod
    def reduced(cls) -> DemoBudget:
        """The budget the test suite uses (seconds, not minutes)."""
        return cls(train_steps=30, train_batches=8, hessian_batches=1, batch_size=16)


@dataclass(frozen=True, eq=False)
class DemoCase:
    """One trained demo model with its loss and the batches its Hessian is taken on."""

    name: str
    model: nn.Module
    loss: Callable[[nn.Module, Any], torch.Tensor]
    batches: list[Any]
    description: str
    loss_curve: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "train_steps": len(self.loss_curve),
            "initial_loss": self.loss_curve[0] if self.loss_curve else None,
            "final_loss": self.loss_curve[-1] if self.loss_curve else None,
        }


def demo_cases(seed: int = 0, budget: DemoBudget | None = None) -> list[DemoCase]:
    """Build and briefly train the demo GPT and CNN (float64, CPU); deterministic given ``seed``."""
    budget = budget or DemoBudget()
    cases = []
    torch.manual_seed(seed)
    gpt = TinyGPT(d_model=16).double()
    tokens = markov_tokens(budget.train_batches + budget.hessian_batches, budget.batch_size, 16, 32, seed)
    curve = train(
        gpt, tokens[: budget.train_batches], cross_entropy, steps=budget.train_steps, lr=3e-3, seed=seed
    )
    cases.append(
        DemoCase(
            name="gpt", model=gpt, loss=cross_entropy, batches=tokens[budget.train_batches :],
            description="GPT-style transformer (2 layers, d=16, 4 heads) on a synthetic bigram language",
            loss_curve=tuple(curve),
        )
    )  # fmt: skip
    torch.manual_seed(seed)
    cnn = TinyCNN().double()
    images = [
        (x.double(), y)
        for x, y in template_images(
            budget.train_batches + budget.hessian_batches, budget.batch_size, 4, 8, seed
        )
    ]
    curve = train(
        cnn, images[: budget.train_batches], cross_entropy, steps=budget.train_steps, lr=3e-3, seed=seed
    )
    cases.append(
        DemoCase(
            name="cnn", model=cnn, loss=cross_entropy, batches=images[budget.train_batches :],
            description="CNN (3 conv layers, 8 channels, linear head) on synthetic 8x8 template images",
            loss_curve=tuple(curve),
        )
    )  # fmt: skip
    return cases
