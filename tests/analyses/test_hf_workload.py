"""A HF model folder + a text file tokenised by the checkpoint's own tokenizer (offline, tiny GPT-2)."""

from __future__ import annotations

import json

import pytest
import torch
from support.cli import assert_clean_failure, run_cli
from support.hf import tiny_gpt2_workload


@pytest.fixture()
def gpt2_folder(tmp_path, capsys):
    out = tiny_gpt2_workload(tmp_path)
    capsys.readouterr()
    return out


def test_hf_workload_loss_is_the_models_own_causal_lm_loss(gpt2_folder):
    from hessian_spectra.analyses.workloads import load_hf_workload

    folder, text = gpt2_folder
    work = load_hf_workload(folder, text, batch_size=4, seq_len=8, max_batches=2)
    assert work.batches, "no batches"
    batch = work.batches[0]
    loss = work.loss(work.model, batch) if work.loss is not None else work.model(**batch).loss
    with torch.no_grad():
        logits = work.model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask")).logits
    labels = batch["labels"]
    expected = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1), ignore_index=-100
    )
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-5)


def test_partition_verify_on_a_model_folder(gpt2_folder, tmp_path, capsys):
    folder, text = gpt2_folder
    out = tmp_path / "p.json"
    code, _, err = run_cli(
        ["partition", str(folder), "--verify", "--data", str(text), "--out", str(out), "--quiet"], capsys
    )
    assert code == 0, err
    doc = json.loads(out.read_text())
    c_attn = doc["parameters"]["transformer.h.0.attn.c_attn.weight"]
    assert c_attn["num_blocks"] == 2 + 2 + 16  # Q and K per head (2 heads), V per output neuron
    assert doc["verify"]["rules"], "no rule was measured"


def test_folder_without_tokenizer_is_refused(tmp_path, capsys):
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tmp_path / "bare"
    GPT2LMHeadModel(
        GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=20, n_positions=16)
    ).save_pretrained(folder)
    text = tmp_path / "t.txt"
    text.write_text("hello world\n")
    capsys.readouterr()
    out = tmp_path / "p.json"
    code, _, err = run_cli(
        ["partition", str(folder), "--verify", "--data", str(text), "--out", str(out), "--quiet"], capsys
    )
    assert_clean_failure(code, err, "bare", out)
