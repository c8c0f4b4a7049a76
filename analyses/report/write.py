"""Writing the report folder (report.json, report.md, report.html, figures/*.png and attachments such as
partition.json) through a staged folder, so nothing partial ever appears."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hessian_spectra.analyses.report.html_page import render_html
from hessian_spectra.analyses.report.markdown import render_markdown
from hessian_spectra.analyses.report.tables import FIGURE_DIR

__all__ = ["REPORT_FILES", "write_report"]

REPORT_FILES = ("report.json", "report.md", "report.html")


def write_report(
    folder: str | Path,
    doc: Mapping[str, Any],
    figures: Mapping[str, bytes],
    stage: Path | None = None,
    attachments: Mapping[str, Any] | None = None,
) -> list[Path]:
    """Write the report files, ``figures/<key>.png`` (report.md links them; report.html inlines them) and
    each attachment (name -> JSON-able object, or bytes) into ``folder``; inside ``stage`` when the caller
    already holds a :func:`hessian_spectra.io.staged_directory`, else through a new one."""
    from hessian_spectra.io import atomic_write_bytes, atomic_write_json, atomic_write_text, staged_directory

    markdown = render_markdown(doc, list(figures))
    names = [*REPORT_FILES, *(f"{FIGURE_DIR}/{k}.png" for k in figures), *(attachments or {})]

    def _write(base: Path) -> None:
        atomic_write_json(base / "report.json", doc)
        atomic_write_text(base / "report.md", markdown)
        atomic_write_text(base / "report.html", render_html(doc, figures, markdown))
        for key, png in figures.items():
            atomic_write_bytes(base / FIGURE_DIR / f"{key}.png", png)
        for name, content in (attachments or {}).items():
            if isinstance(content, bytes):
                atomic_write_bytes(base / name, content)
            else:
                atomic_write_json(base / name, content)

    if stage is not None:
        _write(Path(stage))
    else:
        with staged_directory(folder) as tmp:
            _write(tmp)
    return [Path(folder) / n for n in names]
