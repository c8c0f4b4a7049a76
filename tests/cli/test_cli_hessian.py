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
        # ... so its trace is exact too, with a zero-width interval at the asked level; the output layer
        # (rank < dim) closes its Krylov space early: 2 probes, a t interval (1 dof) that covers
        ci = b["trace_ci"]
        assert ci["level"] == 0.9 and ci["method"] == ("exact" if b["name"] != "4" else "t"), b["name"]
        assert ci["ci_low"] - 1e-8 * scale <= float(ev.sum()) <= ci["ci_high"] + 1e-8 * scale, b["name"]
    md = (out / "report.md").read_text()
    assert "Blocks: `layer` (3 blocks)" in md and "trace [90% CI]" in md
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
