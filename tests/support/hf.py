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


_SMALL = {"vocab_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}


def tiny_architectures() -> dict:
    """Tiny random-weight models of seven architectures (GPT-2, BERT, Llama with GQA, GPT-NeoX, Falcon, ViT,
    T5), built from transformers configs: their parameter names are the naming schemes under test."""
    import transformers as t

    torch.manual_seed(0)
    return {
        "gpt2": t.GPT2LMHeadModel(
            t.GPT2Config(vocab_size=32, n_embd=16, n_layer=1, n_head=2, n_positions=16)
        ),
        "bert": t.BertForMaskedLM(t.BertConfig(hidden_size=16, max_position_embeddings=16, **_SMALL)),
        "llama": t.LlamaForCausalLM(t.LlamaConfig(hidden_size=16, num_key_value_heads=1, **_SMALL)),
        "neox": t.GPTNeoXForCausalLM(t.GPTNeoXConfig(hidden_size=16, **_SMALL)),
        "falcon": t.FalconForCausalLM(
            t.FalconConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2)
        ),
        "vit": t.ViTForImageClassification(
            t.ViTConfig(
                hidden_size=16,
                num_hidden_layers=1,
                num_attention_heads=2,
                intermediate_size=32,
                image_size=8,
                patch_size=4,
                num_labels=3,
            )
        ),
        "t5": t.T5ForConditionalGeneration(
            t.T5Config(vocab_size=32, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2)
        ),
    }
