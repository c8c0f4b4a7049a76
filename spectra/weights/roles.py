"""What job a parameter does in the network, from its name (plus module type / config when known).

``tensor_role(name)`` returns one of :data:`ROLES`. The decision is table-driven and ordered (first
match wins); each rule looks at the *leaf* (the module name owning the parameter, e.g. ``q_proj`` in
``model.layers.0.self_attn.q_proj.weight``) and, for ambiguous leaves, at the *context* (whether an
enclosing module name says attention or MLP):

==================  ===============================================================================
role                names recognised (lower-cased leaf unless stated)
==================  ===============================================================================
bias                parameter named ``bias`` or ``*_bias`` (``in_proj_bias``, ``c_attn.bias``)
norm                ``*norm*`` (LayerNorm, RMSNorm, q_norm, ...), ``ln``, ``ln_1``, ``ln_f``, ``bn1``;
                    BatchNorm buffers ``running_mean``/``running_var``/``num_batches_tracked``;
                    module types ending in ``Norm``/``Norm1d/2d/3d``
position_embedding  ``wpe``, ``position_embeddings``, ``pos_embed``, ``embed_positions``,
                    ``positional_embedding``, ``relative_attention_bias``, ``rel_pos*``
lm_head             ``lm_head``, ``embed_out`` (GPT-NeoX), BERT ``cls.predictions.decoder``, a top-level
                    ``output`` (Meta Llama)
embedding           ``wte``, ``word_embeddings``, ``token_type_embeddings``, ``embed_tokens``,
                    ``tok_embeddings``, ``embed_in``, ``shared``, ``cls_token``, ``mask_token``,
                    ``patch_embed*``/``patch_embeddings`` (ViT), ``*embed*``; module type ``Embedding``
classifier          ``classifier``, ``score``, ``head``, ``qa_outputs``, a top-level ``fc`` (ResNet)
qkv                 ``in_proj_weight``, ``c_attn``, ``qkv``, ``wqkv``, ``qkv_proj``, ``query_key_value``,
                    ``w_pack``
q / k / v           ``q_proj``/``query``/``q``/``wq``/``q_lin``/``to_q``/``q_attn`` (and the k, v analogues)
attn_out            ``o_proj``, ``out_proj``, ``o``, ``out_lin``, ``to_out``; ``dense``, ``c_proj``,
                    ``proj``, ``wo`` when inside an attention module (BERT ``attention.output.dense``,
                    GPT-2 ``attn.c_proj``, timm ``attn.proj``, NeoX/BLOOM ``attention.dense``)
mlp_gate            ``gate_proj``, ``w1`` (Meta Llama / Mixtral), ``wi_0`` (T5 v1.1)
mlp_up              ``up_proj``, ``w3``, ``wi_1``
mlp_down            ``down_proj``, ``w2``; T5 ``wo`` when ``config.feed_forward_proj`` is gated
mlp_in              ``c_fc``, ``fc1``, ``linear1``, ``dense_h_to_4h``, BERT ``intermediate.dense``,
                    ``wi``, ``fc_in``, ``lin1``, ``gate_up_proj`` (fused gate+up)
mlp_out             ``fc2``, ``linear2``, ``dense_4h_to_h``, ``fc_out``, ``lin2``; ``c_proj`` inside
                    an MLP (GPT-2 ``mlp.c_proj``); BERT layer ``output.dense``; T5 ``wo``
conv                ``conv*`` leaves, ``downsample.0``; module types ``Conv1d/2d/3d``/``ConvTranspose*``
other               anything else (pooler, MLM transform, ...)
==================  ===============================================================================

Blocks and groups. ``block_role(name)`` reads the names of Hessian blocks and weight matrices too: a part
of a fused QKV tensor (``c_attn.weight:q``, ``...query_key_value.weight:k[head 1]``, ``in_proj_weight[v]``)
is ``q``/``k``/``v``; the whole fused tensor (or a row/head slice that does not say which part) stays
``qkv``; ``[head h]``/``[row r]``/... suffixes keep the tensor's role. ``block_group`` maps roles to the
:data:`GROUPS` the block analyses report: named from what the tensor holds, so a fused QKV tensor is never
``qk``/``q``/``k`` and separate Q, K, V projections are ``q``, ``k``, ``v``.
"""

from __future__ import annotations

import re

__all__ = ["GROUPS", "ROLES", "ROLE_GROUPS", "block_group", "block_role", "tensor_role"]

ROLES = (
    "q",
    "k",
    "v",
    "qkv",
    "attn_out",
    "mlp_gate",
    "mlp_up",
    "mlp_down",
    "mlp_in",
    "mlp_out",
    "embedding",
    "position_embedding",
    "lm_head",
    "norm",
    "bias",
    "conv",
    "classifier",
    "other",
)

_PARAM_SUFFIXES = ("weight", "bias", "weight_orig", "weight_v", "weight_g", "scale")

_NORM_RE = re.compile(r"norm|^ln(_?[a-z0-9]*)?$|^bn\d*$")
_NORM_BUFFERS = {"running_mean", "running_var", "num_batches_tracked"}
_POS = {
    "wpe",
    "position_embeddings",
    "position_embedding",
    "pos_embed",
    "pos_embedding",
    "pos_emb",
    "embed_positions",
    "positional_embedding",
    "relative_attention_bias",
}
_LM_HEAD = {"lm_head", "embed_out"}
_EMBED = {
    "wte",
    "word_embeddings",
    "token_type_embeddings",
    "embed_tokens",
    "tok_embeddings",
    "embed_in",
    "shared",
    "cls_token",
    "mask_token",
    "reg_token",
    "register_tokens",
    "dist_token",
}
_CLASSIFIER = {"classifier", "score", "head", "qa_outputs"}
_QKV = {"in_proj_weight", "c_attn", "qkv", "wqkv", "qkv_proj", "query_key_value", "w_pack"}
_Q = {"q_proj", "query", "q", "wq", "q_lin", "to_q", "q_attn", "query_proj"}
_K = {"k_proj", "key", "k", "wk", "k_lin", "to_k", "key_proj"}
_V = {"v_proj", "value", "v", "wv", "v_lin", "to_v", "value_proj"}
_ATTN_OUT = {"o_proj", "out_proj", "o", "out_lin", "to_out"}
_ATTN_OUT_IN_ATTN = {"dense", "c_proj", "proj", "wo"}
_GATE = {"gate_proj", "w1", "wi_0"}
_UP = {"up_proj", "w3", "wi_1"}
_DOWN = {"down_proj", "w2"}
_MLP_IN = {"c_fc", "fc1", "linear1", "dense_h_to_4h", "wi", "fc_in", "lin1", "gate_up_proj", "w_in"}
_MLP_OUT = {"fc2", "linear2", "dense_4h_to_h", "fc_out", "lin2", "w_out"}
_MLP_OUT_IN_MLP = {"c_proj", "wo", "proj"}

_ATTN_CTX = re.compile(r"attn|attention")
_MLP_CTX = re.compile(r"mlp|ffn|feed_forward|feedforward|densereludense|experts?|moe|intermediate")


def tensor_role(name: str, config: dict | None = None, module_type: str | None = None) -> str:
    """Map a parameter name to one of :data:`ROLES` (see the module docstring for the table)."""
    parts = name.lower().split(".")
    mods, param = parts[:-1], parts[-1]
    named = [m for m in mods if not m.isdigit()]  # Sequential indices say nothing (to_out.0 -> to_out)
    if param in _PARAM_SUFFIXES:
        leaf, context = (named[-1] if named else param), named[:-1]
    else:  # a raw parameter on its module: pos_embed, cls_token, in_proj_weight, experts.gate_up_proj
        leaf, context = param, named
    in_attn = any(_ATTN_CTX.search(c) for c in context)
    in_mlp = any(_MLP_CTX.search(c) for c in context)
    mt = (module_type or "").lower()

    if param == "bias" or param.endswith("_bias") and param != "relative_attention_bias":
        return "bias"
    if leaf in _NORM_BUFFERS or _NORM_RE.search(leaf) or mt.endswith(("norm", "norm1d", "norm2d", "norm3d")):
        return "norm"
    if leaf in _POS or leaf.startswith("rel_pos"):
        return "position_embedding"
    if (
        leaf in _LM_HEAD
        or name.lower() in ("output.weight",)
        or ".".join(named[-3:]) == "cls.predictions.decoder"
    ):
        return "lm_head"
    if leaf in _EMBED or "embed" in leaf or any(c.startswith(("patch_embed", "embeddings")) for c in named):
        return "embedding"
    if mt == "embedding":
        return "embedding"
    if leaf in _CLASSIFIER or (leaf == "fc" and len(named) == 1):
        return "classifier"
    if leaf in _QKV:
        return "qkv"
    if leaf in _Q:
        return "q"
    if leaf in _K:
        return "k"
    if leaf in _V:
        return "v"
    if leaf in _ATTN_OUT or (leaf in _ATTN_OUT_IN_ATTN and in_attn):
        return "attn_out"
    if leaf == "dense" and context and context[-1] == "output" and not in_attn:
        return "mlp_out"  # BERT layer.N.output.dense
    if leaf == "dense" and context and context[-1] == "intermediate":
        return "mlp_in"
    if leaf in _GATE:
        return "mlp_gate"
    if leaf in _UP:
        return "mlp_up"
    if leaf in _DOWN:
        return "mlp_down"
    if leaf == "wo" and in_mlp:
        gated = "gated" in str((config or {}).get("feed_forward_proj", ""))
        return "mlp_down" if gated else "mlp_out"
    if leaf in _MLP_IN:
        return "mlp_in"
    if leaf in _MLP_OUT or (leaf in _MLP_OUT_IN_MLP and in_mlp):
        return "mlp_out"
    if len(mods) >= 2 and mods[-2] == "downsample" and mods[-1].isdigit() and not module_type:
        return "conv" if mods[-1] == "0" else "norm"  # torchvision ResNet: downsample = (conv, bn)
    if "conv" in leaf or (module_type or "").startswith("Conv") and module_type != "Conv1D":
        return "conv"  # HF's GPT-2 ``Conv1D`` is a linear layer, torch's ``Conv1d`` a convolution
    return "other"


#: Block groups (what :func:`block_group` returns), in report order.
GROUPS = ("q", "k", "v", "qkv", "attn_out", "mlp", "embedding", "norm", "bias", "conv", "output", "other")

#: Role -> group: attention projections keep their own name, MLP roles pool as ``mlp``, heads as ``output``.
ROLE_GROUPS = {
    "q": "q", "k": "k", "v": "v", "qkv": "qkv", "attn_out": "attn_out", "mlp_gate": "mlp", "mlp_up": "mlp",
    "mlp_down": "mlp", "mlp_in": "mlp", "mlp_out": "mlp", "embedding": "embedding",
    "position_embedding": "embedding", "lm_head": "output", "classifier": "output", "norm": "norm",
    "bias": "bias", "conv": "conv", "other": "other",
}  # fmt: skip

# a fused part: ``name:q`` (matrix views, Adam-mini blocks, per-head builders) or ``name[q]`` (qkv_blocks)
_PART_RE = re.compile(r"^(?P<base>[^\[:]+?)(?::(?P<colon>[qkv])\b|\[(?P<bracket>[qkv])\])", re.IGNORECASE)


def block_role(name: str, config: dict | None = None, module_type: str | None = None) -> str:
    """The role (:data:`ROLES`) of what a block or matrix named ``name`` holds: its tensor's role, or the
    part (``q``/``k``/``v``) of a fused QKV tensor it names (see the module docstring)."""
    m = _PART_RE.match(name.strip())
    if m:
        role = tensor_role(m.group("base"), config, module_type)
        if role == "qkv":
            return (m.group("colon") or m.group("bracket")).lower()
    base = name.strip().split("[")[0].split(":")[0].split("#")[0].split("@")[0].strip()
    return tensor_role(base, config, module_type)


def block_group(name: str, config: dict | None = None, module_type: str | None = None) -> str:
    """The group (:data:`GROUPS`) of a block or matrix named ``name``: :data:`ROLE_GROUPS` of :func:`block_role`."""
    return ROLE_GROUPS.get(block_role(name, config, module_type), "other")
