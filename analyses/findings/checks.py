"""Diagnostic findings: sharpness and negative curvature, estimates that did not converge, flat blocks,
per-head structure of Q/K, and weight matrices WeightWatcher would flag. Each reads report fields."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hessian_spectra.analyses.findings.model import SECTIONS, Finding
from hessian_spectra.analyses.report.numbers import fmt, fmt_percent

__all__ = ["FLAT_RELATIVE", "flat_blocks", "curvature_checks", "flat_block_finding", "head_structure_finding",
           "weights_alpha_finding"]  # fmt: skip

#: A block is flat when max |eigenvalue| <= this x the largest block lambda_max of the model.
FLAT_RELATIVE = 1e-6
#: |lambda_min| / lambda_max above this is reported as negative curvature.
NEGATIVE_RELATIVE = 0.01
#: Relative trace standard error above this is reported as an uncertain trace.
TRACE_RELATIVE_ERROR = 0.1


def flat_blocks(doc: Mapping[str, Any]) -> dict[str, str]:
    """Blocks whose Hessian is zero up to rounding, with the reason when known: the heterogeneity
    section's own ``flat_blocks`` list when it gives one, else max |eigenvalue| <= FLAT_RELATIVE x the
    largest block lambda_max."""
    het = doc.get("heterogeneity") or {}
    given = het.get("flat_blocks")
    if given is not None:
        out = {}
        for b in given:
            if isinstance(b, Mapping):
                out[str(b.get("name"))] = str(b.get("reason") or "Hessian zero up to rounding")
            else:
                out[str(b)] = "Hessian zero up to rounding"
        return out
    blocks = (doc.get("hessian") or {}).get("blocks") or []
    scale = max((abs(b.get("lambda_max") or 0.0) for b in blocks), default=0.0)
    if scale <= 0:
        return {}
    out = {}
    for b in blocks:
        top = max(abs(b.get("lambda_max") or 0.0), abs(b.get("lambda_min") or 0.0))
        if top <= FLAT_RELATIVE * scale:
            out[b["name"]] = (
                f"max |eigenvalue| {fmt(top, 2)} <= {FLAT_RELATIVE:g} x the largest block lambda_max"
            )
    return out


def curvature_checks(hess: Mapping[str, Any] | None) -> list[Finding]:
    """Sharpness (stable learning-rate bound), negative curvature, unconverged Lanczos, uncertain trace."""
    if not hess:
        return []
    out: list[Finding] = []
    lz, dens = hess.get("lanczos"), hess.get("density")
    anchor = SECTIONS["hessian"]
    if lz and lz.get("lambda_max"):
        lmax, lmin, ok = lz["lambda_max"], lz.get("lambda_min"), bool(lz.get("converged"))
        conf = ("high", "Lanczos converged (Ritz residuals below tolerance)") if ok else (
            "low", f"Lanczos did not converge in {lz.get('steps')} steps")  # fmt: skip
        if lmax > 0:
            out.append(Finding(
                kind="sharpness", statement=f"Sharpness lambda_max = {fmt(lmax)}: full-batch gradient descent on these "
                f"batches is stable only for learning rates below 2 / lambda_max = {fmt(2 / lmax)}.",
                evidence={"lambda_max": lmax, "stable_lr_bound": 2 / lmax, "converged": ok},
                confidence=conf[0], confidence_reason=conf[1], anchor=anchor,
            ))  # fmt: skip
        if lmin is not None and lmax > 0 and lmin < -NEGATIVE_RELATIVE * lmax:
            out.append(Finding(
                kind="negative-curvature", statement=f"Negative curvature: lambda_min = {fmt(lmin)} "
                f"(|lambda_min| / lambda_max = {fmt(abs(lmin) / lmax, 3)}): this point is not a minimum of the loss on "
                "these batches (usual early in training or on data unlike the training data).",
                evidence={"lambda_min": lmin, "lambda_max": lmax, "ratio": abs(lmin) / lmax},
                confidence=conf[0], confidence_reason=conf[1], anchor=anchor,
            ))  # fmt: skip
        if not ok:
            out.append(Finding(
                kind="estimate-quality", statement=f"Lanczos did not converge in {lz.get('steps')} steps: the extreme "
                "eigenvalues are estimates (residuals in report.json).",
                evidence={"converged": False, "steps": lz.get("steps")}, confidence="high",
                confidence_reason="the residuals are measured", action="Rerun with more --steps for converged extremes.",
                anchor=anchor, priority=80,
            ))  # fmt: skip
    if dens and dens.get("trace") and dens.get("trace_stderr") is not None:
        rel = dens["trace_stderr"] / abs(dens["trace"])
        if rel > TRACE_RELATIVE_ERROR:
            out.append(Finding(
                kind="estimate-quality", statement=f"The Hessian trace {fmt(dens['trace'])} has a standard error of "
                f"{fmt_percent(rel)} ({dens.get('num_probes')} probes).",
                evidence={"trace": dens["trace"], "trace_stderr": dens["trace_stderr"]}, confidence="high",
                confidence_reason="standard error over the probes", action="Rerun with more --probes for a tighter trace.",
                anchor=anchor, priority=85,
            ))  # fmt: skip
    return out


def flat_block_finding(doc: Mapping[str, Any]) -> Finding | None:
    """Blocks with no curvature on this data (e.g. a key bias under softmax, unused embedding rows)."""
    flat = flat_blocks(doc)
    if not flat:
        return None
    names = list(flat)
    shown = ", ".join(f"`{n}`" for n in names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return Finding(
        kind="flat-blocks", statement=f"{len(names)} blocks have a Hessian that is zero up to rounding: {shown}. They "
        "have no curvature on this data and are drawn as markers, not densities.",
        evidence={"flat": names, "reasons": flat}, confidence="medium",
        confidence_reason="block SLQ estimates; a key bias under softmax has exactly zero curvature",
        anchor=SECTIONS["blocks"],
    )  # fmt: skip


def head_structure_finding(st: Mapping[str, Any] | None) -> Finding | None:
    """Whether Q/K Hessians are block-diagonal by head (what Adam-mini's per-head Q/K blocks assume)."""
    roles = (st or {}).get("by_role") or {}
    qk = roles.get("qk") or {k: v for k, v in roles.items() if k in ("q", "k")}.get("q")
    if not qk or qk.get("share") is None:
        return None
    share, rand = qk["share"], qk.get("random_share") or 0.0
    exact = all(t.get("exact") for t in (st.get("tensors") or []) if t.get("role") in ("qk", "q", "k"))
    conf = "high" if exact else "medium"
    why = "every Hessian column of the tensors" if exact else "sampled heads (an estimate)"
    if share >= 0.9 and rand <= 0.6:
        statement = (f"Q/K Hessians are block-diagonal by head: {fmt(share, 3)} of their mass lies in per-head blocks "
                     f"(random partitions: {fmt(rand, 3)}), as Adam-mini's one-learning-rate-per-head rule assumes.")  # fmt: skip
    elif share >= rand + 0.5 * (1.0 - rand):
        statement = (f"Q/K Hessians are mostly block-diagonal by head: {fmt(share, 3)} of their mass lies in per-head "
                     f"blocks (random partitions: {fmt(rand, 3)}), more than halfway from random to exact; Adam-mini's "
                     "one learning rate per head fits, with some coupling across heads.")  # fmt: skip
    else:
        statement = (f"Q/K Hessians are not clearly block-diagonal by head: {fmt(share, 3)} of their mass lies in "
                     f"per-head blocks (random partitions: {fmt(rand, 3)}); per-head learning rates are not supported "
                     "by the curvature here.")  # fmt: skip
    return Finding(
        kind="head-structure", statement=statement, evidence={"head_share": share, "random_share": rand},
        confidence=conf, confidence_reason=why, anchor=SECTIONS["structure"],
    )  # fmt: skip


def weights_alpha_finding(w: Mapping[str, Any] | None, min_tail: int = 8) -> Finding | None:
    """Matrices whose power-law alpha WeightWatcher reads as over- (< 2) or under-trained (> 6)."""
    if not w:
        return None
    rows = [(m["name"], (m.get("metrics") or {}).get("alpha"), (m.get("metrics") or {}).get("n_tail"))
            for m in w.get("matrices") or []]  # fmt: skip
    fitted = [(n, a) for n, a, k in rows if a is not None and (k or 0) >= min_tail]
    low = [n for n, a in fitted if a < 2]
    high = [n for n, a in fitted if a > 6]
    if not low and not high:
        return None
    parts = []
    if low:
        parts.append(f"{len(low)} with alpha < 2 (over-trained in WeightWatcher's reading, e.g. `{low[0]}`)")
    if high:
        parts.append(f"{len(high)} with alpha > 6 (under-trained, e.g. `{high[0]}`)")
    return Finding(
        kind="weights-alpha", statement=f"Of {len(fitted)} matrices with a power-law tail of >= {min_tail} eigenvalues, "
        + " and ".join(parts) + ".",
        evidence={"alpha_below_2": low, "alpha_above_6": high, "fitted": len(fitted)}, confidence="low",
        confidence_reason="WeightWatcher's empirical reading of alpha; tails of a few dozen eigenvalues are noisy "
        "(see sigma_alpha)", anchor=SECTIONS["weights"],
    )  # fmt: skip
