"""Exact spectra where they are cheaper than estimates: dense blocks from batched pruned backwards and the
whole model from its columns, against the dense float64 Hessian (tests/support/oracles.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hessian_spectra.curvature.block_builders import head_blocks, layer_blocks, parameter_blocks
from hessian_spectra.curvature.block_exact import block_matrices, exact_block_spectra
from hessian_spectra.curvature.hessian import HessianOperator
from hessian_spectra.curvature.probe import HessianSettings, run_hessian
from hessian_spectra.krylov.exact import ExactSpectrum, dense_spectrum
from hessian_spectra.krylov.linop import DenseOperator
from support.models import get_case
from support.oracles import case_hessian, planted_symmetric


def _index(op, block) -> torch.Tensor:
    """Flat indices of a block's coordinates in the operator's parameter vector."""
    idx = torch.arange(op.dim)
    return block.gather(lambda n: idx[op.param_slice(n)])


@pytest.mark.parametrize("batched", [True, False])
def test_block_matrices_are_the_principal_submatrices(batched):
    """Tensor, head-slice and composite (layer) blocks of the causal transformer: every entry of H_bb to
    1e-12 of the dense Hessian, with vectorised and looped backwards alike."""
    case = get_case("sdpa-lm")
    H = case_hessian("sdpa-lm")
    op = HessianOperator(case.model, case.batches, case.loss, dtype=torch.float64)
    op._batched_ok, op._exact_mode = batched, "batched" if batched else "loop"  # no timing: both paths
    blocks = parameter_blocks(op)
    q = next(b for b in blocks if b.param.endswith("q.weight") or "q_proj" in b.param or "qkv" in b.param)
    blocks = blocks + head_blocks(op, q.param, 2) + layer_blocks(op)
    mats, count = block_matrices(op, blocks)
    scale = float(H.abs().max())
    for b, m in zip(blocks, mats, strict=True):
        idx = _index(op, b)
        assert float((m - H[idx][:, idx]).abs().max()) <= 1e-12 * scale, b.name
    cols = sum(b.numel for b in blocks) * len(case.batches)
    assert count == (cols if not batched else count) and (count < cols) == batched


def test_exact_block_spectra_eigenvalues_and_views():
    case = get_case("mlp")
    H = case_hessian("mlp")
    op = HessianOperator(case.model, case.batches, case.loss, dtype=torch.float64)
    blocks = parameter_blocks(op)
    seen = []
    spectra, count = exact_block_spectra(op, blocks, progress=seen.append)
    # a 3 KB graph: vectorised backwards, one per block and batch
    assert seen == [b.name for b in blocks] and count == len(blocks) * len(case.batches)
    # a memory cap below the largest block: one group per block, the same eigenvalues
    capped, _ = exact_block_spectra(op, blocks, max_bytes=8 * 16 * 16)
    for a, b in zip(spectra, capped, strict=True):
        np.testing.assert_allclose(a.eigenvalues, b.eigenvalues, rtol=0, atol=1e-15)
    for b, s in zip(blocks, spectra, strict=True):
        idx = _index(op, b)
        ev = torch.linalg.eigvalsh(H[idx][:, idx]).numpy()
        assert np.abs(s.eigenvalues - ev).max() <= 1e-12 * np.abs(ev).max()
        assert s.dim == b.numel and s.num_matvecs == b.numel and s.asymmetry < 1e-12
        assert s.trace == pytest.approx(ev.sum(), abs=1e-12 * np.abs(ev).sum()) and s.trace_stderr == 0.0
        assert s.nodes.shape == s.weights.shape == (1, b.numel) and s.weights.sum() == pytest.approx(1.0)
        assert s.top[0] == s.lambda_max == s.ritz_max == s.eigenvalues[-1] and s.bottom[0] == s.ritz_min
        assert s.ritz_min == s.eigenvalues[0] and s.converged


def test_dense_spectrum_of_a_planted_operator_and_the_hessian():
    lam = np.linspace(-3.0, 7.0, 40)
    ex = dense_spectrum(DenseOperator(planted_symmetric(lam, seed=2)), top_k=3)
    assert np.abs(ex.eigenvalues - lam).max() < 1e-12 and ex.num_matvecs == 40
    assert ex.top == pytest.approx(lam[::-1][:3]) and ex.bottom == pytest.approx(lam[:3])
    d = ex.density(num_points=400)
    assert d.integral() == pytest.approx(1.0, abs=1e-6)
    case = get_case("mlp")
    op = HessianOperator(case.model, case.batches, case.loss, dtype=torch.float64)
    ex = dense_spectrum(op)
    exact = torch.linalg.eigvalsh(case_hessian("mlp")).numpy()
    assert np.abs(ex.eigenvalues - exact).max() < 1e-12 * np.abs(exact).max() and ex.num_matvecs == op.dim
    doc = ex.to_dict()
    assert doc["method"] == "exact" and doc["converged"] and len(doc["eigenvalues"]) == op.dim
    with pytest.raises(ValueError):
        ExactSpectrum.from_eigenvalues([np.nan])


def test_probe_goes_exact_where_cheaper_and_says_so():
    """The 419-parameter MLP with the default budget (10 x 50 = 500 >= 419): the whole spectrum is exact
    (419 HVPs instead of Lanczos <= 150 + SLQ 500) and so is every block; a 4 x 10 budget keeps the
    256- and 80-parameter blocks on SLQ and the rest exact; exact=False estimates everything."""
    case = get_case("mlp")
    exact = torch.linalg.eigvalsh(case_hessian("mlp")).numpy()
    rep = run_hessian(case.model, case.batches, case.loss, HessianSettings(top_k=3, dtype="float64"))
    assert rep.exact_full and rep.cost.exact_full and rep.cost.exact_hvps == 419
    assert rep.cost.lanczos_hvps == rep.cost.slq_hvps == 0 and rep.cost.block_lockstep_calls == 0
    assert rep.lanczos is rep.density and np.abs(np.array(rep.lanczos.top) - exact[::-1][:3]).max() < 1e-12
    assert rep.exact_block_names == [b.name for b in rep.blocks] and rep.cost.exact_blocks == 6
    assert rep.num_hvps == rep.cost.total_hvps == 419 + 6
    doc = rep.to_dict()
    assert doc["exact_full"] and doc["num_exact_blocks"] == 6 and doc["lanczos"]["method"] == "exact"
    assert {b["method"] for b in doc["blocks"]} == {"exact"}
    assert "exact full spectrum 419" in rep.cost.describe() and "6 exact blocks" in rep.cost.describe()

    small = HessianSettings(top_k=3, probes=4, steps=10, block_probes=4, block_steps=10, dtype="float64")
    rep = run_hessian(case.model, case.batches, case.loss, small)
    assert not rep.exact_full and rep.lanczos.converged  # 419 > 4 x 10: Lanczos + SLQ
    methods = {r["name"]: r["method"] for r in rep.block_summary()}
    assert methods == {"0.weight": "slq", "0.bias": "exact", "2.weight": "slq", "2.bias": "exact",
                       "4.weight": "slq", "4.bias": "exact"}  # fmt: skip
    assert rep.cost.exact_columns == 16 + 16 + 3 and rep.cost.block_backwards == 4 * 10 * 3
    H = case_hessian("mlp")
    for b, r in zip(rep.blocks, rep.block_results, strict=True):
        if isinstance(r, ExactSpectrum):
            idx = _index(HessianOperator(case.model, case.batches, case.loss), b)
            ev = torch.linalg.eigvalsh(H[idx][:, idx]).numpy()
            assert np.abs(r.eigenvalues - ev).max() < 1e-12 * np.abs(ev).max()
    # the SLQ blocks draw the probes they would draw among all blocks (seeds by block index)
    off = run_hessian(
        case.model, case.batches, case.loss, HessianSettings(**{**small.to_dict(), "exact": False})
    )
    assert {r["method"] for r in off.block_summary()} == {"slq"} and not off.exact_full
    for a, b in zip(rep.block_results, off.block_results, strict=True):
        if not isinstance(a, ExactSpectrum):
            np.testing.assert_array_equal(a.nodes, b.nodes)


def test_a_failing_batched_backward_falls_back_to_columns_and_says_so(monkeypatch):
    """When ``is_grads_batched`` fails (an op without a batching rule), the operator's matmat and the exact
    block columns both turn batching off, note it once each, and stay exact; a double-backward error is
    not swallowed."""
    case = get_case("mlp")
    H = case_hessian("mlp")
    grad = torch.autograd.grad

    def no_batching(*args, **kwargs):
        if kwargs.get("is_grads_batched"):
            raise RuntimeError("no batching rule for this op")
        return grad(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", no_batching)
    op = HessianOperator(case.model, case.batches, case.loss, dtype=torch.float64)
    E = torch.eye(op.dim, dtype=torch.float64)[:, :6]
    assert float((op.matmat(E) - H[:, :6]).abs().max()) <= 1e-12 * float(H.abs().max())
    assert not op._batched_ok and any("looping over vectors" in n for n in op.notes)
    op = HessianOperator(case.model, case.batches, case.loss, dtype=torch.float64)
    op._exact_mode = "batched"
    blocks = parameter_blocks(op)
    mats, _ = block_matrices(op, blocks)
    for b, m in zip(blocks, mats, strict=True):
        idx = _index(op, b)
        assert float((m - H[idx][:, idx]).abs().max()) <= 1e-12 * float(H.abs().max()), b.name
    assert any("one column at a time" in n for n in op.notes)
    kernel = RuntimeError("derivative for aten::_scaled_dot_product_flash_attention_backward is not implemented")
    with pytest.raises(RuntimeError, match="flash_attention"):
        op._stop_batching(kernel, "batched backward", "looping")
