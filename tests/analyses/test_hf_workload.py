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


def _bert_classifier(path, num_labels=3):
    from support.hf import _word_tokenizer
    from transformers import BertConfig, BertForSequenceClassification

    n = _word_tokenizer(path)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=n, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
                     max_position_embeddings=32, pad_token_id=1, num_labels=num_labels)  # fmt: skip
    BertForSequenceClassification(cfg).save_pretrained(path)
    return path


def test_sequence_classification_from_jsonl_labels(tmp_path):
    from hessian_spectra.analyses.workloads import load_hf_workload
    from hessian_spectra.errors import InputError

    folder = _bert_classifier(tmp_path / "bert")
    rows = [("the cat sat", 0), ("a dog ran to the house", 2), ("big red car", 1), ("small blue mat", 2)]
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps({"text": t, "label": y}) for t, y in rows))
    work = load_hf_workload(folder, data, batch_size=2, max_batches=0)
    assert work.inputs["task"] == "sequence-classification" and len(work.batches) == 2
    assert [int(y) for b in work.batches for y in b["labels"]] == [y for _, y in rows]
    batch = work.batches[1]
    with torch.no_grad():
        logits = work.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        expected = torch.nn.functional.cross_entropy(logits, batch["labels"])
        assert float(work.model(**batch).loss) == pytest.approx(float(expected), rel=1e-6)
    data.write_text(json.dumps({"text": "the cat", "label": 3}) + "\n")
    with pytest.raises(InputError, match="label 3 is not a class of this model"):
        load_hf_workload(folder, data)
    data.write_text(json.dumps({"text": "the cat"}) + "\n")
    with pytest.raises(InputError, match="'label' on every record"):
        load_hf_workload(folder, data)
    data.write_text(json.dumps({"text": "the cat", "label": "dog"}) + "\n")
    with pytest.raises(InputError, match="non-negative integer class index"):
        load_hf_workload(folder, data)
