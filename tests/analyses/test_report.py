"""The analyze report: schema-valid report.json, complete report.md, self-contained report.html, head structure."""

from __future__ import annotations

import json
import shutil
import subprocess

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
    doc, figs = analyze_model(gpt, tok, cross_entropy, settings, source="tiny-gpt",
                              options=AnalyzeOptions(structure_max_columns=64))  # fmt: skip
    assert all(torch.equal(before[k], v) for k, v in gpt.state_dict().items()) and gpt.training == mode
    out = tmp_path_factory.mktemp("rep") / "report"
    write_report(out, doc, figs)
    return doc, figs, out


def test_report_json_valid_and_complete(report):
    import jsonschema

    doc, figs, out = report
    assert sorted(p.name for p in out.iterdir()) == sorted([*REPORT_FILES, MANIFEST])  # + the set's manifest
    on_disk = json.loads((out / "report.json").read_text())
    validate_document(on_disk)
    for key in ("hessian", "heterogeneity", "structure", "weights", "recommendations"):
        assert on_disk[key] is not None, key
    assert on_disk["provenance"]["torch"] == torch.__version__ and on_disk["findings"]
    n = len(on_disk["heterogeneity"]["blocks"])
    assert all(len(m) == n for m in on_disk["heterogeneity"]["js_matrix"].values())
    bad = dict(on_disk, schema_version="x")
    with pytest.raises(jsonschema.ValidationError):
        validate_document(bad)
    bad = dict(on_disk)
    del bad["provenance"]
    with pytest.raises(jsonschema.ValidationError):
        validate_document(bad)
    md = (out / "report.md").read_text()
    for title in ("## Summary", "## Hessian blocks", "## Block heterogeneity", "## Hessian structure by head",
                  "## Weight spectra", "## Recommendations"):  # fmt: skip
        assert title in md
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
    assert any("95% interval" in f and "Hessian trace" in f for f in doc["findings"])
    rows = block_rows(doc)
    assert rows and all(r["trace_ci"]["method"] in ("exact", "t", "t-skew", "t-bound", "certificate", "unbounded")
                        for r in rows)  # fmt: skip
    md = (out / "report.md").read_text()
    assert "trace [95% CI]" in md and "mass < 0" in md
    assert all(ci_text(r["trace_ci"]) in md for r in rows)
    assert ci_text({"estimate": 2.0, "method": "exact"}) == "2 (exact)"
    assert (
        ci_text({"estimate": 1.0, "ci_low": None, "ci_high": None, "method": "unbounded"}) == "1 [unbounded]"
    )
    bad = json.loads(json.dumps(doc))
    bad["hessian"]["blocks"][0]["trace_ci"]["level"] = 2
    with pytest.raises(jsonschema.ValidationError):
        validate_document(bad)


def test_report_html_is_self_contained(report):
    import re

    _, figs, out = report
    page = (out / "report.html").read_text()
    srcs = re.findall(r"src=['\"]([^'\"]*)['\"]", page)
    assert len(srcs) == len(figs) and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "<link" not in page and "<script" not in page and "http://" not in page and "https://" not in page


def test_sections_may_be_absent(tmp_path):
    from hessian_spectra.analyses.report.document import build_document
    from hessian_spectra.analyses.report.html_page import render_html
    from hessian_spectra.analyses.report.markdown import render_markdown

    doc = build_document(source="nothing", seed=3)
    validate_document(doc)
    assert "# spectra report: nothing" in render_markdown(doc) and "<html" in render_html(doc, {})


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


@pytest.mark.slow
def test_report_html_renders_in_headless_chromium(report, tmp_path):
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if exe is None:
        pytest.skip("headless Chromium not installed (looked for chromium, chromium-browser, google-chrome)")
    _, _, out = report
    shot = tmp_path / "shot.png"
    proc = subprocess.run(
        [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-network", f"--screenshot={shot}",
         "--window-size=1200,3000", (out / "report.html").as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert shot.stat().st_size > 10_000
    dom = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                          (out / "report.html").as_uri()], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert "Block heterogeneity" in dom.stdout and dom.stdout.count("<img") >= 5
