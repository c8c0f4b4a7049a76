"""report.md sections of the Hessian side: full-model spectrum, blocks, heterogeneity, head structure.
Each returns markdown lines (headings with anchors, tables, figure references)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from hessian_spectra.analyses.findings.model import SECTIONS
from hessian_spectra.analyses.report.numbers import fmt, fmt_ratio
from hessian_spectra.analyses.report.plots import caption
from hessian_spectra.analyses.report.tables import code, figure, heading, md_table

__all__ = ["hessian_section", "blocks_section", "heterogeneity_section", "structure_section"]

Doc = Mapping[str, Any]


def hessian_section(doc: Doc, figures: Sequence[str]) -> list[str]:
    """Full-model spectrum: extreme eigenvalues with residuals, density and trace (with its interval), cost."""
    from hessian_spectra.analyses.report.document import ci_text, interval_words

    hess = doc.get("hessian")
    if not hess:
        return []
    lines = heading(2, "Hessian of the whole model", SECTIONS["hessian"])
    lz, dens = hess.get("lanczos"), hess.get("density")
    lines.append(f"{hess['dim']} parameters; {hess['num_hvps']} HVPs in {fmt(hess['seconds'], 3)} s "
                 f"(cost estimate {hess['cost_estimate']['total_hvps']}, an upper bound).")  # fmt: skip
    lines.append("")
    if lz:
        rows = [["top", v, r] for v, r in zip(lz["top"], lz["top_residuals"], strict=False)]
        rows += [["bottom", v, r] for v, r in zip(lz["bottom"], lz["bottom_residuals"], strict=False)]
        lines.append(f"Lanczos: {lz['steps']} steps, converged: {fmt(lz['converged'])}.")
        lines.append("")
        lines += md_table(["end", "lambda", "ritz_residual"], rows) + [""]
    if hess.get("exact_full"):
        lines += [f"Exact: all {hess['dim']} eigenvalues from the dense Hessian (dim <= probes x steps, so its "
                  "columns cost no more than the estimates); trace " + fmt(dens["trace"]) + ".", ""]  # fmt: skip
    elif dens and dens.get("trace_ci"):
        ci = dens["trace_ci"]
        lines += [f"SLQ: trace {ci_text(ci)} ({interval_words(ci)}; {dens['num_probes']} probes x "
                  f"{dens['steps']} steps).", ""]  # fmt: skip
    elif dens:
        lines.append(f"SLQ: trace {fmt(dens['trace'])} +- {fmt(dens['trace_stderr'], 2)} "
                     f"({dens['num_probes']} probes x {dens['steps']} steps).")  # fmt: skip
        lines.append("")
    return lines + figure("full_density", caption("full_density"), figures)


def blocks_section(doc: Doc, figures: Sequence[str]) -> list[str]:
    """Per-block spectra: one row per block (flat blocks marked), the density grid and the scales."""
    from hessian_spectra.analyses.report.document import block_rows, ci_text

    hess = doc.get("hessian")
    if not hess or not hess.get("blocks"):
        return []
    settings = hess.get("settings") or {}
    blocking = settings.get("blocks", "tensor")
    level = f"{100 * float(settings.get('confidence', 0.95)):g}%"
    lines = heading(2, "Hessian blocks", SECTIONS["blocks"])
    lines += [f"Blocks: `{blocking}` ({len(hess['blocks'])} blocks, {hess.get('num_exact_blocks', 0)} exact). "
              "`exact`: every eigenvalue of the block from its columns (blocks of at most probes x steps "
              "parameters); `slq`: block SLQ estimate.", ""]  # fmt: skip
    lines += [f"Traces: estimate [{level} interval] over the block's probes (Student t; Krylov-deflated SLQ: the "
              "first probe's Lanczos basis is summed exactly and the others estimate the rest; zero width when the "
              "spectrum is exact or the first probe's Krylov space spanned the block). Mass < 0: the fraction of "
              "the block's smoothed density (the one plotted) below zero, with its interval.", ""]  # fmt: skip
    lines += [f"Note: {n}" for n in hess.get("notes") or []]
    lines += [""] if hess.get("notes") else []
    rows = [
        [code(r["name"]), r["group"], "-" if r["layer"] is None else r["layer"], r["dim"], r["method"],
         r["lambda_max"], r["lambda_min"], ci_text(r["trace_ci"]) if r.get("trace_ci") else fmt(r["trace"]),
         ci_text(r.get("negative_mass")), r["in_js"], r["flat"]]
        for r in block_rows(doc)
    ]  # fmt: skip
    cols = ["block", "group", "layer", "dim", "block_method", "lambda_max", "lambda_min", "trace_ci",
            "negative_mass", "in_js", "flat"]  # fmt: skip
    lines += md_table(cols, rows, what="blocks") + [""]
    lines += figure("block_densities", caption("block_densities"), figures)
    return lines + figure("block_scales", caption("block_scales"), figures)


def heterogeneity_section(doc: Doc, figures: Sequence[str]) -> list[str]:
    """Verdict with its deciding quantities, JS by convention, scale spread, drivers, heatmaps."""
    from hessian_spectra.analyses.findings.rules import verdict_reasons

    het = doc.get("heterogeneity")
    if not het:
        return []
    lines = heading(2, "Block heterogeneity", SECTIONS["heterogeneity"])
    verdict = het.get("verdict_line") or f"{het['verdict']} ({'; '.join(verdict_reasons(het))})"
    lines += [f"Verdict: **{verdict}**. Rule: {het['verdict_rule']}.", ""]
    lines += _statistic_lines(het)
    lines += [f"Convention `{c['name']}` (context, not the verdict): {c['description']}." for c in het["conventions"]]
    lines.append("")
    if het.get("excluded_from_js"):
        lines += [f"Left out of the JS matrices (flat, or fewer than {het.get('min_dim')} eigenvalues): "
                  + ", ".join(code(n) for n in het["excluded_from_js"]), ""]  # fmt: skip
    lines += md_table(["convention", "mean_js"], [[k, v] for k, v in het["mean_js"].items()]) + [""]
    spread = [
        [k, fmt_ratio(v.get("ratio")), v.get("decades"), code(v["max_block"]) if v.get("max_block") else "-",
         code(v["min_block"]) if v.get("min_block") else "-"]
        for k, v in het["scale_spread"].items() if isinstance(v, Mapping)
    ]  # fmt: skip
    lines += md_table(["spread_scale", "spread_ratio", "decades", "largest_block", "smallest_block"], spread)
    lines.append("")
    conv = het.get("drivers_convention") or (
        "scales-kept" if "scales-kept" in het["drivers"] else next(iter(het["drivers"]), None)
    )
    drivers = het["drivers"].get(conv) or []
    if drivers:
        lines += [f"Block groups ranked by how much they drive the mean JS (`{conv}`):", ""]
        rows = [[d["group"], d["num_blocks"], d["mean_js_within"], d["mean_js_to_others"], d["contribution"]]
                for d in drivers]  # fmt: skip
        cols = ["driver_group", "num_blocks", "mean_js_within", "mean_js_to_others", "contribution"]
        lines += md_table(cols, rows, what="groups") + [""]
    for key in sorted(k for k in figures if k.startswith("js_heatmap_")):
        lines += figure(key, caption(key), figures)
    return lines


def _statistic_lines(het: Doc) -> list[str]:
    """The verdict's statistic with its bootstrap uncertainty, every named statistic against its threshold,
    the flat blocks with their likely reasons and the groups that move the statistic most."""
    from hessian_spectra.analyses.heterogeneity.scales import STATISTICS
    from hessian_spectra.analyses.heterogeneity.verdict import THRESHOLDS

    stat = het.get("statistic") or {}
    lines: list[str] = []
    if stat.get("value") is not None:
        lines += [f"Statistic `{stat['name']}` = {fmt(stat['value'], 3)} decades, standard error "
                  f"{fmt(stat.get('stderr'), 2)} and 5-95% interval [{fmt(stat.get('low'), 3)}, "
                  f"{fmt(stat.get('high'), 3)}] over {stat.get('samples', 0)} bootstrap resamples of the SLQ probes "
                  "(exact blocks fixed); the seed-to-seed spread of the validation suite is in bench/RESULTS.md.",
                  ""]  # fmt: skip
    rows = [[code(k) + (" (verdict)" if k == stat.get("name") else ""), v, THRESHOLDS.get(k), STATISTICS[k].describe()]
            for k, v in (het.get("statistics") or {}).items() if k in STATISTICS]  # fmt: skip
    if rows:
        lines += md_table(["statistic", "statistic_value", "threshold", "definition"], rows) + [""]
    flat = [[code(f["name"]), f["dim"], f["relative"], f["reason"]] for f in het.get("flat_blocks") or []]
    if flat:
        lines += md_table(["flat_block", "dim", "relative_radius", "flat_reason"], flat, what="flat blocks") + [""]
    drivers = [[d["group"], d["num_blocks"], d["parameter_share"], d["median_decades_below_max"],
                d["statistic_without"], d["effect"]] for d in (het.get("drivers") or {}).get("statistic", [])]  # fmt: skip
    if drivers:
        lines += [f"Block groups ranked by how much they move `{stat.get('name')}` (leave one group out):", ""]
        cols = ["driver_group", "num_blocks", "parameter_share", "median_decades_below_max", "statistic_without",
                "effect"]  # fmt: skip
        lines += md_table(cols, drivers, what="groups") + [""]
    return lines


def structure_section(doc: Doc) -> list[str]:
    """Per-head mass share of each attention projection's Hessian block against random partitions."""
    st = doc.get("structure")
    if not st:
        return []
    lines = heading(2, "Hessian structure by head", SECTIONS["structure"])
    lines += ["Share of the squared Frobenius mass of each attention projection's Hessian block inside per-head "
              "sub-blocks, against random partitions of the same sizes (1 = exactly block-diagonal by head).", ""]  # fmt: skip
    lines += [f"Note: {n}" for n in st.get("notes") or []]
    rows = [[code(t["name"]), t["role"], t["n_heads"], t["share"], t["random_mean"],
             "exact" if t["exact"] else f"sampled ({t['columns']} columns)"] for t in st["tensors"]]  # fmt: skip
    return (
        lines
        + [""]
        + md_table(["tensor", "role", "n_heads", "head_share", "random_share", "columns"], rows)
        + [""]
    )
