"""`spectra hessian` end to end (reduced budgets): the report format, the lambda_max against the exact
Hessian, `--blocks`, and bad-input behaviour."""

from __future__ import annotations

import json

import pytest
from hessian_spectra.cli.main import main
from support.cli import FACTORY


def _run(argv):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return exc.value.code


def test_hessian_command_writes_report_matching_exact(tmp_path, capsys):
    import torch
    from hessian_spectra.analyses.report.document import validate_document
    from hessian_spectra.analyses.report.write import REPORT_FILES
    from hessian_spectra.output_set import MANIFEST

    factory = tmp_path / "factory.py"
    factory.write_text(FACTORY)
    out = tmp_path / "out"
    code = _run(["hessian", "--model-factory", f"{factory}:make", "--out", str(out), "--probes", "4",
                 "--steps", "30", "--block-probes", "4", "--block-steps", "30", "--top-k", "2"])  # fmt: skip
    assert code in (0, None)
    err = capsys.readouterr().err
    assert "cost estimate" in err and "HVPs" in err
    assert sorted(p.name for p in out.iterdir()) == sorted([*REPORT_FILES, "figures", "partition.json", MANIFEST])
    doc = json.loads((out / "report.json").read_text())
    validate_document(doc)  # the report schema of `spectra analyze`
    assert doc["kind"] == "hessian" and doc["provenance"]["torch"]
    import hashlib

    inputs = doc["inputs"]  # the factory file itself is recorded with its hash, and the batches
    assert (
        inputs["kind"] == "model-factory"
        and inputs["factory"] == f"{factory}:make"
        and inputs["num_batches"] == 1
    )
    assert inputs["factory_file"]["files"][0]["sha256"] == hashlib.sha256(factory.read_bytes()).hexdigest()
    assert doc["weights"] is None and doc["structure"] is None and doc["recommendations"] is None
    assert doc["settings"]["hessian"]["blocks"] == "tensor"
    assert len(doc["hessian"]["blocks"]) == 6 and doc["heterogeneity"]["verdict"] in (
        "heterogeneous",
        "homogeneous",
    )
    # the reported lambda_max is the exact one
    import importlib.util

    spec = importlib.util.spec_from_file_location("factory", factory)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    w = mod.make()
    from torch.func import functional_call

    names = [n for n, _ in w["model"].named_parameters()]
    shapes = [p.shape for _, p in w["model"].named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in w["model"].parameters()])

    def f(theta):
        parts, i = {}, 0
        for n, s in zip(names, shapes, strict=True):
            k = s.numel()
            parts[n] = theta[i : i + k].view(s)
            i += k
        x, y = w["batches"][0]
        return torch.nn.functional.cross_entropy(functional_call(w["model"], parts, (x,)), y)

    ev = torch.linalg.eigvalsh(torch.func.hessian(f)(flat))
    assert doc["hessian"]["lanczos"]["lambda_max"] == pytest.approx(float(ev[-1]), rel=1e-6)
    dens = doc["hessian"]["density"]
    assert abs(dens["trace"] - float(ev.sum())) <= 4 * dens["trace_stderr"] + 1e-9  # SLQ trace within 4 s.e.
    md = (out / "report.md").read_text()
    assert md.startswith("# spectra report:") and "## Hessian blocks" in md and "## Weight spectra" not in md
    assert "not run" in md
    page = (out / "report.html").read_text()
    for alt in ("full_density", "block_densities", "block_scales", "js_heatmap_shape-only"):
        assert f'data-figure="{alt}"' in page, alt
    assert "weights_depth" not in page


def test_bad_factory_exits_2_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    assert _run(["hessian", "--model-factory", "no_such_module_xyz:make", "--out", str(out)]) == 2
    assert "spectra: error:" in capsys.readouterr().err and not out.exists()
    factory = tmp_path / "factory.py"
    factory.write_text(FACTORY)
    assert _run(["hessian", "--model-factory", f"{factory}:make", "--out", str(out), "--probes", "0"]) == 2
    assert not out.exists()
