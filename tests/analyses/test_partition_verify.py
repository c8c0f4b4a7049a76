"""--verify: captured Hessian mass of each rule vs random partitions, checked against dense oracles,
closed forms and a planted model whose Hessian structure is known exactly."""

from __future__ import annotations

import json

import pytest
import torch
from hessian_spectra.analyses.partitions.build import partition_model
from hessian_spectra.analyses.partitions.rules import make_rule
from hessian_spectra.analyses.structure import (
    _pick_columns,
    block_labels,
    mass_share,
    random_shares,
    verify_partition,
)
from hessian_spectra.io import json_safe
from torch import nn

transformers = pytest.importorskip("transformers")


def _batches(vocab=32, n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, vocab, (4, 8), generator=g)
        out.append({"input_ids": ids, "labels": ids.clone()})
    return out


def _dense_block(model, batches, name):
    """Independent oracle: float64 reverse-over-reverse Hessian of the mean loss w.r.t. one tensor."""
    import copy

    m = copy.deepcopy(model).double()
    p = dict(m.named_parameters())[name]
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
        loss = sum(m(**b).loss for b in batches) / len(batches)
        (g,) = torch.autograd.grad(loss, p, create_graph=True)
        g = g.reshape(-1)
        rows = [torch.autograd.grad(g[i], p, retain_graph=True)[0].reshape(-1) for i in range(g.numel())]
    return torch.stack(rows).detach()


def tiny_llama16():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=32, hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, bos_token_id=0, eos_token_id=0, pad_token_id=None,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(cfg).eval()


def tiny_gpt2_16():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        vocab_size=32, n_embd=8, n_layer=1, n_head=2, n_positions=16, bos_token_id=0, eos_token_id=0
    )
    return transformers.GPT2LMHeadModel(cfg).eval()


def test_mass_share_closed_forms():
    labels = torch.arange(12) // 4  # 3 blocks of 4
    cols = torch.arange(12)
    ones = torch.ones(12, 12, dtype=torch.float64)
    assert mass_share(ones, cols, labels) == pytest.approx(48 / 144)  # sum of block sizes^2 / n^2
    assert torch.allclose(
        random_shares(ones, cols, labels, 5, seed=0), torch.full((5,), 48 / 144, dtype=torch.float64)
    )
    blockdiag = torch.block_diag(*[torch.randn(4, 4, dtype=torch.float64) for _ in range(3)])
    assert mass_share(blockdiag, cols, labels) == pytest.approx(1.0)
    assert float(random_shares(blockdiag, cols, labels, 20, seed=0).mean()) < 0.6


def test_block_labels_follow_views():
    rule = make_rule("per_head", "q", (6, 4), "cols", "t", rows_per_block=2)  # Conv1D: heads of 2 columns
    lab = block_labels(rule).view(6, 4)
    assert torch.equal(lab[0], torch.tensor([0, 0, 1, 1]))
    assert torch.equal(lab[:, 3], torch.ones(6, dtype=torch.long))


def test_qk_per_head_share_at_init_llama_matches_dense_oracle():
    model = tiny_llama16()
    batches = _batches()
    part = partition_model(model)
    q, k = "model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight"
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    rep = verify_partition(
        model, batches, None, part, params=[q, k, "model.layers.0.self_attn.v_proj.weight"]
    )
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())  # model untouched
    by = {t.name: t for t in rep.tensors}
    for name in (q, k):
        t = by[name]
        assert t.exact and t.share >= 0.95 and t.passed, t
        assert t.share > t.random_mean + 0.3
        # the same share from the dense float64 oracle and explicit head slices
        H = _dense_block(model, batches, name)
        hd = 4
        n_heads = part.entries[name].num_blocks
        Hr = H.view(n_heads, hd * 16, n_heads, hd * 16)
        inside = sum(float(Hr[h, :, h, :].pow(2).sum()) for h in range(n_heads))
        assert t.share == pytest.approx(inside / float(H.pow(2).sum()), rel=1e-9)
    rules = {r.key: r for r in rep.rules}
    assert rules["per_head:q"].passed and rules["per_head:k"].passed
    assert rep.partition.entries[q].evidence["share"] == by[q].share
    assert rep.partition.entries["model.embed_tokens.weight"].evidence is None  # not measured
    json.dumps(json_safe(rep.to_dict()), allow_nan=False)


def test_fused_c_attn_parts_per_head_share_gpt2():
    model = tiny_gpt2_16()
    part = partition_model(model)
    name = "transformer.h.0.attn.c_attn.weight"
    rep = verify_partition(model, _batches(), None, part, params=[name])
    by = {t.name: t for t in rep.tensors}
    assert by[name + "[q]"].share >= 0.95 and by[name + "[k]"].share >= 0.95
    assert by[name + "[q]"].columns == 8 * 8 and by[name + "[q]"].num_blocks == 2


def test_sampled_columns_are_whole_blocks():
    labels = torch.arange(40) // 8
    cols, exact = _pick_columns(labels, 16, seed=3)
    assert not exact and cols.numel() == 16
    assert all(int((labels[cols] == b).sum()) in (0, 8) for b in range(5))


class Planted(nn.Module):
    """y = W x with a bare parameter W: the MSE Hessian w.r.t. W is I_out (x) X^T X, block-diagonal by rows."""

    def __init__(self):
        super().__init__()
        self.mystery = nn.Parameter(torch.randn(3, 6))

    def forward(self, x):
        return x @ self.mystery.T


def test_discovery_picks_rows_on_planted_structure():
    torch.manual_seed(0)
    model = Planted()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(32, 6, generator=g) + 2.0 * torch.randn(32, 1, generator=g)  # correlated inputs
    t = torch.randn(32, 3, generator=g)

    def loss(m, batch):
        return ((m(batch[0]) - batch[1]) ** 2).sum(1).mean()

    part = partition_model(model)
    assert part.unresolved == ["mystery"]
    rep = verify_partition(model, [(x, t)], loss, part)
    (d,) = rep.discoveries
    shares = {c["split"]: c["share"] for c in d.candidates}
    assert shares["whole"] == pytest.approx(1.0)
    assert shares["rows"] == pytest.approx(1.0, abs=1e-12)  # exactly block-diagonal by rows
    assert shares["columns"] < 0.9  # correlated inputs couple the columns
    assert d.chosen == "rows"
    new = rep.partition
    assert new.unresolved == [] and new.entries["mystery"].rule == "per_row"
    assert new.entries["mystery"].num_blocks == 3 and new.entries["mystery"].evidence["split"] == "rows"
    assert new.adam_mini_kwargs()["matches_partition"]
