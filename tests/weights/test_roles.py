"""Tensor roles for the naming schemes of the common architectures."""

from __future__ import annotations

import pytest
import torch
from hessian_spectra.weights.roles import ROLES, tensor_role
from support.hf import tiny_architectures

CASES = {
    "llama": [
        ("model.embed_tokens.weight", "embedding"),
        ("model.layers.0.self_attn.q_proj.weight", "q"),
        ("model.layers.0.self_attn.k_proj.weight", "k"),
        ("model.layers.0.self_attn.v_proj.weight", "v"),
        ("model.layers.0.self_attn.o_proj.weight", "attn_out"),
        ("model.layers.0.self_attn.q_norm.weight", "norm"),  # Qwen3
        ("model.layers.0.mlp.gate_proj.weight", "mlp_gate"),
        ("model.layers.0.mlp.up_proj.weight", "mlp_up"),
        ("model.layers.0.mlp.down_proj.weight", "mlp_down"),
        ("model.layers.0.input_layernorm.weight", "norm"),
        ("model.layers.0.post_attention_layernorm.weight", "norm"),
        ("model.norm.weight", "norm"),
        ("lm_head.weight", "lm_head"),
        ("score.weight", "classifier"),
        ("model.layers.0.self_attn.q_proj.bias", "bias"),
    ],
    "meta_llama_mixtral": [
        ("tok_embeddings.weight", "embedding"),
        ("layers.0.attention.wq.weight", "q"),
        ("layers.0.attention.wk.weight", "k"),
        ("layers.0.attention.wv.weight", "v"),
        ("layers.0.attention.wo.weight", "attn_out"),
        ("layers.0.feed_forward.w1.weight", "mlp_gate"),
        ("layers.0.feed_forward.w3.weight", "mlp_up"),
        ("layers.0.feed_forward.w2.weight", "mlp_down"),
        ("output.weight", "lm_head"),
        ("model.layers.0.block_sparse_moe.experts.3.w1.weight", "mlp_gate"),
        ("model.layers.0.block_sparse_moe.experts.3.w2.weight", "mlp_down"),
        ("model.layers.0.mlp.experts.gate_up_proj", "mlp_in"),
        ("model.layers.0.mlp.experts.down_proj", "mlp_down"),
        ("model.layers.0.qkv_proj.weight", "qkv"),  # Phi-3
        ("model.layers.0.self_attn.W_pack.weight", "qkv"),  # Baichuan
    ],
    "gpt2": [
        ("transformer.wte.weight", "embedding"),
        ("transformer.wpe.weight", "position_embedding"),
        ("transformer.h.0.ln_1.weight", "norm"),
        ("transformer.h.0.attn.c_attn.weight", "qkv"),
        ("transformer.h.0.attn.c_attn.bias", "bias"),
        ("transformer.h.0.attn.c_proj.weight", "attn_out"),
        ("transformer.h.0.crossattention.q_attn.weight", "q"),
        ("transformer.h.0.mlp.c_fc.weight", "mlp_in"),
        ("transformer.h.0.mlp.c_proj.weight", "mlp_out"),
        ("transformer.ln_f.weight", "norm"),
        ("lm_head.weight", "lm_head"),
    ],
    "bert": [
        ("bert.embeddings.word_embeddings.weight", "embedding"),
        ("bert.embeddings.position_embeddings.weight", "position_embedding"),
        ("bert.embeddings.token_type_embeddings.weight", "embedding"),
        ("bert.embeddings.LayerNorm.weight", "norm"),
        ("bert.encoder.layer.0.attention.self.query.weight", "q"),
        ("bert.encoder.layer.0.attention.self.key.weight", "k"),
        ("bert.encoder.layer.0.attention.self.value.weight", "v"),
        ("bert.encoder.layer.0.attention.output.dense.weight", "attn_out"),
        ("bert.encoder.layer.0.attention.output.LayerNorm.weight", "norm"),
        ("bert.encoder.layer.0.intermediate.dense.weight", "mlp_in"),
        ("bert.encoder.layer.0.output.dense.weight", "mlp_out"),
        ("bert.encoder.layer.0.output.LayerNorm.bias", "bias"),
        ("bert.pooler.dense.weight", "other"),
        ("cls.predictions.decoder.weight", "lm_head"),
        ("classifier.weight", "classifier"),
        ("distilbert.transformer.layer.0.attention.q_lin.weight", "q"),
        ("distilbert.transformer.layer.0.attention.out_lin.weight", "attn_out"),
        ("distilbert.transformer.layer.0.ffn.lin1.weight", "mlp_in"),
        ("distilbert.transformer.layer.0.sa_layer_norm.weight", "norm"),
    ],
    "vit_hf": [
        ("vit.embeddings.cls_token", "embedding"),
        ("vit.embeddings.position_embeddings", "position_embedding"),
        ("vit.embeddings.patch_embeddings.projection.weight", "embedding"),
        ("vit.encoder.layer.0.attention.attention.query.weight", "q"),
        ("vit.encoder.layer.0.attention.output.dense.weight", "attn_out"),
        ("vit.encoder.layer.0.intermediate.dense.weight", "mlp_in"),
        ("vit.encoder.layer.0.output.dense.weight", "mlp_out"),
        ("vit.encoder.layer.0.layernorm_before.weight", "norm"),
        ("vit.layers.0.attention.q_proj.weight", "q"),
        ("vit.layers.0.mlp.fc1.weight", "mlp_in"),
        ("classifier.weight", "classifier"),
    ],
    "timm": [
        ("cls_token", "embedding"),
        ("pos_embed", "position_embedding"),
        ("patch_embed.proj.weight", "embedding"),
        ("blocks.0.norm1.weight", "norm"),
        ("blocks.0.attn.qkv.weight", "qkv"),
        ("blocks.0.attn.proj.weight", "attn_out"),
        ("blocks.0.mlp.fc1.weight", "mlp_in"),
        ("blocks.0.mlp.fc2.weight", "mlp_out"),
        ("norm.weight", "norm"),
        ("head.weight", "classifier"),
    ],
    "gpt_neox_bloom": [
        ("gpt_neox.embed_in.weight", "embedding"),
        ("gpt_neox.layers.0.attention.query_key_value.weight", "qkv"),
        ("gpt_neox.layers.0.attention.dense.weight", "attn_out"),
        ("gpt_neox.layers.0.mlp.dense_h_to_4h.weight", "mlp_in"),
        ("gpt_neox.layers.0.mlp.dense_4h_to_h.weight", "mlp_out"),
        ("gpt_neox.final_layer_norm.weight", "norm"),
        ("embed_out.weight", "lm_head"),
        ("transformer.word_embeddings_layernorm.weight", "norm"),
        ("transformer.h.0.self_attention.query_key_value.weight", "qkv"),
        ("transformer.h.0.self_attention.dense.weight", "attn_out"),
    ],
    "torch_nn": [
        ("layers.0.self_attn.in_proj_weight", "qkv"),
        ("layers.0.self_attn.in_proj_bias", "bias"),
        ("layers.0.self_attn.out_proj.weight", "attn_out"),
        ("layers.0.linear1.weight", "mlp_in"),
        ("layers.0.linear2.weight", "mlp_out"),
        ("layers.0.norm1.weight", "norm"),
        ("encoder.layers.1.norm2.bias", "bias"),
    ],
    "t5": [
        ("shared.weight", "embedding"),
        ("encoder.block.0.layer.0.SelfAttention.q.weight", "q"),
        ("encoder.block.0.layer.0.SelfAttention.o.weight", "attn_out"),
        ("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", "position_embedding"),
        ("encoder.block.0.layer.1.DenseReluDense.wi.weight", "mlp_in"),
        ("encoder.block.0.layer.1.DenseReluDense.wo.weight", "mlp_out"),
        ("decoder.block.0.layer.1.EncDecAttention.k.weight", "k"),
        ("encoder.final_layer_norm.weight", "norm"),
    ],
    "cnn": [
        ("conv1.weight", "conv"),
        ("bn1.weight", "norm"),
        ("bn1.running_mean", "norm"),
        ("bn1.num_batches_tracked", "norm"),
        ("layer1.0.conv2.weight", "conv"),
        ("layer1.0.downsample.0.weight", "conv"),
        ("layer1.0.downsample.1.weight", "norm"),
        ("fc.weight", "classifier"),
        ("features.0.weight", "other"),
    ],
}


@pytest.mark.parametrize(
    ("name", "role"), [pytest.param(n, r, id=f"{arch}:{n}") for arch, rows in CASES.items() for n, r in rows]
)
def test_role_table(name, role):
    assert role in ROLES
    assert tensor_role(name) == role


def test_config_and_module_type_refine():
    gated = {"feed_forward_proj": "gated-gelu"}
    assert tensor_role("encoder.block.0.layer.1.DenseReluDense.wo.weight", gated) == "mlp_down"
    assert tensor_role("encoder.block.0.layer.1.DenseReluDense.wi_0.weight", gated) == "mlp_gate"
    assert tensor_role("encoder.block.0.layer.1.DenseReluDense.wi_1.weight", gated) == "mlp_up"
    assert tensor_role("features.0.weight", module_type="Conv2d") == "conv"
    assert tensor_role("features.1.weight", module_type="BatchNorm2d") == "norm"
    assert tensor_role("tokens.weight", module_type="Embedding") == "embedding"
    assert tensor_role("stem.weight", module_type="Conv1d") == "conv"
    assert tensor_role("h.0.mlp.c_fc.weight", module_type="Conv1D") == "mlp_in"  # HF Conv1D is a linear
    assert tensor_role("layer1.0.downsample.1.weight", module_type="BatchNorm2d") == "norm"


def test_live_modules_have_no_unexplained_other():
    """Every weight of real (tiny) models gets a specific role; biases and norms are never 'other'."""
    pytest.importorskip("transformers")
    arch = tiny_architectures()
    models = [
        arch["llama"],
        arch["bert"],
        torch.nn.TransformerEncoder(
            torch.nn.TransformerEncoderLayer(16, 2, 32), num_layers=1, enable_nested_tensor=False
        ),
    ]
    allowed_other = {"cls.predictions.transform.dense.weight"}
    for m in models:
        cfg = m.config.to_dict() if hasattr(m, "config") else None
        types = {
            f"{mn}.{pn}" if mn else pn: type(mod).__name__
            for mn, mod in m.named_modules()
            for pn, _ in mod.named_parameters(recurse=False)
        }
        for name in m.state_dict():
            role = tensor_role(name, cfg, types.get(name))
            assert role in ROLES
            if name not in allowed_other:
                assert role != "other", name
            if name.endswith("bias"):
                assert role == "bias", name
