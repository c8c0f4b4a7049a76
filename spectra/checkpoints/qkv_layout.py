"""Head layouts from HF-style configs, and how a fused QKV matrix splits into Q, K and V.

Used by :mod:`hessian_spectra.checkpoints.matrices` (rule 5 of its docstring): contiguous [Q; K; V] row
blocks sized from the config (GQA aware) or equal thirds; per-head interleaved rows for ``gpt_neox``/``bloom``
``query_key_value``; other ``query_key_value`` layouts are not guessed.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "INTERLEAVED_QKV_MODEL_TYPES",
    "attention_layout",
    "qkv_split",
    "config_value",
    "model_type",
    "leaf",
]

INTERLEAVED_QKV_MODEL_TYPES = frozenset({"gpt_neox", "bloom"})


def config_value(config: dict | None, *keys: str) -> Any:
    """First present key, looked up in the config then in a nested ``text_config``."""
    for c in (config or {}, (config or {}).get("text_config") or {}):
        if not isinstance(c, dict):
            continue
        for k in keys:
            if c.get(k) is not None:
                return c[k]
    return None


def attention_layout(config: dict | None) -> tuple[int, int, int] | None:
    """(num_heads, num_kv_heads, head_dim) from a HF-style config, or None when it does not say."""
    heads = config_value(config, "num_attention_heads", "n_head", "num_heads", "n_heads")
    if not isinstance(heads, int) or heads <= 0:
        return None
    kv = config_value(config, "num_key_value_heads", "n_kv_heads", "num_kv_heads")
    if not isinstance(kv, int) or kv <= 0:
        kv = 1 if config_value(config, "multi_query") is True else heads
    head_dim = config_value(config, "head_dim")
    if not isinstance(head_dim, int) or head_dim <= 0:
        hidden = config_value(config, "hidden_size", "n_embd", "d_model", "dim", "embed_dim")
        if not isinstance(hidden, int) or hidden % heads:
            return None
        head_dim = hidden // heads
    return heads, kv, head_dim


def leaf(name: str) -> str:
    """The module name of a parameter: ``encoder.layer.0.attention.self.query.weight`` -> ``query``."""
    parts = [p for p in name.split(".") if not p.isdigit()]
    if len(parts) >= 2 and parts[-1] in ("weight", "bias"):
        return parts[-2]
    return parts[-1]


def model_type(config: dict | None) -> str | None:
    """``config["model_type"]`` when it is a string."""
    mt = (config or {}).get("model_type")
    return mt if isinstance(mt, str) else None


def qkv_split(name: str, rows: int, cols: int, config: dict | None) -> tuple[tuple, str]:
    """Split recipe for a fused QKV matrix (rows, cols), or () with the reason."""
    name_leaf = leaf(name)
    layout = attention_layout(config)
    if name_leaf.lower() == "query_key_value":
        mt = model_type(config)
        if mt not in INTERLEAVED_QKV_MODEL_TYPES:
            return (), (
                f"query_key_value layout depends on the architecture (model_type={mt!r}, known: "
                f"{', '.join(sorted(INTERLEAVED_QKV_MODEL_TYPES))}); analysed whole only"
            )
        if layout and layout[0] == layout[1] and rows == 3 * layout[0] * layout[2]:
            return ("interleaved", layout[0], layout[2]), (
                f"{mt} per-head interleaved (heads={layout[0]}, 3, head_dim={layout[2]}) rows"
            )
        return (), f"config heads do not match {rows} fused rows; analysed whole only"
    if layout:
        h, kv, d = layout
        if h * d + 2 * kv * d == rows:
            return (
                "contiguous",
                h * d,
                kv * d,
            ), f"contiguous [Q;K;V] rows from config (heads={h}, kv_heads={kv}, head_dim={d})"
    if rows == 3 * cols:
        return ("contiguous", cols, cols), "contiguous [Q;K;V] rows, equal thirds"
    return (), f"head layout unknown ({rows} rows, {cols} cols, no matching config); analysed whole only"
