"""Recommendations from weight spectra: where a PC layer helps, which spectral-clip threshold to use, and
(with Hessian results) which blocks to look at first.

Inputs are plain: per matrix a name, a role (see :mod:`hessian_spectra.weights.roles`), a shape and its singular values
(:class:`hessian_spectra.analyses.advice.inputs.MatrixInput`). The per-matrix findings come from
:mod:`hessian_spectra.analyses.advice.pc_advice` and :mod:`hessian_spectra.analyses.advice.clip_advice`; this
module gathers them into :class:`Recommendations` and ranks them against Hessian results.
Every threshold used is recorded in the output with the reason for it (:data:`THRESHOLDS`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from hessian_spectra.analyses.advice import pc_layer
from hessian_spectra.analyses.advice.clip_advice import (
    CLIP_C_LARGE,
    CLIP_C_MAX,
    CLIP_C_SMALL,
    CLIP_HEADROOM,
    CLIP_STEP_CHANGE_WARN,
    ClipGroup,
    ClipMatrixReport,
    clip_group,
    clip_groups,
    clip_report,
)
from hessian_spectra.analyses.advice.inputs import MatrixInput
from hessian_spectra.analyses.advice.pc_advice import (
    MODCOND_RATIO_THRESHOLD,
    PAPER_LEVEL,
    PC_DEFAULT_ROLES,
    PCMatrixReport,
    _check_optimizer,
    pc_report,
)
from hessian_spectra.errors import InputError
from hessian_spectra.io import json_safe

THRESHOLDS: dict[str, dict[str, Any]] = {
    "pc_roles": {
        "value": sorted(PC_DEFAULT_ROLES),
        "reason": "the PC-layer paper preconditions MLP gate/up/down and the attention output; Q/K/V only on "
        "request (include_qkv); never embeddings, the head or norms",
    },
    "pc_modcond_ratio": {
        "value": MODCOND_RATIO_THRESHOLD,
        "reason": "apply PC when sigma_1 / mean(bottom 10% of sigma) is at least 2x that of an iid matrix of the "
        "same shape (Marchenko-Pastur): the matrix has a heavier small-singular-value tail than a random "
        "initialisation, which is the ill-conditioning PC targets",
    },
    "pc_level": {
        "value": dict(PAPER_LEVEL),
        "reason": "the paper's settings: level 4 with AdamW; level 2 with Muon, whose orthogonalised updates already "
        "equalise singular values of the update",
    },
    "pc_safe_ratio": {
        "value": {k: round(pc_layer.safe_ratio(k), 4) for k in pc_layer.LEVELS},
        "reason": f"PC is safe while sigma_max / s_hat stays below this: beyond it p_k amplifies the top direction "
        f"past p_max + {pc_layer.SAFE_AMPLIFY_TOL} or shrinks it by more than {pc_layer.SAFE_SHRINK_TOL:.0%} "
        f"(level 4: p(1.2) = 1.25)",
    },
    "clip_c": {
        "value": {"small": CLIP_C_SMALL, "large": CLIP_C_LARGE, "max_validated": CLIP_C_MAX},
        "reason": "SPECTRA used c = 5 at 160M and c = 10 at >= 0.78B parameters (results flat for c in 5-50, c = 1 "
        f"hurts); c is raised when the weight bound c/lambda*sqrt(max(1, r/c)) would sit below {CLIP_HEADROOM}x "
        "a group's current sigma_max",
    },
    "clip_step_change": {
        "value": CLIP_STEP_CHANGE_WARN,
        "reason": "a clipped update moves sigma_max by at most lr*c*sqrt(max(1, r/c)); more than this fraction of "
        "today's sigma_max per step is flagged",
    },
    "clip_ns_steps": {
        "value": "ceil(ln(1 + (sigma/c)^2) / ln 2.25) + 4",
        "reason": "coupled Newton-Schulz grows a small eigenvalue by 2.25 per step, then converges quadratically; "
        "accurate to 1e-5 (tested) for sigma_max/c <= 10. Given for the worst Adam-like update "
        "(|entries| <= 1, sigma <= sqrt(rows*cols)) and a typical one (sqrt(rows) + sqrt(cols))",
    },
}


@dataclass(frozen=True)
class Recommendations:
    """Everything ``spectra recommend`` writes: per-matrix PC and clip findings, groups, priorities."""

    optimizer: str
    lr: float | None
    weight_decay: float | None
    include_qkv: bool
    thresholds: dict[str, dict[str, Any]]
    pc: tuple[PCMatrixReport, ...]
    clip_groups: tuple[ClipGroup, ...]
    clip: tuple[ClipMatrixReport, ...]
    priority: tuple[dict[str, Any], ...] | None
    summary: dict[str, Any]
    notes: tuple[str, ...] = ()

    def to_dict(self, include_spectra: bool = False) -> dict[str, Any]:
        return json_safe(
            {
                "schema_version": "hessian-spectra/recommend/1",
                "optimizer": self.optimizer,
                "lr": self.lr,
                "weight_decay": self.weight_decay,
                "include_qkv": self.include_qkv,
                "thresholds": self.thresholds,
                "summary": self.summary,
                "notes": list(self.notes),
                "pc": [r.to_dict(include_spectra) for r in self.pc],
                "clip_groups": [g.to_dict() for g in self.clip_groups],
                "clip": [r.to_dict() for r in self.clip],
                "priority": None if self.priority is None else list(self.priority),
            }
        )


def priority_ranking(
    reports: Iterable[PCMatrixReport], hessian: Mapping[str, Mapping[str, float]]
) -> tuple[dict[str, Any], ...]:
    """Rank matrices so that blocks both high-curvature (lambda_max) and ill-conditioned (modified
    condition number / iid) come first: score = min of the two percentile ranks (ties by their product).

    Hessian keys are matched to matrix names exactly, or to the tensor name before a '[part]' suffix.
    Matrices without Hessian results follow, ordered by conditioning.
    """
    reports = list(reports)
    rows = []
    for r in reports:
        h = hessian.get(r.name) or hessian.get(r.name.split("[")[0])
        lam = None if h is None else h.get("lambda_max")
        rows.append({"name": r.name, "role": r.role, "modcond_ratio": r.modcond_ratio, "lambda_max": lam,
                     "trace": None if h is None else h.get("trace")})  # fmt: skip
    with_h = [x for x in rows if x["lambda_max"] is not None and math.isfinite(x["lambda_max"])]
    without = [x for x in rows if x not in with_h]
    if with_h:
        curv = _percentiles([x["lambda_max"] for x in with_h])
        cond = _percentiles([x["modcond_ratio"] for x in with_h])
        for x, a, b in zip(with_h, curv, cond, strict=True):
            x.update(
                curvature_pct=a, conditioning_pct=b, score=min(a, b), both_high=bool(a >= 0.5 and b >= 0.5)
            )
            x["_tie"] = a * b
        with_h.sort(key=lambda x: (x["score"], x["_tie"]), reverse=True)
        for x in with_h:
            del x["_tie"]
    for x in without:
        x.update(curvature_pct=None, conditioning_pct=None, score=None, both_high=False)
    without.sort(key=lambda x: x["modcond_ratio"], reverse=True)
    return tuple(json_safe(x) for x in with_h + without)


def _percentiles(values: list[float]) -> list[float]:
    """Percentile rank in (0, 1] (average rank for ties)."""
    from scipy.stats import rankdata

    return [float(v) / len(values) for v in rankdata(values, method="average")]


def recommend(
    items: Iterable[MatrixInput],
    optimizer: str = "adamw",
    lr: float | None = None,
    weight_decay: float | None = None,
    hessian: Mapping[str, Mapping[str, float]] | None = None,
    include_qkv: bool = False,
    n_params: int | None = None,
    seed: int = 0,
    clip_thresholds: Iterable[ClipGroup] | None = None,
) -> Recommendations:
    """PC-layer and spectral-clipping recommendations for a set of matrices (see the module docstring).

    ``clip_thresholds``: clip thresholds per group measured from a run's updates
    (:func:`hessian_spectra.analyses.advice.clip_series.clip_from_updates`, ``spectra track``); they
    replace the paper-default lookup for the groups they cover."""
    optimizer = _check_optimizer(optimizer)
    for label, val in (("lr", lr), ("weight_decay", weight_decay)):
        if val is not None and (not math.isfinite(val) or val < 0):
            raise InputError(None, f"{label} must be a non-negative number, got {val}")
    items = [m for m in items if m.role not in ("norm", "bias") and min(m.shape) > 1]
    pcs = tuple(pc_report(m, optimizer, include_qkv, seed) for m in items)
    groups = clip_groups(items, weight_decay, lr, n_params)
    if clip_thresholds is not None:
        from dataclasses import replace

        measured = {g.group: g for g in clip_thresholds}
        groups = tuple(
            replace(g, c=measured[g.group].c, reason=measured[g.group].reason) if g.group in measured else g
            for g in groups
        )
    c_of = {g.group: g.c for g in groups}
    clips = tuple(clip_report(m, c_of[clip_group(m.role)], weight_decay, lr) for m in items)
    cands = [r for r in pcs if r.candidate]
    level = PAPER_LEVEL[optimizer]
    notes = []

    def gmean(vals: list[float]) -> float | None:
        vals = [v for v in vals if math.isfinite(v) and v > 0]
        return float(math.exp(np.mean(np.log(vals)))) if vals else None

    summary = {
        "n_matrices": len(pcs),
        "pc_candidates": len(cands),
        "pc_apply": sum(r.apply for r in cands),
        "pc_level": level,
        "gmcn": gmean([r.modified_condition_number for r in cands]),
        "gmcn_iid": gmean([r.iid_modified_condition_number for r in cands]),
        "gmcn_predicted": gmean([r.predictions[level - 1].modified_condition_number for r in cands]),
        "pc_extra_flops_per_forward": sum(r.extra_flops["total"] for r in cands if r.apply and r.extra_flops),
        "clip_spikes": sum(r.n_spikes for r in clips),
        "clip_bound_binding": sum(r.bound_ratio > 1 / CLIP_HEADROOM for r in clips),
    }
    if not cands:
        notes.append("no PC candidates (no MLP or attention-output matrices were recognised by role)")
    if any(r.safety_margin is not None and r.safety_margin < 1 for r in cands if r.apply):
        notes.append(
            "some matrices have a small spectral gap: cold power iteration under-estimates sigma_max; warm-start it"
        )
    big_steps = [
        r.name
        for r in clips
        if r.step_change_ratio is not None and r.step_change_ratio > CLIP_STEP_CHANGE_WARN
    ]
    if big_steps:
        notes.append(
            f"{len(big_steps)} matrices (e.g. {big_steps[0]}) can change their top singular value by more than "
            f"{CLIP_STEP_CHANGE_WARN:.0%} in one clipped step (lr*c*sqrt(max(1, r/c)) / sigma_max): lower lr or c"
        )
    if weight_decay is None:
        notes.append(
            "no weight decay given: clip thresholds use the paper defaults and no weight bound is reported"
        )
    priority = priority_ranking(pcs, hessian) if hessian is not None else None
    return Recommendations(
        optimizer,
        lr,
        weight_decay,
        include_qkv,
        THRESHOLDS,
        pcs,
        groups,
        clips,
        priority,
        summary,
        tuple(notes),
    )
