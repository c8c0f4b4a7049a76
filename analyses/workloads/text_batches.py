"""Batches for the text tasks of a HF folder, tokenised by the checkpoint's own tokenizer: next-token
cross-entropy (``causal-lm``, padding ignored), masked-token cross-entropy (``masked-lm``: 15% of the
non-special tokens masked with the tokenizer's mask token, seeded) and sequence classification (a JSONL
``label`` per record, checked against the model's number of labels)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from hessian_spectra.errors import InputError

__all__ = ["text_batches"]


def text_batches(
    records: list[tuple[str, int | None]], tok: Any, task: str, *, batch_size: int, seq_len: int, seed: int,
    data: Path, model_dir: Path, num_labels: int | None = None,
) -> list[dict[str, torch.Tensor]]:  # fmt: skip
    """One HF batch (``input_ids``, ``attention_mask``, ``labels``) per ``batch_size`` records."""
    gen = torch.Generator().manual_seed(seed)
    if task == "masked-lm" and tok.mask_token_id is None:
        raise InputError(model_dir, "the tokenizer has no mask token: masked-LM loss impossible")
    if task == "sequence-classification":
        if any(lbl is None for _, lbl in records):
            raise InputError(
                data, "sequence classification needs a JSONL file with a 'label' on every record"
            )
        bad = [lbl for _, lbl in records if num_labels is not None and lbl >= num_labels]
        if bad:
            raise InputError(
                data,
                f"label {bad[0]} is not a class of this model (num_labels={num_labels}: 0..{num_labels - 1})",
            )
    batches = []
    for i in range(0, len(records), batch_size):
        chunk = records[i : i + batch_size]
        enc = tok(
            [t for t, _ in chunk], padding=True, truncation=True, max_length=seq_len, return_tensors="pt"
        )
        batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
        if task == "causal-lm":
            labels = enc["input_ids"].clone()
            labels[enc["attention_mask"] == 0] = -100
        elif task == "masked-lm":
            special = torch.tensor(
                [
                    tok.get_special_tokens_mask(ids, already_has_special_tokens=True)
                    for ids in enc["input_ids"].tolist()
                ],
                dtype=torch.bool,
            )
            chosen = (
                (torch.rand(enc["input_ids"].shape, generator=gen) < 0.15)
                & ~special
                & (enc["attention_mask"] == 1)
            )
            labels = torch.where(chosen, enc["input_ids"], torch.full_like(enc["input_ids"], -100))
            batch["input_ids"] = torch.where(
                chosen, torch.full_like(enc["input_ids"], tok.mask_token_id), enc["input_ids"]
            )
        else:
            labels = torch.tensor([lbl for _, lbl in chunk])
        batch["labels"] = labels
        batches.append(batch)
    if not batches or not any(bool((b["labels"] != -100).any()) for b in batches):
        raise InputError(
            data, f"no tokens to train on after tokenizing with {model_dir}'s tokenizer ({task})"
        )
    return batches
