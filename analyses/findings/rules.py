"""The training advice, one function per kind: optimizer (from the heterogeneity verdict), the Adam-mini
partition, the PC layer and spectral clipping. Each reads report fields (plain dicts of report.json),
never the internals of the analyses that produced them, and returns a Finding or None.

The heterogeneity section is read through ``verdict``, ``verdict_rule`` and ``deciding``: a list of
``{"quantity", "value", "threshold", "fired"}`` (optional ``"stderr"``, ``"key"``) naming what decided the
verdict. The advice's wording follows the verdict it is given; only the deciding quantities that fired
are cited as the reason, so a printed number never points the other way.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from hessian_spectra.analyses.findings.model import SECTIONS, ClipThresholds, Finding
from hessian_spectra.analyses.report.numbers import fmt, fmt_bytes, fmt_percent, fmt_ratio

__all__ = [
    "optimizer_advice",
    "adam_mini_advice",
    "pc_layer_advice",
    "clipping_advice",
    "lookup_clip_thresholds",
]

#: A deciding quantity this many times past its threshold (or 3 standard errors when one is given) is
#: a clear margin; nearer is a close call.
CLEAR_MARGIN = 1.5
GIB = 1024**3
COUNTER = (
    "heterogeneity predicts SGD lagging Adam in Zhang et al. (NeurIPS 2024); tuned SGD can match Adam at "
    "small batch sizes (arXiv 2506.12543), so this is a prediction to test, not a measurement"
)


def _margin(q: Mapping[str, Any]) -> tuple[bool, str]:
    """Whether a deciding quantity is clearly on its side of the threshold, and the words saying so."""
    value, thr, err = q.get("value"), q.get("threshold"), q.get("stderr")
    if value is None or thr is None:
        return False, f"{q.get('quantity')}: no threshold given"
    if err:
        clear = abs(value - thr) >= 3 * err
        return clear, f"{q['quantity']} {fmt(value, 3)} +- {fmt(err, 2)} vs threshold {fmt(thr, 3)}"
    ratio = value / thr if thr else math.inf
    clear = ratio >= CLEAR_MARGIN if q.get("fired") else ratio <= 1 / CLEAR_MARGIN
    return clear, f"{q['quantity']} {fmt(value, 3)} = {fmt(ratio, 2)}x its threshold {fmt(thr, 3)}"


def _cite(q: Mapping[str, Any]) -> str:
    side = ">=" if q.get("fired") else "<"
    return f"{q['quantity']} {fmt(q.get('value'), 3)} {side} {fmt(q.get('threshold'), 3)}"


def verdict_reasons(het: Mapping[str, Any]) -> list[str]:
    """What to print as the reason for the verdict: the deciding quantities that fired for a
    heterogeneous verdict, all of them (each below its threshold) for a homogeneous one, the rule else."""
    deciding = [q for q in het.get("deciding") or [] if isinstance(q, Mapping)]
    if het.get("verdict") == "heterogeneous":
        chosen = [q for q in deciding if q.get("fired")]
    elif het.get("verdict") == "homogeneous":
        chosen = deciding
    else:
        chosen = []
    return [_cite(q) for q in chosen] or [f"rule: {het.get('verdict_rule')}"]


def optimizer_advice(
    het: Mapping[str, Any] | None, partition: Mapping[str, Any] | None = None
) -> Finding | None:
    """Adam vs SGD from the heterogeneity verdict (Zhang et al. 2024: SGD lags Adam on heterogeneous
    block spectra, matches it on homogeneous ones)."""
    if not het or not het.get("verdict") or het["verdict"] == "single block":
        return None
    verdict = str(het["verdict"])
    deciding = [q for q in het.get("deciding") or [] if isinstance(q, Mapping)]
    fired = [q for q in deciding if q.get("fired")]
    evidence: dict[str, Any] = {"verdict": verdict, "rule": het.get("verdict_rule")}
    evidence.update({q.get("key") or q["quantity"]: q.get("value") for q in deciding})
    anchor = SECTIONS["heterogeneity"]
    if verdict == "heterogeneous":
        cited = [_cite(q) for q in fired] or [f"rule: {het.get('verdict_rule')}"]
        drivers = _top_drivers(het)
        if drivers:
            cited.append(
                "driven most by "
                + ", ".join(f"{d['group']} ({fmt(d['effect'], 2)} decades, {d['num_blocks']} blocks)" for d in drivers)
            )
            evidence["drivers"] = [d["group"] for d in drivers]
        margins = [_margin(q) for q in fired]
        clear = bool(margins) and any(c for c, _ in margins)
        how = "; ".join(m for _, m in margins) or "no deciding quantity given"
        mini = (
            ", or Adam-mini with the attached partition (next action)"
            if partition and partition.get("file")
            else ""
        )
        return Finding(
            kind="optimizer",
            statement=f"Block Hessian spectra are heterogeneous ({'; '.join(cited)}): SGD is likely to lag Adam here.",
            evidence=evidence, confidence="medium" if clear else "low",
            confidence_reason=f"{how}; {COUNTER}" if clear else f"close to the threshold: {how}; {COUNTER}",
            action=f"Train with an adaptive optimizer, not plain SGD: AdamW{mini}.", anchor=anchor, priority=10,
        )  # fmt: skip
    if verdict == "homogeneous":
        margins = [_margin(q) for q in deciding]
        clear = bool(margins) and all(c for c, _ in margins)
        how = "; ".join(m for _, m in margins) or "no deciding quantity given"
        below = "; ".join(_cite(q) for q in deciding) or f"rule: {het.get('verdict_rule')}"
        return Finding(
            kind="optimizer",
            statement=f"Block Hessian spectra are homogeneous ({below}): SGD with momentum may train as well as Adam here.",
            evidence=evidence, confidence="medium" if clear else "low",
            confidence_reason=f"{how}; {COUNTER}" if clear else f"close to the threshold: {how}; {COUNTER}",
            action="SGD with momentum is worth a tuned try (it keeps no second moments); AdamW stays the safe default.",
            anchor=anchor, priority=30,
        )  # fmt: skip
    return Finding(
        kind="optimizer", statement=f"Heterogeneity verdict: {verdict} ({het.get('verdict_rule')}); no optimizer advice follows from it.",
        evidence=evidence, confidence="low", confidence_reason="the verdict is neither heterogeneous nor homogeneous",
        anchor=anchor,
    )  # fmt: skip


def _top_drivers(het: Mapping[str, Any], n: int = 3) -> list[dict[str, Any]]:
    """The groups that move the verdict's statistic most (leave-one-group-out ``effect`` > 0, largest
    first): the same ranking the report's heterogeneity section prints, never a JS convention's."""
    rows = (het.get("drivers") or {}).get("statistic") or []  # ranked by effect by the analysis
    return [d for d in rows if (d.get("effect") or 0) > 0][:n]


def adam_mini_advice(
    partition: Mapping[str, Any] | None, het: Mapping[str, Any] | None = None
) -> Finding | None:
    """The Adam-mini partition's learning rates and optimizer memory vs AdamW (when a partition was built)."""
    if not partition or not partition.get("summary"):
        return None
    s = partition["summary"]
    state = s.get("optimizer_state") or {}
    adamw = (state.get("adamw") or {}).get("fp32_bytes")
    mini = (state.get("partition") or {}).get("fp32_bytes")
    saving = state.get("saving_fraction")
    if not adamw or mini is None:
        return None
    evidence = {
        "learning_rates": s.get("num_learning_rates"), "n_params": s.get("num_params"),
        "learning_rate_share": s.get("learning_rate_share"), "optimizer_state_adamw_gib": adamw / GIB,
        "optimizer_state_adam_mini_gib": mini / GIB, "saving_fraction": saving,
        "unresolved_tensors": s.get("num_unresolved"),
    }  # fmt: skip
    unresolved = ""
    if s.get("num_unresolved"):
        unresolved = f"; {s['num_unresolved']} tensors no rule covers keep one learning rate per coordinate"
    statement = (
        f"Adam-mini partition: {fmt(s.get('num_learning_rates'))} learning rates for {fmt(s.get('num_params'))} "
        f"parameters ({fmt_percent(s.get('learning_rate_share'))}); fp32 optimizer state {fmt_bytes(mini)} vs "
        f"{fmt_bytes(adamw)} for AdamW (saves {fmt_percent(saving)}){unresolved}."
    )
    verdict = (het or {}).get("verdict")
    action = (
        f"To keep per-block adaptivity with {fmt_percent(saving)} less optimizer memory, use Adam-mini with the "
        f"attached {partition.get('file', 'partition')} (adam-mini 1.1.1 configuration inside)."
    )
    return Finding(
        kind="adam-mini", statement=statement, evidence=evidence,
        confidence="medium" if verdict == "heterogeneous" else "low",
        confidence_reason="learning-rate and memory counts are exact; that Adam-mini trains as well as AdamW is "
        "the Adam-mini paper's empirical result" + ("" if verdict == "heterogeneous" else
                                                   ", and the blocks here are not heterogeneous"),
        action=action, anchor=SECTIONS["partition"], attachment=partition.get("file"),
        priority=20 if verdict == "heterogeneous" else 40,
    )  # fmt: skip


def pc_layer_advice(recs: Mapping[str, Any] | None) -> Finding | None:
    """PC layer (polynomial preconditioning) from the modified condition numbers against iid."""
    if not recs or not (recs.get("summary") or {}).get("pc_candidates"):
        return None
    s = recs["summary"]
    applied = [r for r in recs.get("pc") or [] if r.get("apply")]
    ratio = (s["gmcn"] / s["gmcn_iid"]) if s.get("gmcn") and s.get("gmcn_iid") else None
    evidence = {
        "pc_apply": s["pc_apply"], "pc_candidates": s["pc_candidates"], "gmcn": s.get("gmcn"),
        "gmcn_iid": s.get("gmcn_iid"), "gmcn_ratio": ratio, "predicted_gmcn": s.get("gmcn_predicted"),
        "pc_level": s.get("pc_level"), "threshold": (recs.get("thresholds") or {}).get("pc_modcond_ratio", {}).get("value"),
    }  # fmt: skip
    anchor = SECTIONS["pc"]
    if not applied:
        return Finding(
            kind="pc-layer",
            statement=f"No PC layer indicated: all {s['pc_candidates']} MLP/attention-output matrices are within 2x "
            f"of an iid matrix's modified condition number (GMCN {fmt(s.get('gmcn'), 3)} vs iid {fmt(s.get('gmcn_iid'), 3)}).",
            evidence=evidence, confidence="medium",
            confidence_reason="exact singular values; the 2x threshold is this tool's reading of the PC-layer paper",
            anchor=anchor,
        )  # fmt: skip
    worst = sorted(applied, key=lambda r: -(r.get("modcond_ratio") or 0))[:3]
    evidence["most_ill_conditioned"] = {r["name"]: r.get("modcond_ratio") for r in worst}
    median = sorted(r.get("modcond_ratio") or 0 for r in applied)[len(applied) // 2]
    unsafe = [r["name"] for r in applied if r.get("safety_margin") is not None and r["safety_margin"] < 1]
    clear = median >= 2 * CLEAR_MARGIN
    reason = f"median mod. kappa / iid of the indicated matrices {fmt(median, 3)} (threshold 2)"
    reason += (
        "; the benefit (about 2x token efficiency at 1B) comes from the PC-layer paper, not from this model"
    )
    if unsafe:
        reason += f"; {len(unsafe)} matrices need a warm-started power iteration (PI margin < 1)"
    flops = s.get("pc_extra_flops_per_forward")
    return Finding(
        kind="pc-layer",
        statement=f"A PC layer at level {s['pc_level']} ({recs.get('optimizer')}) is indicated for {s['pc_apply']} of "
        f"{s['pc_candidates']} MLP/attention-output matrices: GMCN {fmt(s.get('gmcn'), 3)} is {fmt_ratio(ratio)} "
        f"the iid value {fmt(s.get('gmcn_iid'), 3)}; level {s['pc_level']} predicts {fmt(s.get('gmcn_predicted'), 3)} "
        "(most ill-conditioned: " + ", ".join(f"`{r['name']}` {fmt_ratio(r.get('modcond_ratio'))}" for r in worst) + ").",
        evidence=evidence, confidence="medium" if clear else "low", confidence_reason=reason,
        action=f"Add a PC layer (level {s['pc_level']}) to the {s['pc_apply']} matrices marked 'apply'"
        + (f" (+{fmt(flops / 1e9, 3)} GFLOP per forward pass)" if flops else "") + ".",
        anchor=anchor, priority=50,
    )  # fmt: skip


def lookup_clip_thresholds(recs: Mapping[str, Any] | None) -> ClipThresholds | None:
    """The recommendations' per-group c (the SPECTRA paper's value for the model size, raised for weight
    headroom): the default clip source."""
    groups = tuple((recs or {}).get("clip_groups") or ())
    if not groups:
        return None
    return ClipThresholds(
        source="lookup", groups=groups, confidence="low",
        confidence_reason="c is the SPECTRA paper's default for the model size, not a measurement: the clip acts "
        "on updates, which one checkpoint does not show (consecutive checkpoints or logged update spectra do)",
    )  # fmt: skip


def clipping_advice(thresholds: ClipThresholds | None) -> Finding | None:
    """Spectral-clipping thresholds per layer group, from whichever source supplied them."""
    if thresholds is None or not thresholds.groups:
        return None
    by_c: dict[float, list[str]] = {}
    for g in thresholds.groups:
        by_c.setdefault(g.get("c"), []).append(str(g.get("group")))
    parts = "; ".join(f"c = {fmt(c, 3)} for {', '.join(names)}" for c, names in by_c.items())
    evidence = {f"c ({g.get('group')})": g.get("c") for g in thresholds.groups}
    evidence.update({"source": thresholds.source, **thresholds.evidence})
    why = "; ".join(sorted({str(g.get("reason")) for g in thresholds.groups if g.get("reason")}))
    return Finding(
        kind="clipping", statement=f"Spectral clipping thresholds ({thresholds.source}): {parts}. Why: {why}.",
        evidence=evidence, confidence=thresholds.confidence, confidence_reason=thresholds.confidence_reason,
        action=f"If you clip updates spectrally, start from {parts}"
        + ("; measure update spectra to set c per group." if thresholds.source == "lookup" else "."),
        anchor=SECTIONS["clipping"], priority=60,
    )  # fmt: skip
