"""A HF model folder + a text file tokenised by the checkpoint's own tokenizer (offline, tiny GPT-2)."""

from __future__ import annotations

import json

import pytest
import torch

from tests.test_cli_weights import _assert_clean_failure, run_cli

WORDS = [
    "the",
    "cat",
    "sat",
    "on",
    "a",
    "mat",
    "and",
    "dog",
    "ran",
    "to",
    "big",
    "red",
    "house",
    "small",
    "blue",
    "car",
]


def _tiny_gpt2_dir(path):
    """save_pretrained of a 1-layer GPT-2 plus a WordLevel tokenizer built in memory (no download)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "[PAD]": 1, **{w: i + 2 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]")
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=len(vocab), n_positions=32)
    GPT2LMHeadModel(cfg).save_pretrained(path)
    fast.save_pretrained(path)
    return path


def tiny_gpt2_workload(tmp_path):
    """A tiny GPT-2 folder (config, weights, tokenizer) and a text file of its words, under ``tmp_path``."""
    folder = _tiny_gpt2_dir(tmp_path / "gpt2")
    text = tmp_path / "data.txt"
    text.write_text("\n".join(" ".join(WORDS[i : i + 6]) for i in range(0, len(WORDS) - 6)) + "\n")
    return folder, text


@pytest.fixture()
def gpt2_folder(tmp_path, capsys):
    out = tiny_gpt2_workload(tmp_path)
    capsys.readouterr()
    return out


def test_hf_workload_loss_is_the_models_own_causal_lm_loss(gpt2_folder):
    from analyses.data import load_hf_workload

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
    _assert_clean_failure(code, err, "bare", out)
