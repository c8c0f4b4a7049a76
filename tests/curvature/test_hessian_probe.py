"""The Hessian probe (`spectra hessian`/`analyze` engine) against the exact dense Hessian of a tiny MLP."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hessian_spectra.curvature.guards import model_state_hash, training_flags
from hessian_spectra.curvature.probe import HessianSettings, run_hessian
from hessian_spectra.errors import InputError
from support.models import get_case
from support.oracles import case_hessian


@pytest.fixture(scope="module")
def probed():
    case = get_case("mlp")
    case.model.train()  # the probe must run in eval mode and give the train flags back
    before = (model_state_hash(case.model), training_flags(case.model))
    settings = HessianSettings(
        top_k=3, probes=12, steps=60, block_probes=12, block_steps=60, dtype="float64", exact=False
    )  # the estimators; the exact path is tested in test_exact_spectra.py
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


def test_block_trace_intervals_and_negative_mass_from_real_hvps(probed):
    """Every block states its trace and the mass of its density below zero with an interval (issue 18):
    exact for the biases, certified for the rank-30 output layer, Krylov-deflated estimates (t on 11
    residual probes) for the 80- and 256-parameter weight blocks."""
    from scipy.special import ndtr

    case, report, _, _, _ = probed
    H = case_hessian("mlp")
    off = _offsets(case.model)
    doc = report.to_dict()
    for row, res, jrow in zip(report.block_summary(), report.block_results, doc["blocks"], strict=True):
        a, b = off[row["param"]]
        ev = torch.linalg.eigvalsh(H[a:b, a:b]).numpy()
        ci, mass = row["trace_ci"], row["negative_mass"]
        assert jrow["trace_ci"] == ci and ci["level"] == 0.95 and mass["level"] == 0.95
        assert {"estimate", "stderr", "ci_low", "ci_high", "probes", "method"} <= set(ci)
        exact_mass = float(np.mean(ndtr(-ev / res.density_sigma())))
        if b - a < 30:  # the biases: the first probe's Krylov space is the whole block
            assert ci["method"] == "exact" and ci["ci_low"] == ci["ci_high"]
            assert ci["estimate"] == pytest.approx(ev.sum(), abs=1e-9 * max(abs(ev).max(), 1e-12) * (b - a))
            assert mass["method"] == "exact" and mass["estimate"] == pytest.approx(exact_mass, abs=1e-9)
        elif b - a <= 60:  # the output layer (48, rank 30): an invariant Krylov space of 31 vectors holds
            # every nonzero eigenvalue, the other probes' residuals are rounding: certified to rounding
            assert ci["method"] == "certificate" and ci["ci_high"] - ci["ci_low"] < 1e-12
            assert ci["ci_low"] - 1e-12 <= ev.sum() <= ci["ci_high"] + 1e-12
        else:
            assert ci["method"] in ("t", "t-skew") and ci["estimator"] == "slq-deflated" and ci["dof"] == 10
            assert ci["ci_low"] < ci["estimate"] < ci["ci_high"]
            # a single run: the deflated error is far inside 3 half-widths (95% each; this seed covers)
            assert abs(ci["estimate"] - ev.sum()) <= ci["ci_high"] - ci["ci_low"]
            assert mass["ci_low"] <= exact_mass <= mass["ci_high"]
    dens = doc["density"]
    assert dens["trace_ci"]["method"] in ("t", "t-skew") and dens["trace_ci"]["probes"] == 11
    assert dens["negative_mass"]["estimator"].startswith("slq-smoothed")
    assert HessianSettings(confidence=0.8).confidence == 0.8
    with pytest.raises(InputError, match="--confidence"):
        HessianSettings(confidence=1.5).validate()


def test_confidence_level_reaches_every_interval():
    case = get_case("mlp")
    settings = HessianSettings(top_k=1, probes=4, steps=6, block_probes=4, block_steps=6, confidence=0.8)
    doc = run_hessian(case.model, case.batches, case.loss, settings).to_dict()
    levels = {doc["density"]["trace_ci"]["level"], doc["density"]["negative_mass"]["level"]}
    levels |= {b[k]["level"] for b in doc["blocks"] for k in ("trace_ci", "negative_mass")}
    assert levels == {0.8}


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


# ---------------------------------------------------------------------------- blockings and explicit blocks


def _offsets(model):
    out, a = {}, 0
    for name, p in model.named_parameters():
        out[name] = (a, a + p.numel())
        a += p.numel()
    return out


def test_layer_blocking_matches_exact_layer_blocks_and_cost_counts_them():
    """``blocks="layer"`` on the MLP: one block per Sequential index (weight + bias), extremes and traces
    against the exact principal sub-matrices; the estimate's pruned backwards are what the run did."""
    case = get_case("mlp")
    H = case_hessian("mlp")
    settings = HessianSettings(
        full=False, block_probes=6, block_steps=100, blocks="layer", dtype="float64", seed=3, exact=False
    )
    report = run_hessian(case.model, case.batches, case.loss, settings)
    off = _offsets(case.model)
    assert [b.name for b in report.blocks] == ["0", "2", "4"]
    rows = report.block_summary()
    assert [r["param"] for r in rows] == [None] * 3 and rows[0]["params"] == ["0.weight", "0.bias"]
    for block, row in zip(report.blocks, rows, strict=True):
        idx = torch.cat([torch.arange(*off[p]) for p in block.params])
        ev = torch.linalg.eigvalsh(H[idx][:, idx]).numpy()
        scale = abs(ev).max()
        assert row["dim"] == idx.numel()
        if idx.numel() <= 100:  # the Krylov space is the whole block: extremes exact
            assert row["lambda_max"] == pytest.approx(ev[-1], abs=1e-8 * scale)
            assert row["lambda_min"] == pytest.approx(ev[0], abs=1e-8 * scale)
        else:
            assert ev[0] - 1e-8 * scale <= row["lambda_min"] <= row["lambda_max"] <= ev[-1] + 1e-8 * scale
        assert abs(row["trace"] - ev.sum()) <= 3 * row["trace_stderr"] + 1e-9 * scale * idx.numel()
    cost = report.cost
    dims = [96, 272, 51]
    assert cost.num_blocks == 3 and cost.block_lockstep_calls == 6 * 100
    assert cost.block_backwards == sum(6 * min(100, d) for d in dims)
    # measured: one pruned backward per block step and batch (a chain stops early when its Krylov space
    # is exhausted: the output layer's block has rank <= 30 here), never more than the estimate
    ran = sum(r.num_matvecs for r in report.block_results)
    assert report.num_block_backwards == ran * len(case.batches) <= cost.block_backwards * len(case.batches)
    assert report.block_results[1].steps_taken == (100,) * 6  # the 272-dim layer runs every step
    assert report.num_hvps == cost.total_hvps == cost.block_lockstep_calls  # one tick per lockstep step


def test_explicit_blocks_replace_the_blocking_and_are_checked():
    from hessian_spectra.curvature.block_builders import row_blocks
    from hessian_spectra.curvature.blocks import Block, CompositeBlock

    case = get_case("mlp")
    settings = HessianSettings(full=False, block_probes=2, block_steps=5, blocks="adam-mini")
    blocks = [
        CompositeBlock("w0+b2", (Block("0.weight", "0.weight", (16, 5)), Block("2.bias", "2.bias", (16,)))),
        *row_blocks(case.model, "4.weight", size=1),
    ]
    report = run_hessian(
        case.model, case.batches, case.loss, settings, blocks=blocks, block_notes=("chosen by hand",)
    )
    assert [b.name for b in report.blocks] == [b.name for b in blocks]
    assert "chosen by hand" in report.notes and report.cost.num_blocks == 4
    doc = report.to_dict()
    assert doc["blocks"][0]["block"]["params"] == ["0.weight", "2.bias"] and doc["num_block_backwards"] > 0
    with pytest.raises(InputError, match="adam-mini"):
        run_hessian(case.model, case.batches, case.loss, settings)
    with pytest.raises(InputError, match="not one the operator"):
        run_hessian(case.model, case.batches, case.loss, settings, blocks=[Block("x", "nope", (3,))])
    with pytest.raises(InputError, match="shape"):
        run_hessian(case.model, case.batches, case.loss, settings, blocks=[Block("x", "4.bias", (4,))])
    with pytest.raises(InputError, match="--heads"):
        run_hessian(case.model, case.batches, case.loss, HessianSettings(blocks="head"))
    for bad in (HessianSettings(blocks="rows"), HessianSettings(max_blocks_per_tensor=0)):
        with pytest.raises(InputError):
            bad.validate()


def test_head_blocking_cuts_gqa_keys_by_the_query_head_dim():
    """Llama with 4 query heads and 2 KV heads of head_dim 2: K/V (4 rows) are 2 heads of 2 rows, not 4 of 1."""
    from hessian_spectra.curvature.hessian import HessianOperator
    from hessian_spectra.curvature.probe import choose_blocks

    case = get_case("llama")
    op = HessianOperator(case.model, case.batches, case.loss)
    blocks = choose_blocks(op, HessianSettings(blocks="head", n_heads=4))
    by_param: dict[str, list] = {}
    for b in blocks:
        by_param.setdefault(b.param, []).append(b)
    attn = "model.layers.0.self_attn."
    assert [b.numel for b in by_param[attn + "q_proj.weight"]] == [2 * 8] * 4
    for kv in ("k_proj.weight", "v_proj.weight"):
        assert [(b.start, b.stop) for b in by_param[attn + kv]] == [(0, 2), (2, 4)]
    assert len(by_param[attn + "o_proj.weight"]) == 1
