"""The weights probe's results: per-matrix and whole-report dataclasses, their JSON form and CSV rows.

Kept apart from the run (:mod:`hessian_spectra.weights.probe`): what a weights report holds and how it is
written out, without the machinery that computes it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from hessian_spectra.checkpoints.base import FileInfo
from hessian_spectra.checkpoints.matrices import TensorRecord
from hessian_spectra.weights.metrics import MatrixMetrics
from hessian_spectra.weights.plan import WeightsSettings
from hessian_spectra.weights.summary import ModelSummary

SCHEMA_VERSION = "hessian-spectra/weights/1"


@dataclass(frozen=True)
class MatrixReport:
    """One analysed matrix: where it came from, its status and its metrics.

    ``status`` is ``"ok"``, ``"partial"`` (top/bottom-k only: full-spectrum metrics are None),
    ``"zero"`` (every entry is 0: norms and ranks 0, the rest undefined) or ``"nonfinite"`` (the matrix
    holds NaN/Inf; no metrics are computed, ``n_nonfinite`` says how many). Every null metric's reason
    is in ``metrics.null_reasons``.
    """

    name: str
    tensor_name: str
    kind: str
    role: str
    shape: tuple[int, int]
    status: str
    note: str
    n_nonfinite: int
    metrics: MatrixMetrics | None
    singular_values: np.ndarray | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "tensor_name": self.tensor_name,
            "kind": self.kind,
            "role": self.role,
            "shape": list(self.shape),
            "status": self.status,
            "note": self.note,
            "n_nonfinite": self.n_nonfinite,
            "metrics": None if self.metrics is None else self.metrics.to_dict(),
        }


@dataclass(frozen=True)
class WeightsReport:
    """The result of :func:`analyze_weights`: inventory, per-matrix metrics, summary and provenance."""

    source: str
    files: tuple[FileInfo, ...]
    inventory: tuple[TensorRecord, ...]
    matrices: tuple[MatrixReport, ...]
    summary: ModelSummary
    settings: WeightsSettings
    provenance: dict[str, Any]
    notes: tuple[str, ...] = ()
    #: Adam's second moments per parameter (``WeightsSettings.optimizer_state``), else None
    optimizer_state: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "source": self.source,
            "files": [asdict(f) for f in self.files],
            "settings": self.settings.to_dict(),
            "provenance": self.provenance,
            "notes": list(self.notes),
            "summary": self.summary.to_dict(),
            "matrices": [m.to_dict() for m in self.matrices],
            "inventory": [_record_dict(r) for r in self.inventory],
            "optimizer_state": self.optimizer_state,
        }


def _record_dict(record: TensorRecord) -> dict[str, Any]:
    d = asdict(record)
    d["shape"] = list(record.shape)
    d["matrices"] = list(record.matrices)
    return d


def full_status(metrics: MatrixMetrics) -> str:
    """Status of a matrix whose full spectrum was computed: ``"zero"`` for a zero matrix, else ``"ok"``."""
    return "zero" if metrics.spectrum == "zero" else "ok"


CSV_COLUMNS_HEAD = ("name", "tensor_name", "kind", "role", "rows", "cols", "status", "n_nonfinite")


def report_rows(report: WeightsReport) -> list[dict[str, Any]]:
    """Flatten the per-matrix results into CSV rows (one per matrix, metrics as columns)."""
    rows = []
    for m in report.matrices:
        row: dict[str, Any] = {
            "name": m.name, "tensor_name": m.tensor_name, "kind": m.kind, "role": m.role,
            "rows": m.shape[0], "cols": m.shape[1], "status": m.status, "n_nonfinite": m.n_nonfinite,
        }  # fmt: skip
        if m.metrics is not None:
            for key, value in m.metrics.to_dict().items():
                if key in ("name", "shape"):
                    continue
                if key == "null_reasons":  # one column: "metric: why; metric: why"
                    row[key] = "; ".join(f"{k}: {v}" for k, v in value.items())
                elif isinstance(value, dict):
                    for sub, subval in value.items():
                        row[f"{key}_{sub}"] = subval
                elif isinstance(value, list | tuple):
                    row[key] = "; ".join(str(v) for v in value)
                else:
                    row[key] = value
        row["note"] = m.note
        rows.append(row)
    return rows


def report_csv(report: WeightsReport) -> str:
    """The CSV text of :func:`report_rows` (columns in first-seen order; empty cell = not computed)."""
    import csv
    import io
    import math

    rows = report_rows(report)
    columns: list[str] = []
    for row in rows:
        for key in row:
            if key not in columns:
                columns.append(key)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        clean = {
            k: ("" if v is None or (isinstance(v, float) and not math.isfinite(v)) else v)
            for k, v in row.items()
        }
        writer.writerow(clean)
    return buf.getvalue()
