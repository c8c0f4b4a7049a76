"""Adam-mini blocks as Hessian blocks: the partition's block counts and sizes (hand-written tables of
tests/test_partition.py), exact tiling of every tensor, and the block operator on them against the
exact diagonal blocks of dense float64 Hessians."""

from __future__ import annotations

import math

import pytest
import torch
from hessian_spectra.analyses.partitions.blockings import adam_mini_blocks, heads_config, hessian_blocks
from hessian_spectra.analyses.partitions.build import partition_model
from hessian_spectra.curvature.block_operators import BlockDiagonalOperator
from hessian_spectra.curvature.hessian import HessianOperator
from hessian_spectra.curvature.losses import cross_entropy
from hessian_spectra.curvature.probe import HessianSettings
from hessian_spectra.errors import InputError
from support.models import get_case, random_vector
from support.oracles import case_hessian, exact_hessian
from torch import nn

pytest.importorskip("transformers")

from support.partition_cases import CASES  # noqa: E402 - needs transformers


def _sizes(nblocks: int, bshape) -> list[int]:
    """Block sizes a table row promises (a fused row lists one block shape per part)."""
    if isinstance(bshape, tuple):
        return [math.prod(bshape)] * nblocks
    return sorted(math.prod(s) for s in bshape)  # distinct part sizes (checked as a set below)


@pytest.mark.parametrize("case", ["llama_gqa", "gpt2", "mixtral", "vit"])
def test_adam_mini_blocks_equal_the_partition_counts_and_sizes(case):
    build, table_fn = CASES[case]
    model = build()
    table = table_fn(model)
    am = adam_mini_blocks(model)
    assert am.complete and len(am.blocks) == am.partition_blocks == partition_model(model).num_learning_rates
    assert am.per_tensor == {n: table[n][1] for n in am.per_tensor}
    by_param: dict[str, list] = {}
    for b in am.blocks:
        by_param.setdefault(b.param, []).append(b)
    shapes = dict(model.named_parameters())
    for name, blocks in by_param.items():
        rule, nblocks, bshape = table[name]
        sizes = [b.numel for b in blocks]
        if isinstance(bshape, tuple):
            assert sizes == [math.prod(bshape)] * nblocks, name
        else:
            assert set(sizes) == set(_sizes(nblocks, bshape)) and len(sizes) == nblocks, name
        # the blocks tile the tensor: every coordinate exactly once
        numel = shapes[name].numel()
        idx = torch.cat([b.take(torch.arange(numel, dtype=torch.float64)) for b in blocks]).long()
        assert torch.equal(idx.sort().values, torch.arange(numel)), name


def _check_exact(model, batches, loss, H, weights, tol):
    """Every Adam-mini block's H_bb v_b from one lockstep call against the dense Hessian's block."""
    am = adam_mini_blocks(model)
    op = HessianOperator(model, batches, loss, dtype=torch.float64, weighting=weights)
    bd = BlockDiagonalOperator(op, am.blocks)
    vs = [random_vector(b.numel, i) for i, b in enumerate(am.blocks)]
    out = bd.matvec_many(vs)
    ar = torch.arange(op.dim, dtype=torch.float64)
    seen = []
    for b, v, hv in zip(am.blocks, vs, out, strict=True):
        pos = op.take(b, ar).long()
        seen.append(pos)
        exact = H[pos][:, pos] @ v
        assert float((hv - exact).norm()) <= tol * max(float(exact.norm()), float(H.abs().max())), b.name
    assert torch.equal(torch.cat(seen).sort().values, torch.arange(op.dim))  # a partition of all parameters
    assert bd.num_block_hvps <= len(am.blocks) * len(batches)
    return am


def test_adam_mini_block_operator_on_tiny_llama_equals_exact_blocks():
    c = get_case("llama")
    am = _check_exact(c.model, c.batches, c.loss, case_hessian("llama"), c.weights, 1e-5)  # float32 RMSNorm
    names = [b.name for b in am.blocks]
    assert "model.layers.0.self_attn.k_proj.weight[head 1]" in names and "model.norm.weight" in names
    assert len(am.blocks) == 20 + 4 + 2 + 4 + 8 + 16 + 16 + 8 + 3 + 20


def test_adam_mini_block_operator_on_gpt2_fused_conv1d_and_biases():
    """Fused c_attn in the Conv1D (in, out) layout (Q/K per head, V per column) and 1x1 bias blocks."""
    c = get_case("gpt2")
    am = _check_exact(c.model, c.batches, c.loss, case_hessian("gpt2"), c.weights, 1e-9)
    names = [b.name for b in am.blocks]
    base = "transformer.h.0.attn.c_attn.weight"
    assert [n for n in names if n.startswith(base)] == (
        [f"{base}:q[head {h}]" for h in range(2)] + [f"{base}:k[head {h}]" for h in range(2)]
        + [f"{base}:v[row {r}]" for r in range(8)]
    )  # fmt: skip
    assert sum(b.numel == 1 for b in am.blocks) == 24 + 8 + 32 + 8 + 8 + 8 + 8  # biases per coordinate


class _TinyMoE(nn.Module):
    """A 3-D expert weight (experts, out, in): Adam-mini's "last" layout, one block per expert row."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.inp = nn.Linear(4, 5)
        self.experts = nn.Parameter(0.5 * torch.randn(2, 3, 5))
        self.head = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.inp(x))
        return self.head(torch.tanh(torch.einsum("eoi,bi->beo", self.experts, h)).mean(1))


def test_adam_mini_expert_rows_equal_exact_blocks():
    model = _TinyMoE().double()
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(6, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (6,), generator=g))]
    H = exact_hessian(model, batches, cross_entropy, weights=[6.0])
    am = _check_exact(model, batches, cross_entropy, H, [6.0], 1e-10)
    experts = [b for b in am.blocks if b.param == "experts"]
    assert len(experts) == 6 and all(b.numel == 5 and b.view == (6, 5) for b in experts)


def test_cap_keeps_evenly_spaced_blocks_and_says_so():
    c = get_case("llama")
    am = adam_mini_blocks(c.model, max_blocks_per_tensor=3)
    assert not am.complete and am.partition_blocks == 101
    tokens = [b.name for b in am.blocks if b.param == "model.embed_tokens.weight"]
    assert tokens == [f"model.embed_tokens.weight[token {k}]" for k in (0, 10, 19)]
    assert len(am.blocks) == 3 + 3 + 2 + 3 + 3 + 3 + 3 + 3 + 1 + 1 + 1 + 3
    assert any("max_blocks_per_tensor=3" in n for n in am.notes)
    with pytest.raises(InputError):
        adam_mini_blocks(c.model, max_blocks_per_tensor=0)


def test_hessian_blocks_fills_heads_and_partitions_configless_models():
    from hessian_spectra.analyses.demo import TinyGPT

    gpt = TinyGPT(vocab=8, d_model=8, n_heads=2, n_layers=1, seq_len=4)
    assert heads_config(gpt) == {"num_attention_heads": 2, "head_dim": 4}
    choice = hessian_blocks(gpt, HessianSettings(blocks="adam-mini"))
    q = [b for b in choice.blocks if b.param == "h.0.attn.q_proj.weight"]
    assert [b.name for b in q] == ["h.0.attn.q_proj.weight[head 0]", "h.0.attn.q_proj.weight[head 1]"]
    assert any("no model config" in n for n in choice.notes)
    head = hessian_blocks(gpt, HessianSettings(blocks="head"))
    assert head.blocks is None and head.settings.n_heads == 2
    assert hessian_blocks(gpt, HessianSettings(blocks="layer")).blocks is None
    with pytest.raises(InputError, match="--heads"):
        hessian_blocks(nn.Linear(2, 2), HessianSettings(blocks="head"))


def test_analyze_model_with_adam_mini_blocks_writes_a_valid_hessian_report():
    from hessian_spectra.analyses.report.analyze import AnalyzeOptions, analyze_model
    from hessian_spectra.analyses.report.document import validate_document
    from hessian_spectra.analyses.report.markdown import render_markdown

    c = get_case("mlp")  # Linear weights per output neuron, biases per coordinate; 2 blocks kept per tensor
    settings = HessianSettings(
        full=False, block_probes=2, block_steps=6, blocks="adam-mini", max_blocks_per_tensor=2
    )
    doc, figs = analyze_model(
        c.model, c.batches, c.loss, settings, source="mlp", kind="hessian",
        options=AnalyzeOptions(weights=False, structure=False, recommendations=False),
    )  # fmt: skip
    validate_document(doc)
    assert doc["kind"] == "hessian" and doc["weights"] is None
    assert doc["settings"]["hessian"]["blocks"] == "adam-mini"
    names = [b["name"] for b in doc["hessian"]["blocks"]]
    assert len(names) == doc["hessian"]["cost_estimate"]["num_blocks"] == 6 * 2
    assert names[:4] == ["0.weight[row 0]", "0.weight[row 15]", "0.bias[coord 0]", "0.bias[coord 15]"]
    assert any("Adam-mini blocks: 12 of the partition's 70 blocks" in n for n in doc["hessian"]["notes"])
    assert "Blocks: `adam-mini`" in render_markdown(doc) and "block_densities" in figs
