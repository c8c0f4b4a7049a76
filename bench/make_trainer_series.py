"""Write a real Hugging Face Trainer run with a checkpoint after EVERY optimizer step, for validating
`spectra track`'s clip threshold (exact per step) against sparser views of the same run (issue 17).

Run:  python bench/make_trainer_series.py OUT [--steps 40]
then  spectra track OUT --weight-decay 0.1            (every step: u exact per step)
      and the same on a folder of links to every 5th / 10th checkpoint (u a lower bound).

Model: GPT-2 config, 2 layers, d=64, 4 heads, context 32, vocab 128; AdamW lr 1e-3 (constant), weight
decay 0.1, batches of 16 sequences from a fixed random bigram language; CPU, no network.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

VOCAB, CTX = 128, 32


def main() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    torch.manual_seed(0)
    cfg = GPT2Config(
        n_layer=2, n_embd=64, n_head=4, vocab_size=VOCAB, n_positions=CTX, bos_token_id=0, eos_token_id=0
    )
    model = GPT2LMHeadModel(cfg)
    g = torch.Generator().manual_seed(1)
    probs = torch.softmax(torch.randn(VOCAB, VOCAB, generator=g) * 3, -1)
    x = torch.empty(1024, CTX, dtype=torch.long)
    x[:, 0] = torch.randint(0, VOCAB, (1024,), generator=g)
    for t in range(1, CTX):
        x[:, t] = torch.multinomial(probs[x[:, t - 1]], 1, generator=g)[:, 0]

    class Data(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(x)

        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            return {"input_ids": x[i], "labels": x[i]}

    targs = TrainingArguments(
        output_dir=str(args.out), per_device_train_batch_size=16, max_steps=args.steps, learning_rate=1e-3,
        weight_decay=0.1, lr_scheduler_type="constant", warmup_steps=0, logging_steps=1, save_strategy="steps",
        save_steps=1, save_only_model=True, report_to="none", use_cpu=True, disable_tqdm=True,
    )  # fmt: skip
    Trainer(model=model, args=targs, train_dataset=Data()).train()


if __name__ == "__main__":
    main()
