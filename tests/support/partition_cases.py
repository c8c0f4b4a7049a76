"""Tiny HF models (random weights) and the partition each should get, as hand-written tables."""

from __future__ import annotations

import torch
import transformers

V, H, FF = 64, 32, 48  # vocab, hidden, intermediate of the tiny models


def _llama_like(cls_cfg, cls_model, **kw):
    torch.manual_seed(0)
    cfg = cls_cfg(
        vocab_size=V, hidden_size=H, intermediate_size=FF, num_hidden_layers=1, num_attention_heads=4, **kw
    )
    return cls_model(cfg)


def _decoder_table(kv: int, hd: int, heads: int = 4, qkv_bias: bool = False, qk_norm: bool = False):
    p = "model.layers.0."
    t = {
        "model.embed_tokens.weight": ("per_token", V, (1, H)),
        p + "self_attn.q_proj.weight": ("per_head", heads, (hd, H)),
        p + "self_attn.k_proj.weight": ("per_head", kv, (hd, H)),
        p + "self_attn.v_proj.weight": ("per_row", kv * hd, (1, H)),
        p + "self_attn.o_proj.weight": ("per_row", H, (1, heads * hd)),
        p + "mlp.gate_proj.weight": ("per_row", FF, (1, H)),
        p + "mlp.up_proj.weight": ("per_row", FF, (1, H)),
        p + "mlp.down_proj.weight": ("per_row", H, (1, FF)),
        p + "input_layernorm.weight": ("whole", 1, (H,)),
        p + "post_attention_layernorm.weight": ("whole", 1, (H,)),
        "model.norm.weight": ("whole", 1, (H,)),
        "lm_head.weight": ("per_token", V, (1, H)),
    }
    if qkv_bias:
        t[p + "self_attn.q_proj.bias"] = ("per_coordinate", heads * hd, (1,))
        t[p + "self_attn.k_proj.bias"] = ("per_coordinate", kv * hd, (1,))
        t[p + "self_attn.v_proj.bias"] = ("per_coordinate", kv * hd, (1,))
    if qk_norm:
        t[p + "self_attn.q_norm.weight"] = ("whole", 1, (hd,))
        t[p + "self_attn.k_norm.weight"] = ("whole", 1, (hd,))
    return t


def tiny_llama():
    return _llama_like(transformers.LlamaConfig, transformers.LlamaForCausalLM, num_key_value_heads=2)


def tiny_mistral():
    return _llama_like(transformers.MistralConfig, transformers.MistralForCausalLM, num_key_value_heads=1)


def tiny_qwen2():
    return _llama_like(transformers.Qwen2Config, transformers.Qwen2ForCausalLM, num_key_value_heads=2)


def tiny_qwen3():
    return _llama_like(
        transformers.Qwen3Config, transformers.Qwen3ForCausalLM, num_key_value_heads=2, head_dim=16
    )


def tiny_gpt2():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        vocab_size=V, n_embd=H, n_layer=1, n_head=4, n_positions=16, bos_token_id=0, eos_token_id=0
    )
    return transformers.GPT2LMHeadModel(cfg)


def tiny_bert():
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=V, hidden_size=H, num_hidden_layers=1, num_attention_heads=4, intermediate_size=FF,
        max_position_embeddings=16, num_labels=3,
    )  # fmt: skip
    return transformers.BertForSequenceClassification(cfg)


def tiny_vit():
    torch.manual_seed(0)
    cfg = transformers.ViTConfig(
        image_size=8, patch_size=4, num_channels=3, hidden_size=H, num_hidden_layers=1, num_attention_heads=4,
        intermediate_size=FF, num_labels=3,
    )  # fmt: skip
    return transformers.ViTForImageClassification(cfg)


def tiny_mixtral():
    torch.manual_seed(0)
    cfg = transformers.MixtralConfig(
        vocab_size=V, hidden_size=H, intermediate_size=24, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, num_local_experts=3, num_experts_per_tok=2,
    )  # fmt: skip
    return transformers.MixtralForCausalLM(cfg)


def gpt2_table():
    p = "transformer.h.0."
    return {
        "transformer.wte.weight": ("per_token", V, (1, H)),
        "transformer.wpe.weight": ("per_token", 16, (1, H)),
        p + "ln_1.weight": ("whole", 1, (H,)),
        p + "ln_1.bias": ("per_coordinate", H, (1,)),
        # Conv1D (in, out) = (32, 96): Q 4 heads of 8 columns, K 4 heads, V 32 single columns
        p + "attn.c_attn.weight": ("fused_qkv", 4 + 4 + 32, [(8, H), (8, H), (1, H)]),
        p + "attn.c_attn.bias": ("per_coordinate", 3 * H, (1,)),
        p + "attn.c_proj.weight": ("per_row", H, (1, H)),
        p + "attn.c_proj.bias": ("per_coordinate", H, (1,)),
        p + "ln_2.weight": ("whole", 1, (H,)),
        p + "ln_2.bias": ("per_coordinate", H, (1,)),
        p + "mlp.c_fc.weight": ("per_row", 4 * H, (1, H)),  # (32, 128): 128 output columns
        p + "mlp.c_fc.bias": ("per_coordinate", 4 * H, (1,)),
        p + "mlp.c_proj.weight": ("per_row", H, (1, 4 * H)),  # (128, 32): 32 output columns of 128
        p + "mlp.c_proj.bias": ("per_coordinate", H, (1,)),
        "transformer.ln_f.weight": ("whole", 1, (H,)),
        "transformer.ln_f.bias": ("per_coordinate", H, (1,)),
    }


def bert_table():
    e, p = "bert.embeddings.", "bert.encoder.layer.0."
    return {
        e + "word_embeddings.weight": ("per_token", V, (1, H)),
        e + "position_embeddings.weight": ("per_token", 16, (1, H)),
        e + "token_type_embeddings.weight": ("per_token", 2, (1, H)),
        e + "LayerNorm.weight": ("whole", 1, (H,)),
        e + "LayerNorm.bias": ("per_coordinate", H, (1,)),
        p + "attention.self.query.weight": ("per_head", 4, (8, H)),
        p + "attention.self.query.bias": ("per_coordinate", H, (1,)),
        p + "attention.self.key.weight": ("per_head", 4, (8, H)),
        p + "attention.self.key.bias": ("per_coordinate", H, (1,)),
        p + "attention.self.value.weight": ("per_row", H, (1, H)),
        p + "attention.self.value.bias": ("per_coordinate", H, (1,)),
        p + "attention.output.dense.weight": ("per_row", H, (1, H)),
        p + "attention.output.dense.bias": ("per_coordinate", H, (1,)),
        p + "attention.output.LayerNorm.weight": ("whole", 1, (H,)),
        p + "attention.output.LayerNorm.bias": ("per_coordinate", H, (1,)),
        p + "intermediate.dense.weight": ("per_row", FF, (1, H)),
        p + "intermediate.dense.bias": ("per_coordinate", FF, (1,)),
        p + "output.dense.weight": ("per_row", H, (1, FF)),
        p + "output.dense.bias": ("per_coordinate", H, (1,)),
        p + "output.LayerNorm.weight": ("whole", 1, (H,)),
        p + "output.LayerNorm.bias": ("per_coordinate", H, (1,)),
        "bert.pooler.dense.weight": ("per_row", H, (1, H)),
        "bert.pooler.dense.bias": ("per_coordinate", H, (1,)),
        "classifier.weight": ("per_row", 3, (1, H)),
        "classifier.bias": ("per_coordinate", 3, (1,)),
    }


def vit_table(model):
    names = [n for n, _ in model.named_parameters()]
    a = "vit.layers.0." if "vit.layers.0.attention.q_proj.weight" in names else None
    assert a is not None, names  # transformers 5 names; the older ViTSelfAttention names differ
    return {
        "vit.embeddings.cls_token": ("per_token", 1, (1, H)),
        "vit.embeddings.position_embeddings": ("per_token", 5, (1, H)),  # (1, 4 patches + cls, 32)
        "vit.embeddings.patch_embeddings.projection.weight": ("per_channel", H, (1, 3, 4, 4)),
        "vit.embeddings.patch_embeddings.projection.bias": ("per_coordinate", H, (1,)),
        a + "attention.q_proj.weight": ("per_head", 4, (8, H)),
        a + "attention.q_proj.bias": ("per_coordinate", H, (1,)),
        a + "attention.k_proj.weight": ("per_head", 4, (8, H)),
        a + "attention.k_proj.bias": ("per_coordinate", H, (1,)),
        a + "attention.v_proj.weight": ("per_row", H, (1, H)),
        a + "attention.v_proj.bias": ("per_coordinate", H, (1,)),
        a + "attention.o_proj.weight": ("per_row", H, (1, H)),
        a + "attention.o_proj.bias": ("per_coordinate", H, (1,)),
        a + "layernorm_before.weight": ("whole", 1, (H,)),
        a + "layernorm_before.bias": ("per_coordinate", H, (1,)),
        a + "layernorm_after.weight": ("whole", 1, (H,)),
        a + "layernorm_after.bias": ("per_coordinate", H, (1,)),
        a + "mlp.fc1.weight": ("per_row", FF, (1, H)),
        a + "mlp.fc1.bias": ("per_coordinate", FF, (1,)),
        a + "mlp.fc2.weight": ("per_row", H, (1, FF)),
        a + "mlp.fc2.bias": ("per_coordinate", H, (1,)),
        "vit.layernorm.weight": ("whole", 1, (H,)),
        "vit.layernorm.bias": ("per_coordinate", H, (1,)),
        "classifier.weight": ("per_row", 3, (1, H)),
        "classifier.bias": ("per_coordinate", 3, (1,)),
    }


def mixtral_table():
    t = _decoder_table(kv=2, hd=8)
    p = "model.layers.0.mlp."
    for k in ("gate_proj", "up_proj", "down_proj"):
        del t[p + k + ".weight"]
    t[p + "gate.weight"] = ("per_row", 3, (1, H))  # router: one per expert
    t[p + "experts.gate_up_proj"] = ("per_expert_row", 3 * 48, (1, H))  # (3 experts, 2*24, 32)
    t[p + "experts.down_proj"] = ("per_expert_row", 3 * H, (1, 24))  # (3, 32, 24)
    return t


CASES = {
    "llama_gqa": (tiny_llama, lambda m: _decoder_table(kv=2, hd=8)),
    "mistral": (tiny_mistral, lambda m: _decoder_table(kv=1, hd=8)),
    "qwen2": (tiny_qwen2, lambda m: _decoder_table(kv=2, hd=8, qkv_bias=True)),
    "qwen3": (tiny_qwen3, lambda m: _decoder_table(kv=2, hd=16, qk_norm=True)),
    "gpt2": (tiny_gpt2, lambda m: gpt2_table()),
    "bert": (tiny_bert, lambda m: bert_table()),
    "vit": (tiny_vit, vit_table),
    "mixtral": (tiny_mixtral, lambda m: mixtral_table()),
}
