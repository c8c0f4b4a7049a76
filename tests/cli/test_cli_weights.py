"""`spectra weights` end to end: outputs, format equivalence, options and every bad-input case."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from hessian_spectra.weights.plan import WeightsSettings
from hessian_spectra.weights.probe import analyze_weights
from support import ckpt_factory as cf
from support.cli import assert_clean_failure, run_cli


def comparable(report, *, drop_notes: bool = False) -> list[dict]:
    """Per-matrix results without provenance (times, file names) for cross-format comparison."""
    rows = [m.to_dict() for m in report.matrices]
    if drop_notes:  # a config.json changes how a split is justified, not the numbers
        for row in rows:
            row.pop("note")
    return rows


def test_example_writes_json_csv_and_plots(tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, stderr = run_cli(["weights", "--example", "--out", str(out), "--plots", "--quiet"], capsys)
    assert code == 0, stderr
    data = json.loads((out / "weights.json").read_text())
    assert data["schema_version"] == "hessian-spectra/weights/1"
    assert data["settings"]["seed"] == 0 and data["provenance"]["seed"] == 0
    assert data["provenance"]["torch"] == torch.__version__
    names = [m["name"] for m in data["matrices"]]
    # the fused QKV is analysed whole and as its three parts
    assert "h.0.attn.in_proj_weight" in names
    assert {"h.0.attn.in_proj_weight:q", "h.0.attn.in_proj_weight:k", "h.0.attn.in_proj_weight:v"} <= set(
        names
    )
    # every tensor is inventoried, 1-D ones skipped with a reason
    inv = {r["name"]: r for r in data["inventory"]}
    assert inv["h.0.ln_1.weight"]["status"] == "skipped" and inv["h.0.ln_1.weight"]["reason"]
    rows = list(csv.DictReader((out / "weights.csv").open()))
    assert [r["name"] for r in rows] == names
    assert (out / "depth.png").stat().st_size > 0
    assert len(list((out / "esd").glob("*.png"))) == len(names)
    assert (out / "example-checkpoint" / "model.safetensors").exists()
    # no staging leftovers next to the output
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_metrics_in_json_match_exact_svdvals(tmp_path, capsys):
    sd = cf.tiny_state_dict()
    path = cf.write_safetensors(sd, tmp_path / "m.safetensors")
    code, _, err = run_cli(["weights", str(path), "--out", str(tmp_path / "o"), "--quiet"], capsys)
    assert code == 0, err
    data = json.loads((tmp_path / "o" / "weights.json").read_text())
    by_name = {m["name"]: m for m in data["matrices"]}
    w = sd["head.weight"].double()
    s = torch.linalg.svdvals(w)
    m = by_name["head.weight"]["metrics"]
    assert math.isclose(m["sigma_max"], float(s[0]), rel_tol=1e-12)
    assert math.isclose(m["sigma_min"], float(s[-1]), rel_tol=1e-10)
    assert math.isclose(m["stable_rank"], float((s**2).sum() / s[0] ** 2), rel_tol=1e-12)
    conv = by_name["patch_embed.proj.weight"]
    assert conv["shape"] == [16, 12]
    s_conv = torch.linalg.svdvals(sd["patch_embed.proj.weight"].double().reshape(16, 12))
    assert math.isclose(conv["metrics"]["sigma_max"], float(s_conv[0]), rel_tol=1e-12)


def test_same_weights_in_every_format_give_identical_reports(tmp_path):
    sd = cf.tiny_state_dict()
    sources = {
        "safetensors": cf.write_safetensors(sd, tmp_path / "a" / "model.safetensors"),
        "sharded": cf.write_sharded_safetensors(sd, tmp_path / "b", max_shard_bytes=2048),
        "bin": cf.write_bin(sd, tmp_path / "c" / "pytorch_model.bin"),
        "hf_dir": cf.write_hf_dir(sd, tmp_path / "d", fmt="sharded_bin"),
    }
    reports = {k: analyze_weights(v) for k, v in sources.items()}
    base = comparable(reports["safetensors"])
    assert len(base) > 10
    for key, report in reports.items():
        if key == "hf_dir":
            assert comparable(report, drop_notes=True) == comparable(reports["safetensors"], drop_notes=True)
        else:
            assert comparable(report) == base, key
        assert [r.name for r in report.inventory] == [r.name for r in reports["safetensors"].inventory]


def test_live_module_matches_its_saved_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    path = cf.write_safetensors(model.state_dict(), tmp_path / "m.safetensors")
    assert comparable(analyze_weights(model)) == comparable(analyze_weights(path))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_layers_glob_and_topk(tmp_path):
    sd = {"a.weight": torch.randn(40, 30), "b.weight": torch.randn(30, 20)}
    path = cf.write_safetensors(sd, tmp_path / "m.safetensors")
    rep = analyze_weights(path, WeightsSettings(layers=("a.*",)))
    assert [m.name for m in rep.matrices] == ["a.weight"]
    skipped = {r.name: r.reason for r in rep.inventory if r.status == "skipped"}
    assert "not selected" in skipped["b.weight"]
    rep = analyze_weights(path, WeightsSettings(topk=3))
    m = rep.matrices[0]
    assert m.status == "partial"
    exact = torch.linalg.svdvals(sd["a.weight"].double()).numpy()
    assert np.allclose(m.metrics.sigma_max, exact[0], rtol=1e-10)
    # stable rank only needs ||W||_F (exact from the entries) and sigma_max; metrics needing the
    # full spectrum are not computed, never guessed
    assert np.isclose(m.metrics.stable_rank, (exact**2).sum() / exact[0] ** 2, rtol=1e-10)
    # with bottom-k known, sigma_min and the condition number are exact too
    assert np.isclose(m.metrics.condition_number, exact[0] / exact[-1], rtol=1e-8)
    assert m.metrics.alpha is None and m.metrics.soft_rank is None and m.metrics.nuclear_norm is None


def test_nan_weights_are_reported_per_matrix(tmp_path, capsys):
    sd = {"good.weight": torch.randn(20, 10), "bad.weight": torch.randn(20, 10)}
    sd["bad.weight"][3, 4] = float("nan")
    sd["bad.weight"][5, 1] = float("inf")
    path = cf.write_safetensors(sd, tmp_path / "m.safetensors")
    code, _, err = run_cli(["weights", str(path), "--out", str(tmp_path / "o"), "--quiet"], capsys)
    assert code == 0, err
    data = json.loads((tmp_path / "o" / "weights.json").read_text())
    by = {m["name"]: m for m in data["matrices"]}
    assert by["bad.weight"]["status"] == "nonfinite" and by["bad.weight"]["n_nonfinite"] == 2
    assert by["bad.weight"]["metrics"] is None
    assert by["good.weight"]["status"] == "ok"


@pytest.mark.parametrize(
    "case",
    [
        "missing",
        "truncated",
        "garbage",
        "code_pickle",
        "pickled_module",
        "empty_safetensors",
        "empty_bin",
        "no_weights_dir",
        "missing_shard",
        "truncated_bin",
    ],
)
def test_bad_input_gives_one_line_and_exit_2(tmp_path, capsys, case):
    sd = cf.tiny_state_dict()
    good = cf.write_safetensors(sd, tmp_path / "good.safetensors")
    if case == "missing":
        path = tmp_path / "nope.safetensors"
    elif case == "truncated":
        path = cf.write_truncated(good, tmp_path / "trunc.safetensors", keep=0.5)
    elif case == "garbage":
        path = cf.write_garbage_safetensors(tmp_path / "garbage.safetensors")
    elif case == "code_pickle":
        path = cf.write_code_pickle(tmp_path / "code.bin")
    elif case == "pickled_module":
        path = cf.write_pickled_module(tmp_path / "module.pt")
    elif case == "empty_safetensors":
        path = cf.write_empty_safetensors(tmp_path / "empty.safetensors")
    elif case == "empty_bin":
        path = cf.write_empty_bin(tmp_path / "empty.bin")
    elif case == "no_weights_dir":
        path = tmp_path / "folder"
        path.mkdir()
        (path / "README.md").write_text("nothing here")
    elif case == "missing_shard":
        path = cf.write_index_missing_shard(sd, tmp_path / "shards")
    else:
        path = cf.write_truncated(cf.write_bin(sd, tmp_path / "full.bin"), tmp_path / "trunc.bin", keep=0.6)
    out = tmp_path / "out"
    code, _, err = run_cli(["weights", str(path), "--out", str(out), "--quiet"], capsys)
    assert_clean_failure(code, err, path.name, out)


def test_malicious_pickle_is_never_executed(tmp_path, capsys):
    marker = tmp_path / "pwned"
    path = cf.write_malicious_pickle(tmp_path / "evil.bin", marker)
    out = tmp_path / "out"
    code, _, err = run_cli(["weights", str(path), "--out", str(out), "--quiet"], capsys)
    assert_clean_failure(code, err, "evil.bin", out)
    assert not marker.exists()


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--format", "xml"], "--format"),
        (["--dtype", "float16"], "--dtype"),
        (["--topk", "0"], "--topk"),
    ],
)
def test_bad_options(tmp_path, capsys, args, needle):
    path = cf.write_safetensors({"w": torch.randn(4, 4)}, tmp_path / "m.safetensors")
    out = tmp_path / "out"
    code, _, err = run_cli(["weights", str(path), "--out", str(out), "--quiet", *args], capsys)
    assert_clean_failure(code, err, needle, out)


def test_table_is_printed(tmp_path, capsys):
    path = cf.write_safetensors({"proj.weight": torch.randn(30, 20)}, tmp_path / "m.safetensors")
    code, out, err = run_cli(["weights", str(path), "--out", str(tmp_path / "o")], capsys)
    assert code == 0, err
    assert "proj.weight" in out and "sigma_max" in out


def test_huge_matrices_fall_back_to_top_k(tmp_path):
    """Above full_max_elements only the top-64 singular values are computed, and the report says so."""
    w = torch.randn(300, 120, generator=torch.Generator().manual_seed(0))
    path = cf.write_safetensors(
        {"big.weight": w, "small.weight": torch.randn(20, 10)}, tmp_path / "m.safetensors"
    )
    rep = analyze_weights(path, WeightsSettings(full_max_elements=10_000))
    big, small = rep.matrices
    assert big.status == "partial" and "top-64 only" in big.note
    exact = torch.linalg.svdvals(w.double()).numpy()
    assert np.isclose(big.metrics.sigma_max, exact[0], rtol=1e-10)
    assert big.metrics.sigma_min is None and big.metrics.condition_number is None
    np.testing.assert_allclose(big.singular_values, exact[:64], rtol=1e-9)
    assert small.status == "ok"
