"""`spectra hessian` / `spectra analyze` with `--blocks`: the same model inputs as `analyze` (HF folder +
text, or a factory), the report format, layer blocks against the exact Hessian, and bad input."""

from __future__ import annotations

import json

import pytest
import torch
from support.cli import FACTORY, assert_clean_failure, run_cli

BUDGET = ["--top-k", "1", "--probes", "2", "--steps", "8", "--quiet"]


def _factory(tmp_path):
    path = tmp_path / "factory.py"
    path.write_text(FACTORY)
    return path


def _exact_hessian_of_factory(path):
    import importlib.util

    from hessian_spectra.curvature.losses import cross_entropy
    from support.oracles import exact_hessian

    spec = importlib.util.spec_from_file_location("factory_for_exact", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    w = mod.make()
    return w["model"], exact_hessian(w["model"], w["batches"], cross_entropy)


def test_hessian_layer_blocks_from_a_factory_match_exact_layer_blocks(tmp_path, capsys):
    from hessian_spectra.analyses.report.document import validate_document

    factory = _factory(tmp_path)
    out = tmp_path / "out"
    code, _, err = run_cli(
        ["hessian", "--model-factory", f"{factory}:make", "--out", str(out), "--blocks", "layer",
         "--block-probes", "2", "--block-steps", "160", "--confidence", "0.9", *BUDGET], capsys,
    )  # fmt: skip
    assert code == 0, err
    doc = json.loads((out / "report.json").read_text())
    validate_document(doc)
    assert doc["kind"] == "hessian" and doc["settings"]["hessian"]["blocks"] == "layer"
    blocks = doc["hessian"]["blocks"]
    assert [b["name"] for b in blocks] == ["0", "2", "4"] and [b["dim"] for b in blocks] == [84, 156, 39]
    model, H = _exact_hessian_of_factory(factory)
    offsets, a = {}, 0
    for name, p in model.named_parameters():
        offsets[name] = torch.arange(a, a + p.numel())
        a += p.numel()
    for b in blocks:  # 160 steps >= every block's dim: the Krylov space is the whole block
        idx = torch.cat([offsets[p] for p in b["params"]])
        ev = torch.linalg.eigvalsh(H[idx][:, idx])
        scale = float(ev.abs().max())
        assert b["lambda_max"] == pytest.approx(float(ev[-1]), abs=1e-8 * scale), b["name"]
        assert b["lambda_min"] == pytest.approx(float(ev[0]), abs=1e-8 * scale), b["name"]
        # every block has dim <= 2 x 160: its spectrum comes from its columns, so its trace interval is exact
        # (zero width) at the asked level
        ci = b["trace_ci"]
        assert b["method"] == "exact" and ci["level"] == 0.9 and ci["method"] == "exact", b["name"]
        assert ci["ci_low"] == ci["ci_high"] == pytest.approx(float(ev.sum()), abs=1e-8 * scale), b["name"]
    md = (out / "report.md").read_text()
    assert "Blocks: `layer` (3 blocks, 3 exact)" in md and "estimate [90% interval]" in md
    assert doc["settings"]["hessian"]["confidence"] == 0.9


def test_analyze_takes_the_same_blocks_option(tmp_path, capsys):
    factory = _factory(tmp_path)
    out = tmp_path / "rep"
    code, _, err = run_cli(
        ["analyze", "--model-factory", f"{factory}:make", "--out", str(out), "--blocks", "adam-mini",
         "--max-blocks-per-tensor", "3", "--no-weights", "--no-structure", "--block-probes", "2",
         "--block-steps", "6", *BUDGET], capsys,
    )  # fmt: skip
    assert code == 0, err
    doc = json.loads((out / "report.json").read_text())
    assert doc["kind"] == "analyze" and doc["settings"]["hessian"]["max_blocks_per_tensor"] == 3
    # Linear(6,12), Linear(12,12), Linear(12,3): weights per output row, biases per coordinate, <= 3 kept
    assert len(doc["hessian"]["blocks"]) == 3 * 4 + 3 * 2
    assert doc["hessian"]["blocks"][0]["name"] == "0.weight[row 0]"


def test_hessian_on_a_model_folder_with_adam_mini_blocks(tmp_path, capsys):
    from hessian_spectra.analyses.partitions.build import partition_checkpoint
    from support.hf import tiny_gpt2_workload

    folder, text = tiny_gpt2_workload(tmp_path)
    capsys.readouterr()
    out = tmp_path / "out"
    code, _, err = run_cli(
        ["hessian", str(folder), "--data", str(text), "--batches", "1", "--batch-size", "2", "--seq-len", "6",
         "--blocks", "adam-mini", "--max-blocks-per-tensor", "1", "--block-probes", "1", "--block-steps", "3",
         "--out", str(out), *BUDGET], capsys,
    )  # fmt: skip
    assert code == 0, err
    doc = json.loads((out / "report.json").read_text())
    part = partition_checkpoint(folder)
    expected = len(part.entries)  # one block kept per tensor
    assert len(doc["hessian"]["blocks"]) == expected
    names = [b["name"] for b in doc["hessian"]["blocks"]]
    assert "transformer.h.0.attn.c_attn.weight:q[head 0]" in names
    assert doc["weights"] is None and doc["source"]


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--blocks", "rows"], "--blocks"),
        (["--max-blocks-per-tensor", "-1"], "--max-blocks-per-tensor"),
        (["--blocks", "head"], "--heads"),
        (["--heads", "0"], "--heads"),
        (["--confidence", "1.5"], "--confidence"),
        (["--confidence", "0"], "--confidence"),
    ],
)
def test_bad_blocks_options_exit_2_and_write_nothing(tmp_path, capsys, extra, needle):
    factory = _factory(tmp_path)
    out = tmp_path / "out"
    code, _, err = run_cli(
        ["hessian", "--model-factory", f"{factory}:make", "--out", str(out), *extra], capsys
    )
    assert_clean_failure(code, err, needle, out)


def test_hessian_needs_a_model(tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = run_cli(["hessian", "--out", str(out)], capsys)
    assert_clean_failure(code, err, "MODEL", out)


def test_hessian_says_which_spectra_were_exact_and_prints_the_verdict(tmp_path, capsys):
    """The tiny factory MLP (279 parameters) at the default budget: 279 <= 10 x 50, so the whole spectrum
    is exact (279 HVPs, no Lanczos/SLQ), and so is every block; the terminal shows both and the verdict
    line, report.md marks each block's method."""
    factory = _factory(tmp_path)
    out = tmp_path / "out"
    code, stdout, err = run_cli(["hessian", "--model-factory", f"{factory}:make", "--out", str(out)], capsys)
    assert code == 0, err
    doc = json.loads((out / "report.json").read_text())
    assert doc["hessian"]["exact_full"] and doc["hessian"]["num_hvps"] == 279 + 6
    assert doc["hessian"]["lanczos"]["method"] == "exact" and doc["hessian"]["num_exact_blocks"] == 6
    _, H = _exact_hessian_of_factory(factory)
    assert doc["hessian"]["lanczos"]["lambda_max"] == pytest.approx(
        float(torch.linalg.eigvalsh(H)[-1]), rel=1e-10
    )
    assert "exact: all 279 eigenvalues" in stdout and "Block spectra: 6 of 6 blocks exact" in stdout
    line = doc["heterogeneity"]["verdict_line"]
    assert line.startswith(doc["heterogeneity"]["verdict"]) and f"Block heterogeneity: {line}" in stdout
    md = (out / "report.md").read_text()
    assert "method](#g-block_method)" in md and md.count("| exact |") == 6 and line in md
    # --no-exact: every spectrum estimated (the mixed case is tested on the probe, test_exact_spectra.py)
    out2 = tmp_path / "out2"
    code, _, err = run_cli(["hessian", "--model-factory", f"{factory}:make", "--out", str(out2), "--no-exact",
                            "--block-probes", "2", "--block-steps", "4", *BUDGET], capsys)  # fmt: skip
    doc = json.loads((out2 / "report.json").read_text())
    assert code == 0 and {b["method"] for b in doc["hessian"]["blocks"]} == {"slq"}, err
    assert not doc["hessian"]["exact_full"] and doc["hessian"]["lanczos"]["method"] == "lanczos"
