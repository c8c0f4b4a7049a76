"""Blocks and the block-diagonal operator against exact diagonal blocks of the dense Hessian."""

from __future__ import annotations

import pytest
import torch

from spectra.blocks import (
    Block,
    BlockDiagonalOperator,
    column_blocks,
    head_blocks,
    parameter_blocks,
    qkv_blocks,
    row_blocks,
)
from spectra.errors import InputError
from spectra.guards import model_state_hash
from spectra.linop import LinearOperator, MultiOperator
from spectra.operators import GGNOperator, HessianOperator
from tests.models import get_case, random_vector
from tests.oracles import case_hessian, exact_ggn, rel_err


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
    from spectra.operators import output_and_target

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
