"""The "Recommendations" section of the report as GitHub markdown (PC layer, spectral clipping, priority,
thresholds and notes)."""

from __future__ import annotations

import math
from typing import Any

from hessian_spectra.analyses.advice.recommendations import Recommendations


def _f(x: Any, fmt: str = ".3g") -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and not math.isfinite(x):
        return "inf" if x > 0 else "nan"
    return format(x, fmt)


def render_markdown(recs: Recommendations, max_rows: int = 200) -> str:
    """The "Recommendations" section of the report as GitHub markdown."""
    s = recs.summary
    lines = [
        "## Recommendations",
        "",
        f"Optimizer: **{recs.optimizer}**, lr: {_f(recs.lr)}, weight decay: {_f(recs.weight_decay)}.",
        "",
        "### PC layer",
        "",
        f"{s['pc_apply']} of {s['pc_candidates']} candidate matrices would benefit from a PC layer at level "
        f"{s['pc_level']}. GMCN {_f(s['gmcn'])} (iid {_f(s['gmcn_iid'])}) -> predicted {_f(s['gmcn_predicted'])}; "
        f"extra cost {_f(s['pc_extra_flops_per_forward'] / 1e9, '.3f')} GFLOP per forward pass.",
        "",
        "| matrix | role | shape | mod. kappa | iid | ratio | level | predicted mod. kappa | PI margin | apply | reason |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    cands = [r for r in recs.pc if r.candidate]
    for r in cands[:max_rows]:
        lvl = r.level or s["pc_level"]
        lines.append(
            f"| `{r.name}` | {r.role} | {r.shape[0]}x{r.shape[1]} | {_f(r.modified_condition_number)} | "
            f"{_f(r.iid_modified_condition_number)} | {_f(r.modcond_ratio, '.2f')} | {r.level or '-'} | "
            f"{_f(r.predictions[lvl - 1].modified_condition_number)} | {_f(r.safety_margin, '.2f')} | "
            f"{'yes' if r.apply else 'no'} | {r.reason} |"
        )
    if len(cands) > max_rows:
        lines.append(f"\n({len(cands) - max_rows} more in recommendations.json)")
    lines += [
        "",
        "### Spectral clipping",
        "",
        "| group | c | matrices | max sigma | reason |",
        "|---|---|---|---|---|",
    ]
    for g in recs.clip_groups:
        lines.append(f"| {g.group} | {_f(g.c)} | {g.n_matrices} | {_f(g.max_sigma)} | {g.reason} |")
    lines += [
        "",
        "| matrix | group | sigma_max | MP edge | spikes | c | weight bound | NS steps (typ/worst) | soft-hard gap |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in recs.clip[:max_rows]:
        lines.append(
            f"| `{r.name}` | {r.group} | {_f(r.sigma_max)} | {_f(r.mp_edge)} | {r.n_spikes} | {_f(r.c)} | "
            f"{_f(r.weight_norm_bound)} | {r.ns_steps_typical}/{r.ns_steps} | {_f(r.soft_hard_gap['frobenius'], '.1%')} |"
        )
    if recs.priority is not None:
        lines += ["", "### Priority (high curvature and ill-conditioned first)", "",
                  "| rank | matrix | lambda_max | trace | mod. kappa / iid | score |", "|---|---|---|---|---|---|"]  # fmt: skip
        for i, p in enumerate(recs.priority[:max_rows], 1):
            lines.append(
                f"| {i} | `{p['name']}` | {_f(p['lambda_max'])} | {_f(p['trace'])} | {_f(p['modcond_ratio'], '.2f')} | "
                f"{_f(p['score'], '.2f')} |"
            )
    lines += ["", "### Thresholds", ""]
    for key, t in recs.thresholds.items():
        lines.append(f"- **{key}** = `{t['value']}`: {t['reason']}")
    if recs.notes:
        lines += ["", "### Notes", ""] + [f"- {n}" for n in recs.notes]
    return "\n".join(lines) + "\n"
