"""Matrix extraction: each rule checked against hand-cut slices of the tensor (exact equality)."""

from __future__ import annotations

import json

import pytest
import torch
from hessian_spectra.checkpoints.base import TensorMeta
from hessian_spectra.checkpoints.matrices import (
    ExtractOptions,
    attention_layout,
    extract_matrices,
    iter_matrices,
    plan_checkpoint,
    plan_tensor,
)
from hessian_spectra.checkpoints.reader import open_checkpoint
from support import ckpt_factory as cf


def _meta(name: str, t: torch.Tensor) -> TensorMeta:
    return TensorMeta(name, tuple(t.shape), str(t.dtype).removeprefix("torch."), None)


def _run(name, t, **kw):
    rec = plan_tensor(_meta(name, t), **kw)
    return rec, {v.name: v for v in extract_matrices(rec, t)}


# ---------------------------------------------------------------------------------------------- skipping


@pytest.mark.parametrize(
    ("name", "tensor", "reason"),
    [
        ("ln.weight", torch.ones(8), "1-D (bias/norm)"),
        ("x.bias", torch.ones(8), "1-D (bias/norm)"),
        ("scale", torch.tensor(2.0), "scalar"),
        ("bn.num_batches_tracked", torch.tensor(3), "non-float dtype int64"),
        ("idx", torch.zeros(4, 4, dtype=torch.int32), "non-float dtype int32"),
        ("mask", torch.zeros(4, 4, dtype=torch.bool), "non-float dtype bool"),
        ("head.weight", torch.ones(1, 8), "too small: matrix 1x8"),
        ("cls_token", torch.ones(1, 1, 8), "1-D (bias/norm) after squeezing (1, 1, 8)"),
        ("empty", torch.ones(0, 4), "empty tensor"),
    ],
)
def test_skipped_with_reason(name, tensor, reason):
    rec, views = _run(name, tensor)
    assert rec.status == "skipped" and not rec.analysed
    assert reason in rec.reason
    assert rec.matrices == () and views == {}


def test_min_dim_option():
    t = torch.randn(3, 10)
    assert plan_tensor(_meta("w", t)).analysed
    rec = plan_tensor(_meta("w", t), options=ExtractOptions(min_dim=4))
    assert not rec.analysed and "min_dim=4" in rec.reason
    with pytest.raises(ValueError):
        ExtractOptions(conv_rule="nope")


# ---------------------------------------------------------------------------------------------- 2-D


def test_linear_and_embedding_as_stored():
    w = torch.randn(6, 4, dtype=torch.bfloat16)
    rec, views = _run("mlp.fc1.weight", w)
    assert rec.kind == "linear" and rec.matrix_shapes == ((6, 4),)
    assert torch.equal(views["mlp.fc1.weight"].matrix, w)
    assert views["mlp.fc1.weight"].matrix.dtype == torch.bfloat16
    for name in (
        "transformer.wte.weight",
        "embeddings.word_embeddings.weight",
        "bert.embeddings.token_type_embeddings.weight",
    ):
        assert plan_tensor(_meta(name, w)).kind == "embedding"
    rec = plan_tensor(_meta("transformer.wpe.weight", w))
    assert rec.kind == "embedding" and rec.role == "position_embedding"
    assert plan_tensor(_meta("lm_head.weight", w)).kind == "linear"
    tied = plan_tensor(_meta("lm_head.weight", w), config={"tie_word_embeddings": True})
    assert tied.kind == "embedding" and tied.role == "lm_head"
    assert plan_tensor(_meta("my_raw_param", w)).analysed  # raw nn.Parameter


def test_pos_embed_squeezed():
    t = torch.randn(1, 10, 16)
    rec, views = _run("pos_embed", t)
    assert rec.kind == "embedding" and rec.matrix_shapes == ((10, 16),)
    assert torch.equal(views["pos_embed"].matrix, t[0])
    t4 = torch.randn(1, 1, 5, 7)
    assert torch.equal(_run("p", t4)[1]["p"].matrix, t4[0, 0])


# ---------------------------------------------------------------------------------------------- conv


def test_conv2d_flatten():
    w = torch.randn(8, 3, 3, 5)
    rec, views = _run("conv1.weight", w)
    assert rec.kind == "conv" and rec.role == "conv" and rec.matrix_shapes == ((8, 45),)
    m = views["conv1.weight"].matrix
    for o in range(8):  # row o = output channel o's whole receptive field, in (in, kh, kw) order
        assert torch.equal(m[o], torch.cat([w[o, c].reshape(-1) for c in range(3)]))


def test_conv_per_position_and_skip():
    w = torch.randn(8, 3, 2, 3)
    rec, views = _run("conv.weight", w, options=ExtractOptions(conv_rule="per_position"))
    assert rec.matrix_shapes == ((8, 3),) * 6 and len(views) == 6
    for i in range(2):
        for j in range(3):
            assert torch.equal(views[f"conv.weight[pos={i * 3 + j}]"].matrix, w[:, :, i, j])
    rec = plan_tensor(_meta("conv.weight", w), options=ExtractOptions(conv_rule="skip"))
    assert not rec.analysed and "conv_rule='skip'" in rec.reason


def test_conv1d_kernel_and_conv_transpose():
    w = torch.randn(8, 4, 3)
    rec, views = _run("conv1d.weight", w)
    assert "conv1d kernel" in rec.note and torch.equal(views["conv1d.weight"].matrix, w.reshape(8, 12))
    wt = torch.randn(4, 6, 3, 3)  # ConvTranspose2d(4 -> 6): stored (in, out, kh, kw)
    rec, views = _run("up.weight", wt, module_type="ConvTranspose2d")
    assert rec.matrix_shapes == ((6, 36),)
    assert torch.equal(views["up.weight"].matrix, wt.transpose(0, 1).reshape(6, 36))


# ---------------------------------------------------------------------------------------------- Conv1D


def test_gpt2_conv1d_from_config_is_transposed():
    w = torch.randn(16, 64)  # (in, out) for mlp.c_fc
    rec, views = _run("h.0.mlp.c_fc.weight", w, config={"model_type": "gpt2"})
    assert rec.matrix_shapes == ((64, 16),) and "transposed" in rec.note
    assert torch.equal(views["h.0.mlp.c_fc.weight"].matrix, w.T)
    rec = plan_tensor(_meta("h.0.mlp.c_fc.weight", w), config={"model_type": "gpt_bigcode"})
    assert rec.matrix_shapes == ((16, 64),)  # nn.Linear there: not transposed
    rec = plan_tensor(_meta("h.0.mlp.c_fc.weight", w), config={"model_type": "gpt2"}, module_type="Linear")
    assert rec.matrix_shapes == ((16, 64),)  # the module type wins


# ---------------------------------------------------------------------------------------------- QKV


def test_in_proj_weight_equal_thirds():
    w = torch.randn(24, 8)
    rec, views = _run("attn.in_proj_weight", w)
    assert rec.kind == "qkv_fused" and rec.matrix_kinds == ("qkv_fused", "q", "k", "v")
    assert torch.equal(views["attn.in_proj_weight"].matrix, w)
    for i, p in enumerate("qkv"):
        v = views[f"attn.in_proj_weight:{p}"]
        assert v.kind == p and v.role == p and torch.equal(v.matrix, w[8 * i : 8 * (i + 1)])


def test_gqa_split_from_config():
    cfg = {"num_attention_heads": 4, "num_key_value_heads": 2, "hidden_size": 32}
    q, k, v = torch.randn(32, 32), torch.randn(16, 32), torch.randn(16, 32)
    w = torch.cat([q, k, v])
    rec, views = _run("layers.0.self_attn.qkv_proj.weight", w, config=cfg)
    assert rec.split == ("contiguous", 32, 16)
    for p, ref in zip("qkv", (q, k, v), strict=True):
        assert torch.equal(views[f"layers.0.self_attn.qkv_proj.weight:{p}"].matrix, ref)
    assert attention_layout({**cfg, "head_dim": 4}) == (4, 2, 4)
    assert attention_layout({"text_config": cfg}) == (4, 2, 8)
    assert attention_layout({"n_head": 2, "n_embd": 8, "multi_query": True}) == (2, 1, 4)
    assert attention_layout(None) is None


@pytest.mark.parametrize("model_type", ["gpt_neox", "bloom"])
def test_interleaved_query_key_value(model_type):
    heads, d, hidden = 4, 3, 12
    q, k, v = (torch.randn(hidden, hidden) for _ in range(3))
    # stored per head: [q_h; k_h; v_h] for h = 0..heads-1
    w = torch.cat(
        [
            torch.cat([q[h * d : (h + 1) * d], k[h * d : (h + 1) * d], v[h * d : (h + 1) * d]])
            for h in range(heads)
        ]
    )
    cfg = {"model_type": model_type, "num_attention_heads": heads, "hidden_size": hidden}
    name = "layers.0.attention.query_key_value.weight"
    rec, views = _run(name, w, config=cfg)
    assert rec.split == ("interleaved", heads, d)
    for p, ref in zip("qkv", (q, k, v), strict=True):
        assert torch.equal(views[f"{name}:{p}"].matrix, ref)


def test_unknown_layouts_are_analysed_whole_with_reason():
    w = torch.randn(48, 16)
    rec = plan_tensor(_meta("h.0.self_attention.query_key_value.weight", w), config={"model_type": "falcon"})
    assert rec.matrices == ("h.0.self_attention.query_key_value.weight",) and "falcon" in rec.note
    rec = plan_tensor(
        _meta("h.0.crossattention.c_attn.weight", torch.randn(16, 64)),
        config={"model_type": "gpt2", "n_head": 4, "n_embd": 16},
    )
    assert len(rec.matrices) == 1 and "analysed whole" in rec.note  # cross-attention c_attn holds only K, V
    rec = plan_tensor(_meta("attn.qkv.weight", torch.randn(20, 8)))
    assert len(rec.matrices) == 1 and "head layout unknown" in rec.note
    rec = plan_tensor(_meta("attn.qkv.weight", torch.randn(24, 8)), options=ExtractOptions(split_qkv=False))
    assert len(rec.matrices) == 1 and "disabled" in rec.note


# ---------------------------------------------------------------------------------------------- experts


def test_moe_experts():
    w = torch.randn(3, 5, 7)
    rec, views = _run("model.layers.0.mlp.experts.gate_up_proj", w)
    assert rec.kind == "expert" and rec.matrix_shapes == ((5, 7),) * 3
    for i in range(3):
        assert torch.equal(views[f"model.layers.0.mlp.experts.gate_up_proj[expert={i}]"].matrix, w[i])


def test_extract_rejects_wrong_shape():
    rec = plan_tensor(_meta("w", torch.randn(3, 4)))
    with pytest.raises(ValueError, match="planned"):
        extract_matrices(rec, torch.randn(4, 3))


# ---------------------------------------------------------------------------------------------- inventory


def test_inventory_from_metadata_only(tmp_path, monkeypatch):
    sd = cf.tiny_state_dict()
    path = cf.write_hf_dir(sd, tmp_path / "hf")
    with open_checkpoint(path) as ckpt:
        monkeypatch.setattr(ckpt, "load", lambda name: (_ for _ in ()).throw(AssertionError("data read")))
        recs = plan_checkpoint(ckpt)
        monkeypatch.undo()
        assert [r.name for r in recs] == ckpt.names()
        json.dumps([r.to_dict() for r in recs])
        by = {r.name: r for r in recs}
        assert not by["cls_token"].analysed and by["pos_embed"].analysed
        assert by["layers.2.self_attn.in_proj_weight"].matrices[1:] == tuple(
            f"layers.2.self_attn.in_proj_weight:{p}" for p in "qkv"
        )
        views = list(iter_matrices(ckpt, recs))
        assert [v.name for v in views] == [m for r in recs for m in r.matrices]
        for v in views:
            assert v.matrix.dim() == 2
            json.dumps(v.to_dict())


# ---------------------------------------------------------------------------------------------- GPT-2


@pytest.fixture(scope="module")
def gpt2():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=4, vocab_size=100, n_positions=16)
    return transformers.GPT2LMHeadModel(cfg).eval()


def test_gpt2_live_module_c_attn_transposed_and_split(gpt2):
    state = {k: v.clone() for k, v in gpt2.state_dict().items()}
    name = "transformer.h.0.attn.c_attn.weight"
    with open_checkpoint(gpt2) as ckpt:
        recs = {r.name: r for r in plan_checkpoint(ckpt)}
        rec = recs[name]
        assert rec.matrix_shapes == ((96, 32), (32, 32), (32, 32), (32, 32))
        views = {v.name: v for v in extract_matrices(rec, ckpt.load(name))}
        assert recs["transformer.h.0.mlp.c_fc.weight"].matrix_shapes == ((128, 32),)
        assert recs["transformer.h.0.mlp.c_proj.weight"].matrix_shapes == ((32, 128),)
    c_attn = gpt2.transformer.h[0].attn.c_attn
    x = torch.randn(5, 32)
    with torch.no_grad():
        out = c_attn(x) - c_attn.bias  # Conv1D: x @ W + b, split into q, k, v along the last dim
    for i, p in enumerate("qkv"):
        m = views[f"{name}:{p}"].matrix
        assert torch.equal(m, c_attn.weight.detach().T[32 * i : 32 * (i + 1)])
        torch.testing.assert_close(x @ m.T, out[:, 32 * i : 32 * (i + 1)], rtol=1e-5, atol=1e-5)
    assert all(torch.equal(state[k], v) for k, v in gpt2.state_dict().items())


def test_gpt2_saved_folder_gives_the_same_matrices(gpt2, tmp_path):
    gpt2.save_pretrained(tmp_path / "gpt2")
    with open_checkpoint(gpt2) as live, open_checkpoint(tmp_path / "gpt2") as disk:
        assert disk.config["model_type"] == "gpt2"
        disk_views = {v.name: v for v in iter_matrices(disk)}
        live_views = {v.name: v for v in iter_matrices(live)}
    shared = set(disk_views) & set(live_views)
    assert "transformer.h.0.attn.c_attn.weight:k" in shared
    assert set(live_views) - shared <= {"lm_head.weight"}  # tied weights are stored once on disk
    for n in shared:
        assert torch.equal(disk_views[n].matrix, live_views[n].matrix), n


def test_gpt_neox_live_query_key_value_split_matches_the_model_code():
    """Q/K/V parts reproduce GPT-NeoX's own reshaping: view(..., heads, 3 * head_dim).chunk(3)."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.GPTNeoXConfig(
        vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=4, intermediate_size=32
    )
    model = transformers.GPTNeoXForCausalLM(cfg).eval()
    name = "gpt_neox.layers.0.attention.query_key_value.weight"
    with open_checkpoint(model) as ckpt:
        rec = plan_tensor(ckpt.meta(name), config=ckpt.config, module_type=ckpt.module_types[name])
        views = {v.name: v.matrix for v in extract_matrices(rec, ckpt.load(name))}
    assert rec.split == ("interleaved", 4, 4)
    lin = model.gpt_neox.layers[0].attention.query_key_value
    x = torch.randn(3, 16)
    with torch.no_grad():
        q, k, v = (x @ lin.weight.T).view(3, 4, 12).chunk(3, dim=-1)
    for p, ref in zip("qkv", (q, k, v), strict=True):
        torch.testing.assert_close(x @ views[f"{name}:{p}"].T, ref.reshape(3, 16), rtol=1e-5, atol=1e-5)
