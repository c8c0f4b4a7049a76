"""report.md: the document's sections (title, paragraphs, tables), shared with the HTML page, rendered as
GitHub markdown."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hessian_spectra.analyses.heterogeneity.conventions import DRIVERS_CONVENTION
from hessian_spectra.analyses.report.document import _g, block_rows

__all__ = ["render_markdown"]


def _md_table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_g(c) if not isinstance(c, str) else c for c in r) + " |" for r in rows]
    return lines


def _sections(doc: Mapping[str, Any]) -> list[tuple[str, list[str], list[tuple[list[str], list[list[Any]]]]]]:
    """(title, paragraphs, tables) per section; shared by the markdown and HTML renderers."""
    out = []
    out.append(("Summary", list(doc.get("findings", [])), []))
    inputs = _inputs_paragraphs(doc)
    if inputs:
        out.append(("Inputs", inputs, []))
    het = doc.get("heterogeneity")
    if doc.get("hessian"):
        rows = [
            [f"`{r['name']}`", r["group"], r["layer"] if r["layer"] is not None else "-", r["dim"], r["lambda_max"],
             r["lambda_min"], r["trace"], "yes" if r["in_js"] else "no"]
            for r in block_rows(doc)
        ]  # fmt: skip
        blocking = (doc["hessian"].get("settings") or {}).get("blocks", "tensor")
        paras = [
            f"Blocks: `{blocking}` ({len(doc['hessian']['blocks'])} blocks). Cost estimate: "
            f"{doc['hessian']['cost_estimate']['total_hvps']} HVPs (upper bound)."
        ]
        if doc["hessian"].get("notes"):
            paras += [f"Note: {n}" for n in doc["hessian"]["notes"]]
        out.append(
            ("Hessian blocks", paras,
             [(["block", "group", "layer", "dim", "lambda_max", "lambda_min", "trace", "in JS"], rows)]),
        )  # fmt: skip
    if het:
        paras = [f"Verdict: **{het['verdict']}** ({het['verdict_rule']})."]
        paras += [f"Convention `{c['name']}`: {c['description']}." for c in het["conventions"]]
        if het.get("excluded_from_js"):
            paras.append(
                f"Left out of the JS matrices (fewer than {het.get('min_dim')} eigenvalues): "
                + ", ".join(f"`{n}`" for n in het["excluded_from_js"])
            )
        s = het["scale_spread"]
        spread_rows = [
            [k, v.get("ratio"), v.get("decades"), v.get("max_block") or "-", v.get("min_block") or "-"]
            for k, v in s.items()
            if isinstance(v, dict)
        ]
        drv = het["drivers"].get(DRIVERS_CONVENTION, [])
        drv_rows = [
            [d["group"], d["num_blocks"], d["mean_js_within"], d["mean_js_to_others"], d["contribution"]]
            for d in drv
        ]
        tables = [
            (["convention", "mean pairwise JS"], [[k, v] for k, v in het["mean_js"].items()]),
            (["scale", "ratio", "decades", "largest block", "smallest block"], spread_rows),
            (
                [
                    f"group ({DRIVERS_CONVENTION})",
                    "blocks",
                    "mean JS within",
                    "mean JS to others",
                    "contribution",
                ],
                drv_rows,
            ),
        ]
        out.append(("Block heterogeneity", paras, tables))
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


def _inputs_paragraphs(doc: Mapping[str, Any]) -> list[str]:
    """What the workload was built from, and every tensor the checkpoint did not provide (never silent)."""
    paras = []
    inputs, loading = doc.get("inputs") or {}, doc.get("loading") or {}
    if inputs.get("task"):
        paras.append(f"Task `{inputs['task']}` on `{inputs.get('data')}`: {inputs.get('batches')} batches of "
                     f"{inputs.get('batch_size')}." + (f" Loss: {inputs['loss']}." if inputs.get("loss") else ""))  # fmt: skip
    excluded = (inputs.get("excluded_from_hessian") or {}).get("parameters") or []
    if excluded:
        paras.append(f"{len(excluded)} parameters are excluded from the Hessian (the loss does not depend on them): "
                     + ", ".join(f"`{n}`" for n in excluded[:8]) + (" ..." if len(excluded) > 8 else ""))  # fmt: skip
    fresh = loading.get("freshly_initialised") or []
    if fresh:
        paras.append(f"**{len(fresh)} tensors were freshly initialised** (not in the checkpoint; --allow-missing): "
                     + ", ".join(f"`{n}`" for n in fresh[:20]) + (" ..." if len(fresh) > 20 else ""))  # fmt: skip
    if loading.get("unexpected"):
        paras.append(f"{len(loading['unexpected'])} checkpoint tensors are not in the model and were not used: "
                     + ", ".join(f"`{n}`" for n in loading["unexpected"][:20]))  # fmt: skip
    if loading.get("ignored"):
        paras.append(f"{len(loading['ignored'])} checkpoint tensors belong to a head this task does not use (ignored): "
                     + ", ".join(f"`{n}`" for n in loading["ignored"][:8]) + (" ..." if len(loading["ignored"]) > 8 else ""))  # fmt: skip
    return paras


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
