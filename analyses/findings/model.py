"""The Finding record, the report sections findings point at, and the hook through which a clip threshold
source other than the paper's lookup (e.g. measured update spectra) feeds the clipping advice."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Finding", "ClipThresholds", "SECTIONS", "CONFIDENCE", "actions_of"]

#: Report sections by name -> the anchor id findings and actions link to (report.md and report.html).
SECTIONS = {
    "actions": "what-to-do", "findings": "findings", "summary": "at-a-glance", "hessian": "sec-hessian",
    "blocks": "sec-blocks", "heterogeneity": "sec-heterogeneity", "structure": "sec-structure",
    "partition": "sec-partition", "weights": "sec-weights", "pc": "sec-pc-layer", "clipping": "sec-clipping",
    "priority": "sec-priority", "provenance": "sec-provenance", "glossary": "sec-glossary",
}  # fmt: skip
CONFIDENCE = ("high", "medium", "low")


@dataclass(frozen=True)
class Finding:
    """One finding. ``evidence``: the numbers that triggered it (names are glossary keys or plain words);
    ``anchor``: the section id holding the evidence; ``action``: what to do about it (None: informational);
    ``attachment``: a file of the report folder the action uses (e.g. partition.json); ``priority``:
    lower comes first in the actions list."""

    kind: str
    statement: str
    evidence: dict[str, Any]
    confidence: str
    anchor: str
    confidence_reason: str = ""
    action: str | None = None
    attachment: str | None = None
    priority: int = 50

    def __post_init__(self) -> None:
        if self.confidence not in CONFIDENCE:
            raise ValueError(f"confidence must be one of {CONFIDENCE}, got {self.confidence!r}")
        if self.anchor not in SECTIONS.values():
            raise ValueError(f"anchor {self.anchor!r} is not a report section ({sorted(SECTIONS.values())})")

    def to_dict(self) -> dict[str, Any]:
        from hessian_spectra.io import json_safe

        return json_safe(asdict(self))


@dataclass(frozen=True)
class ClipThresholds:
    """Clip thresholds from one source, for :func:`hessian_spectra.analyses.findings.rules.clipping_advice`.

    ``source``: "lookup" (the paper's c by model size) or a measurement's name (e.g. "update spectra");
    ``groups``: per layer group ``{"group", "c", "reason"}`` (more keys are kept as evidence);
    ``confidence`` with its reason: a lookup is a default (low); a measurement says how sure it is.
    """

    source: str
    groups: tuple[Mapping[str, Any], ...]
    confidence: str
    confidence_reason: str
    evidence: dict[str, Any] = field(default_factory=dict)


def actions_of(findings: list[Finding]) -> list[dict[str, Any]]:
    """The actions in priority order, each linked to its finding (``F<n>``, the finding's 1-based index)
    and to the section holding the evidence."""
    indexed = [(i, f) for i, f in enumerate(findings, 1) if f.action]
    indexed.sort(key=lambda t: (t[1].priority, t[0]))
    return [
        {"id": f"A{n}", "finding": f"F{i}", "kind": f.kind, "statement": f.action, "confidence": f.confidence,
         "anchor": f.anchor, "attachment": f.attachment}
        for n, (i, f) in enumerate(indexed, 1)
    ]  # fmt: skip
