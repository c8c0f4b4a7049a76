"""track.html: the track document in the report's style (same stylesheet), every figure a base64 PNG data
URI, so the page is one self-contained file."""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any

from hessian_spectra.analyses.report.html_page import _CSS, inline_html
from hessian_spectra.analyses.report.numbers import fmt
from hessian_spectra.analyses.track.plots import CAPTIONS

__all__ = ["render_track_html"]


def _table(header: list[str], rows: list[list[Any]]) -> str:
    out = ["<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"]
    out += ["<tr>" + "".join(f"<td>{inline_html(c if isinstance(c, str) else fmt(c))}</td>" for c in r) + "</tr>" for r in rows]
    return "".join(out) + "</table>"


def _figure(key: str, png: bytes) -> str:
    from hessian_spectra.figures._png import data_uri

    return (f"<figure><img alt='{html.escape(key)}' src='{data_uri(png)}'>"
            f"<figcaption>{html.escape(CAPTIONS.get(key, key))}</figcaption></figure>")  # fmt: skip


def _clip_section(clip: Mapping[str, Any]) -> list[str]:
    body = ["<h2>Spectral clipping threshold from the measured updates</h2>",
            f"<p><b>Rule.</b> {inline_html(clip['rule'])}.</p>"]  # fmt: skip
    rows = []
    for g in clip["groups"]:
        d = clip["details"].get(g["group"], {})
        worst = ", ".join(f"`{w['name']}` ({w['from_step']}->{w['to_step']})" for w in d.get("worst", [])[:2])
        rows.append([g["group"], g["c"], d.get("n_with_lr"), d.get("u_median"), d.get("u_max"),
                     d.get("paper_c"), d.get("share_clipped_by_paper_c"), worst or "-", g["reason"]])  # fmt: skip
    body.append(_table(["group", "c", "samples", "median u", "max u", "paper c", "share the paper c clips",
                        "largest u", "reason"], rows))  # fmt: skip
    body += [f"<p>{inline_html(n)}</p>" for n in clip.get("notes", [])]
    return body


def render_track_html(doc: Mapping[str, Any], figures: Mapping[str, bytes]) -> str:
    """track.html for a track.json document and its figures (stem -> PNG bytes)."""
    prov = doc["provenance"]
    cks = doc["series"]["checkpoints"]
    title = f"spectra track: {len(cks)} checkpoints"
    body = [f"<h1>{html.escape(title)}</h1>",
            f"<p class='meta'>Schema {html.escape(doc['schema_version'])}; hessian-spectra "
            f"{html.escape(str(prov.get('tool_version')))}, torch {html.escape(str(prov.get('torch')))}, seed "
            f"{prov.get('seed')}, created {html.escape(str(prov.get('created_utc')))}.</p>",
            "<h2>Summary</h2>", "<ul>" + "".join(f"<li>{inline_html(p)}</li>" for p in doc["findings"]) + "</ul>"]  # fmt: skip
    lr = {u["to_step"]: u for u in doc["updates"]}
    hess = {h["step"]: h for h in doc["hessian"] or []}
    rows = [[c["step"], c["path"], c["step_source"], (lr.get(c["step"]) or {}).get("steps"),
             (lr.get(c["step"]) or {}).get("lr_sum"), (hess.get(c["step"]) or {}).get("lambda_max")]
            for c in cks]  # fmt: skip
    body += ["<h2>Checkpoints</h2>",
             _table(["step", "path", "step from", "steps since previous", "sum of lr", "Hessian lambda_max"], rows)]  # fmt: skip
    body += _clip_section(doc["clip"])
    for heading, prefix in (("Weights over training", "weights_"), ("Updates between checkpoints", "updates_"),
                            ("Hessian over training", "hessian_")):  # fmt: skip
        keys = [k for k in figures if k.startswith(prefix)]
        if keys:
            body.append(f"<h2>{html.escape(heading)}</h2>")
            body += [_figure(k, figures[k]) for k in keys]
    worst_rows = []
    for source in ("weights", "updates"):
        for metric, groups in doc["summary"][source].items():
            for g, s in groups.items():
                worst_rows.append([source, metric, g, s["first_median"], s["last_median"],
                                   ", ".join(f"`{n}`" for n in s["worst_by_max"])])  # fmt: skip
    if worst_rows:
        body += ["<h2>Per group: medians and the tensors that stand out</h2>",
                 _table(["source", "metric", "group", "median, first", "median, last", "largest"], worst_rows)]  # fmt: skip
    notes = list(doc.get("notes", [])) + [n for c in doc["checkpoints"] for n in c.get("notes", [])]
    if notes:
        body += [
            "<h2>Notes</h2>",
            "<ul>" + "".join(f"<li>{inline_html(n)}</li>" for n in dict.fromkeys(notes)) + "</ul>",
        ]
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>"
        "<body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
