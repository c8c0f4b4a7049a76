"""The Hessian probe (`spectra hessian`/`analyze` engine) against the exact dense Hessian of a tiny MLP."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spectra.guards import model_state_hash, training_flags
from spectra.hessian_probe import HessianSettings, run_hessian
from tests.models import get_case
from tests.oracles import case_hessian


@pytest.fixture(scope="module")
def probed():
    case = get_case("mlp")
    case.model.train()  # the probe must run in eval mode and give the train flags back
    before = (model_state_hash(case.model), training_flags(case.model))
    settings = HessianSettings(top_k=3, probes=12, steps=60, block_probes=12, block_steps=60, dtype="float64")
    seen = []
    report = run_hessian(
        case.model, case.batches, case.loss, settings, on_estimate=seen.append, progress=lambda *a: None
    )
    after = (model_state_hash(case.model), training_flags(case.model))
    return case, report, seen, before, after


def test_extreme_eigenvalues_match_the_dense_hessian(probed):
    case, report, _, _, _ = probed
    exact = torch.linalg.eigvalsh(case_hessian("mlp")).numpy()
    lz = report.lanczos
    assert lz.converged
    np.testing.assert_allclose(lz.top, exact[::-1][:3], rtol=1e-8)
    np.testing.assert_allclose(lz.bottom, exact[:3], rtol=1e-8)


def test_block_extremes_and_traces_match_exact_diagonal_blocks(probed):
    case, report, _, _, _ = probed
    H = case_hessian("mlp")
    offset = 0
    offsets = {}
    for name, p in case.model.named_parameters():
        offsets[name] = (offset, offset + p.numel())
        offset += p.numel()
    assert [b.param for b in report.blocks] == list(offsets)
    for block, row in zip(report.blocks, report.block_summary(), strict=True):
        a, b = offsets[block.param]
        ev = torch.linalg.eigvalsh(H[a:b, a:b]).numpy()
        scale = max(abs(ev).max(), 1e-12)
        # blocks of at most 60 parameters: 60 Lanczos steps span the whole block, so extremes are exact
        if b - a <= 60:
            assert row["lambda_max"] == pytest.approx(ev[-1], abs=1e-8 * scale)
            assert row["lambda_min"] == pytest.approx(ev[0], abs=1e-8 * scale)
        else:  # Ritz values are interior: never outside the true range
            assert ev[0] - 1e-8 * scale <= row["lambda_min"] <= row["lambda_max"] <= ev[-1] + 1e-8 * scale
        exact_trace = float(ev.sum())
        assert abs(row["trace"] - exact_trace) <= 3 * row["trace_stderr"] + 1e-9 * scale * (b - a)


def test_cost_estimate_bounds_the_work_and_model_is_untouched(probed):
    case, report, seen, before, after = probed
    assert len(seen) == 1 and seen[0] == report.cost
    cost = report.cost
    assert cost.slq_hvps == 12 * 60
    assert cost.block_lockstep_calls == 12 * 60
    assert report.num_hvps <= cost.total_hvps
    assert report.num_hvps >= cost.slq_hvps + report.lanczos.num_matvecs
    assert before == after  # weights, buffers and every module's train flag


def test_same_seed_same_report():
    case = get_case("mlp")
    settings = HessianSettings(top_k=2, probes=3, steps=10, block_probes=2, block_steps=8, seed=7)
    a = run_hessian(case.model, case.batches, case.loss, settings).to_dict()
    b = run_hessian(case.model, case.batches, case.loss, settings).to_dict()
    for doc in (a, b):
        doc.pop("seconds")
    assert a == b
