"""Blocks and the block-diagonal operator against exact diagonal blocks of the dense Hessian."""

from __future__ import annotations

import pytest
import torch
from hessian_spectra.curvature.block_builders import (
    column_blocks,
    head_blocks,
    layer_blocks,
    layer_key,
    parameter_blocks,
    qkv_blocks,
    row_blocks,
)
from hessian_spectra.curvature.block_operators import BlockDiagonalOperator
from hessian_spectra.curvature.blocks import Block, CompositeBlock
from hessian_spectra.curvature.ggn import GGNOperator
from hessian_spectra.curvature.guards import model_state_hash
from hessian_spectra.curvature.hessian import HessianOperator
from hessian_spectra.errors import InputError
from hessian_spectra.krylov.linop import LinearOperator, MultiOperator
from support.models import get_case, random_vector
from support.oracles import case_hessian, exact_ggn, rel_err


def _exact_block(op: HessianOperator, H: torch.Tensor, block: Block) -> torch.Tensor:
    """H_bb by embedding the block's unit vectors (independent of the pruned-backward path)."""
    idx = torch.arange(op.dim, dtype=torch.float64)
    pos = op.take(block, idx).long()
    return H[pos][:, pos]


def _check(name, blocks_fn, mode="reuse", tol=1e-10):
    c = get_case(name)
    H = case_hessian(name)
    op = HessianOperator(c.model, c.batches, c.loss, mode=mode, dtype=torch.float64, weighting=c.weights)
    blocks = blocks_fn(op)
    bd = BlockDiagonalOperator(op, blocks)
    assert isinstance(bd, MultiOperator)
    vs = [random_vector(b.numel, i) for i, b in enumerate(blocks)]
    out = bd.matvec_many(vs)
    for b, v, hv in zip(blocks, vs, out, strict=True):
        assert rel_err(hv, _exact_block(op, H, b) @ v) < tol, b.name
    return op, bd, blocks


def test_block_take_put_roundtrip():
    b = Block("w[rows 1:3]", "w", (4, 5), axis=0, start=1, stop=3, kind="rows")
    assert b.numel == 10 and b.block_shape == (2, 5)
    x = torch.arange(20.0).view(4, 5)
    assert torch.equal(b.take(x), x[1:3].reshape(-1))
    assert torch.equal(b.take(x.reshape(-1)), x[1:3].reshape(-1))
    y = b.put(b.take(x))
    assert torch.equal(y[1:3], x[1:3]) and y[0].abs().sum() == 0 and y[3].abs().sum() == 0
    cb = Block("w[cols 2:5]", "w", (4, 5), axis=1, start=2, stop=5)
    assert torch.equal(cb.take(x), x[:, 2:5].reshape(-1))
    assert Block("w", "w", (4, 5)).numel == 20
    assert b.to_dict()["numel"] == 10
    with pytest.raises(InputError):
        Block("bad", "w", (4, 5), axis=0, start=3, stop=9)


def test_tensor_blocks_mlp_and_counts():
    op, bd, blocks = _check("mlp", lambda op: parameter_blocks(op))
    assert [b.name for b in blocks] == op.param_names
    assert bd.dims == [b.numel for b in blocks] and sum(bd.dims) == op.dim
    assert bd.num_matvecs == 1 and bd.num_block_hvps == len(blocks) * 3
    out = bd.matvec_many([None] * (len(blocks) - 1) + [random_vector(blocks[-1].numel, 0)])
    assert all(o is None for o in out[:-1]) and out[-1] is not None
    assert bd.num_matvecs == 2 and bd.num_block_hvps == len(blocks) * 3 + 3


@pytest.mark.parametrize("mode", ["reuse", "recompute"])
def test_tensor_blocks_cnn_both_modes(mode):
    c = get_case("cnn-bn")
    before = model_state_hash(c.model), c.model.training
    _check("cnn-bn", lambda op: parameter_blocks(op), mode=mode)
    assert (model_state_hash(c.model), c.model.training) == before


def test_row_and_column_blocks():
    _check(
        "mlp",
        lambda op: row_blocks(op, "2.weight", size=5) + column_blocks(op, "4.weight", bounds=[0, 3, 16]),
    )


def test_head_and_qkv_blocks_of_fused_in_proj():
    def blocks(op):
        return qkv_blocks(op, "layer.self_attn.in_proj_weight") + head_blocks(
            op, "layer.self_attn.in_proj_weight", n_heads=2, head_dim=4, offset=0, prefix="q"
        )

    _, _, bs = _check("encoder-layer", blocks)
    assert [b.name for b in bs[:3]] == [f"layer.self_attn.in_proj_weight[{p}]" for p in "qkv"]
    assert bs[3].name == "q[head 0]" and bs[3].numel == 4 * 8


def test_heads_of_hand_written_qkv_linear():
    _check("sdpa-lm", lambda op: head_blocks(op, "qkv.weight", n_heads=2, head_dim=4, offset=8, prefix="k"))


def test_gpt2_conv1d_columns_and_llama_gqa_heads():
    _check("gpt2", lambda op: qkv_blocks(op, "transformer.h.0.attn.c_attn.weight", axis=1))
    _check(
        "llama",
        lambda op: (
            head_blocks(op, "model.layers.0.self_attn.q_proj.weight", 4)
            + head_blocks(op, "model.layers.0.self_attn.k_proj.weight", 2)
        ),
        tol=1e-5,  # Llama's RMSNorm runs in float32 even in a float64 model
    )


def test_restrict_is_a_linear_operator():
    c = get_case("sdpa-lm")
    op = HessianOperator(c.model, c.batches, c.loss, dtype=torch.float64, weighting=c.weights)
    b = qkv_blocks(op, "qkv.weight")[1]
    r = op.restrict(b)
    assert isinstance(r, LinearOperator) and r.dim == b.numel
    v = random_vector(b.numel, 3)
    assert rel_err(r.matvec(v), _exact_block(op, case_hessian("sdpa-lm"), b) @ v) < 1e-10
    assert r.num_matvecs == 1
    # the embed/take route of the full operator agrees
    assert rel_err(op.take(b, op.matvec(op.embed(b, v))), r.matvec(v)) < 1e-10


def test_restrict_ggn_uses_full_matvec():
    from hessian_spectra.curvature.ggn import output_and_target

    c = get_case("mlp")
    op = GGNOperator(c.model, c.batches, "cross_entropy", dtype=torch.float64, weighting=c.weights)
    G = exact_ggn(
        c.model, c.batches, lambda m, b: output_and_target(m, b, loss="cross_entropy", shift=False), op.output_loss,
        weights=c.weights,
    )  # fmt: skip
    b = row_blocks(op, "0.weight", size=4)[1]
    idx = op.take(b, torch.arange(op.dim, dtype=torch.float64)).long()
    v = random_vector(b.numel, 4)
    assert rel_err(op.restrict(b).matvec(v), G[idx][:, idx] @ v) < 1e-10


def test_block_errors():
    c = get_case("mlp")
    op = HessianOperator(c.model, c.batches, c.loss, params=["0.weight"])
    with pytest.raises(InputError, match="not one the operator"):
        BlockDiagonalOperator(op, [Block("x", "2.weight", (16, 16))])
    with pytest.raises(InputError, match="shape"):
        BlockDiagonalOperator(op, [Block("x", "0.weight", (5, 16))])
    with pytest.raises(InputError):
        head_blocks(op, "0.weight", n_heads=3)
    with pytest.raises(InputError):
        qkv_blocks(op, "0.weight", sizes=[1, 2, 3])
    with pytest.raises(InputError):
        row_blocks(op, "0.weight")
    bd = op.block_diagonal()
    with pytest.raises(ValueError):
        bd.matvec_many([torch.zeros(3)])
    with pytest.raises(ValueError):
        bd.matvec_many([])


# ---------------------------------------------------------------------------- blocks of several parts


def _mixed_composite(op: HessianOperator) -> CompositeBlock:
    """Rows 2:5 of the first weight, the whole middle bias and columns 3:7 of the last weight (three
    parameters in three layers, so the cross terms between parts are exercised)."""
    return CompositeBlock(
        "mixed",
        (
            row_blocks(op, "0.weight", bounds=[0, 2, 5, 16])[1],
            Block("2.bias", "2.bias", (16,)),
            column_blocks(op, "4.weight", bounds=[0, 3, 7, 16])[1],
        ),
    )


def test_composite_block_vector_layout_and_errors():
    w = torch.arange(20.0).view(4, 5)
    bias = torch.arange(100.0, 104.0)
    rows = Block("w[rows 1:3]", "w", (4, 5), axis=0, start=1, stop=3)
    cols = Block("w[rows 3:4]", "w", (4, 5), axis=0, start=3, stop=4)
    cb = CompositeBlock("c", (rows, Block("b", "b", (4,)), cols))
    assert cb.numel == 10 + 4 + 5 and cb.params == ("w", "b") and cb.parts[0] is rows
    v = cb.take({"w": w, "b": bias})
    assert torch.equal(v, torch.cat([w[1:3].reshape(-1), bias, w[3]]))
    back = cb.put(v)
    assert (
        torch.equal(back["b"], bias) and torch.equal(back["w"][1:], w[1:]) and back["w"][0].abs().sum() == 0
    )
    assert cb.to_dict()["numel"] == 19 and len(cb.to_dict()["parts"]) == 3
    with pytest.raises(InputError, match="overlap"):
        CompositeBlock("x", (rows, Block("w[rows 2:4]", "w", (4, 5), axis=0, start=2, stop=4)))
    with pytest.raises(InputError, match="overlap"):
        CompositeBlock("x", (rows, Block("w", "w", (4, 5))))
    with pytest.raises(InputError, match="axes"):
        CompositeBlock("x", (rows, Block("w[cols 0:1]", "w", (4, 5), axis=1, start=0, stop=1)))
    with pytest.raises(InputError, match="no parts"):
        CompositeBlock("x", ())


def test_block_views_flat_and_last_against_exact_blocks():
    """A Block seen through ``view``: coordinates of a flattened tensor, rows of a (prod(leading), last) view."""

    def blocks(op):
        return [
            Block("conv.weight[coord 5:14]", "conv.weight", (4, 1, 3, 3), 0, 5, 14, "coords", (36,)),
            Block("conv.weight[row 3:7]", "conv.weight", (4, 1, 3, 3), 0, 3, 7, "rows", (12, 3)),
            Block("fc.weight[coord 40:41]", "fc.weight", (3, 36), 0, 40, 41, "coords", (108,)),
        ]

    _, _, bs = _check("cnn-bn", blocks)
    assert [b.numel for b in bs] == [9, 12, 1]
    x = torch.arange(36.0).view(4, 1, 3, 3)
    assert torch.equal(bs[1].take(x), x.reshape(12, 3)[3:7].reshape(-1))
    with pytest.raises(InputError, match="view"):
        Block("bad", "w", (4, 5), 0, 0, 1, view=(3, 5))


@pytest.mark.parametrize("mode", ["reuse", "recompute"])
def test_composite_blocks_equal_exact_principal_submatrices(mode):
    op, bd, blocks = _check("mlp", lambda op: [_mixed_composite(op), *layer_blocks(op)], mode=mode)
    assert [b.name for b in blocks[1:]] == ["0", "2", "4"]
    assert [b.params for b in blocks[1:]] == [
        ("0.weight", "0.bias"),
        ("2.weight", "2.bias"),
        ("4.weight", "4.bias"),
    ]
    assert bd.dims == [3 * 5 + 16 + 3 * 4, 5 * 16 + 16, 16 * 16 + 16, 16 * 3 + 3]
    # one pruned backward per composite block and batch, whatever its number of parts
    assert bd.num_block_hvps == len(blocks) * len(op.batches)
    # the layer blocks tile the parameter vector: every coordinate exactly once
    idx = torch.cat([op.take(b, torch.arange(op.dim, dtype=torch.float64)) for b in blocks[1:]]).long()
    assert torch.equal(idx.sort().values, torch.arange(op.dim))


def test_composite_restrict_embed_take_and_ggn():
    from hessian_spectra.curvature.ggn import output_and_target

    c = get_case("mlp")
    op = HessianOperator(c.model, c.batches, c.loss, dtype=torch.float64, weighting=c.weights)
    b = _mixed_composite(op)
    # flat layout 0.weight (16x5) | 0.bias | 2.weight (16x16) | 2.bias | 4.weight (3x16) | 4.bias, written out
    expected = [
        *range(2 * 5, 5 * 5),
        *range(352, 368),
        *(368 + 16 * r + c for r in range(3) for c in range(3, 7)),
    ]
    assert op.take(b, torch.arange(op.dim, dtype=torch.float64)).long().tolist() == expected
    v = random_vector(b.numel, 5)
    r = op.restrict(b)
    assert r.dim == b.numel
    exact = _exact_block(op, case_hessian("mlp"), b) @ v
    assert rel_err(r.matvec(v), exact) < 1e-10
    assert rel_err(op.take(b, op.matvec(op.embed(b, v))), exact) < 1e-10
    e = op.embed(b, v)
    assert float(e.norm()) == pytest.approx(float(v.norm())) and torch.equal(op.take(b, e), v)
    g = GGNOperator(c.model, c.batches, "cross_entropy", dtype=torch.float64, weighting=c.weights)
    G = exact_ggn(
        c.model, c.batches, lambda m, bt: output_and_target(m, bt, loss="cross_entropy", shift=False), g.output_loss,
        weights=c.weights,
    )  # fmt: skip
    idx = g.take(b, torch.arange(g.dim, dtype=torch.float64)).long()
    assert rel_err(g.restrict(b).matvec(v), G[idx][:, idx] @ v) < 1e-10
    with pytest.raises(InputError, match="not a differentiated"):
        HessianOperator(c.model, c.batches, c.loss, params=["0.weight"]).restrict(b)


def test_layer_key_and_layer_blocks_of_hf_models():
    assert layer_key("model.layers.3.mlp.up_proj.weight") == "model.layers.3"
    assert layer_key("encoder.layer.0.x.weight") != layer_key("decoder.layer.0.x.weight")
    assert layer_key("0.weight") == "0" and layer_key("wte.weight") is None and layer_key("plist.0") is None
    _, _, bs = _check("llama", lambda op: layer_blocks(op), tol=1e-5)  # HF RMSNorm computes in float32
    assert [b.name for b in bs] == [
        "model.embed_tokens.weight",
        "model.layers.0",
        "model.norm.weight",
        "lm_head.weight",
    ]
    assert isinstance(bs[1], CompositeBlock) and len(bs[1].parts) == 9 and bs[1].kind == "layer"
    _, _, bs = _check("gpt2", lambda op: layer_blocks(op))
    assert [b.name for b in bs] == ["transformer.wte.weight", "transformer.wpe.weight", "transformer.h.0",
                                    "transformer.ln_f.weight", "transformer.ln_f.bias"]  # fmt: skip
