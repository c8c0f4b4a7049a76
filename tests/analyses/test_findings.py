"""Findings and actions (issue #15): each rule against hand-built report fields, the wording tied to the
verdict it is given, numbers that never point the other way, the clip-threshold hook, and ordering."""

from __future__ import annotations

import pytest
from hessian_spectra.analyses.findings import checks, rules
from hessian_spectra.analyses.findings.collect import build_findings, findings_and_actions
from hessian_spectra.analyses.findings.model import SECTIONS, ClipThresholds, Finding


def _het(verdict: str, value: float, stderr: float = 0.0, **extra) -> dict:
    """Heterogeneity fields as the analysis writes them: one deciding statistic, drivers by effect."""
    return {
        "verdict": verdict, "verdict_rule": "heterogeneous when sharpness-gap >= 0.8 decades ...",
        "deciding": [{"quantity": "sharpness-gap (decades)", "key": "sharpness-gap", "value": value,
                      "threshold": 0.8, "fired": value >= 0.8, "stderr": stderr}],
        "drivers": {"statistic": [{"group": "mlp", "num_blocks": 4, "effect": -0.01},
                                  {"group": "q", "num_blocks": 2, "effect": 0.4}],
                    "scales-kept": [{"group": "bias", "num_blocks": 9, "contribution": 0.05}]},
        **extra,
    }  # fmt: skip


def test_heterogeneous_verdict_advises_adam_and_cites_only_what_decided():
    f = rules.optimizer_advice(_het("heterogeneous", 1.5))
    assert "SGD is likely to lag Adam" in f.statement and f.action.startswith(
        "Train with an adaptive optimizer"
    )
    assert "sharpness-gap (decades) 1.5 >= 0.8" in f.statement
    # drivers are the statistic's (by effect), never a JS convention's; a negative effect is no driver
    assert "q (0.4 decades, 2 blocks)" in f.statement and "mlp" not in f.statement and "bias" not in f.statement
    assert f.confidence == "medium" and f.anchor == SECTIONS["heterogeneity"]


def test_homogeneous_verdict_wording_and_close_calls():
    f = rules.optimizer_advice(_het("homogeneous", 0.3))
    assert "SGD with momentum may train as well as Adam" in f.statement and f.confidence == "medium"
    assert "0.3 < 0.8" in f.statement
    close = rules.optimizer_advice(_het("homogeneous", 0.75))
    assert close.confidence == "low" and "close to the threshold" in close.confidence_reason
    near = rules.optimizer_advice(_het("heterogeneous", 0.85))
    assert near.confidence == "low"


def test_a_standard_error_decides_the_margin_when_given():
    assert rules.optimizer_advice(_het("heterogeneous", 0.9, stderr=0.05)).confidence == "low"  # 2 s.e. above
    assert rules.optimizer_advice(_het("heterogeneous", 0.9, stderr=0.01)).confidence == "medium"  # 10 s.e.


def test_other_verdicts_give_no_optimizer_advice():
    assert rules.optimizer_advice(None) is None
    assert rules.optimizer_advice({"verdict": "single block"}) is None
    f = rules.optimizer_advice({"verdict": "inconclusive", "verdict_rule": "r"})
    assert f.action is None and "inconclusive" in f.statement and f.confidence == "low"


def _partition(n_params: int, n_lr: int) -> dict:
    from hessian_spectra.analyses.partitions.partition import summarize  # noqa: F401 - documents the source

    return {"file": "partition.json", "summary": {
        "num_params": n_params, "num_learning_rates": n_lr, "learning_rate_share": n_lr / n_params,
        "num_unresolved": 0, "optimizer_state": {"adamw": {"fp32_bytes": 8 * n_params},
                                                 "partition": {"fp32_bytes": 4 * (n_params + n_lr)},
                                                 "saving_fraction": 1 - (n_params + n_lr) / (2 * n_params)}}}  # fmt: skip


def test_adam_mini_summary_numbers():
    f = rules.adam_mini_advice(_partition(1_000_000, 1_000), _het("heterogeneous", 4.0))
    assert f.evidence["learning_rates"] == 1000 and f.evidence["saving_fraction"] == pytest.approx(0.4995)
    assert "1000 learning rates for 1000000 parameters (0.1%)" in f.statement and "saves 50%" in f.statement
    assert "3.82 MiB vs 7.63 MiB" in f.statement and f.attachment == "partition.json" and f.priority == 20
    assert (
        rules.adam_mini_advice(_partition(1_000_000, 1_000), _het("homogeneous", 0.3)).confidence == "low"
    )
    assert rules.adam_mini_advice(None) is None


def _recs(apply: int) -> dict:
    pcs = [{"name": f"m{i}", "candidate": True, "apply": i < apply, "modcond_ratio": 6.0 - i, "safety_margin": 1.2}
           for i in range(4)]  # fmt: skip
    return {"optimizer": "adamw", "summary": {"pc_candidates": 4, "pc_apply": apply, "pc_level": 4, "gmcn": 20.0,
            "gmcn_iid": 5.0, "gmcn_predicted": 6.0, "pc_extra_flops_per_forward": 2e9}, "pc": pcs,
            "thresholds": {"pc_modcond_ratio": {"value": 2.0}},
            "clip_groups": [{"group": "mlp", "c": 5.0, "reason": "paper default"},
                            {"group": "attention", "c": 5.0, "reason": "paper default"}]}  # fmt: skip


def test_pc_layer_advice_with_and_without_candidates():
    f = rules.pc_layer_advice(_recs(2))
    assert "indicated for 2 of 4" in f.statement and "4x the iid value 5" in f.statement
    assert (
        f.action == "Add a PC layer (level 4) to the 2 matrices marked 'apply' (+2 GFLOP per forward pass)."
    )
    assert f.evidence["most_ill_conditioned"] == {"m0": 6.0, "m1": 5.0}
    none = rules.pc_layer_advice(_recs(0))
    assert none.action is None and none.statement.startswith("No PC layer indicated")


def test_clip_thresholds_come_from_the_lookup_or_from_a_plugged_source():
    doc = {"recommendations": _recs(0)}
    lookup = [f for f in build_findings(doc) if f.kind == "clipping"][0]
    assert (
        lookup.confidence == "low"
        and "c = 5 for mlp, attention" in lookup.statement
        and "(lookup)" in lookup.statement
    )

    def measured(d):
        return ClipThresholds("update spectra", ({"group": "mlp", "c": 12.0, "reason": "p99 of update sigma"},),
                              "medium", "3 consecutive checkpoints", {"checkpoints": 3})  # fmt: skip

    f = [f for f in build_findings(doc, clip_source=measured) if f.kind == "clipping"][0]
    assert "(update spectra): c = 12 for mlp" in f.statement and f.confidence == "medium"
    assert f.evidence["checkpoints"] == 3 and "measure update spectra" not in f.action
    assert not [f for f in build_findings(doc, clip_source=lambda d: None) if f.kind == "clipping"]


def test_curvature_checks():
    lz = {"lambda_max": 4.0, "lambda_min": -1.0, "converged": False, "steps": 20}
    found = {
        f.kind: f
        for f in checks.curvature_checks(
            {"lanczos": lz, "density": {"trace": 10.0, "trace_stderr": 5.0, "num_probes": 2}}
        )
    }
    assert found["sharpness"].evidence["stable_lr_bound"] == 0.5 and found["sharpness"].confidence == "low"
    assert found["negative-curvature"].evidence["ratio"] == 0.25
    assert found["estimate-quality"].action is not None
    ok = {f.kind for f in checks.curvature_checks({"lanczos": dict(lz, lambda_min=-0.001, converged=True)})}
    assert ok == {"sharpness"}  # |lambda_min| / lambda_max below 1%: no negative-curvature finding


def test_flat_blocks_prefer_the_heterogeneity_list_else_the_relative_rule():
    blocks = [{"name": "a", "lambda_max": 2.0, "lambda_min": -0.1}, {"name": "k.bias", "lambda_max": 1e-9,
              "lambda_min": -1e-9}, {"name": "b", "lambda_max": 1e-5, "lambda_min": 0.0}]  # fmt: skip
    doc = {"hessian": {"blocks": blocks}}
    assert list(checks.flat_blocks(doc)) == ["k.bias"]
    doc["heterogeneity"] = {"flat_blocks": [{"name": "b", "reason": "tokens absent"}]}
    assert checks.flat_blocks(doc) == {"b": "tokens absent"}
    f = checks.flat_block_finding(doc)
    assert f.kind == "flat-blocks" and "`b`" in f.statement


def test_actions_follow_priority_and_name_their_finding():
    doc = {
        "heterogeneity": _het("heterogeneous", 4.0),
        "partition": _partition(1000, 10),
        "recommendations": _recs(1),
    }
    found, actions = findings_and_actions(doc)
    assert [a["kind"] for a in actions] == ["optimizer", "adam-mini", "pc-layer", "clipping"]
    by_id = {f["id"]: f for f in found}
    assert all(by_id[a["finding"]]["action"] == a["statement"] for a in actions)


def test_a_finding_must_point_at_a_report_section():
    with pytest.raises(ValueError, match="section"):
        Finding("x", "s", {}, "high", "nowhere")
    with pytest.raises(ValueError, match="confidence"):
        Finding("x", "s", {}, "certain", SECTIONS["hessian"])


@pytest.mark.parametrize(
    ("share", "rand", "words"),
    [(0.95, 0.4, "are block-diagonal by head"), (0.884, 0.407, "mostly block-diagonal by head"),
     (0.6, 0.407, "not clearly block-diagonal")],
)  # fmt: skip
def test_head_structure_wording_follows_the_share_against_random(share, rand, words):
    """0.884 of the mass in per-head blocks against 0.407 for random partitions (the demo's GPT) is most of
    the way to block-diagonal: it must not read as 'not supported'."""
    st = {"by_role": {"qk": {"share": share, "random_share": rand}},
          "tensors": [{"role": "qk", "exact": False}]}  # fmt: skip
    f = checks.head_structure_finding(st)
    assert words in f.statement and f.evidence == {"head_share": share, "random_share": rand}
