"""Rule-based partition: every parameter of tiny HF models (random weights) and a custom module
lands in the expected rule with the exact block count and block shape written here by hand."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from analyses.partition import (
    Partition,
    block_views,
    partition_checkpoint,
    partition_model,
    read_partition,
    simulate_adam_mini,
    unflatten_named,
    write_partition,
)
from spectra.errors import InputError

transformers = pytest.importorskip("transformers")


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


def _check_table(part: Partition, table: dict) -> None:
    assert part.unresolved == []
    assert set(part.entries) == set(table), set(part.entries) ^ set(table)
    for name, (rule, nblocks, bshape) in table.items():
        r = part.entries[name]
        got_shape = r.block_shape if isinstance(r.block_shape, tuple) else list(r.block_shape)
        assert (r.rule, r.num_blocks, got_shape) == (rule, nblocks, bshape), name
        # blocks tile the tensor exactly
        assert sum(s.num_blocks * s.block_numel for s in r.segments) == r.numel, name


@pytest.mark.parametrize("case", list(CASES))
def test_expected_rules_and_counts(case):
    build, table_fn = CASES[case]
    model = build()
    part = partition_model(model)
    table = table_fn(model)
    _check_table(part, table)
    n_params = sum(p.numel() for p in model.parameters())
    assert part.summary["num_params"] == n_params
    assert part.summary["num_learning_rates"] == sum(v[1] for v in table.values())


def test_qwen3_head_dim_from_config_not_hidden_over_heads():
    part = partition_model(tiny_qwen3())
    q = part.entries["model.layers.0.self_attn.q_proj.weight"]
    assert q.block_shape == (16, H) and q.num_blocks == 4  # hidden/heads would say 8 rows, 8 heads
    assert part.arch.head_dim == 16


def test_gpt2_tied_head_counted_once_and_conv1d_columns():
    model = tiny_gpt2()
    part = partition_model(model)
    assert part.model_info["tied"] == {"lm_head.weight": "transformer.wte.weight"}
    assert "lm_head.weight" not in part.entries
    # the Q block of head 1 is columns 8..15 of c_attn (Conv1D layout), as a view
    w = model.transformer.h[0].attn.c_attn.weight
    views = block_views(part, [("transformer.h.0.attn.c_attn.weight", w)])[
        "transformer.h.0.attn.c_attn.weight"
    ]
    q, k, v = views
    assert q.shape == (4, 8, H) and k.shape == (4, 8, H) and v.shape == (32, 1, H)
    torch.testing.assert_close(q[1], w[:, 8:16].T)
    torch.testing.assert_close(k[2], w[:, 32 + 16 : 32 + 24].T)
    torch.testing.assert_close(v[5, 0], w[:, 64 + 5])
    assert q.data_ptr() == w.data_ptr()  # shares storage


class OddNet(nn.Module):
    """Non-standard names: the rules must use module types, or refuse (unresolved)."""

    def __init__(self):
        super().__init__()
        self.vocab_table = nn.Embedding(20, 8)
        self.mixer_a = nn.Linear(8, 12)
        self.gain = nn.Parameter(torch.ones(8))
        self.scale = nn.Parameter(torch.tensor(1.0))
        self.expert_bank = nn.Parameter(torch.randn(3, 6, 8))
        self.kernel = nn.Conv1d(2, 5, 3)
        self.mystery = nn.Parameter(torch.randn(6, 8))
        self.blob = nn.Parameter(torch.randn(2, 3, 4))
        self.out_norm = nn.LayerNorm(8)
        self.readout = nn.Linear(8, 20, bias=False)
        self.readout.weight = self.vocab_table.weight  # tied
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)


def test_custom_module_nonstandard_names():
    part = partition_model(OddNet())
    table = {
        "vocab_table.weight": ("per_token", 20, (1, 8)),
        "mixer_a.weight": ("per_row", 12, (1, 8)),
        "mixer_a.bias": ("per_coordinate", 12, (1,)),
        "gain": ("per_coordinate", 8, (1,)),
        "scale": ("per_coordinate", 1, (1,)),
        "expert_bank": ("per_expert_row", 18, (1, 8)),
        "kernel.weight": ("per_channel", 5, (1, 2, 3)),
        "kernel.bias": ("per_coordinate", 5, (1,)),
        "out_norm.weight": ("whole", 1, (8,)),
        "out_norm.bias": ("per_coordinate", 8, (1,)),
    }
    assert sorted(part.unresolved) == ["blob", "mystery"]
    assert part.model_info["unresolved"]["mystery"]["shape"] == [6, 8]
    assert part.model_info["tied"] == {"readout.weight": "vocab_table.weight"}
    assert part.model_info["frozen"] == ["frozen.weight", "frozen.bias"]
    assert set(part.entries) == set(table)
    for name, (rule, nb, bs) in table.items():
        r = part.entries[name]
        assert (r.rule, r.num_blocks, r.block_shape) == (rule, nb, bs), name
    # unresolved tensors are counted per coordinate (never lumped) and flagged for adam-mini
    assert part.summary["num_unresolved"] == 2
    assert part.summary["num_learning_rates"] == sum(v[1] for v in table.values()) + 48 + 24
    unsup = {u["name"] for u in part.adam_mini_kwargs()["unsupported"]}
    assert {"blob", "mystery"} <= unsup


def test_json_round_trip_and_views(tmp_path):
    model = tiny_qwen2()
    part = partition_model(model)
    path = write_partition(part, tmp_path / "partition.json")
    d = json.loads(path.read_text())
    assert d["schema"] == "hessian-spectra/partition/1"
    q = d["parameters"]["model.layers.0.self_attn.q_proj.weight"]
    assert (q["rule"], q["num_blocks"], q["block_shape"]) == ("per_head", 4, [8, H])
    assert q["reason"] and q["evidence"] is None
    s = d["summary"]
    assert s["num_learning_rates"] == part.num_learning_rates
    n = s["num_params"]
    assert s["optimizer_state"]["adamw"]["fp32_bytes"] == 8 * n
    assert s["optimizer_state"]["partition"]["bf16_bytes"] == 2 * (n + s["num_learning_rates"])
    assert math.isclose(s["learning_rate_share"], s["num_learning_rates"] / n)
    assert "constructor" in d["adam_mini"] and "name_sets" in d["adam_mini"]

    back = read_partition(path)
    assert back.entries == part.entries and back.summary == part.summary
    views = block_views(back, model.named_parameters())
    assert set(views) == {n for n, _ in model.named_parameters()}
    for name, p in model.named_parameters():
        r = back.entries[name]
        vs = views[name]
        assert [v.shape[0] for v in vs] == [s.num_blocks for s in r.segments]
        assert sum(v.numel() for v in vs) == p.numel()
        assert all(v.data_ptr() >= p.data_ptr() for v in vs)
    # per-block second moments from the views equal a direct reshape
    w = dict(model.named_parameters())["model.layers.0.self_attn.k_proj.weight"]
    (kv,) = views["model.layers.0.self_attn.k_proj.weight"]
    torch.testing.assert_close(kv.pow(2).mean(dim=(1, 2)), w.detach().reshape(2, -1).pow(2).mean(1))


def test_from_json_rejects_wrong_schema():
    with pytest.raises(InputError, match="schema"):
        Partition.from_json(json.dumps({"schema": "other/1", "parameters": {}, "model": {}}))


def test_zero_flattened_params_mapped_by_name_or_refused():
    model = tiny_llama()
    part = partition_model(model)
    flat = [(n, p.detach().reshape(-1)) for n, p in model.named_parameters()]
    mapped = unflatten_named(part, flat)
    for n, p in model.named_parameters():
        assert mapped[n].shape == p.shape and torch.equal(mapped[n], p.detach())
    views = block_views(part, flat)
    assert views["model.layers.0.self_attn.q_proj.weight"][0].shape == (4, 8, H)
    # a nameless flat buffer (DeepSpeed/FSDP style) is refused, not guessed
    buf = torch.cat([t for _, t in flat])
    with pytest.raises(InputError, match="flat"):
        block_views(part, [("_flat_param", buf)])
    # a shard (part of a tensor) is refused with the counts
    with pytest.raises(InputError, match=r"holds 100 of the parameter's 1024 elements"):
        block_views(part, [("model.layers.0.self_attn.q_proj.weight", flat[1][1][:100])])


def test_partition_from_shapes_and_checkpoint_folder(tmp_path):
    from safetensors.torch import save_file

    model = tiny_gpt2()
    sd = {k: v.contiguous() for k, v in model.state_dict().items() if "attn.bias" not in k or "c_attn" in k}
    sd.pop("lm_head.weight", None)
    save_file(sd, str(tmp_path / "model.safetensors"))
    model.config.to_json_file(str(tmp_path / "config.json"))
    part = partition_checkpoint(tmp_path)
    # no modules: the Conv1D layout comes from config.model_type == "gpt2"
    _check_table(part, {k: v for k, v in gpt2_table().items()})
    with pytest.raises(InputError, match="config.json"):
        partition_checkpoint(tmp_path / "missing")


def test_simulated_adam_mini_defaults_reproduce_known_failures():
    """The simulation of adam-mini's step reproduces its documented failures on the default names."""
    from analyses.partition import ADAM_MINI_DEFAULT_NAME_SETS as D

    bert = {n: tuple(p.shape) for n, p in tiny_bert().named_parameters()}
    sim = simulate_adam_mini(bert, D, H, 4)
    assert sim["bert.embeddings.LayerNorm.weight"]["problem"].startswith("crash")  # "embed" + 1-D
    qwen3 = {n: tuple(p.shape) for n, p in tiny_qwen3().named_parameters()}
    sim = simulate_adam_mini(qwen3, D, H, 4)
    assert sim["model.layers.0.self_attn.q_proj.weight"]["learning_rates"] == 8  # each head cut in two
    gpt2 = {n: tuple(p.shape) for n, p in tiny_gpt2().named_parameters()}
    sim = simulate_adam_mini(gpt2, D, H, 4)
    assert sim["transformer.h.0.attn.c_attn.weight"]["branch"] == "whole"
    assert sim["transformer.h.0.mlp.c_fc.weight"]["learning_rates"] == H  # per input row, not 4H outputs
