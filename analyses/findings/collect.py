"""Every finding of a report document, in reading order, and the actions they lead to."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from hessian_spectra.analyses.findings import checks, rules
from hessian_spectra.analyses.findings.model import ClipThresholds, Finding, actions_of

__all__ = ["ClipSource", "build_findings", "findings_and_actions"]

#: Where clip thresholds come from: report document -> thresholds (None: no clipping advice). The
#: default is the recommendations' lookup; a source of measured update spectra plugs in here.
ClipSource = Callable[[Mapping[str, Any]], ClipThresholds | None]


def _lookup(doc: Mapping[str, Any]) -> ClipThresholds | None:
    return rules.lookup_clip_thresholds(doc.get("recommendations"))


def build_findings(doc: Mapping[str, Any], clip_source: ClipSource | None = None) -> list[Finding]:
    """Training advice first (optimizer, Adam-mini, PC layer, clipping), then diagnostics."""
    het, part = doc.get("heterogeneity"), doc.get("partition")
    found = [
        rules.optimizer_advice(het, part),
        rules.adam_mini_advice(part, het),
        rules.pc_layer_advice(doc.get("recommendations")),
        rules.clipping_advice((clip_source or _lookup)(doc)),
        checks.head_structure_finding(doc.get("structure")),
        *checks.curvature_checks(doc.get("hessian")),
        checks.flat_block_finding(doc),
        checks.weights_alpha_finding(doc.get("weights")),
    ]
    return [f for f in found if f is not None]


def findings_and_actions(
    doc: Mapping[str, Any], clip_source: ClipSource | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(findings, actions)`` as report.json holds them: findings numbered F1..., actions A1... in
    priority order, each naming its finding and the section with the evidence."""
    found = build_findings(doc, clip_source)
    out = [{"id": f"F{i}", **f.to_dict()} for i, f in enumerate(found, 1)]
    return out, actions_of(found)
