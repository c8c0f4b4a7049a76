"""report.md: what to do first (actions, findings), then the evidence section by section, provenance and
the glossary of every column printed. report.html is this markdown rendered (html_page.py)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from hessian_spectra.analyses.findings.model import SECTIONS
from hessian_spectra.analyses.report.numbers import fmt
from hessian_spectra.analyses.report.tables import heading

__all__ = ["render_markdown", "used_terms", "actions_lines", "findings_lines"]

_TERM_LINK = re.compile(r"\]\(#g-([A-Za-z0-9_-]+)\)")
_SECTION_TITLES = {v: k for k, v in SECTIONS.items()}


def used_terms(lines: Iterable[str]) -> list[str]:
    """Glossary keys linked from ``lines`` (table headers and inline links), in first-seen order."""
    from hessian_spectra.analyses.glossary.core import terms

    known = {k.replace(".", "-"): k for k in terms()}
    seen: dict[str, None] = {}
    for line in lines:
        for m in _TERM_LINK.finditer(line):
            seen.setdefault(known.get(m.group(1), m.group(1)), None)
    return list(seen)


def _section_link(anchor: str) -> str:
    return f"[{_SECTION_TITLES.get(anchor, anchor).replace('_', ' ')}](#{anchor})"


def actions_lines(doc: Mapping[str, Any]) -> list[str]:
    """ "What to do": the actions in priority order, each with its confidence, its reason (the finding)
    and a link to the section holding the evidence."""
    lines = heading(2, "What to do", SECTIONS["actions"])
    actions = doc.get("actions") or []
    if not actions:
        return lines + ["Nothing to act on from the parts that were run (see the findings below).", ""]
    by_id = {f["id"]: f for f in doc.get("findings") or []}
    for i, a in enumerate(actions, 1):
        f = by_id.get(a["finding"], {})
        attach = f" Attached: [{a['attachment']}]({a['attachment']})." if a.get("attachment") else ""
        lines.append(
            f"{i}. **{a['statement']}** ({a['confidence']} [confidence](#g-confidence); evidence: "
            f"{_section_link(a['anchor'])}, finding [{a['finding']}](#finding-{a['finding']}).){attach}"
        )
        if f.get("statement"):
            lines.append(f"   - Because: {f['statement']}")
    return lines + [""]


def findings_lines(doc: Mapping[str, Any]) -> list[str]:
    """Every finding with the numbers that triggered it and why its confidence is what it is."""
    lines = heading(2, "Findings", SECTIONS["findings"])
    for f in doc.get("findings") or []:
        ev = "; ".join(f"{k} = {_evidence_value(v)}" for k, v in (f.get("evidence") or {}).items())
        lines.append(
            f'- <a id="finding-{f["id"]}"></a>**{f["id"]} {f["kind"]}** ({f["confidence"]} '
            f"[confidence](#g-confidence): {f.get('confidence_reason') or '-'}). {f['statement']} "
            f"Evidence: {ev or '-'}. See {_section_link(f['anchor'])}."
        )
    if not doc.get("findings"):
        lines.append("No findings from the parts that were run.")
    return lines + [""]


def _evidence_value(v: Any) -> str:
    if isinstance(v, Mapping):
        return "{" + ", ".join(f"{k}: {_evidence_value(x)}" for k, x in list(v.items())[:6]) + "}"
    if isinstance(v, list | tuple):
        shown = ", ".join(_evidence_value(x) for x in v[:6])
        return f"[{shown}{', ...' if len(v) > 6 else ''}]"
    return fmt(v) if not isinstance(v, str) else v


def render_markdown(doc: Mapping[str, Any], figures: Sequence[str] = ()) -> str:
    """report.md: title, what to do, findings, at a glance, the evidence sections, provenance, glossary.
    ``figures``: keys of the figures written to ``figures/<key>.png`` (referenced where they belong)."""
    from hessian_spectra.analyses.advice.markdown import recommendations_lines
    from hessian_spectra.analyses.glossary.core import glossary_markdown
    from hessian_spectra.analyses.report import sections as hs
    from hessian_spectra.analyses.report import sections_model as ms

    prov = doc["provenance"]
    model = doc.get("model") or {}
    lines = [f"# spectra report: {doc['source']}", ""]
    what = f"{model.get('class')}, {fmt(model.get('parameters'))} parameters; " if model.get("class") else ""
    lines += [f"{what}`spectra {doc.get('kind', 'analyze')}`, schema {doc['schema_version']}; hessian-spectra "
              f"{prov['tool_version']}, torch {prov['torch']}, seed {prov['seed']}, created {prov['created_utc']} "
              f"({_section_link(SECTIONS['provenance'])}).", ""]  # fmt: skip
    lines += actions_lines(doc) + findings_lines(doc)
    lines += (
        heading(2, "At a glance", SECTIONS["summary"])
        + [f"- {p}" for p in doc.get("summary") or []]
        + ms.workload_lines(doc)
        + [""]
    )
    lines += hs.hessian_section(doc, figures) + hs.blocks_section(doc, figures)
    lines += hs.heterogeneity_section(doc, figures) + hs.structure_section(doc)
    lines += ms.partition_section(doc) + ms.weights_section(doc, figures)
    if doc.get("recommendations"):
        lines += recommendations_lines(doc["recommendations"])
    lines += ms.provenance_section(doc)
    lines += heading(2, "Glossary", SECTIONS["glossary"])
    lines += ["Every column of every table above, defined once (formula, units, how to read it, source).", ""]
    lines += glossary_markdown(used_terms(lines))
    return "\n".join(lines) + "\n"
