"""report.html: the markdown sections plus every figure as a base64 PNG data URI, in one self-contained
page."""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any

from hessian_spectra.analyses.report.document import _g
from hessian_spectra.analyses.report.markdown import _recommendations_md, _sections
from hessian_spectra.analyses.report.plots import _caption

__all__ = ["render_html"]


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
