"""A tiny GPT-2 folder (config, weights, WordLevel tokenizer) and a text file, built offline."""

from __future__ import annotations

import torch

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
