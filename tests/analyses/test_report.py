"""The analyze report: schema-valid report.json with findings and actions, report.md that opens with what
to do, report.html that carries every table and figure of report.md (markdown-it-py, checked with an HTML
parser, and in headless Chromium when one is installed), glossary links on every column, head structure."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest
import torch
from hessian_spectra.analyses.demo import TinyGPT, markov_tokens
from hessian_spectra.analyses.head_structure import head_structure
from hessian_spectra.analyses.report.analyze import AnalyzeOptions, analyze_model
from hessian_spectra.analyses.report.document import validate_document
from hessian_spectra.analyses.report.write import REPORT_FILES, write_report
from hessian_spectra.curvature.losses import cross_entropy
from hessian_spectra.curvature.probe import HessianSettings
from hessian_spectra.output_set import MANIFEST
from support.markdown import linked_headers, table_headers


def _gpt(std: float | None = 0.02):
    """1-layer tiny GPT (d=16, 4 heads); ``std``: GPT-2-style N(0, std^2) init of every matrix."""
    torch.manual_seed(0)
    gpt = TinyGPT(vocab=16, d_model=16, n_heads=4, n_layers=1, seq_len=8).double()
    if std is not None:
        with torch.no_grad():
            for p in gpt.parameters():
                if p.ndim >= 2:
                    p.normal_(0.0, std)
    return gpt, markov_tokens(1, 8, 8, 16, 0)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    gpt, tok = _gpt()
    before = {k: v.clone() for k, v in gpt.state_dict().items()}
    mode = gpt.training
    settings = HessianSettings(top_k=2, probes=2, steps=10, block_probes=2, block_steps=10)
    result = analyze_model(gpt, tok, cross_entropy, settings, source="tiny-gpt",
                           options=AnalyzeOptions(structure_max_columns=64))  # fmt: skip
    assert all(torch.equal(before[k], v) for k, v in gpt.state_dict().items()) and gpt.training == mode
    out = tmp_path_factory.mktemp("rep") / "report"
    write_report(out, result.doc, result.figures, attachments=result.attachments)
    return result.doc, result.figures, out


def test_report_json_valid_and_complete(report):
    import jsonschema

    doc, figs, out = report
    assert sorted(p.name for p in out.iterdir()) == sorted([*REPORT_FILES, "figures", "partition.json", MANIFEST])
    assert sorted(p.name for p in (out / "figures").iterdir()) == sorted(f"{k}.png" for k in figs)
    on_disk = json.loads((out / "report.json").read_text())
    validate_document(on_disk)
    for key in ("hessian", "heterogeneity", "structure", "weights", "recommendations", "partition"):
        assert on_disk[key] is not None, key
    prov = on_disk["provenance"]
    assert (
        prov["torch"] == torch.__version__
        and prov["started_utc"] <= prov["finished_utc"]
        and prov["wall_seconds"] > 0
    )
    n = len(on_disk["heterogeneity"]["blocks"])
    assert all(len(m) == n for m in on_disk["heterogeneity"]["js_matrix"].values())
    for broken in (dict(on_disk, schema_version="x"), {k: v for k, v in on_disk.items() if k != "provenance"},
                   dict(on_disk, findings=[{"id": "F1", "statement": "x"}])):  # fmt: skip
        with pytest.raises(jsonschema.ValidationError):
            validate_document(broken)
    expected = {"full_density", "block_densities", "block_scales", "weights_depth",
                "js_heatmap_scales-kept", "js_heatmap_shape-only"}  # fmt: skip
    assert set(figs) == expected and all(v.startswith(b"\x89PNG") for v in figs.values())


def test_report_states_trace_intervals_and_negative_mass(report):
    """Issue 18: the trace sentence and every block row give an interval with its level, probes and method;
    the schema checks the interval objects (a broken one fails validation)."""
    import jsonschema
    from hessian_spectra.analyses.report.document import block_rows, ci_text

    doc, _, out = report
    dens = doc["hessian"]["density"]
    assert dens["trace_ci"]["probes"] >= 1 and dens["negative_mass"]["level"] == 0.95
    assert any("95% interval" in f and "Hessian trace" in f for f in doc["summary"])
    rows = block_rows(doc)
    assert rows and all(r["trace_ci"]["method"] in ("exact", "t", "t-skew", "t-bound", "certificate", "unbounded")
                        for r in rows)  # fmt: skip
    md = (out / "report.md").read_text()
    assert "trace CI" in md and "mass < 0" in md and "estimate [95% interval]" in md
    assert all(ci_text(r["trace_ci"]) in md for r in rows)
    assert ci_text({"estimate": 2.0, "method": "exact"}) == "2 (exact)"
    assert (
        ci_text({"estimate": 1.0, "ci_low": None, "ci_high": None, "method": "unbounded"}) == "1 [unbounded]"
    )
    bad = json.loads(json.dumps(doc))
    bad["hessian"]["blocks"][0]["trace_ci"]["level"] = 2
    with pytest.raises(jsonschema.ValidationError):
        validate_document(bad)


def test_partition_is_attached_and_summarised(report):
    from hessian_spectra.analyses.partitions.partition import read_partition

    doc, _, out = report
    part = read_partition(out / "partition.json")
    assert part.summary == doc["partition"]["summary"]
    gpt, _ = _gpt()
    assert doc["partition"]["summary"]["num_params"] == sum(p.numel() for p in gpt.parameters())


def test_report_opens_with_actions_and_findings_linked_to_their_evidence(report):
    doc, _, out = report
    md = (out / "report.md").read_text()
    heads = re.findall(r"^## (.+)$", md, flags=re.M)
    assert heads[:3] == ["What to do", "Findings", "At a glance"]
    anchors = set(re.findall(r'<a id="([^"]+)"></a>', md))
    assert doc["actions"] and doc["findings"]
    kinds = {f["kind"] for f in doc["findings"]}
    assert {"optimizer", "adam-mini", "pc-layer", "clipping", "head-structure", "sharpness"} <= kinds
    for item in doc["findings"] + doc["actions"]:
        assert item["anchor"] in anchors, item  # every finding/action links to a section that exists
    ids = {f["id"] for f in doc["findings"]}
    assert all(a["finding"] in ids for a in doc["actions"])
    actions = md.split("## What to do")[1].split("## Findings")[0]
    assert all(f"(#{a['anchor']})" in actions for a in doc["actions"])
    het = doc["heterogeneity"]
    opt = next(f for f in doc["findings"] if f["kind"] == "optimizer")
    assert het["verdict"] in opt["statement"] and opt["evidence"]["verdict"] == het["verdict"]


class _Page(HTMLParser):
    """Tables (their header cells), images and element ids of an HTML page."""

    def __init__(self):
        super().__init__()
        self.tables, self.images, self.ids, self.scripts = [], [], set(), 0
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "table":
            self.tables.append([])
        elif tag == "th":
            self._cell = []
        elif tag == "img":
            self.images.append(a)
        elif tag == "script":
            self.scripts += 1

    def handle_endtag(self, tag):
        if tag == "th" and self._cell is not None:
            self.tables[-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def test_every_table_and_figure_of_report_md_reaches_report_html(report):
    doc, figs, out = report
    md, page = (out / "report.md").read_text(), (out / "report.html").read_text()
    parsed = _Page()
    parsed.feed(page)
    tables = table_headers(md)
    titles = [t for t in ("Spectral clipping", "Priority (high curvature", "Weight spectra") if t in md]
    assert len(titles) == 3 and len(tables) >= 9
    assert parsed.tables == tables  # every table, in order, with the same columns
    md_figs = re.findall(r"!\[[^\]]*\]\(figures/([^)]+)\.png\)", md)
    assert sorted(md_figs) == sorted(figs)
    assert [i["data-figure"] for i in parsed.images] == md_figs
    assert all(i["src"].startswith("data:image/png;base64,") for i in parsed.images)
    assert {a for a in re.findall(r'<a id="([^"]+)"></a>', md)} <= parsed.ids
    assert parsed.scripts == 0 and "<link" not in page and "http://" not in page and "https://" not in page


def test_every_report_md_column_is_defined_in_its_glossary(report):
    md = (report[2] / "report.md").read_text()
    keys = linked_headers(md)
    assert len(set(keys)) >= 40
    glossary = md.split("## Glossary")[1]
    assert all(f'<a id="g-{k}"></a>' in glossary for k in set(keys))
    page = (report[2] / "report.html").read_text()
    assert all(f'<th><a href="#g-{k}">' in page and f'id="g-{k}"' in page for k in set(keys))


def test_html_shows_foreign_markup_as_text():
    from hessian_spectra.analyses.report.document import build_document
    from hessian_spectra.analyses.report.html_page import render_html

    doc = build_document(source="evil<script>alert(1)</script>.bin", seed=0)
    page = render_html(doc, {})
    assert "<script>" not in page and "&lt;script&gt;" in page


def test_sections_may_be_absent(tmp_path):
    from hessian_spectra.analyses.report.document import build_document
    from hessian_spectra.analyses.report.html_page import render_html
    from hessian_spectra.analyses.report.markdown import render_markdown

    doc = build_document(source="nothing", seed=3)
    validate_document(doc)
    md = render_markdown(doc)
    assert "# spectra report: nothing" in md and "Nothing to act on" in md and "<html" in render_html(doc, {})


def test_report_renders_in_headless_chromium_when_installed(report, tmp_path):
    """The real browser: every table and figure of report.md in the rendered DOM (skipped without one)."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if exe is None:
        pytest.skip("headless Chromium not installed (looked for chromium, chromium-browser, google-chrome)")
    _, figs, out = report
    flags = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
    dom = subprocess.run([*flags, "--dump-dom", (out / "report.html").as_uri()], capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert dom.returncode == 0, dom.stderr[-2000:]
    parsed = _Page()
    parsed.feed(dom.stdout)
    assert parsed.tables == table_headers((out / "report.md").read_text()) and len(parsed.images) == len(figs)


def test_qk_hessian_is_head_diagonal_at_init():
    """REFERENCE section 3: >= 0.95 of the Q/K Hessian mass in per-head blocks at a GPT-2-style init
    (std 0.02); random equal-size partitions ~0.3. V/O are not head-diagonal. Exact columns (dim 256)."""
    gpt, tok = _gpt()
    rep = head_structure(gpt, tok, cross_entropy, 4)
    qk = [t for t in rep.tensors if t.role == "qk"]
    assert len(qk) == 2 and all(t.exact for t in qk)
    for t in qk:
        assert t.share >= 0.95 and t.random_mean <= 0.5
    vo = [t for t in rep.tensors if t.role in ("v", "attn_out")]
    assert vo and all(t.share < 0.8 for t in vo)
