"""The ``spectra analyze`` report: one folder with report.json, report.md and a self-contained report.html.

:func:`analyze_model` runs every probe on a live model (weights, Hessian, heterogeneity, per-head
structure, recommendations) and returns the JSON document with its figures as PNG bytes;
:func:`write_report` writes the three files through a staged folder so nothing partial ever appears.
The JSON layout is fixed by ``report_schema.json`` (versioned by :data:`SCHEMA_VERSION`).
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hessian_spectra.analyses.heterogeneity import DRIVERS_CONVENTION
from hessian_spectra.io import json_safe

__all__ = [
    "SCHEMA_VERSION",
    "AnalyzeOptions",
    "analyze_model",
    "build_document",
    "make_figures",
    "findings",
    "render_markdown",
    "render_html",
    "write_report",
    "load_schema",
    "validate_document",
    "block_rows",
]

SCHEMA_VERSION = "hessian-spectra/report/1"
SCHEMA_PATH = Path(__file__).with_name("report_schema.json")
REPORT_FILES = ("report.json", "report.md", "report.html")

Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class AnalyzeOptions:
    """What :func:`analyze_model` runs besides the Hessian probe (whose budget is a HessianSettings)."""

    weights: bool = True
    structure: bool = True
    structure_max_columns: int = 1024
    recommendations: bool = True
    optimizer: str = "adamw"
    n_heads: int | None = None
    #: where the weights probe runs (None/"cpu": the numpy/CPU path; "cuda:N": batched GPU SVDs)
    weights_device: str | None = None

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


# ----------------------------------------------------------------------------------------------------
# running


def analyze_model(
    model: Any,
    batches: Any,
    loss: Any,
    settings: Any,
    *,
    source: str,
    options: AnalyzeOptions | None = None,
    weights_source: Any = None,
    progress: Progress | None = None,
    weights_progress: Progress | None = None,
    on_estimate: Callable[[Any], None] | None = None,
    extra: Mapping[str, Any] | None = None,
    kind: str = "analyze",
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Run the Hessian probe, heterogeneity, head structure, weights probe and recommendations on
    ``model``; return ``(document, figures)``. ``weights_source`` (default: the live model) is what the
    weights probe reads: a checkpoint path or the module itself. The blocks follow ``settings.blocks``
    (Adam-mini blocks via :func:`hessian_spectra.analyses.partitions.blockings.hessian_blocks`). ``kind``: "analyze", or "hessian"
    for the Hessian part alone (``spectra hessian``). The model is never modified."""
    from hessian_spectra.analyses.heterogeneity import analyze_heterogeneity, spectra_from_hessian
    from hessian_spectra.analyses.partitions.blockings import hessian_blocks
    from hessian_spectra.curvature.probe import run_hessian

    options = options or AnalyzeOptions()
    choice = hessian_blocks(model, settings)
    settings = choice.settings
    hess = run_hessian(
        model, batches, loss, settings, blocks=choice.blocks, block_notes=choice.notes, progress=progress,
        on_estimate=on_estimate,
    )  # fmt: skip
    het = analyze_heterogeneity(spectra_from_hessian(hess)) if hess.block_results else None
    structure = None
    if options.structure:
        from hessian_spectra.analyses.head_structure import attention_heads, head_structure

        heads = options.n_heads or settings.n_heads or attention_heads(model)
        if heads:
            structure = head_structure(
                model, batches, loss, heads, max_columns=options.structure_max_columns, seed=settings.seed
            )
    weights = recs = None
    if options.weights:
        from hessian_spectra.weights.plan import WeightsSettings
        from hessian_spectra.weights.probe import analyze_weights

        weights = analyze_weights(
            model if weights_source is None else weights_source,
            WeightsSettings(seed=settings.seed),
            progress=weights_progress,
            device=options.weights_device,
        )
        if options.recommendations:
            from hessian_spectra.analyses.advice.recommendations import (
                inputs_from_weights_report,
                recommend,
            )

            blocks = {r["name"]: r for r in hess.block_summary()}
            recs = recommend(
                inputs_from_weights_report(weights), options.optimizer, hessian=blocks or None,
                n_params=sum(p.numel() for p in model.parameters()), seed=settings.seed,
            )  # fmt: skip
    doc = build_document(
        source=source, seed=settings.seed, hessian=hess, heterogeneity=het, structure=structure,
        weights=weights, recommendations=recs,
        model_info={"class": type(model).__name__, "parameters": int(sum(p.numel() for p in model.parameters()))},
        settings={"hessian": settings.to_dict(), "analyze": options.to_dict()}, extra=extra, kind=kind,
    )  # fmt: skip
    return doc, make_figures(hess, het, weights)


def build_document(
    *,
    source: str,
    seed: int,
    hessian: Any = None,
    heterogeneity: Any = None,
    structure: Any = None,
    weights: Any = None,
    recommendations: Any = None,
    model_info: Mapping[str, Any] | None = None,
    settings: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    kind: str = "analyze",
) -> dict[str, Any]:
    """The report.json document (schema :data:`SCHEMA_VERSION`): provenance, every section present
    (``null`` when not run) and the findings in plain words. ``kind``: "analyze" (``spectra analyze``)
    or "hessian" (``spectra hessian``: the Hessian part alone)."""
    from hessian_spectra.weights.provenance import provenance

    if kind not in ("analyze", "hessian"):
        raise ValueError(f"kind must be 'analyze' or 'hessian', got {kind!r}")
    doc = {
        "schema_version": SCHEMA_VERSION,
        "kind": kind,
        "source": str(source),
        "provenance": provenance(seed=seed),
        "model": dict(model_info or {}),
        "settings": dict(settings or {}),
        "hessian": None if hessian is None else hessian.to_dict(),
        "heterogeneity": None if heterogeneity is None else heterogeneity.to_dict(),
        "structure": None if structure is None else structure.to_dict(),
        "weights": None if weights is None else weights.to_dict(),
        "recommendations": None if recommendations is None else recommendations.to_dict(),
    }
    if extra:
        doc.update(dict(extra))
    doc = json_safe(doc)
    doc["findings"] = findings(doc)
    return doc


# ----------------------------------------------------------------------------------------------------
# findings


def _g(x: Any, fmt: str = ".4g") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return format(x, fmt) if isinstance(x, int | float) else str(x)


def findings(doc: Mapping[str, Any]) -> list[str]:
    """A few plain sentences summarising the document (the same in report.md and report.html)."""
    out: list[str] = []
    hess = doc.get("hessian")
    if hess:
        lz = hess.get("lanczos")
        if lz:
            out.append(
                f"Hessian lambda_max {_g(lz['lambda_max'])}, lambda_min {_g(lz['lambda_min'])} "
                f"(Lanczos, {lz['steps']} steps, converged: {lz['converged']})."
            )
        dens = hess.get("density")
        if dens:
            out.append(
                f"Hessian trace {_g(dens['trace'])} +- {_g(dens['trace_stderr'], '.2g')} "
                f"(SLQ, {dens['num_probes']} probes x {dens['steps']} steps)."
            )
        out.append(f"{hess['num_hvps']} Hessian-vector products in {_g(hess['seconds'], '.1f')} s.")
    het = doc.get("heterogeneity")
    if het:
        spread = het["scale_spread"]["lambda_max"]
        js = ", ".join(f"{k} {_g(v, '.3f')}" for k, v in het["mean_js"].items())
        out.append(
            f"Block heterogeneity: {het['verdict']} (block lambda_max spread {_g(spread['ratio'], '.3g')}x; "
            f"mean pairwise JS distance: {js})."
        )
        drivers = het["drivers"].get(DRIVERS_CONVENTION) or []
        top = [d for d in drivers if (d.get("contribution") or 0) > 0][:3]
        if top:
            out.append(
                "Driven most by: " + ", ".join(f"{d['group']} ({d['num_blocks']} blocks)" for d in top) + "."
            )
    st = doc.get("structure")
    if st and st.get("by_role"):
        parts = [
            f"{role} {_g(v['share'], '.3f')} (random {_g(v['random_share'], '.3f')})"
            for role, v in st["by_role"].items()
        ]
        out.append("Per-head Hessian mass share: " + ", ".join(parts) + ".")
    w = doc.get("weights")
    if w:
        alpha = (w["summary"]["metrics"].get("alpha") or {}).get("median")
        out.append(
            f"Weights: {w['summary']['n_matrices']} matrices analysed; median power-law alpha {_g(alpha, '.3g')}."
        )
    if doc.get("kind") == "hessian":
        out.append(
            "Hessian part alone (`spectra hessian`): weight spectra, head structure and recommendations not "
            "run; `spectra analyze` writes them."
        )
    rec = doc.get("recommendations")
    if rec:
        s = rec["summary"]
        out.append(
            f"PC layer would help {s['pc_apply']} of {s['pc_candidates']} candidate matrices "
            f"(level {s['pc_level']} for {rec['optimizer']})."
        )
    return out


def block_rows(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per block: name, group, layer, dim, lambda_max, lambda_min, trace (from the heterogeneity section,
    which also covers blocks left out of the JS matrices via the Hessian section)."""
    het = doc.get("heterogeneity") or {}
    meta = {b["name"]: b for b in het.get("blocks", [])}
    from hessian_spectra.analyses.heterogeneity import block_group, block_layer

    rows = []
    for b in (doc.get("hessian") or {}).get("blocks", []):
        m = meta.get(b["name"], {})
        rows.append(
            {
                "name": b["name"], "group": m.get("group") or block_group(b["name"]),
                "layer": m.get("layer") if m else block_layer(b["name"]), "dim": b["dim"],
                "lambda_max": b["lambda_max"], "lambda_min": b["lambda_min"], "trace": b["trace"],
                "trace_stderr": b["trace_stderr"], "in_js": b["name"] in meta,
            }
        )  # fmt: skip
    return rows


# ----------------------------------------------------------------------------------------------------
# figures


def make_figures(hessian: Any, heterogeneity: Any, weights: Any) -> dict[str, bytes]:
    """PNG bytes of every report figure that the available results allow (keys are figure ids)."""
    from hessian_spectra.figures.blocks import plot_block_scales
    from hessian_spectra.figures.density import plot_block_density_grid, plot_full_density
    from hessian_spectra.figures.heatmap import plot_js_heatmap

    figs: dict[str, bytes] = {}
    if hessian is not None and hessian.density is not None:
        d = hessian.density.density(num_points=800)
        lz = hessian.lanczos
        figs["full_density"] = plot_full_density(
            d.grid, d.values, top=() if lz is None else lz.top, bottom=() if lz is None else lz.bottom
        )
    if hessian is not None and hessian.block_results:
        names, grids, dens = [], [], []
        for b, r in zip(hessian.blocks, hessian.block_results, strict=True):
            d = r.density(num_points=300)
            names.append(b.name)
            grids.append(d.grid)
            dens.append(d.values)
        figs["block_densities"] = plot_block_density_grid(
            names, grids, dens, title="block spectral densities (SLQ, each on its own eigenvalue range)"
        )
        from hessian_spectra.analyses.heterogeneity import block_group, block_layer

        rows = [
            {"name": b.name, "group": block_group(b.name), "layer": block_layer(b.name), "lambda_max": r.ritz_max,
             "trace": r.trace}
            for b, r in zip(hessian.blocks, hessian.block_results, strict=True)
        ]  # fmt: skip
        figs["block_scales"] = plot_block_scales(rows)
    if heterogeneity is not None and len(heterogeneity.blocks) >= 2:
        for conv in heterogeneity.conventions:
            figs[f"js_heatmap_{conv.name}"] = plot_js_heatmap(
                heterogeneity.names,
                heterogeneity.js[conv.name],
                title=f"JS distance between block spectra ({conv.name})",
            )
    if weights is not None and weights.matrices:
        import tempfile

        from hessian_spectra.figures.depth import plot_metrics_vs_depth

        with tempfile.TemporaryDirectory() as tmp:
            path = plot_metrics_vs_depth(weights, Path(tmp) / "depth.png")
            figs["weights_depth"] = path.read_bytes()
    return figs


FIGURE_CAPTIONS = {
    "full_density": "Full-model Hessian spectral density (SLQ, log scale) with the Lanczos top and bottom eigenvalues marked.",
    "block_densities": "Spectral density of every Hessian block (block-diagonal SLQ), each on its own eigenvalue range.",
    "block_scales": "Block lambda_max and trace against depth, one series per block group.",
    "weights_depth": "Weight-spectrum metrics against depth, one line per tensor role.",
}


def _caption(key: str) -> str:
    if key.startswith("js_heatmap_"):
        return f"Pairwise Jensen-Shannon distance between block spectra, convention '{key[len('js_heatmap_') :]}'."
    return FIGURE_CAPTIONS.get(key, key)


# ----------------------------------------------------------------------------------------------------
# markdown / html


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


_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:12px;margin:0.5em 0 1.5em}td,th{border:1px solid #ccc;padding:2px 6px}
th{background:#f0f0f0}figure{margin:1em 0}img{max-width:100%}figcaption{font-size:12px;color:#555}
code{font-size:11px}.meta{color:#666;font-size:12px}"""


def _html_cell(c: Any) -> str:
    text = c if isinstance(c, str) else _g(c)
    if text.startswith("`") and text.endswith("`"):
        return f"<code>{html.escape(text[1:-1])}</code>"
    return html.escape(text)


def _html_text(p: str) -> str:
    out = html.escape(p)
    parts = out.split("`")
    out = "".join(f"<code>{s}</code>" if i % 2 else s for i, s in enumerate(parts))
    parts = out.split("**")
    return "".join(f"<b>{s}</b>" if i % 2 else s for i, s in enumerate(parts))


def render_html(doc: Mapping[str, Any], figures: Mapping[str, bytes]) -> str:
    """report.html: the markdown content plus every figure as a base64 PNG data URI (no external asset)."""
    from hessian_spectra.figures._png import data_uri

    prov = doc["provenance"]
    body = [f"<h1>spectra report: {html.escape(doc['source'])}</h1>",
            f"<p class='meta'>Schema {html.escape(doc['schema_version'])}; hessian-spectra "
            f"{html.escape(str(prov['tool_version']))}, torch {html.escape(str(prov['torch']))}, seed {prov['seed']}, "
            f"created {html.escape(str(prov['created_utc']))}.</p>"]  # fmt: skip
    placement = {
        "Summary": ["full_density"],
        "Hessian blocks": ["block_densities", "block_scales"],
        "Block heterogeneity": [k for k in figures if k.startswith("js_heatmap_")],
        "Weight spectra": ["weights_depth"],
    }
    placed: set[str] = set()
    for title, paras, tables in _sections(doc):
        body.append(f"<h2>{html.escape(title)}</h2>")
        if title == "Summary":
            body.append("<ul>" + "".join(f"<li>{_html_text(p)}</li>" for p in paras) + "</ul>")
        else:
            body += [f"<p>{_html_text(p)}</p>" for p in paras]
        for key in placement.get(title, []):
            if key in figures:
                placed.add(key)
                body.append(f"<figure><img alt='{html.escape(key)}' src='{data_uri(figures[key])}'>"
                            f"<figcaption>{html.escape(_caption(key))}</figcaption></figure>")  # fmt: skip
        for header, rows in tables:
            body.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
            body += ["<tr>" + "".join(f"<td>{_html_cell(c)}</td>" for c in r) + "</tr>" for r in rows]
            body.append("</table>")
    for key in figures:
        if key not in placed:
            body.append(f"<figure><img alt='{html.escape(key)}' src='{data_uri(figures[key])}'>"
                        f"<figcaption>{html.escape(_caption(key))}</figcaption></figure>")  # fmt: skip
    if doc.get("recommendations"):
        body.append("<h2>Recommendations</h2>")
        body += [f"<p>{_html_text(line)}</p>" for line in _recommendations_md(doc["recommendations"]).splitlines()[2:]
                 if line and not line.startswith("|")]  # fmt: skip
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>spectra report: {html.escape(doc['source'])}</title><style>{_CSS}</style></head>"
        "<body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


# ----------------------------------------------------------------------------------------------------
# writing and validation


def write_report(
    folder: str | Path, doc: Mapping[str, Any], figures: Mapping[str, bytes], stage: Path | None = None
) -> list[Path]:
    """Write report.json, report.md and report.html into ``folder`` (inside ``stage`` when the caller
    already holds a :func:`hessian_spectra.io.staged_directory`; else through a new one)."""
    from hessian_spectra.io import atomic_write_json, atomic_write_text, staged_directory

    def _write(base: Path) -> None:
        atomic_write_json(base / "report.json", doc)
        atomic_write_text(base / "report.md", render_markdown(doc))
        atomic_write_text(base / "report.html", render_html(doc, figures))

    if stage is not None:
        _write(Path(stage))
    else:
        with staged_directory(folder) as tmp:
            _write(tmp)
    return [Path(folder) / n for n in REPORT_FILES]


def load_schema() -> dict[str, Any]:
    """The JSON Schema of report.json."""
    return json.loads(SCHEMA_PATH.read_text())


def validate_document(doc: Mapping[str, Any]) -> None:
    """Raise ``jsonschema.ValidationError`` when ``doc`` does not follow the schema (needs jsonschema)."""
    import jsonschema

    jsonschema.validate(json.loads(json.dumps(json_safe(dict(doc)))), load_schema())
