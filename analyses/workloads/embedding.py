"""Sentence encoders: the in-batch contrastive loss sentence-transformers trains them with.

Multiple-negatives ranking (sentence-transformers' ``MultipleNegativesRankingLoss`` defaults): for a batch of
B (anchor, positive) pairs with embeddings a_i, p_j, the scores S_ij = 20 cos(a_i, p_j) and the loss is the
mean over i of cross-entropy(S_i, i): each anchor must pick its own positive among the B positives.

Embeddings are pooled as the folder says: a sentence-transformers folder (``modules.json``) names its
Transformer sub-folder, its Pooling modes (``1_Pooling/config.json``: cls, max, mean, mean_sqrt_len_tokens,
weightedmean, lasttoken; several are concatenated in that order) and whether a Normalize module follows. A
HF encoder without that file gets mean pooling (sentence-transformers' default). Other modules (Dense, ...)
are refused: their weights are not part of the HF model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from hessian_spectra.errors import InputError

__all__ = [
    "SentenceEncoder",
    "read_sentence_encoder",
    "ContrastiveLoss",
    "pool",
    "pair_batches",
    "POOLING_MODES",
]

POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
_LEGACY = {"pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max", "pooling_mode_mean_tokens": "mean",
           "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
           "pooling_mode_weightedmean_tokens": "weightedmean", "pooling_mode_lasttoken": "lasttoken"}  # fmt: skip


@dataclass(frozen=True)
class SentenceEncoder:
    """Where the transformer of a sentence encoder is, and how its token states become one embedding."""

    transformer_dir: Path
    pooling: tuple[str, ...] = ("mean",)
    normalize: bool = False
    max_seq_length: int | None = None
    notes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {"transformer_dir": str(self.transformer_dir), "pooling": list(self.pooling),
                "normalize": self.normalize, "max_seq_length": self.max_seq_length, "notes": list(self.notes)}  # fmt: skip


def _pooling_modes(cfg: Any, where: Path) -> tuple[str, ...]:
    if not isinstance(cfg, dict):
        raise InputError(where, "pooling config is not a JSON object")
    mode = cfg.get("pooling_mode")
    if isinstance(mode, str):
        modes: tuple[str, ...] = (mode,)
    elif isinstance(mode, list) and all(isinstance(m, str) for m in mode):
        modes = tuple(mode)
    else:
        modes = tuple(m for k, m in _LEGACY.items() if cfg.get(k) is True)
    bad = [m for m in modes if m not in POOLING_MODES]
    if not modes or bad:
        raise InputError(
            where, f"pooling mode(s) {bad or 'none'} not understood (known: {', '.join(POOLING_MODES)})"
        )
    return modes


def read_sentence_encoder(folder: Path) -> SentenceEncoder:
    """The encoder a folder describes (see the module docstring); mean pooling without ``modules.json``."""
    from hessian_spectra.checkpoints.limits import check_plain_name, read_json_limited

    path = folder / "modules.json"
    if not path.is_file():
        return SentenceEncoder(
            folder,
            notes=("no modules.json: mean pooling over non-padding tokens (sentence-transformers' default)",),
        )
    modules = read_json_limited(path, "modules.json")
    if not isinstance(modules, list) or not all(
        isinstance(m, dict) and isinstance(m.get("type"), str) for m in modules
    ):
        raise InputError(path, "modules.json is not a list of modules with a 'type'")
    transformer, pooling, normalize = None, None, False
    for m in modules:
        kind, sub = m["type"].rsplit(".", 1)[-1], m.get("path") or ""
        if sub:
            check_plain_name(sub, path, "module path")
        if kind == "Transformer" and transformer is None:
            transformer = folder / sub
        elif kind == "Pooling" and pooling is None:
            pooling = _pooling_modes(
                read_json_limited(folder / sub / "config.json", "pooling config"), folder / sub
            )
        elif kind == "Normalize":
            normalize = True
        else:
            raise InputError(path, f"sentence-transformers module {m['type']!r} is not supported (its weights are not "
                             "part of the HF model); use --model-factory with your own model and loss")  # fmt: skip
    if transformer is None:
        raise InputError(path, "modules.json has no Transformer module")
    max_len = None
    st_cfg = transformer / "sentence_bert_config.json"
    if st_cfg.is_file():
        value = read_json_limited(st_cfg, "sentence_bert_config.json")
        max_len = (
            value.get("max_seq_length")
            if isinstance(value, dict) and type(value.get("max_seq_length")) is int
            else None
        )
    notes = () if pooling else ("modules.json has no Pooling module: mean pooling",)
    return SentenceEncoder(transformer, pooling or ("mean",), normalize, max_len, notes)


def pool(hidden: torch.Tensor, mask: torch.Tensor, modes: tuple[str, ...]) -> torch.Tensor:
    """Token states (B, T, D) -> sentence embeddings (B, D * len(modes)), as sentence-transformers pools."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    out = []
    for mode in modes:
        if mode == "cls":
            first = mask.to(torch.int).argmax(dim=1)
            out.append(hidden[torch.arange(hidden.shape[0], device=hidden.device), first])
        elif mode == "max":
            out.append(hidden.masked_fill(m == 0, float("-inf")).max(dim=1).values)
        elif mode in ("mean", "mean_sqrt_len_tokens"):
            count = torch.clamp(m.sum(dim=1), min=1e-9)
            out.append((hidden * m).sum(dim=1) / (count if mode == "mean" else count.sqrt()))
        elif mode == "weightedmean":
            weights = torch.arange(1, hidden.shape[1] + 1, device=hidden.device, dtype=hidden.dtype).view(
                1, -1, 1
            )
            weights = weights - mask.to(torch.int32).argmax(dim=1).view(-1, 1, 1).to(hidden.dtype)
            wm = m * weights
            out.append((hidden * wm).sum(dim=1) / torch.clamp(wm.sum(dim=1), min=1e-9))
        elif mode == "lasttoken":
            values, idx = mask.flip(1).max(1)
            idx = torch.where(values == 0, hidden.shape[1] - 1, idx)
            last = hidden.shape[1] - idx - 1
            out.append((hidden * m)[torch.arange(hidden.shape[0], device=hidden.device), last])
        else:  # pragma: no cover - validated when the folder is read
            raise ValueError(mode)
    return torch.cat(out, dim=-1)


@dataclass(frozen=True)
class ContrastiveLoss:
    """``loss(model, {"anchor": enc, "positive": enc})``: multiple-negatives ranking over the batch's pairs."""

    pooling: tuple[str, ...] = ("mean",)
    normalize: bool = False
    scale: float = 20.0

    def embed(self, model: torch.nn.Module, enc: dict[str, torch.Tensor]) -> torch.Tensor:
        out = model(**enc)
        hidden = out[0] if isinstance(out, tuple | list) else out.last_hidden_state
        emb = pool(hidden, enc["attention_mask"], self.pooling)
        return F.normalize(emb, p=2, dim=-1) if self.normalize else emb

    def __call__(self, model: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        a = F.normalize(self.embed(model, batch["anchor"]), p=2, dim=-1)
        p = F.normalize(self.embed(model, batch["positive"]), p=2, dim=-1)
        scores = self.scale * a @ p.T
        return F.cross_entropy(scores, torch.arange(scores.shape[0], device=scores.device))


def pair_batches(
    pairs: list[tuple[str, str]], tok: Any, *, batch_size: int, seq_len: int
) -> list[dict[str, Any]]:
    """``{"anchor": enc, "positive": enc}`` per ``batch_size`` pairs (a last batch of one pair is dropped:
    with no in-batch negative its loss is identically zero)."""
    keys = ("input_ids", "attention_mask", "token_type_ids")
    batches = []
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i : i + batch_size]
        if len(chunk) < 2:
            break
        batch = {}
        for side, texts in (("anchor", [a for a, _ in chunk]), ("positive", [p for _, p in chunk])):
            enc = tok(texts, padding=True, truncation=True, max_length=seq_len, return_tensors="pt")
            batch[side] = {k: enc[k] for k in keys if k in enc}
        batches.append(batch)
    return batches
