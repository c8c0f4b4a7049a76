"""Complete provenance (issue #15): inputs with sizes and SHA-256, data and tokenisation settings, token
counts, start/end time; inputs the tool created are recorded as such, never as a temporary path."""

from __future__ import annotations

import hashlib
import json

from support import ckpt_factory as cf
from support.cli import run_cli


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_weights_example_records_the_kept_example_not_a_temp_folder(tmp_path, capsys):
    out = tmp_path / "w"
    code, _, err = run_cli(["weights", "--example", "--out", str(out), "-q"], capsys)
    assert code == 0, err
    doc = json.loads((out / "weights.json").read_text())
    kept = out / "example-checkpoint"
    assert doc["source"] == str(kept) and all(f["path"].startswith(str(kept)) for f in doc["files"])
    text = (out / "weights.json").read_text()
    assert ".staging" not in text and "tmp" not in text.replace(str(tmp_path), "")
    inputs = doc["inputs"]
    assert (
        inputs["kind"] == "generated"
        and inputs["created_by_tool"]
        and inputs["kept_at"] == "example-checkpoint"
    )
    assert inputs["by"] == "spectra weights --example" and inputs["seed"] == 0
    files = {f["name"]: f for f in inputs["hashes"]["files"]}
    assert set(files) == {p.name for p in kept.iterdir()}
    assert all(
        files[p.name]["sha256"] == _sha(p) and files[p.name]["size_bytes"] == p.stat().st_size
        for p in kept.iterdir()
    )
    assert inputs["hashes"]["hash_seconds"] >= 0


def test_weights_on_a_sharded_index_hashes_every_shard(tmp_path, capsys):
    index = cf.write_sharded_safetensors(cf.tiny_state_dict(), tmp_path / "ckpt", max_shard_bytes=20_000)
    out = tmp_path / "w"
    code, _, err = run_cli(["weights", str(index), "--out", str(out), "-q"], capsys)
    assert code == 0, err
    inputs = json.loads((out / "weights.json").read_text())["inputs"]
    names = {f["name"]: f["sha256"] for f in inputs["hashes"]["files"]}
    shards = sorted(p for p in index.parent.glob("*.safetensors"))
    assert len(shards) >= 2 and {index.name, *(p.name for p in shards)} == set(names)
    assert all(names[p.name] == _sha(p) for p in shards)


def test_hf_report_records_data_tokenisation_and_model_files(tmp_path, capsys):
    from support.hf import tiny_gpt2_workload

    folder, text = tiny_gpt2_workload(tmp_path)
    capsys.readouterr()
    out = tmp_path / "out"
    code, _, err = run_cli(
        ["hessian", str(folder), "--data", str(text), "--batches", "1", "--batch-size", "2", "--seq-len", "6",
         "--top-k", "1", "--probes", "2", "--steps", "4", "--block-probes", "1", "--block-steps", "3", "--out",
         str(out), "-q"], capsys,
    )  # fmt: skip
    assert code == 0, err
    doc = json.loads((out / "report.json").read_text())
    inputs = doc["inputs"]
    assert (
        inputs["kind"] == "hf-folder" and inputs["task"] == "causal-lm" and "Tokenizer" in inputs["tokenizer"]
    )
    assert (inputs["batch_size"], inputs["seq_len"], inputs["num_batches"], inputs["sequences"]) == (
        2,
        6,
        1,
        2,
    )
    assert 0 < inputs["loss_tokens"] <= inputs["tokens"] <= 12
    data = inputs["data"]["hashes"]["files"][0]
    assert data == {"name": text.name, "size_bytes": text.stat().st_size, "sha256": _sha(text)}
    model = {f["name"]: f["sha256"] for f in inputs["model"]["hashes"]["files"]}
    assert model == {str(p.relative_to(folder)): _sha(p) for p in folder.rglob("*") if p.is_file()}
    prov = doc["provenance"]
    assert prov["started_utc"] <= prov["finished_utc"] and prov["wall_seconds"] > 0
    assert doc["settings"]["hessian"]["probes"] == 2  # every setting, as run
    md = (out / "report.md").read_text()
    assert data["sha256"] in md and "## Provenance" in md
