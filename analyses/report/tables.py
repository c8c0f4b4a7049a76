"""Markdown building blocks shared by report.md and recommendations.md: tables whose every column is a
glossary entry (the header links to its definition), cells in the one number format, figure references,
section headings with stable anchors."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hessian_spectra.analyses.glossary.core import header, lookup
from hessian_spectra.analyses.report.numbers import fmt

__all__ = ["FOLD_ROWS", "FIGURE_DIR", "md_table", "md_cell", "heading", "figure", "code"]

#: Tables longer than this are folded into a <details> element (open it to read every row).
FOLD_ROWS = 30
#: Folder of the report's figures (PNG), next to report.md; report.html inlines them.
FIGURE_DIR = "figures"


def md_cell(x: Any) -> str:
    """One table cell: numbers in the one format, text with its pipes and line breaks escaped."""
    text = x if isinstance(x, str) else fmt(x)
    return text.replace("|", "\\|").replace("\n", " ")


def code(name: Any) -> str:
    """A parameter or block name as inline code (backticks inside it removed)."""
    return f"`{str(name).replace('`', '')}`"


def md_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], *, fold: int = FOLD_ROWS,
             what: str = "rows") -> list[str]:  # fmt: skip
    """A GitHub table: ``columns`` are glossary keys or names (``UnknownTerm`` if one is not defined),
    each header linked to its glossary entry; folded into <details> beyond ``fold`` rows."""
    keys = [lookup(c).key for c in columns]
    lines = ["| " + " | ".join(header(k) for k in keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        if len(r) != len(keys):
            raise ValueError(f"row has {len(r)} cells for {len(keys)} columns: {r!r}")
        lines.append("| " + " | ".join(md_cell(c) for c in r) + " |")
    if len(rows) > fold:
        return [
            f"<details><summary>{len(rows)} {what} (click to open)</summary>",
            "",
            *lines,
            "",
            "</details>",
        ]
    return lines


def heading(level: int, title: str, anchor: str) -> list[str]:
    """A heading preceded by an explicit anchor (stable links from findings, actions and the glossary)."""
    return [f'<a id="{anchor}"></a>', "", f"{'#' * level} {title}", ""]


def figure(key: str, caption: str, figures: Sequence[str]) -> list[str]:
    """A figure reference (``figures/<key>.png``) when the figure was drawn, else nothing."""
    if key not in figures:
        return []
    return [f"![{caption}]({FIGURE_DIR}/{key}.png)", ""]
