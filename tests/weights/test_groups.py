"""Block groups named from what a block holds (issue 18 item 4): a fused QKV tensor is ``qkv``, its parts
and separate projections ``q``, ``k``, ``v``; never ``qk``. Checked on the parameter names of real tiny
models of seven architectures and on the block names every block builder and the Adam-mini blockings
write."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from hessian_spectra.weights.roles import GROUPS, ROLE_GROUPS, ROLES, block_group, block_role
from support.hf import tiny_architectures

transformers = pytest.importorskip("transformers")

#: Expected group of the attention and MLP weights of each architecture (leaf module -> group).
EXPECTED = {
    "gpt2": {"attn.c_attn": "qkv", "attn.c_proj": "attn_out", "mlp.c_fc": "mlp", "mlp.c_proj": "mlp"},
    "bert": {
        "self.query": "q",
        "self.key": "k",
        "self.value": "v",
        "attention.output.dense": "attn_out",
        "intermediate.dense": "mlp",
    },
    "llama": {
        "q_proj": "q",
        "k_proj": "k",
        "v_proj": "v",
        "o_proj": "attn_out",
        "gate_proj": "mlp",
        "up_proj": "mlp",
        "down_proj": "mlp",
    },
    "neox": {
        "attention.query_key_value": "qkv",
        "attention.dense": "attn_out",
        "dense_h_to_4h": "mlp",
        "dense_4h_to_h": "mlp",
    },
    "falcon": {
        "self_attention.query_key_value": "qkv",
        "self_attention.dense": "attn_out",
        "dense_h_to_4h": "mlp",
        "dense_4h_to_h": "mlp",
    },
    # transformers 5 names (4.x wrote attention.attention.query / intermediate.dense: see test_block_name_groups)
    "vit": {
        "attention.q_proj": "q",
        "attention.k_proj": "k",
        "attention.v_proj": "v",
        "attention.o_proj": "attn_out",
        "mlp.fc1": "mlp",
        "mlp.fc2": "mlp",
    },
    "t5": {
        "SelfAttention.q": "q",
        "SelfAttention.k": "k",
        "SelfAttention.v": "v",
        "SelfAttention.o": "attn_out",
        "EncDecAttention.q": "q",
        "EncDecAttention.k": "k",
        "EncDecAttention.o": "attn_out",
        "DenseReluDense.wi": "mlp",
        "DenseReluDense.wo": "mlp",
    },
}


@pytest.fixture(scope="module")
def models():
    return tiny_architectures()


def test_groups_cover_every_role():
    assert set(ROLE_GROUPS) == set(ROLES) and set(ROLE_GROUPS.values()) <= set(GROUPS) and "qk" not in GROUPS


@pytest.mark.parametrize("arch", list(EXPECTED))
def test_parameter_groups_of_seven_architectures(models, arch):
    names = [n for n, _ in models[arch].named_parameters()]
    seen = set()
    for name in names:
        group = block_group(name)
        assert group in GROUPS and group != "qk", name
        if name.endswith(".weight"):
            for leaf, want in EXPECTED[arch].items():
                if name.endswith(f"{leaf}.weight"):
                    assert group == want, (name, group, want)
                    seen.add(leaf)
        if name.endswith(".bias"):
            assert group == "bias", name
    assert seen == set(EXPECTED[arch]), (
        set(EXPECTED[arch]) - seen
    )  # every expected tensor exists and was checked


def _fake_operator(model):
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return SimpleNamespace(
        param_shapes={n: tuple(p.shape) for n, p in named}, param_names=[n for n, _ in named]
    )


def test_head_blocks_of_a_fused_qkv_name_their_parts():
    """``--blocks head`` on a fused QKV (nn.MultiheadAttention's in_proj_weight: (3d, d)) cuts Q, K, V per
    head and names each block ``param:q[head h]``: groups q, k, v; the whole tensor elsewhere is qkv."""
    from hessian_spectra.curvature.probe import HessianSettings, choose_blocks

    model = torch.nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)
    blocks = choose_blocks(_fake_operator(model), HessianSettings(blocks="head", n_heads=2))
    fused = [b.name for b in blocks if b.param == "self_attn.in_proj_weight"]
    assert len(fused) == 6 and [block_group(n) for n in fused] == ["q", "q", "k", "k", "v", "v"]
    assert (
        block_group("self_attn.in_proj_weight") == "qkv" and block_role("self_attn.in_proj_weight[k]") == "k"
    )


def test_adam_mini_blocks_of_gpt2_name_their_parts(models):
    """The Adam-mini partition cuts GPT-2's Conv1D c_attn into Q/K heads and V rows: groups q, k, v."""
    from hessian_spectra.analyses.partitions.blockings import adam_mini_blocks

    am = adam_mini_blocks(models["gpt2"], config=models["gpt2"].config)
    groups = {}
    for b in am.blocks:
        if b.param.endswith("attn.c_attn.weight"):
            groups.setdefault(block_group(b.name), []).append(b.name)
    assert set(groups) == {"q", "k", "v"} and len(groups["q"]) == len(groups["k"]) == 2
    assert all(":v[row" in n for n in groups["v"]) and len(groups["v"]) == 16
    assert all(block_group(b.name) != "qk" for b in am.blocks)


def test_weight_matrix_views_of_fused_qkv_are_q_k_v():
    """The weights probe splits fused QKV into views ``name:q``/``:k``/``:v`` (NeoX: per-head interleaved);
    their groups follow the part, the whole-tensor view stays qkv."""
    from hessian_spectra.checkpoints.matrices import TensorMeta, plan_tensor

    name = "gpt_neox.layers.0.attention.query_key_value.weight"
    config = {"model_type": "gpt_neox", "num_attention_heads": 2, "hidden_size": 16}
    rec = plan_tensor(TensorMeta(name, (48, 16), "float32", None), config=config)
    assert [block_group(m) for m in rec.matrices] == ["qkv", "q", "k", "v"]


@pytest.mark.parametrize(
    ("name", "group"),
    [
        ("transformer.h.0.attn.c_attn.weight:q[head 1]", "q"),
        ("transformer.h.0.attn.c_attn.weight:k[head 0]", "k"),
        ("transformer.h.0.attn.c_attn.weight:v[row 7]", "v"),
        ("transformer.h.0.attn.c_attn.weight[rows 0:8]", "qkv"),  # a slice that does not say which part
        ("layers.0.self_attn.in_proj_weight[q]", "q"),  # qkv_blocks
        ("h.0.attn.q_proj.weight[head 3]", "q"),
        ("h.0.attn.k_proj.weight[head 1]", "k"),
        ("model.layers.0.self_attn.W_pack.weight:v", "v"),
        ("transformer.h.0.self_attention.query_key_value.weight[row 2]", "qkv"),
        ("h.0.mlp.c_fc.weight:q", "mlp"),  # ':q' on a tensor that is not fused QKV names no part
        ("encoder.block.0.layer.0.SelfAttention.q.weight[head 0]", "q"),
        ("vit.encoder.layer.0.attention.attention.query.weight[head 1]", "q"),  # ViT, transformers 4.x
        ("vit.encoder.layer.0.attention.attention.value.weight[row 3]", "v"),
        ("vit.encoder.layer.0.intermediate.dense.weight", "mlp"),
        ("blocks.0.attn.qkv.weight:k[head 0]", "k"),  # timm ViT
        ("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", "embedding"),
    ],
)
def test_block_name_groups(name, group):
    assert block_group(name) == group
