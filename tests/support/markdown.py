"""Reading report markdown in tests: the tables (their header cells) and the glossary keys they link to."""

from __future__ import annotations

import re

_SEPARATOR = re.compile(r"^\|(---\|)+$")
_LINKED = re.compile(r"\[([^\]]+)\]\(#g-([A-Za-z0-9_-]+)\)")


def table_headers(md: str) -> list[list[str]]:
    """Header cells (the visible text) of every markdown table, in order."""
    out, lines = [], md.splitlines()
    for i, line in enumerate(lines[:-1]):
        if line.startswith("|") and _SEPARATOR.match(lines[i + 1]):
            out.append([_LINKED.sub(r"\1", c.strip()) for c in line.strip("|").split(" | ")])
    return out


def linked_headers(md: str) -> list[str]:
    """Glossary keys of every table header (a header that is not a glossary link fails)."""
    keys = []
    lines = md.splitlines()
    for i, line in enumerate(lines[:-1]):
        if line.startswith("|") and _SEPARATOR.match(lines[i + 1]):
            for cell in line.strip("|").split(" | "):
                m = _LINKED.fullmatch(cell.strip())
                assert m, f"table header without a glossary link: {cell!r}"
                keys.append(m.group(2))
    return keys
