"""A zoo of tiny models with data (dim <= ~1500) whose exact Hessians are quick; reused by many tests.

Every case is deterministic (fixed seeds) and returns a :class:`Case`: the model, its batches (unequal
sizes on purpose), the loss callable the operators take, and the per-batch weights the operator should
use, computed here independently of ``hessian_spectra.curvature.losses``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from hessian_spectra.curvature.losses import cross_entropy, mse
from torch import nn


@dataclass
class Case:
    name: str
    model: nn.Module
    batches: list[Any]
    loss: Any
    weights: list[float]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)


def _xy_batches(sizes, n_in, n_out, *, classes: bool, seed: int):
    g = torch.Generator().manual_seed(seed)
    out = []
    for s in sizes:
        x = (
            torch.randn(s, *n_in, generator=g)
            if isinstance(n_in, tuple)
            else torch.randn(s, n_in, generator=g)
        )
        y = torch.randint(0, n_out, (s,), generator=g) if classes else torch.randn(s, n_out, generator=g)
        out.append((x, y))
    return out


# ---------------------------------------------------------------------------- MLP
def mlp_case(loss: str = "cross_entropy") -> Case:
    """5 -> 16 (tanh) -> 16 (GELU) -> 3; 419 parameters; batches of 7, 5 and 3 examples."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 16), nn.GELU(), nn.Linear(16, 3))
    sizes = [7, 5, 3]
    batches = _xy_batches(sizes, 5, 3, classes=loss == "cross_entropy", seed=1)
    return Case(
        f"mlp-{loss}", model, batches, cross_entropy if loss == "cross_entropy" else mse, [7.0, 5.0, 3.0]
    )


# ---------------------------------------------------------------------------- CNN + BatchNorm
class TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(4 * 3 * 3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.bn(self.conv(x)))
        h = F.avg_pool2d(h, 2)
        return self.fc(self.drop(h.flatten(1)))


def cnn_case() -> Case:
    """Conv(1->4) + BatchNorm + tanh + Dropout + Linear; 159 params; LEFT IN TRAIN MODE on purpose."""
    torch.manual_seed(0)
    model = TinyCNN()
    with torch.no_grad():  # give BatchNorm non-trivial running statistics
        for _ in range(3):
            model(torch.randn(8, 1, 6, 6) * 2 + 0.5)
    model.train()
    batches = _xy_batches([6, 4], (1, 6, 6), 3, classes=True, seed=2)
    return Case("cnn-bn", model, batches, cross_entropy, [6.0, 4.0])


# ---------------------------------------------------------------------------- hand-written SDPA transformer
class SDPABlockLM(nn.Module):
    """Embedding + one pre-LN block with a fused QKV nn.Linear and F.scaled_dot_product_attention + head."""

    def __init__(self, vocab: int = 11, d: int = 8, heads: int = 2, seq: int = 6) -> None:
        super().__init__()
        self.heads = heads
        self.emb = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(seq, d) * 0.1)
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.head = nn.Linear(d, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        b, t = idx.shape
        x = self.emb(idx) + self.pos[:t]
        q, k, v = self.qkv(self.ln1(x)).split(x.shape[-1], dim=-1)
        hd = x.shape[-1] // self.heads

        def heads(z: torch.Tensor) -> torch.Tensor:
            return z.view(b, t, self.heads, hd).transpose(1, 2)

        a = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, -1))
        x = x + self.mlp(self.ln2(x))
        return self.head(x)


def _token_batches(sizes, seq, vocab, seed):
    g = torch.Generator().manual_seed(seed)
    out = []
    for s in sizes:
        ids = torch.randint(0, vocab, (s, seq + 1), generator=g)
        out.append((ids[:, :-1], ids[:, 1:].clone()))
    return out


def sdpa_case() -> Case:
    """Hand-written causal transformer calling F.scaled_dot_product_attention; 671 params."""
    torch.manual_seed(0)
    model = SDPABlockLM()
    batches = _token_batches([3, 2], 6, 11, seed=3)
    batches[1][1][0, :2] = -100  # ignored targets: token weighting differs from example weighting
    tokens = [float((y != -100).sum()) for _, y in batches]
    return Case("sdpa-lm", model, batches, cross_entropy, [3.0, 2.0], {"tokens": tokens, "heads": 2, "d": 8})


# ---------------------------------------------------------------------------- nn.TransformerEncoderLayer
class EncoderLM(nn.Module):
    def __init__(self, vocab: int = 9, d: int = 8, heads: int = 2) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.layer = nn.TransformerEncoderLayer(d, heads, 2 * d, dropout=0.1, batch_first=True)
        self.head = nn.Linear(d, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(self.layer(self.emb(idx)))


def encoder_case() -> Case:
    """nn.TransformerEncoderLayer (fused in_proj_weight, dropout 0.1, left in train mode); 633 params."""
    torch.manual_seed(0)
    model = EncoderLM().train()
    batches = _token_batches([2, 3], 5, 9, seed=4)
    return Case("encoder-layer", model, batches, cross_entropy, [2.0, 3.0], {"heads": 2, "d": 8})


# ---------------------------------------------------------------------------- HF GPT-2 / Llama
def _hf_batches(sizes, seq, vocab, seed, pad_first: int = 0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i, s in enumerate(sizes):
        ids = torch.randint(0, vocab, (s, seq), generator=g)
        labels = ids.clone()
        if i == 0 and pad_first:
            labels[0, -pad_first:] = -100
        out.append({"input_ids": ids, "labels": labels})
    return out


def _causal_tokens(batches) -> list[float]:
    return [float((b["labels"][:, 1:] != -100).sum()) for b in batches]


def gpt2_case() -> Case:
    """HF GPT-2: 1 layer, n_embd 8, 2 heads, vocab 20, tied embeddings, default (sdpa) attention; 1096 params."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=20, n_positions=8, n_embd=8, n_layer=1, n_head=2, bos_token_id=0, eos_token_id=0,
        resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1,
    )  # fmt: skip
    model = GPT2LMHeadModel(cfg)
    batches = _hf_batches([2, 3], 6, 20, seed=5, pad_first=2)
    return Case("gpt2", model, batches, None, _causal_tokens(batches), {"heads": 2, "d": 8})


def llama_case() -> Case:
    """HF Llama: 1 layer, hidden 8, 4 heads (head_dim 2), 2 KV heads (GQA), vocab 20; 912 params."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=20, hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=16, bos_token_id=0, eos_token_id=0, pad_token_id=None,
    )  # fmt: skip
    model = LlamaForCausalLM(cfg).eval()
    batches = _hf_batches([3, 2], 5, 20, seed=6, pad_first=1)
    return Case(
        "llama", model, batches, None, _causal_tokens(batches), {"heads": 4, "kv_heads": 2, "head_dim": 2}
    )


# ---------------------------------------------------------------------------- indefinite at init
def indefinite_case() -> Case:
    """A tanh MLP regression at a large init with a strongly indefinite Hessian (|lambda_min| / lambda_max = 0.49).

    Power iteration on such a spectrum converges slowly or to the wrong end; Lanczos does not.
    """
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 12), nn.Tanh(), nn.Linear(12, 2))
    with torch.no_grad():
        model[0].weight.mul_(2.5)
        model[2].weight.mul_(2.0)
    batches = _xy_batches([16], 4, 2, classes=False, seed=7)
    return Case("indefinite", model, batches, mse, [16.0])


def all_cases(hf: bool = True) -> list[Case]:
    cases = [mlp_case(), mlp_case("mse"), cnn_case(), sdpa_case(), encoder_case()]
    if hf:
        cases += [gpt2_case(), llama_case()]
    return cases


def random_vector(n: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(n, generator=g, dtype=torch.float64)
    return (v / math.sqrt(n)).to(dtype)


_BUILDERS = {
    "mlp": mlp_case,
    "mlp-mse": lambda: mlp_case("mse"),
    "cnn-bn": cnn_case,
    "sdpa-lm": sdpa_case,
    "encoder-layer": encoder_case,
    "gpt2": gpt2_case,
    "llama": llama_case,
    "indefinite": indefinite_case,
}
_CACHE: dict[str, Case] = {}


#: (case, loss) pairs with a Gauss-Newton oracle: the GGN tests of the operator and of the algorithms.
GGN_CASES = [
    ("mlp", "cross_entropy"),
    ("mlp-mse", "mse"),
    ("sdpa-lm", "cross_entropy"),
    ("gpt2", "cross_entropy"),
]


def get_case(name: str) -> Case:
    """A cached zoo case (tests must not mutate it; they check that the code under test does not)."""
    if name not in _CACHE:
        _CACHE[name] = _BUILDERS[name]()
    return _CACHE[name]
