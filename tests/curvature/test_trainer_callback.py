"""SharpnessCallback inside a real transformers.Trainer (tiny GPT-2, CPU, offline): values reach every
callback's on_log and the JSONL, equal a direct Lanczos run, and leave the Trainer's own logs alone."""

import copy
import json
import subprocess
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")


class Tokens(torch.utils.data.Dataset):
    def __init__(self, n=32, seq=10, vocab=20):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randint(0, vocab, (n, seq), generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"input_ids": self.x[i], "labels": self.x[i]}


def test_callback_in_a_real_trainer(tmp_path):
    import hessian_spectra.curvature.trainer_callback as tc
    from hessian_spectra import HessianOperator, lanczos
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=20, n_positions=16,
                                       bos_token_id=0, eos_token_id=0))  # fmt: skip
    start = copy.deepcopy(model)
    seen = []

    class Spy(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            seen.append((state.global_step, dict(logs)))

    args = TrainingArguments(
        output_dir=str(tmp_path / "run"), per_device_train_batch_size=8, max_steps=4, learning_rate=1e-3,
        report_to="none", logging_steps=2, use_cpu=True, save_strategy="no", disable_tqdm=True,
    )  # fmt: skip
    trainer = Trainer(model=model, args=args, train_dataset=Tokens(), callbacks=[Spy()])
    cb = tc.SharpnessCallback.attach(trainer, every=2, jsonl=tmp_path / "sharpness.jsonl", num_examples=4)
    trainer.train()

    steps = [r.step for r in cb.history]
    assert steps == [0, 2, 4]
    logged = {s: logs for s, logs in seen if "sharpness/lambda_max" in logs}
    assert sorted(logged) == steps  # reached every callback's on_log through trainer.log
    assert any("loss" in logs and s == 2 for s, logs in seen)  # the Trainer's own loss log survived
    lines = [json.loads(line) for line in (tmp_path / "sharpness.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == steps
    assert lines[1]["reference"]["optimizer"] == "AdamW" and lines[1]["preconditioned_lambda_max"] > 0
    assert [r.warm for r in cb.history] == [False, True, True]
    # step 0 equals a direct Lanczos run on the initial weights and the same 4 examples
    batch = {k: torch.stack([Tokens()[i][k] for i in range(4)]) for k in ("input_ids", "labels")}
    direct = lanczos(HessianOperator(start, [batch]), 1, which="largest", tol=1e-6)
    rec = cb.history[0]
    assert abs(rec.lambda_max - direct.lambda_max) <= 2 * rec.lambda_max_residual + 1e-6 * direct.lambda_max
    assert logged[0]["sharpness/lambda_max"] == pytest.approx(rec.lambda_max)
    assert logged[2]["sharpness/threshold"] == pytest.approx(38.0)


def test_module_imports_neither_torch_nor_transformers():
    """The class is built on first use (tested above, in process); importing the module costs nothing."""
    code = (
        "import sys, hessian_spectra.curvature.trainer_callback as tc\n"
        "assert 'transformers' not in sys.modules and 'torch' not in sys.modules\n"
        "assert callable(tc.__getattr__)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
