"""Which rule a parameter gets: its name, shape and owning module's class are matched against the
naming schemes of the common architectures (the rules themselves live in :mod:`.rules`)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from hessian_spectra.analyses.partitions.rules import ArchInfo, BlockRule, make_rule

_ATTN_PARENTS = frozenset({"attn", "self_attn", "attention", "self", "selfattention", "mixer", "cross_attn"})
_EMBED = frozenset(
    {
        "wte",
        "embed_tokens",
        "word_embeddings",
        "tok_embeddings",
        "embed_in",
        "shared",
        "tok_embed",
        "token_embedding",
    }
)
_TOKEN_TYPE = frozenset({"token_type_embeddings"})
_POS_EMBED = frozenset(
    {"wpe", "position_embeddings", "embed_positions", "pos_embed", "position_embedding", "pos_embedding"}
)
_LEARNED_TOKENS = frozenset(
    {"cls_token", "mask_token", "dist_token", "distillation_token", "register_tokens"}
)
_LM_HEAD = frozenset({"lm_head", "embed_out"})
_CLASSIFIER = frozenset({"classifier", "score", "qa_outputs"})
_Q = frozenset({"q_proj", "query", "wq", "to_q", "q_lin", "q"})
_K = frozenset({"k_proj", "key", "wk", "to_k", "k_lin", "k"})
_V = frozenset({"v_proj", "value", "wv", "to_v", "v_lin", "v"})
_QKV = frozenset({"c_attn", "qkv_proj", "qkv", "wqkv", "in_proj", "w_pack"})
#: Fused QKV whose row layout depends on the architecture (per-head interleaved in GPT-NeoX / BLOOM).
_QKV_BY_ARCH = frozenset({"query_key_value"})
_ATTN_OUT = frozenset({"o_proj", "out_proj", "wo", "to_out", "out_lin", "o"})
_MLP_GATE = frozenset({"gate_proj", "w1"})
_MLP_UP = frozenset({"up_proj", "w3", "gate_up_proj"})
_MLP_DOWN = frozenset({"down_proj", "w2"})
_MLP_IN = frozenset({"c_fc", "fc1", "fc_in", "dense_h_to_4h", "wi", "lin1"})
_MLP_OUT = frozenset({"fc2", "fc_out", "dense_4h_to_h", "lin2", "wo_mlp"})
_MOE_PARENTS = frozenset({"mlp", "block_sparse_moe", "moe", "feed_forward"})


@dataclass(frozen=True)
class ParamInfo:
    """What the rules may look at: the name, the shape, the owning module's class name, tying."""

    name: str
    shape: tuple[int, ...]
    module_type: str | None = None
    tied_to: list[str] = field(default_factory=list)


def _split_name(name: str) -> tuple[str, str, str, str]:
    """(ident, parent, grandparent, leaf): ident is the module name, or the leaf for bare params."""
    parts = name.lower().split(".")
    leaf = parts[-1]
    mod = parts[:-1] if leaf in ("weight", "bias") or leaf.endswith(("_weight", "_bias")) else parts
    mod = [p for p in mod if not p.isdigit()] or [leaf]
    ident = mod[-1]
    parent = mod[-2] if len(mod) > 1 else ""
    grand = mod[-3] if len(mod) > 2 else ""
    return ident, parent, grand, leaf


def _is_norm(ident: str, module_type: str | None) -> bool:
    if module_type and "norm" in module_type.lower():
        return True
    return "norm" in ident or re.fullmatch(r"ln(_\w+|\d+)?", ident) is not None


def classify(info: ParamInfo, arch: ArchInfo) -> tuple[str, BlockRule | None, str]:
    """Return (role, rule or None when unresolved, reason)."""
    shape = info.shape
    ndim = len(shape)
    ident, parent, grand, leaf = _split_name(info.name)
    mtype = info.module_type or ""
    conv1d_module = mtype == "Conv1D" or (not mtype and arch.conv1d and ndim == 2 and leaf == "weight")
    is_bias = leaf == "bias" or leaf.endswith("_bias")
    lname = info.name.lower()

    def rows_rule(role: str, rule: str, reason: str, layout: str | None = None) -> tuple[str, BlockRule, str]:
        lay = layout or ("cols" if conv1d_module else "rows")
        return role, make_rule(rule, role, shape, lay, reason), reason

    if is_bias or ndim == 0:
        role = "bias" if is_bias else "other"
        reason = "bias / scalar: one value per coordinate (plain Adam), as adam-mini does for biases"
        return role, make_rule("per_coordinate", role, shape, "flat", reason), reason
    if _is_norm(ident, mtype) and ndim == 1:
        reason = "norm scale: one value per tensor (adam-mini's default for norms)"
        return "norm", make_rule("whole", "norm", shape, "flat", reason), reason
    if ident in _LEARNED_TOKENS:
        reason = "learned token(s): one value per token"
        return rows_rule("embedding", "per_token", reason, layout="last")
    if ident in _POS_EMBED:
        reason = "position embedding: each row is read only at its own position, so one value per position"
        return rows_rule("position_embedding", "per_token", reason, layout="last" if ndim > 2 else "rows")
    if ident in _EMBED or ident in _TOKEN_TYPE or mtype == "Embedding":
        reason = "embedding: a token's row gets gradient only when that token occurs, so one value per token"
        return rows_rule("embedding", "per_token", reason, layout="rows")
    if (
        ident in _LM_HEAD
        or (ident == "output" and parent == "")
        or (ident == "decoder" and parent == "predictions")
    ):
        reason = "output head: the Hessian is near block-diagonal by class (token), so one value per token"
        return rows_rule("lm_head", "per_token", reason)
    if ident in _CLASSIFIER:
        reason = "classifier head: near block-diagonal by class, so one value per class (row)"
        return rows_rule("classifier", "per_row", reason)
    if ndim == 3 and ("expert" in lname) and mtype not in ("Conv1d",):
        reason = (
            "3-D expert weight (experts, out, in): experts are separate blocks, then one value per output row"
        )
        return "expert", make_rule("per_expert_row", "expert", shape, "last", reason), reason
    if (
        ndim >= 3
        and mtype.startswith(("Conv", "LazyConv"))
        or (ndim >= 3 and not mtype and ("conv" in lname or "patch" in lname))
    ):
        transposed = "Transpose" in mtype
        reason = "convolution kernel: one value per output channel"
        return rows_rule("conv", "per_channel", reason, layout="cols" if transposed else "rows")
    if ndim == 1:
        reason = "1-D vector of unknown role: one value per coordinate (plain Adam), never lumped"
        return "other", make_rule("per_coordinate", "other", shape, "flat", reason), reason
    if ndim != 2:
        return "other", None, f"{ndim}-D tensor of unknown role: no architecture rule applies"

    attn_ctx = parent in _ATTN_PARENTS or grand in _ATTN_PARENTS
    n_rows = shape[1] if conv1d_module else shape[0]
    lay = "cols" if conv1d_module else "rows"
    hd = arch.head_dim

    if ident in _QKV or leaf == "in_proj_weight":  # nn.MultiheadAttention's raw in_proj_weight: [Q | K | V]
        return _fused_qkv(info, arch, n_rows, lay)
    if ident in _QKV_BY_ARCH:
        reason = (
            f"fused QKV whose row layout depends on the architecture (model_type={arch.model_type!r}: per-head "
            "interleaved in GPT-NeoX/BLOOM, grouped in Falcon): one value per output neuron, finer than per head"
        )
        return rows_rule("qkv", "per_row", reason)
    role = None
    if ident in _Q and (attn_ctx or ident != "q"):
        role = "q"
    elif ident in _K and (attn_ctx or ident != "k"):
        role = "k"
    if role is not None:
        if not hd:
            return role, None, f"{role} projection but the config gives no head_dim / num_attention_heads"
        heads = n_rows // hd
        if n_rows % hd:
            return role, None, f"{role} projection has {n_rows} output rows, not a multiple of head_dim={hd}"
        expected = arch.num_heads if role == "q" else arch.num_kv_heads
        note = "" if expected in (None, heads) else f" (config says {expected}; rows/head_dim says {heads})"
        reason = (
            f"{role.upper()} projection: the Hessian is block-diagonal by head, so one value per head "
            f"({heads} heads of head_dim={hd}){note}"
        )
        return role, make_rule("per_head", role, shape, lay, reason, rows_per_block=hd), reason
    if ident in _V and (attn_ctx or ident != "v"):
        reason = "V projection: not head-diagonal; one value per output neuron"
        return "v", make_rule("per_row", "v", shape, lay, reason), reason
    if (
        ident in _ATTN_OUT
        and (attn_ctx or ident not in ("o", "wo"))
        or (ident in ("c_proj", "proj", "dense") and parent in _ATTN_PARENTS)
        or (ident == "dense" and parent == "output" and grand in _ATTN_PARENTS)
    ):
        reason = "attention output projection: one value per output neuron"
        return "attn_out", make_rule("per_row", "attn_out", shape, lay, reason), reason
    if (ident in ("gate", "router") and parent in _MOE_PARENTS) or ident == "router":
        reason = "MoE router: one value per expert (row)"
        return "router", make_rule("per_row", "router", shape, lay, reason), reason
    mlp_role = None
    if ident in _MLP_GATE:
        mlp_role = "mlp_gate"
    elif ident in _MLP_UP:
        mlp_role = "mlp_up"
    elif ident in _MLP_DOWN:
        mlp_role = "mlp_down"
    elif ident in _MLP_IN or (ident == "dense" and parent == "intermediate"):
        mlp_role = "mlp_in"
    elif (
        ident in _MLP_OUT
        or (ident == "c_proj" and parent == "mlp")
        or (ident == "dense" and parent == "output")
    ):
        mlp_role = "mlp_out"
    if mlp_role is not None:
        reason = "MLP weight: one value per output neuron"
        return mlp_role, make_rule("per_row", mlp_role, shape, lay, reason), reason
    if mtype in ("Linear", "Conv1D", "NonDynamicallyQuantizableLinear") or mtype.endswith("Linear"):
        reason = f"generic linear layer ({mtype}): one value per output neuron"
        return "other", make_rule("per_row", "other", shape, lay, reason), reason
    return (
        "other",
        None,
        "2-D tensor of unknown role and no linear module: measure (--verify) before choosing",
    )


def _fused_qkv(info: ParamInfo, arch: ArchInfo, n_rows: int, lay: str) -> tuple[str, BlockRule | None, str]:
    """Sequential [Q | K | V] (or [K | V] for cross-attention ``c_attn``) fused projections."""
    hd, h, kv = arch.head_dim, arch.num_heads, arch.num_kv_heads
    if not (hd and h and kv):
        return "qkv", None, "fused QKV but the config gives no heads / head_dim"
    if n_rows == (h + 2 * kv) * hd:
        parts = [("q", "per_head", h * hd, hd), ("k", "per_head", kv * hd, hd), ("v", "per_row", kv * hd, 1)]
    elif n_rows == 2 * kv * hd:
        parts = [("k", "per_head", kv * hd, hd), ("v", "per_row", kv * hd, 1)]
    else:
        return (
            "qkv",
            None,
            f"fused QKV with {n_rows} output rows does not match heads={h}, kv={kv}, head_dim={hd}",
        )
    names = "+".join(p[0].upper() for p in parts)
    reason = (
        f"fused {names} projection split into its parts (sequential layout"
        f"{', Conv1D (in, out)' if lay == 'cols' else ''}): Q/K one value per head, V one per output neuron"
    )
    return "qkv", make_rule("fused_qkv", "qkv", info.shape, lay, reason, parts=parts), reason
