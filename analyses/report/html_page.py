"""report.html: report.md rendered by markdown-it-py (CommonMark + tables), figures inlined as base64 PNG
data URIs, in one self-contained page. The only raw HTML that reaches the page is the report's own
(anchors, <details>): any other HTML in the text (a tensor name, a path) is shown as text."""

from __future__ import annotations

import html
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["render_html", "markdown_to_html", "inline_html"]

_CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
table{border-collapse:collapse;font-size:12px;margin:0.5em 0 1.5em;display:block;overflow-x:auto;max-width:100%}
td,th{border:1px solid #ccc;padding:2px 6px;vertical-align:top}th{background:#f0f0f0;white-space:nowrap}
th a{color:inherit;text-decoration:underline dotted}img{max-width:100%;height:auto;border:1px solid #eee}
code{font-size:11px;word-break:break-all}details{margin:0.5em 0 1em}summary{cursor:pointer;color:#245}
pre{background:#f6f6f6;padding:0.5em;overflow-x:auto;font-size:11px}
h2{border-bottom:1px solid #ddd;padding-bottom:0.2em;margin-top:1.6em}
li{margin:0.3em 0}"""

#: Raw HTML the report writes itself; anything else is escaped.
_ALLOWED = re.compile(
    r'^\s*(<a id="[A-Za-z0-9_-]+"></a>|<details><summary>[^<>]*</summary>|</details>|<a id="[A-Za-z0-9_-]+">|</a>)\s*$'
)


def _parser():
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": True}).enable("table")


def _sanitize(tokens: list[Any]) -> None:
    """Turn raw HTML the report did not write into text (escaped on rendering)."""
    for tok in tokens:
        if tok.type == "html_block" and not _ALLOWED.match(tok.content):
            tok.type, tok.tag = "code_block", "code"
        if tok.children:
            for child in tok.children:
                if child.type == "html_inline" and not _ALLOWED.match(child.content):
                    child.type = "text"


def _inline_figures(tokens: list[Any], figures: Mapping[str, bytes]) -> None:
    """``figures/<key>.png`` image sources -> data URIs of the figure bytes (self-contained page)."""
    from hessian_spectra.analyses.report.tables import FIGURE_DIR
    from hessian_spectra.figures._png import data_uri

    for tok in tokens:
        for child in tok.children or []:
            if child.type == "image":
                src = str(child.attrGet("src") or "")
                key = src.removeprefix(f"{FIGURE_DIR}/").removesuffix(".png")
                if key in figures:
                    child.attrSet("src", data_uri(figures[key]))
                    child.attrSet("data-figure", key)


def inline_html(text: str) -> str:
    """One line of report markdown (code spans, emphasis) as inline HTML; raw HTML in it is shown as text."""
    md = _parser()
    env: dict[str, Any] = {}
    tokens = md.parseInline(text, env)
    _sanitize(tokens)
    return md.renderer.render(tokens, md.options, env)


def markdown_to_html(text: str, figures: Mapping[str, bytes] | None = None) -> str:
    """The HTML body of a report markdown text (figures inlined when given)."""
    md = _parser()
    env: dict[str, Any] = {}
    tokens = md.parse(text, env)
    _sanitize(tokens)
    if figures:
        _inline_figures(tokens, figures)
    return md.renderer.render(tokens, md.options, env)


def render_html(doc: Mapping[str, Any], figures: Mapping[str, bytes], markdown: str | None = None) -> str:
    """report.html: ``markdown`` (default: :func:`render_markdown` of ``doc``) as one self-contained page."""
    from hessian_spectra.analyses.report.markdown import render_markdown

    text = markdown if markdown is not None else render_markdown(doc, list(figures))
    title = html.escape(f"spectra report: {doc['source']}")
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{title}</title><style>{_CSS}</style></head>"
        "<body>\n" + markdown_to_html(text, figures) + "\n</body></html>\n"
    )
