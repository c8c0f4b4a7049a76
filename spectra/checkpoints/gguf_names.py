"""llama.cpp tensor names -> Hugging Face names, the Q/K row permutation llama.cpp applies, and a HF-style
config from GGUF metadata.

llama.cpp's converter (``convert_hf_to_gguf.py``, ``LlamaModel.permute``) reorders the rows of Q and K
(weights and biases) within each head from HF's rotate-half layout to interleaved pairs::

    w.reshape(n_head, 2, rows // n_head // 2, *rest).swapaxes(1, 2).reshape(w.shape)

with ``n_head`` the query heads for Q and the key/value heads for K. :func:`unpermute_rows` is its inverse
(``reshape(n_head, rows // n_head // 2, 2, *rest).swapaxes(1, 2)``), so per-head Q/K row blocks read from a
GGUF file are the HF ones. Only the ``llama`` architecture is permuted by the converter; ``qwen2`` and
``qwen3`` share its names but keep HF's row order. Other architectures keep their llama.cpp names.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

__all__ = [
    "HF_NAMED_ARCHS",
    "PERMUTED_ARCHS",
    "hf_name",
    "qk_permutation",
    "unpermute_rows",
    "permute_rows",
    "gguf_config",
]

#: architectures whose llama.cpp names map to the HF Llama naming below
HF_NAMED_ARCHS = frozenset({"llama", "qwen2", "qwen3"})
#: architectures whose Q/K rows llama.cpp's converter permutes
PERMUTED_ARCHS = frozenset({"llama"})

_TOP = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_BLK = re.compile(r"blk\.(\d+)\.([a-z_]+)\.(weight|bias)")


def hf_name(arch: str | None, name: str) -> str | None:
    """The HF name of llama.cpp tensor ``name`` for a known architecture, else None (name kept)."""
    if arch not in HF_NAMED_ARCHS:
        return None
    if name in _TOP:
        return _TOP[name]
    m = _BLK.fullmatch(name)
    if m and m.group(2) in _BLOCK:
        return f"model.layers.{m.group(1)}.{_BLOCK[m.group(2)]}.{m.group(3)}"
    return None


def qk_permutation(arch: str | None, name: str, config: dict) -> int | None:
    """The head count the converter permuted ``name``'s rows with (Q: query heads, K: key/value heads),
    or None when it did not permute them."""
    if arch not in PERMUTED_ARCHS:
        return None
    m = _BLK.fullmatch(name)
    if not m or m.group(2) not in ("attn_q", "attn_k"):
        return None
    heads = config.get("num_attention_heads")
    kv = config.get("num_key_value_heads") or heads
    return heads if m.group(2) == "attn_q" else kv


def permute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's ``LlamaModel.permute`` (HF rotate-half rows -> interleaved pairs), for tests and writers."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """The inverse of :func:`permute_rows`: GGUF Q/K rows back to the HF order."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _scalar(fields: dict[str, Any], key: str) -> int | None:
    v = fields.get(key)
    return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None


def gguf_config(arch: str | None, fields: dict[str, Any], tensor_names: set[str]) -> dict[str, Any]:
    """A HF-style config (model_type, layer/head counts, sizes) from the GGUF metadata, for head layouts,
    roles and tied embeddings. Keys the file does not state are left out."""
    cfg: dict[str, Any] = {"model_type": arch or "unknown", "source_format": "gguf"}
    keys = {
        "num_hidden_layers": "block_count", "hidden_size": "embedding_length", "intermediate_size": "feed_forward_length",
        "num_attention_heads": "attention.head_count", "num_key_value_heads": "attention.head_count_kv",
        "head_dim": "attention.key_length", "max_position_embeddings": "context_length", "vocab_size": "vocab_size",
    }  # fmt: skip
    for hf_key, suffix in keys.items():
        v = _scalar(fields, f"{arch}.{suffix}")
        if v is not None:
            cfg[hf_key] = v
    if "output.weight" not in tensor_names and "token_embd.weight" in tensor_names:
        cfg["tie_word_embeddings"] = True
    return cfg
