"""track.json (schema ``hessian-spectra/track/1``) and track.csv (one row per checkpoint x matrix) from a
:class:`~hessian_spectra.analyses.track.run.TrackResult`."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping
from typing import Any

from hessian_spectra.analyses.track.summary import findings, summarize_track, update_value
from hessian_spectra.io import json_safe

__all__ = ["SCHEMA_VERSION", "build_track_document", "track_csv", "CSV_WEIGHT_COLUMNS"]

SCHEMA_VERSION = "hessian-spectra/track/1"

#: Weight metrics written to track.csv (every metric is in track.json).
CSV_WEIGHT_COLUMNS = (
    "sigma_max", "sigma_min", "frobenius_norm", "stable_rank", "participation_ratio", "effective_rank",
    "condition_number", "modified_condition_number", "spectral_entropy", "alpha", "n_tail", "sigma_alpha",
    "alpha_weighted", "log_spectral_norm", "mp_n_spikes",
)  # fmt: skip
_UPDATE_COLUMNS = ("sigma_max", "frobenius", "stable_rank", "update_ratio", "decayed_sigma_max")


def build_track_document(
    result: Any, *, provenance: Mapping[str, Any], hessian_settings: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The track.json document: series, settings, provenance, summary, findings, clip thresholds (with the
    rule), per-checkpoint matrix metrics, per-interval update metrics and spectra, Hessian summaries."""
    summary = summarize_track(result)
    return json_safe(
        {
            "schema_version": SCHEMA_VERSION,
            "kind": "track",
            "series": result.series.to_dict(),
            "settings": {**result.settings.to_dict(), "hessian": hessian_settings},
            "provenance": dict(provenance),
            "seconds": result.seconds,
            "findings": findings(result, summary),
            "summary": summary,
            "clip": result.clip.to_dict(),
            "checkpoints": list(result.checkpoints),
            "updates": list(result.updates),
            "hessian": None if result.hessian is None else list(result.hessian),
            "notes": list(result.notes),
        }
    )


def _cell(v: Any) -> Any:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return ""
    return v


def track_csv(result: Any) -> str:
    """One row per checkpoint x matrix: identity, weight metrics, the update that led to this checkpoint
    (empty for the first), and the Hessian block of the same name when the Hessian probe ran."""
    columns = ["step", "checkpoint", "name", "tensor_name", "role", "group", "kind", "rows", "cols", "status",
               *CSV_WEIGHT_COLUMNS, "update_from_step", "update_steps", "update_lr_sum",
               *(f"update_{c}" for c in _UPDATE_COLUMNS), "update_per_step_sigma_max",
               "update_normalized_sigma_max", "update_status", "hessian_block_lambda_max", "hessian_block_trace"]  # fmt: skip
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    hess = {h["step"]: {b["name"]: b for b in h.get("blocks") or []} for h in result.hessian or []}
    for i, ck in enumerate(result.checkpoints):
        iv = result.updates[i - 1] if i > 0 else None
        ups = {m["name"]: m for m in iv["matrices"]} if iv is not None else {}
        blocks = hess.get(ck["step"], {})
        for m in ck["matrices"]:
            row: dict[str, Any] = {
                "step": ck["step"], "checkpoint": ck["path"], "name": m["name"], "tensor_name": m["tensor_name"],
                "role": m["role"], "group": m["group"], "kind": m["kind"], "rows": m["shape"][0],
                "cols": m["shape"][1], "status": m["status"],
            }  # fmt: skip
            row.update({c: m["metrics"].get(c) for c in CSV_WEIGHT_COLUMNS})
            u = ups.get(m["name"])
            if iv is not None and u is not None:
                row.update({f"update_{c}": u.get(c) for c in _UPDATE_COLUMNS})
                row.update(
                    update_from_step=iv["from_step"], update_steps=iv["steps"], update_lr_sum=iv["lr_sum"],
                    update_per_step_sigma_max=update_value(iv, u, "per_step_sigma_max"),
                    update_normalized_sigma_max=update_value(iv, u, "normalized_sigma_max"),
                    update_status=u["status"],
                )  # fmt: skip
            b = blocks.get(m["tensor_name"]) if m["name"] == m["tensor_name"] else None
            if b is not None:
                row.update(hessian_block_lambda_max=b["lambda_max"], hessian_block_trace=b["trace"])
            writer.writerow({k: _cell(v) for k, v in row.items()})
    return buf.getvalue()
