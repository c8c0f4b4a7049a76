"""`spectra track`: a folder of step-named checkpoints through the whole command (json, csv, figures,
self-contained html, written as one set), update spectra in the JSON against svdvals of the difference,
the Hessian per checkpoint against the dense Hessian (factory) and on HF folders with --data, and every
bad input refused with one line and exit code 2, nothing written."""

from __future__ import annotations

import csv
import importlib.util
import io
import json

import numpy as np
import pytest
import torch
from support.ckpt_factory import tiny_state_dict, write_safetensors, write_truncated
from support.cli import FACTORY, assert_clean_failure, run_cli


def _factory_series(tmp_path, n=3):
    """The CLI factory's MLP at n slightly different weights, saved as step_<10 i>.safetensors."""
    path = tmp_path / "factory.py"
    path.write_text(FACTORY)
    spec = importlib.util.spec_from_file_location("track_factory", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    work = mod.make()
    model, folder = work["model"], tmp_path / "run"
    g = torch.Generator().manual_seed(3)
    states = []
    for i in range(n):
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        states.append(state)
        write_safetensors(state, folder / f"step_{10 * i}.safetensors")
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return path, folder, states, work


def test_track_a_folder_end_to_end(tmp_path, capsys):
    _, folder, states, _ = _factory_series(tmp_path)
    out = tmp_path / "out"
    code, stdout, err = run_cli(["track", str(folder), "--out", str(out), "--lr", "0.1", "--quiet"], capsys)
    assert code == 0, err
    doc = json.loads((out / "track.json").read_text())
    assert doc["schema_version"] == "hessian-spectra/track/1" and doc["provenance"]["seed"] == 0
    assert [c["step"] for c in doc["series"]["checkpoints"]] == [0, 10, 20]
    assert doc["clip"]["rule"].startswith("c = the 0.9 quantile")
    for i, iv in enumerate(doc["updates"]):
        assert (iv["from_step"], iv["to_step"], iv["steps"]) == (10 * i, 10 * i + 10, 10)
        assert iv["lr_sum"] == pytest.approx(1.0)
        for m in iv["matrices"]:
            dw = states[i + 1][m["name"]].double() - states[i][m["name"]].double()
            np.testing.assert_allclose(m["singular_values"], torch.linalg.svdvals(dw).numpy(), atol=1e-12)
            w = torch.linalg.matrix_norm(states[i][m["name"]].double(), 2)
            assert m["update_ratio"] == pytest.approx(float(torch.linalg.svdvals(dw)[0] / w), rel=1e-10)
    rows = list(csv.DictReader(io.StringIO((out / "track.csv").read_text())))
    assert len(rows) == 3 * 3 and {r["step"] for r in rows} == {"0", "10", "20"}
    assert all(r["update_sigma_max"] == "" for r in rows if r["step"] == "0")
    assert all(float(r["update_sigma_max"]) > 0 for r in rows if r["step"] != "0")
    html = (out / "track.html").read_text()
    assert html.count("data:image/png;base64,") == len(list((out / "figures").glob("*.png"))) >= 8
    assert "src='http" not in html and "Rule." in html
    assert not list(tmp_path.glob(".out.*"))  # no staging folder left behind
    # the measured thresholds replace the paper lookup in `spectra recommend --track`
    rec = tmp_path / "rec"
    code, _, err = run_cli(["recommend", str(folder / "step_20.safetensors"), "--track", str(out / "track.json"),
                            "--out", str(rec), "--quiet"], capsys)  # fmt: skip
    assert code == 0, err
    groups = json.loads((rec / "recommendations.json").read_text())["clip_groups"]
    measured = {g["group"]: g["c"] for g in doc["clip"]["groups"]}
    assert groups and all(g["c"] == pytest.approx(measured[g["group"]]) for g in groups)
    assert all(g["reason"].startswith("measured") for g in groups)
    code, _, err = run_cli(["recommend", str(folder / "step_20.safetensors"), "--track", str(out / "track.csv"),
                            "--out", str(tmp_path / "rec2"), "--quiet"], capsys)  # fmt: skip
    assert_clean_failure(code, err, "track.csv", tmp_path / "rec2")


def test_track_hessian_per_checkpoint_matches_the_dense_hessian(tmp_path, capsys):
    from hessian_spectra.curvature.losses import cross_entropy
    from support.oracles import exact_hessian

    factory, folder, states, work = _factory_series(tmp_path, n=2)
    out = tmp_path / "out"
    code, _, err = run_cli(
        ["track", str(folder), "--out", str(out), "--model-factory", f"{factory}:make", "--top-k", "1",
         "--probes", "2", "--steps", "8", "--block-probes", "1", "--block-steps", "200", "--quiet"], capsys,
    )  # fmt: skip
    assert code == 0, err
    doc = json.loads((out / "track.json").read_text())
    model = work["model"]
    for h, state in zip(doc["hessian"], states, strict=True):
        model.load_state_dict(state)
        ev = torch.linalg.eigvalsh(exact_hessian(model, work["batches"], cross_entropy))
        assert h["lambda_max"] == pytest.approx(float(ev[-1]), rel=1e-8)
        assert h["heterogeneity"]["verdict"] in ("heterogeneous", "homogeneous")
        assert {b["name"] for b in h["blocks"]} == {n for n, _ in model.named_parameters()}
    rows = list(csv.DictReader(io.StringIO((out / "track.csv").read_text())))
    assert all(r["hessian_block_lambda_max"] != "" for r in rows)
    assert (out / "figures" / "hessian_full.png").is_file() and (
        out / "figures" / "hessian_blocks.png"
    ).is_file()


@pytest.mark.slow
def test_track_hf_checkpoint_folders_with_data(tmp_path, capsys):
    from support.hf import _tiny_gpt2_dir, tiny_gpt2_workload

    base, text = tiny_gpt2_workload(tmp_path)
    run = tmp_path / "run"
    for step in (5, 10):  # Trainer layout: checkpoint-N folders, tokenizer once in the run folder
        from transformers import GPT2LMHeadModel

        m = GPT2LMHeadModel.from_pretrained(base)
        with torch.no_grad():
            for p in m.parameters():
                p.add_(1e-2 * step * torch.ones_like(p))
        m.save_pretrained(run / f"checkpoint-{step}")
    _tiny_gpt2_dir(tmp_path / "tok")
    for f in (tmp_path / "tok").iterdir():
        if "token" in f.name or f.name == "special_tokens_map.json":
            (run / f.name).write_bytes(f.read_bytes())
    out = tmp_path / "out"
    code, _, err = run_cli(
        ["track", str(run), "--out", str(out), "--data", str(text), "--batches", "1", "--batch-size", "2",
         "--seq-len", "8", "--top-k", "1", "--probes", "1", "--steps", "4", "--block-probes", "1",
         "--block-steps", "4", "--quiet"], capsys,
    )  # fmt: skip
    assert code == 0, err
    doc = json.loads((out / "track.json").read_text())
    assert [h["step"] for h in doc["hessian"]] == [5, 10] and all(h["lambda_max"] for h in doc["hessian"])
    names = {m["name"] for m in doc["updates"][0]["matrices"]}
    assert "transformer.h.0.attn.c_attn.weight:q" in names  # GPT-2 fused QKV split, Conv1D transposed


@pytest.mark.parametrize(
    "case",
    ["missing", "one_file", "no_step", "duplicate_step", "corrupt", "quantile", "negative_lr", "factory_and_data",
     "bad_factory", "data_on_files", "order", "threads"],
)  # fmt: skip
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, case):
    a = write_safetensors(tiny_state_dict(0), tmp_path / "step_1.safetensors")
    b = write_safetensors(tiny_state_dict(1), tmp_path / "step_2.safetensors")
    args, needle = [str(a), str(b)], None
    if case == "missing":
        args, needle = [str(a), str(tmp_path / "step_3.safetensors")], "no such file"
    elif case == "one_file":
        args, needle = [str(a)], "not a series"
    elif case == "no_step":
        args, needle = (
            [str(a), str(write_safetensors(tiny_state_dict(2), tmp_path / "last.safetensors"))],
            "cannot tell",
        )
    elif case == "duplicate_step":
        dup = write_safetensors(tiny_state_dict(2), tmp_path / "sub" / "checkpoint-1.safetensors")
        args, needle = [str(a), str(dup)], "same step 1"
    elif case == "corrupt":
        bad = write_truncated(b, tmp_path / "step_3.safetensors", keep=0.5)
        args, needle = [str(a), str(bad)], "step_3.safetensors"
    elif case == "quantile":
        args, needle = [*args, "--clip-quantile", "1.5"], "--clip-quantile"
    elif case == "negative_lr":
        args, needle = [*args, "--lr", "-1"], "--lr"
    elif case == "factory_and_data":
        args, needle = [*args, "--model-factory", "x:y", "--data", str(a)], "--data"
    elif case == "bad_factory":
        args, needle = [*args, "--model-factory", str(tmp_path / "nope.py") + ":make"], "nope.py"
    elif case == "data_on_files":
        text = tmp_path / "t.txt"
        text.write_text("a b c\n")
        args, needle = [*args, "--data", str(text)], "Hugging Face checkpoint folders"
    elif case == "order":
        args, needle = [*args, "--order", "time"], "--order"
    else:
        args, needle = [*args, "--threads", "0"], "--threads"
    out = tmp_path / "out"
    code, _, err = run_cli(["track", *args, "--out", str(out), "--quiet"], capsys)
    assert_clean_failure(code, err, needle, out)
