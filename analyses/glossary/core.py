"""Glossary entries and their lookup: by key, by printed label or by CSV column name; the markdown a
report appends; the anchor each table header links to."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

__all__ = ["Term", "terms", "term", "lookup", "anchor", "header", "glossary_markdown", "UnknownTerm"]


@dataclass(frozen=True)
class Term:
    """One defined quantity. ``label`` is what table headers print; ``aliases`` are other names it goes by
    (CSV/JSON field names, terminal column titles)."""

    key: str
    label: str
    meaning: str  # formula or definition in words
    units: str
    reading: str  # what is good or bad, and the thresholds the tool uses
    source: str  # paper or convention it comes from ("-" for plain bookkeeping)
    aliases: tuple[str, ...] = ()


class UnknownTerm(KeyError):
    """A header or column with no glossary entry (every printed column must have one)."""


def t(key: str, label: str, meaning: str, units: str, reading: str, source: str, *aliases: str) -> Term:
    """Shorthand the term modules use to stay one entry per few lines."""
    return Term(key, label, meaning, units, reading, source, tuple(aliases))


@lru_cache(maxsize=1)
def terms() -> dict[str, Term]:
    """Every entry by key (the term modules, merged; a key or name defined twice is an error)."""
    from hessian_spectra.analyses.glossary import (
        terms_advice,
        terms_hessian,
        terms_uncertainty,
        terms_weights,
    )

    out: dict[str, Term] = {}
    names: dict[str, str] = {}
    for module in (terms_hessian, terms_uncertainty, terms_weights, terms_advice):
        for entry in module.TERMS:
            if entry.key in out:
                raise ValueError(f"glossary key {entry.key!r} defined twice")
            out[entry.key] = entry
            for name in {entry.key, entry.label, *entry.aliases}:
                if names.setdefault(name, entry.key) != entry.key:
                    raise ValueError(f"glossary name {name!r} names both {names[name]!r} and {entry.key!r}")
    return out


@lru_cache(maxsize=1)
def _names() -> dict[str, str]:
    return {n: e.key for e in terms().values() for n in (e.key, e.label, *e.aliases)}


#: CSV columns built from a parameterised metric (``renyi_ranks_0.5``) map to the family's entry.
_FAMILIES = ((re.compile(r"^renyi_ranks_[0-9.]+$|^renyi_ranks_inf$"), "renyi_ranks"),)


def lookup(name: str) -> Term:
    """The entry a key, printed label, alias or CSV column names (``UnknownTerm`` if none)."""
    key = _names().get(name)
    if key is None:
        key = next((k for pattern, k in _FAMILIES if pattern.match(name)), None)
    if key is None:
        raise UnknownTerm(name)
    return terms()[key]


def term(key: str) -> Term:
    """The entry with this exact key."""
    try:
        return terms()[key]
    except KeyError:
        raise UnknownTerm(key) from None


def anchor(key: str) -> str:
    """The HTML/markdown anchor id of an entry (``g-lambda_max``)."""
    return "g-" + re.sub(r"[^A-Za-z0-9_-]+", "-", term(key).key)


def header(key: str) -> str:
    """A table header cell: the entry's label linked to its glossary anchor."""
    return f"[{term(key).label}](#{anchor(key)})"


def glossary_markdown(keys: Iterable[str]) -> list[str]:
    """Markdown lines defining ``keys`` (deduplicated, in glossary order), each under its anchor."""
    wanted = {lookup(k).key for k in keys}
    lines: list[str] = []
    for entry in terms().values():
        if entry.key not in wanted:
            continue
        units = f" Units: {entry.units}." if entry.units and entry.units != "-" else ""
        source = f" Source: {entry.source}." if entry.source and entry.source != "-" else ""
        lines.append(
            f'- <a id="{anchor(entry.key)}"></a>**{entry.label}**: {entry.meaning}.{units} '
            f"Reading: {entry.reading}.{source}"
        )
    return lines
