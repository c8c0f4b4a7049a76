"""report.md: the document's sections (title, paragraphs, tables), shared with the HTML page, rendered as
GitHub markdown."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hessian_spectra.analyses.report.document import _g, block_rows, ci_text

__all__ = ["render_markdown"]


def _md_table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_g(c) if not isinstance(c, str) else c for c in r) + " |" for r in rows]
    return lines


def _sections(doc: Mapping[str, Any]) -> list[tuple[str, list[str], list[tuple[list[str], list[list[Any]]]]]]:
    """(title, paragraphs, tables) per section; shared by the markdown and HTML renderers."""
    out = []
    out.append(("Summary", list(doc.get("findings", [])), []))
    het = doc.get("heterogeneity")
    if doc.get("hessian"):
        rows = [
            [f"`{r['name']}`", r["group"], r["layer"] if r["layer"] is not None else "-", r["dim"], r["method"],
             r["lambda_max"], r["lambda_min"], ci_text(r["trace_ci"]) if r.get("trace_ci") else r["trace"],
             ci_text(r.get("negative_mass")), "flat" if r["flat"] else ("yes" if r["in_js"] else "no")]
            for r in block_rows(doc)
        ]  # fmt: skip
        settings = doc["hessian"].get("settings") or {}
        blocking = settings.get("blocks", "tensor")
        level = f"{100 * float(settings.get('confidence', 0.95)):g}%"
        paras = [
            f"Blocks: `{blocking}` ({len(doc['hessian']['blocks'])} blocks). Cost estimate: "
            f"{doc['hessian']['cost_estimate']['total_hvps']} HVPs (upper bound). `exact`: every eigenvalue of the "
            "block from its columns (blocks of at most probes x steps parameters); `slq`: block SLQ estimate.",
            f"Traces: estimate [{level} interval] over the block's probes (Student t; Krylov-deflated SLQ: "
            "the first probe's Lanczos basis is summed exactly and the others estimate the rest; zero width when "
            "the spectrum is exact or the first probe's Krylov space spanned the block). Mass < 0: the fraction "
            "of the block's smoothed density (the one plotted) below zero, with its interval.",
        ]
        if doc["hessian"].get("notes"):
            paras += [f"Note: {n}" for n in doc["hessian"]["notes"]]
        out.append(
            ("Hessian blocks", paras,
             [(["block", "group", "layer", "dim", "method", "lambda_max", "lambda_min", f"trace [{level} CI]",
                "mass < 0", "in JS"], rows)]),
        )  # fmt: skip
    if het:
        out.append(("Block heterogeneity", *_heterogeneity_section(het)))
    st = doc.get("structure")
    if st:
        paras = [
            "Share of the squared Frobenius mass of each attention projection's Hessian block inside per-head "
            "sub-blocks, against random partitions of the same sizes (1 = exactly block-diagonal by head)."
        ] + [f"Note: {n}" for n in st.get("notes", [])]
        rows = [[f"`{t['name']}`", t["role"], t["n_heads"], t["share"], t["random_mean"], "exact" if t["exact"] else
                 f"sampled ({t['columns']} columns)"] for t in st["tensors"]]  # fmt: skip
        out.append(
            (
                "Hessian structure by head",
                paras,
                [(["tensor", "role", "heads", "share", "random", "columns"], rows)],
            )
        )
    w = doc.get("weights")
    if w:
        rows = []
        for m in w["matrices"]:
            mm = m.get("metrics") or {}
            rows.append([f"`{m['name']}`", m["role"], f"{m['shape'][0]}x{m['shape'][1]}", mm.get("sigma_max"),
                         mm.get("stable_rank"), mm.get("alpha"), mm.get("modified_condition_number"), m["status"]])  # fmt: skip
        out.append(
            ("Weight spectra", [f"Source: `{w['source']}`; {w['summary']['n_matrices']} matrices."],
             [(["matrix", "role", "shape", "sigma_max", "stable rank", "alpha", "mod. kappa", "status"], rows)])
        )  # fmt: skip
    return out


def render_markdown(doc: Mapping[str, Any]) -> str:
    """report.md: summary, Hessian blocks, heterogeneity, head structure, weights, recommendations."""
    lines = [f"# spectra report: {doc['source']}", ""]
    prov = doc["provenance"]
    lines += [f"Schema {doc['schema_version']}; hessian-spectra {prov['tool_version']}, torch {prov['torch']}, "
              f"seed {prov['seed']}, created {prov['created_utc']}.", ""]  # fmt: skip
    for title, paras, tables in _sections(doc):
        lines += [f"## {title}", ""]
        lines += [f"- {p}" if title == "Summary" else p for p in paras]
        lines.append("")
        for header, rows in tables:
            lines += _md_table(header, rows) + [""]
    if doc.get("recommendations"):
        lines.append(_recommendations_md(doc["recommendations"]))
    lines.append("Figures are embedded in report.html.")
    return "\n".join(lines) + "\n"


def _recommendations_md(rec: Mapping[str, Any]) -> str:
    s = rec["summary"]
    lines = ["## Recommendations", "", f"Optimizer: {rec['optimizer']}.", ""]
    lines.append(
        f"PC layer: {s['pc_apply']} of {s['pc_candidates']} candidate matrices would benefit at level "
        f"{s['pc_level']} (GMCN {_g(s['gmcn'], '.3g')}, iid {_g(s['gmcn_iid'], '.3g')}, predicted "
        f"{_g(s['gmcn_predicted'], '.3g')})."
    )
    groups = rec.get("clip_groups") or []
    if groups:
        lines += ["", "Spectral clipping thresholds by group:", ""]
        lines += _md_table(["group", "c"], [[g.get("group", "-"), g.get("c")] for g in groups])
    pri = rec.get("priority") or []
    if pri:
        lines += ["", "Blocks to look at first (high curvature and ill-conditioned):", ""]
        lines += _md_table(["matrix", "role", "lambda_max", "mod. kappa / iid", "score"],
                           [[f"`{p['name']}`", p["role"], p["lambda_max"], p["modcond_ratio"], p["score"]] for p in pri[:10]])  # fmt: skip
    for n in rec.get("notes", []):
        lines += ["", f"Note: {n}"]
    return "\n".join(lines) + "\n"


def _heterogeneity_section(
    het: Mapping[str, Any],
) -> tuple[list[str], list[tuple[list[str], list[list[Any]]]]]:
    """Paragraphs and tables of the heterogeneity section: the verdict line and its rule, the statistic
    with its uncertainty, every named statistic, flat blocks with reasons, drivers, JS as context."""
    stat = het.get("statistic") or {}
    paras = [f"Verdict: **{het.get('verdict_line') or het['verdict']}**.", f"Rule: {het['verdict_rule']}."]
    if stat.get("value") is not None:
        paras.append(
            f"Statistic `{stat['name']}` = {_g(stat['value'], '.3f')} decades, standard error "
            f"{_g(stat.get('stderr'), '.2g')} and 5-95% interval [{_g(stat.get('low'), '.3f')}, "
            f"{_g(stat.get('high'), '.3f')}] over {stat.get('samples', 0)} bootstrap resamples of the SLQ probes "
            "(exact blocks fixed); the seed-to-seed spread of the validation suite is in bench/RESULTS.md."
        )
    paras += [f"Convention `{c['name']}`: {c['description']}." for c in het["conventions"]]
    if het.get("excluded_from_js"):
        paras.append(
            f"Left out of the JS matrices (flat, or fewer than {het.get('min_dim')} eigenvalues): "
            + ", ".join(f"`{n}`" for n in het["excluded_from_js"])
        )
    from hessian_spectra.analyses.heterogeneity.scales import STATISTICS
    from hessian_spectra.analyses.heterogeneity.verdict import THRESHOLDS

    stat_rows = [
        [
            f"`{k}`" + (" (verdict)" if k == stat.get("name") else ""),
            v,
            THRESHOLDS.get(k),
            STATISTICS[k].describe(),
        ]
        for k, v in (het.get("statistics") or {}).items()
        if k in STATISTICS
    ]
    flat_rows = [
        [f"`{f['name']}`", f["dim"], f["relative"], f["reason"]] for f in het.get("flat_blocks") or []
    ]
    drv_rows = [
        [d["group"], d["num_blocks"], d["parameter_share"], d["median_decades_below_max"], d["statistic_without"],
         d["effect"]]
        for d in (het.get("drivers") or {}).get("statistic", [])
    ]  # fmt: skip
    s = het["scale_spread"]
    spread_rows = [
        [k, v.get("ratio"), v.get("decades"), v.get("max_block") or "-", v.get("min_block") or "-"]
        for k, v in s.items()
        if isinstance(v, dict)
    ]
    tables = [
        (["statistic", "value (decades)", "threshold", "definition"], stat_rows),
        (["flat block", "dim", "radius / model scale", "likely reason"], flat_rows),
        (
            [
                "group",
                "blocks",
                "parameter share",
                "median decades below sharpest",
                f"{stat.get('name')} without",
                "effect",
            ],
            drv_rows,
        ),  # fmt: skip
        (["convention", "mean pairwise JS (context)"], [[k, v] for k, v in het["mean_js"].items()]),
        (["extremes (context)", "ratio", "decades", "largest block", "smallest block"], spread_rows),
    ]
    return paras, [t for t in tables if t[1]]
