"""Writing the report folder: report.json, report.md and report.html through a staged folder, so nothing
partial ever appears."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hessian_spectra.analyses.report.html_page import render_html
from hessian_spectra.analyses.report.markdown import render_markdown

__all__ = ["REPORT_FILES", "write_report"]

REPORT_FILES = ("report.json", "report.md", "report.html")


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
