"""`spectra demo` end to end: the reduced budget in the default suite, the full budget marked slow."""

from __future__ import annotations

import json
import time

import pytest
from hessian_spectra.cli.main import main


def _run(argv):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return exc.value.code


def test_demo_reduced_end_to_end(tmp_path):
    import torch
    from hessian_spectra.analyses.report.document import validate_document

    out = tmp_path / "demo"
    threads = torch.get_num_threads()
    code = _run(["demo", "--reduced", "--out", str(out), "--probes", "2", "--steps", "12", "--quiet"])
    assert code in (0, None)
    assert torch.get_num_threads() == threads  # --threads 1 (the default) is undone afterwards
    assert "1 torch thread(s)" in (out / "summary.md").read_text()
    docs = {}
    for name in ("gpt", "cnn"):
        for f in ("report.json", "report.md", "report.html"):
            assert (out / name / f).stat().st_size > 0
        docs[name] = json.loads((out / name / "report.json").read_text())
        validate_document(docs[name])
        assert docs[name]["demo"]["final_loss"] < docs[name]["demo"]["initial_loss"]
        assert docs[name]["hessian"]["num_hvps"] > 0
        assert docs[name]["provenance"]["torch_threads"] == 1
    summary = (out / "summary.md").read_text()
    assert "gpt" in summary and "lambda_max spread" not in summary and "exact blocks" in summary
    verdicts = {n: d["heterogeneity"]["verdict"] for n, d in docs.items()}
    assert verdicts == {"gpt": "heterogeneous", "cnn": "homogeneous"}
    for d in docs.values():  # the verdict's statistic, its uncertainty and which blocks were exact
        stat = d["heterogeneity"]["statistic"]
        assert stat["name"] == "sharpness-gap" and stat["stderr"] >= 0
        assert (stat["value"] >= stat["threshold"]) == (d["heterogeneity"]["verdict"] == "heterogeneous")
        assert f"{d['hessian']['num_exact_blocks']} of {len(d['hessian']['blocks'])}" in summary
        assert d["heterogeneity"]["verdict_line"] in summary
    # the transformer's Q/K Hessian blocks are far more head-diagonal than a random partition
    qk = docs["gpt"]["structure"]["by_role"]["qk"]
    assert qk["share"] > qk["random_share"] + 0.2


@pytest.mark.slow
def test_demo_full_budget(tmp_path):
    """The README command with its default budget: GPT heterogeneous, CNN homogeneous, in a few minutes."""
    out = tmp_path / "demo"
    start = time.perf_counter()
    assert _run(["demo", "--out", str(out), "--quiet"]) in (0, None)
    seconds = time.perf_counter() - start
    verdicts = {
        n: json.loads((out / n / "report.json").read_text())["heterogeneity"]["verdict"]
        for n in ("gpt", "cnn")
    }
    assert verdicts == {"gpt": "heterogeneous", "cnn": "homogeneous"}
    assert seconds < 600, seconds
