"""The report.json document: building it from probe results, the findings in plain words, the per-block
rows, and validation against ``report_schema.json`` (versioned by :data:`SCHEMA_VERSION`)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from hessian_spectra.analyses.report.numbers import fmt
from hessian_spectra.io import json_safe

__all__ = [
    "SCHEMA_VERSION",
    "PARTITION_FILE",
    "build_document",
    "summary",
    "block_rows",
    "load_schema",
    "validate_document",
]

SCHEMA_VERSION = "hessian-spectra/report/2"
SCHEMA_PATH = Path(__file__).with_name("report_schema.json")
#: The report folder's attachment holding the Adam-mini partition (spectra partition's format).
PARTITION_FILE = "partition.json"


def build_document(
    *,
    source: str,
    seed: int,
    hessian: Any = None,
    heterogeneity: Any = None,
    structure: Any = None,
    weights: Any = None,
    recommendations: Any = None,
    partition: Any = None,
    model_info: Mapping[str, Any] | None = None,
    settings: Mapping[str, Any] | None = None,
    inputs: Mapping[str, Any] | None = None,
    started: datetime | None = None,
    extra: Mapping[str, Any] | None = None,
    kind: str = "analyze",
    clip_source: Any = None,
) -> dict[str, Any]:
    """The report.json document (schema :data:`SCHEMA_VERSION`): provenance (versions, seed, start/end
    time), the inputs it was computed from, every section present (``null`` when not run), the findings
    and actions (:mod:`hessian_spectra.analyses.findings`; ``clip_source`` replaces the clip-threshold
    lookup) and a plain-words summary. ``kind``: "analyze" (``spectra analyze``) or "hessian"
    (``spectra hessian``: the Hessian part alone). ``partition``: a
    :class:`~hessian_spectra.analyses.partitions.partition.Partition`, attached as partition.json."""
    from hessian_spectra.analyses.findings.collect import findings_and_actions
    from hessian_spectra.analyses.report.inputs import finish_inputs
    from hessian_spectra.weights.provenance import provenance

    if kind not in ("analyze", "hessian"):
        raise ValueError(f"kind must be 'analyze' or 'hessian', got {kind!r}")
    prov = provenance(seed=seed)
    finished = datetime.now(timezone.utc)
    if started is not None:
        prov.update(started_utc=started.isoformat(timespec="seconds"),
                    finished_utc=finished.isoformat(timespec="seconds"),
                    wall_seconds=round((finished - started).total_seconds(), 3))  # fmt: skip
    doc = {
        "schema_version": SCHEMA_VERSION,
        "kind": kind,
        "source": str(source),
        "provenance": prov,
        "inputs": finish_inputs(dict(inputs)) if inputs else None,
        "model": dict(model_info or {}),
        "settings": dict(settings or {}),
        "hessian": None if hessian is None else hessian.to_dict(),
        "heterogeneity": None if heterogeneity is None else heterogeneity.to_dict(),
        "structure": None if structure is None else structure.to_dict(),
        "partition": None if partition is None else _partition_section(partition),
        "weights": None if weights is None else weights.to_dict(),
        "recommendations": None if recommendations is None else recommendations.to_dict(),
    }
    if extra:
        doc.update(dict(extra))
    doc = json_safe(doc)
    doc["summary"] = summary(doc)
    doc["findings"], doc["actions"] = findings_and_actions(doc, clip_source)
    return doc


def _partition_section(partition: Any) -> dict[str, Any]:
    """What report.json keeps of the partition (the whole of it is the partition.json attachment)."""
    return {
        "file": PARTITION_FILE, "summary": partition.summary, "unresolved": list(partition.unresolved),
        "buffers": dict(partition.model_info.get("buffers") or {}),
    }  # fmt: skip


def summary(doc: Mapping[str, Any]) -> list[str]:
    """A few plain sentences summarising the measurements (the "At a glance" section)."""
    from hessian_spectra.analyses.findings.rules import verdict_reasons

    out: list[str] = []
    hess = doc.get("hessian")
    if hess:
        lz = hess.get("lanczos")
        if lz:
            out.append(
                f"Hessian lambda_max {fmt(lz['lambda_max'])}, lambda_min {fmt(lz['lambda_min'])} "
                f"(Lanczos, {lz['steps']} steps, converged: {fmt(lz['converged'])})."
            )
        dens = hess.get("density")
        if dens:
            out.append(
                f"Hessian trace {fmt(dens['trace'])} +- {fmt(dens['trace_stderr'], 2)} "
                f"(SLQ, {dens['num_probes']} probes x {dens['steps']} steps)."
            )
        out.append(f"{hess['num_hvps']} Hessian-vector products in {fmt(hess['seconds'], 3)} s.")
    het = doc.get("heterogeneity")
    if het:
        js = ", ".join(f"{k} {fmt(v, 3)}" for k, v in het["mean_js"].items())
        out.append(
            f"Block heterogeneity: {het['verdict']} ({'; '.join(verdict_reasons(het))}); mean pairwise JS: {js}."
        )
    st = doc.get("structure")
    if st and st.get("by_role"):
        parts = [
            f"{role} {fmt(v['share'], 3)} (random {fmt(v['random_share'], 3)})"
            for role, v in st["by_role"].items()
        ]
        out.append("Per-head Hessian mass share: " + ", ".join(parts) + ".")
    w = doc.get("weights")
    if w:
        alpha = (w["summary"]["metrics"].get("alpha") or {}).get("median")
        out.append(
            f"Weights: {w['summary']['n_matrices']} matrices analysed; median power-law alpha {fmt(alpha, 3)}."
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
    """Per block: name, group, layer, dim, lambda_max, lambda_min, trace +- stderr, whether it is in the
    JS matrices and whether it is flat (Hessian zero up to rounding, see
    :func:`hessian_spectra.analyses.findings.checks.flat_blocks`)."""
    from hessian_spectra.analyses.findings.checks import flat_blocks
    from hessian_spectra.analyses.heterogeneity.blocks import block_group, block_layer

    het = doc.get("heterogeneity") or {}
    meta = {b["name"]: b for b in het.get("blocks", [])}
    flat = flat_blocks(doc)
    rows = []
    for b in (doc.get("hessian") or {}).get("blocks", []):
        m = meta.get(b["name"], {})
        rows.append(
            {
                "name": b["name"], "group": m.get("group") or block_group(b["name"]),
                "layer": m.get("layer") if m else block_layer(b["name"]), "dim": b["dim"],
                "lambda_max": b["lambda_max"], "lambda_min": b["lambda_min"], "trace": b["trace"],
                "trace_stderr": b["trace_stderr"], "in_js": b["name"] in meta, "flat": b["name"] in flat,
            }
        )  # fmt: skip
    return rows


def load_schema() -> dict[str, Any]:
    """The JSON Schema of report.json."""
    return json.loads(SCHEMA_PATH.read_text())


def validate_document(doc: Mapping[str, Any]) -> None:
    """Raise ``jsonschema.ValidationError`` when ``doc`` does not follow the schema (needs jsonschema)."""
    import jsonschema

    jsonschema.validate(json.loads(json.dumps(json_safe(dict(doc)))), load_schema())
