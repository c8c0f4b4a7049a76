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
    "heterogeneity_findings",
    "block_rows",
    "ci_text",
    "interval_words",
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


def ci_text(ci: Mapping[str, Any] | None) -> str:
    """``estimate [ci_low, ci_high]`` of an interval dict (``exact`` intervals: the value alone)."""
    if not ci:
        return "-"
    if ci.get("method") == "exact":
        return f"{fmt(ci['estimate'])} (exact)"
    lo, hi = ci.get("ci_low"), ci.get("ci_high")
    bounds = "unbounded" if lo is None or hi is None else f"{fmt(lo)}, {fmt(hi)}"
    return f"{fmt(ci['estimate'])} [{bounds}]"


def interval_words(ci: Mapping[str, Any]) -> str:
    """How an interval was made, in words: level, method, degrees of freedom, probes, estimator."""
    level = f"{100 * float(ci['level']):g}% interval"
    how = {"t": f"Student t, {ci.get('dof')} dof", "t-skew": f"Student t, {ci.get('dof')} dof, widened for skew",
           "t-bound": "Student t on a variance bound (probes agreed)",
           "certificate": "every probe agreed exactly", "bootstrap": "bootstrap over probes",
           "exact": "exact", "unbounded": "no bound"}.get(ci["method"], ci["method"])  # fmt: skip
    est = f", {ci['estimator']}" if ci.get("estimator") else ""
    return f"{level}: {how}, {ci['probes']} probes{est}"


def summary(doc: Mapping[str, Any]) -> list[str]:
    """A few plain sentences summarising the measurements (the "At a glance" section)."""
    out: list[str] = []
    hess = doc.get("hessian")
    if hess:
        lz = hess.get("lanczos")
        if lz and lz.get("method") == "exact":
            out.append(
                f"Hessian lambda_max {fmt(lz['lambda_max'])}, lambda_min {fmt(lz['lambda_min'])}, trace "
                f"{fmt(lz['trace'])} (exact: all {lz['dim']} eigenvalues from the dense Hessian, dim <= probes x steps)."
            )
        elif lz:
            out.append(
                f"Hessian lambda_max {fmt(lz['lambda_max'])}, lambda_min {fmt(lz['lambda_min'])} "
                f"(Lanczos, {lz['steps']} steps, converged: {fmt(lz['converged'])})."
            )
        dens = hess.get("density")
        estimated = bool(dens) and dens.get("method") != "exact"
        if estimated and dens.get("trace_ci"):
            ci = dens["trace_ci"]
            out.append(
                f"Hessian trace {ci_text(ci)} ({interval_words(ci)}; SLQ, {dens['num_probes']} probes x "
                f"{dens['steps']} steps)."
            )
        elif estimated:
            out.append(
                f"Hessian trace {fmt(dens['trace'])} +- {fmt(dens['trace_stderr'], 2)} "
                f"(SLQ, {dens['num_probes']} probes x {dens['steps']} steps)."
            )
        out.append(f"{hess['num_hvps']} Hessian-vector products in {fmt(hess['seconds'], 3)} s.")
        blocks = hess.get("blocks") or []
        exact = [b["name"] for b in blocks if b.get("method") == "exact"]
        if blocks:
            out.append(
                f"Block spectra: {len(exact)} of {len(blocks)} blocks exact (every eigenvalue from the block's "
                f"columns, cheaper than their SLQ), {len(blocks) - len(exact)} estimated by block SLQ."
            )
    out.extend(heterogeneity_findings(doc.get("heterogeneity")))
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


def heterogeneity_findings(het: Mapping[str, Any] | None) -> list[str]:
    """The heterogeneity sentences: the verdict line (only the quantities that decided it), flat blocks
    with their reasons, the groups that move the statistic most, and the JS distances as context."""
    if not het:
        return []
    out = [f"Block heterogeneity: {het.get('verdict_line') or het['verdict']}."]
    flat = het.get("flat_blocks") or []
    if flat:
        reasons: dict[str, list[str]] = {}
        for f in flat:
            reasons.setdefault(f["reason"].split(":")[0], []).append(f["name"])
        parts = [
            f"{len(v)} {k} ({', '.join(v[:3])}{', ...' if len(v) > 3 else ''})" for k, v in reasons.items()
        ]
        out.append(
            f"Flat blocks (Hessian zero up to {het.get('dtype') or 'float32'} rounding: spectral radius <= "
            f"{fmt(het.get('flat_tolerance'), 2)} x the model's curvature scale), left out of every spread, "
            f"JS and driver: " + "; ".join(parts) + "."
        )
    stat = het.get("statistic") or {}
    top = [d for d in (het.get("drivers") or {}).get("statistic", []) if (d.get("effect") or 0) > 0][:3]
    if top:
        out.append(
            f"Groups that widen {stat.get('name', 'the statistic')} most (value without the group): "
            + ", ".join(
                f"{d['group']} ({fmt(d['statistic_without'], 2)}, {d['num_blocks']} block(s))" for d in top
            )
            + "."
        )
    js = ", ".join(f"{k} {fmt(v, 3)}" for k, v in het["mean_js"].items())
    if js:
        out.append(
            f"Mean pairwise JS distance between block densities (context; conventions in the report): {js}."
        )
    return out


def block_rows(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per block: name, group, layer, dim, method (exact / slq), lambda_max, lambda_min, trace, its interval
    (``trace_ci``), the density's mass below zero (``negative_mass``), whether it is in the JS matrices and
    whether it is flat (Hessian zero up to rounding, see
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
                "method": b.get("method", "slq"), "lambda_max": b["lambda_max"], "lambda_min": b["lambda_min"],
                "trace": b["trace"], "trace_stderr": b["trace_stderr"], "flat": b["name"] in flat,
                "in_js": bool(m.get("in_js", b["name"] in meta)),
                "trace_ci": b.get("trace_ci"), "negative_mass": b.get("negative_mass"),
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
