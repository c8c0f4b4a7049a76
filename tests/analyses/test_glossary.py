"""The glossary: every column of every table the tool prints (report.md, recommendations.md, the terminal
table of `spectra weights`, weights.csv) is defined once; a new column without a definition fails."""

from __future__ import annotations

import pytest
from hessian_spectra.analyses.glossary.core import (
    UnknownTerm,
    anchor,
    glossary_markdown,
    header,
    lookup,
    terms,
)
from hessian_spectra.analyses.report.tables import md_table
from support.markdown import linked_headers


def test_every_entry_says_what_how_and_where_from():
    for key, t in terms().items():
        assert t.key == key and t.label and t.meaning and t.units and t.reading and t.source, key
        assert not t.meaning.endswith("."), key  # rendered as "<meaning>. Units: ..."
        assert lookup(t.label) is t and all(lookup(a) is t for a in t.aliases)


def test_a_column_without_a_definition_is_refused():
    with pytest.raises(UnknownTerm):
        md_table(["lambda_max", "a brand new column"], [[1.0, 2.0]])
    with pytest.raises(UnknownTerm):
        lookup("renyi_rank_x")


def test_headers_link_to_their_definition():
    assert header("modified_condition_number") == "[mod. kappa](#g-modified_condition_number)"
    lines = glossary_markdown(["mod. kappa", "lambda_max"])
    assert len(lines) == 2 and all(
        f'<a id="{anchor(k)}"></a>' in "".join(lines) for k in ("lambda_max", "modified_condition_number")
    )
    assert "Source:" in lines[0] and "Units:" in lines[0]


def test_every_weights_csv_column_is_defined(tmp_path):
    from hessian_spectra.checkpoints.examples import write_example_checkpoint
    from hessian_spectra.weights.plan import WeightsSettings
    from hessian_spectra.weights.probe import analyze_weights
    from hessian_spectra.weights.results import report_csv

    report = analyze_weights(write_example_checkpoint(tmp_path / "ex"), WeightsSettings())
    columns = report_csv(report).splitlines()[0].split(",")
    assert len(columns) > 30
    for col in columns:
        lookup(col)  # raises UnknownTerm for an undefined column


def test_every_terminal_weights_column_is_defined():
    from hessian_spectra.cli.weights_cmd import TABLE_COLUMNS

    for key in TABLE_COLUMNS:
        lookup(key)


def test_every_recommendations_md_column_is_defined_in_its_glossary(tmp_path):
    from hessian_spectra.analyses.advice.inputs import inputs_from_weights_report
    from hessian_spectra.analyses.advice.markdown import render_markdown
    from hessian_spectra.analyses.advice.recommendations import recommend
    from hessian_spectra.checkpoints.examples import write_example_checkpoint
    from hessian_spectra.weights.plan import WeightsSettings
    from hessian_spectra.weights.probe import analyze_weights

    report = analyze_weights(write_example_checkpoint(tmp_path / "ex"), WeightsSettings())
    recs = recommend(inputs_from_weights_report(report), weight_decay=0.1, lr=1e-3,
                     hessian={m.name: {"lambda_max": 1.0, "trace": 2.0} for m in report.matrices})  # fmt: skip
    md = render_markdown(recs, title="r")
    keys = linked_headers(md)
    assert len(set(keys)) >= 15
    glossary = md.split("## Glossary")[1]
    assert all(f'<a id="g-{k}"></a>' in glossary for k in keys)
