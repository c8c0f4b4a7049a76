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
    """Full-model spectrum: extreme eigenvalues with residuals, density and trace, cost."""
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
    if dens:
        lines.append(f"SLQ: trace {fmt(dens['trace'])} +- {fmt(dens['trace_stderr'], 2)} "
                     f"({dens['num_probes']} probes x {dens['steps']} steps).")  # fmt: skip
        lines.append("")
    return lines + figure("full_density", caption("full_density"), figures)


def blocks_section(doc: Doc, figures: Sequence[str]) -> list[str]:
    """Per-block spectra: one row per block (flat blocks marked), the density grid and the scales."""
    from hessian_spectra.analyses.report.document import block_rows

    hess = doc.get("hessian")
    if not hess or not hess.get("blocks"):
        return []
    blocking = (hess.get("settings") or {}).get("blocks", "tensor")
    lines = heading(2, "Hessian blocks", SECTIONS["blocks"])
    lines += [f"Blocks: `{blocking}` ({len(hess['blocks'])} blocks).", ""]
    lines += [f"Note: {n}" for n in hess.get("notes") or []]
    lines += [""] if hess.get("notes") else []
    rows = [
        [code(r["name"]), r["group"], "-" if r["layer"] is None else r["layer"], r["dim"], r["lambda_max"],
         r["lambda_min"], r["trace"], r["trace_stderr"], r["in_js"], r["flat"]]
        for r in block_rows(doc)
    ]  # fmt: skip
    cols = [
        "block",
        "group",
        "layer",
        "dim",
        "lambda_max",
        "lambda_min",
        "trace",
        "trace_stderr",
        "in_js",
        "flat",
    ]
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
    lines += [
        f"Verdict: **{het['verdict']}** ({'; '.join(verdict_reasons(het))}). Rule: {het['verdict_rule']}.",
        "",
    ]
    lines += [f"Convention `{c['name']}`: {c['description']}." for c in het["conventions"]] + [""]
    if het.get("excluded_from_js"):
        lines += [f"Left out of the JS matrices (fewer than {het.get('min_dim')} eigenvalues): "
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
