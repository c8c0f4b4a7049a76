"""The "Recommendations" section as GitHub markdown (PC layer, spectral clipping, priority, thresholds,
notes): the same lines in recommendations.md and in the analyze report, every column a glossary entry."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hessian_spectra.analyses.findings.model import SECTIONS
from hessian_spectra.analyses.report.numbers import fmt, fmt_percent
from hessian_spectra.analyses.report.tables import code, heading, md_table

__all__ = ["recommendations_lines", "render_markdown"]


def recommendations_lines(rec: Mapping[str, Any], level: int = 2, max_rows: int = 200) -> list[str]:
    """Markdown lines of a recommendations dict (``Recommendations.to_dict()``)."""
    s = rec["summary"]
    sub = level + 1
    lines = [f"{'#' * level} Recommendations", ""]
    lines += [
        f"Optimizer: **{rec['optimizer']}**, lr: {fmt(rec.get('lr'))}, weight decay: {fmt(rec.get('weight_decay'))}.",
        "",
    ]
    lines += heading(sub, "PC layer", SECTIONS["pc"])
    flops = s.get("pc_extra_flops_per_forward") or 0
    lines += [
        f"{s['pc_apply']} of {s['pc_candidates']} candidate matrices would benefit from a PC layer at level "
        f"{s['pc_level']}. GMCN {fmt(s.get('gmcn'), 3)} (iid {fmt(s.get('gmcn_iid'), 3)}) -> predicted "
        f"{fmt(s.get('gmcn_predicted'), 3)}; extra cost {fmt(flops / 1e9, 3)} GFLOP per forward pass.",
        "",
    ]
    cands = [r for r in rec.get("pc") or [] if r.get("candidate")]
    rows = []
    for r in cands[:max_rows]:
        lvl = r.get("level") or s["pc_level"]
        pred = r["predictions"][lvl - 1]["modified_condition_number"] if r.get("predictions") else None
        rows.append([code(r["name"]), r["role"], f"{r['shape'][0]}x{r['shape'][1]}", r["modified_condition_number"],
                     r["iid_modified_condition_number"], r["modcond_ratio"], r.get("level") or "-", pred,
                     r.get("safety_margin"), r["apply"], r["reason"]])  # fmt: skip
    cols = ["matrix", "role", "shape", "modified_condition_number", "iid_modified_condition_number", "modcond_ratio",
            "pc_level", "predicted_modcond", "safety_margin", "apply", "reason"]  # fmt: skip
    lines += md_table(cols, rows, what="matrices") + _more(len(cands), max_rows)
    lines += heading(sub, "Spectral clipping", SECTIONS["clipping"])
    groups = rec.get("clip_groups") or []
    lines += md_table(["clip_group", "clip_c", "clip_source", "n_matrices", "group_max_sigma", "reason"],
                      [[g["group"], g["c"], g.get("source", "lookup"), g["n_matrices"], g["max_sigma"], g["reason"]]
                       for g in groups]) + [""]  # fmt: skip
    clips = rec.get("clip") or []
    rows = [[code(r["name"]), r["group"], r["sigma_max"], r["mp_edge"], r["n_spikes"], r["c"], r["weight_norm_bound"],
             f"{r['ns_steps_typical']}/{r['ns_steps']}", fmt_percent((r.get("soft_hard_gap") or {}).get("frobenius"))]
            for r in clips[:max_rows]]  # fmt: skip
    cols = ["matrix", "clip_group", "sigma_max", "mp_bulk_edge", "mp_n_spikes", "clip_c", "weight_bound", "ns_steps",
            "soft_hard_gap"]  # fmt: skip
    lines += md_table(cols, rows, what="matrices") + _more(len(clips), max_rows)
    pri = rec.get("priority")
    if pri is not None:
        lines += heading(sub, "Priority (high curvature and ill-conditioned first)", SECTIONS["priority"])
        rows = [[i, code(p["name"]), p.get("lambda_max"), p.get("trace"), p.get("modcond_ratio"), p.get("score")]
                for i, p in enumerate(pri[:max_rows], 1)]  # fmt: skip
        lines += md_table(
            ["rank", "matrix", "lambda_max", "trace", "modcond_ratio", "priority_score"],
            rows,
            what="matrices",
        )
        lines += _more(len(pri), max_rows)
    lines += [f"{'#' * sub} Thresholds", ""]
    lines += [f"- **{k}** = `{t['value']}`: {t['reason']}" for k, t in (rec.get("thresholds") or {}).items()]
    if rec.get("notes"):
        lines += ["", f"{'#' * sub} Notes", ""] + [f"- {n}" for n in rec["notes"]]
    return lines + [""]


def _more(n: int, max_rows: int) -> list[str]:
    return ["", f"({n - max_rows} more rows in the JSON)", ""] if n > max_rows else [""]


def render_markdown(recs: Any, max_rows: int = 200, *, title: str | None = None) -> str:
    """recommendations.md: the section above (from a Recommendations or its dict), then the glossary of
    every column it prints."""
    from hessian_spectra.analyses.glossary.core import glossary_markdown
    from hessian_spectra.analyses.report.markdown import used_terms

    rec = recs if isinstance(recs, Mapping) else recs.to_dict()
    lines = ([f"# {title}", ""] if title else []) + recommendations_lines(rec, max_rows=max_rows)
    lines += heading(2, "Glossary", SECTIONS["glossary"]) + glossary_markdown(used_terms(lines))
    return "\n".join(lines) + "\n"
