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


def _word_tokenizer(path, specials: tuple[str, ...] = ("[UNK]", "[PAD]")):
    """A WordLevel tokenizer over WORDS saved into ``path`` (no download)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {**{s: i for i, s in enumerate(specials)}, **{w: i + len(specials) for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]")
    fast.save_pretrained(path)
    return len(vocab)


def tiny_sentence_encoder(path, *, pooling="mean", normalize=True, modules=True, hidden=8, seed=0):
    """A sentence-transformers folder: a 1-layer BertModel (eager attention) at the root, ``modules.json``,
    ``1_Pooling/config.json`` (legacy boolean keys) and an optional Normalize module."""
    import json
    from pathlib import Path

    from transformers import BertConfig, BertModel

    path = Path(path)
    n = _word_tokenizer(path)
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=n, hidden_size=hidden, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=2 * hidden, max_position_embeddings=32, pad_token_id=1)  # fmt: skip
    BertModel(cfg).save_pretrained(path)
    if modules:
        mods = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]  # fmt: skip
        if normalize:
            mods.append(
                {
                    "idx": 2,
                    "name": "2",
                    "path": "2_Normalize",
                    "type": "sentence_transformers.models.Normalize",
                }
            )
        (path / "modules.json").write_text(json.dumps(mods))
        (path / "1_Pooling").mkdir(exist_ok=True)
        flags = {
            f"pooling_mode_{k}": False
            for k in ("cls_token", "max_tokens", "mean_tokens", "mean_sqrt_len_tokens")
        }
        key = {"cls": "cls_token", "max": "max_tokens", "mean": "mean_tokens"}[pooling]
        flags[f"pooling_mode_{key}"] = True
        (path / "1_Pooling" / "config.json").write_text(
            json.dumps({"word_embedding_dimension": hidden, **flags})
        )
        (path / "sentence_bert_config.json").write_text(
            json.dumps({"max_seq_length": 16, "do_lower_case": False})
        )
    return path


def pair_lines(n: int = 8) -> list[tuple[str, str]]:
    """``n`` (anchor, positive) pairs of WORDS."""
    return [
        (" ".join(WORDS[i % 10 : i % 10 + 4]), " ".join(WORDS[(i + 1) % 10 : (i + 1) % 10 + 5]))
        for i in range(n)
    ]
