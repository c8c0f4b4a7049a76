"""Broken factories and broken model folders (#14 item 8): each is one line `spectra: error: <where>: <what>`,
exit code 2, nothing written, before any Hessian work. Each case gave a traceback (or exit 0) before."""

from __future__ import annotations

import json

import pytest
import torch
from support.cli import FACTORY, TINY_BUDGET, assert_clean_failure, run_cli
from support.hf import tiny_gpt2_workload

BUDGET = TINY_BUDGET

GOOD = FACTORY.replace("def make():", "def good():") + "\n\ndef make():\n    return good()\n"
CASES = {
    "syntax": ("def make(:\n    pass\n", "SyntaxError"),
    "import": ("import no_such_module_anywhere_xyz\n", "ModuleNotFoundError"),
    "import_exit": ("import sys\nsys.exit(0)\n", "sys.exit(0)"),
    "raises": ("def make():\n    raise RuntimeError('boom in the factory')\n", "raised RuntimeError: boom in the factory"),
    "exit": ("import sys\ndef make():\n    sys.exit(0)\n", "called sys.exit(0)"),
    "batches_int": (GOOD.replace("def make():\n    return good()", "def make():\n    return {**good(), 'batches': 5}"), "batches must be a list of batches, got int"),
    "batches_empty": (GOOD.replace("def make():\n    return good()", "def make():\n    return {**good(), 'batches': []}"), "no batches"),
    "batch_str": (GOOD.replace("def make():\n    return good()", "def make():\n    return {**good(), 'batches': ['text']}"), "batch 0 is a str"),
    "loss_raises": (GOOD.replace("def make():\n    return good()", "def bad(m, b):\n    raise ValueError('loss broke')\n\ndef make():\n    return {**good(), 'loss': bad}"), "the loss on batch 0 raised ValueError: loss broke"),
    "loss_nan": (GOOD.replace("def make():\n    return good()", "def bad(m, b):\n    return m(b[0]).sum() * float('nan')\n\ndef make():\n    return {**good(), 'loss': bad}"), "the loss is nan on batch 0"),
    "loss_vector": (GOOD.replace("def make():\n    return good()", "def bad(m, b):\n    return m(b[0]).sum(1)\n\ndef make():\n    return {**good(), 'loss': bad}"), "not a scalar tensor"),
    "loss_exit": (GOOD.replace("def make():\n    return good()", "import sys\ndef bad(m, b):\n    sys.exit(3)\n\ndef make():\n    return {**good(), 'loss': bad}"), "sys.exit(3)"),
    "not_module": ("def make():\n    return {'model': 3, 'batches': [1]}\n", "not an nn.Module"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_broken_factory_is_one_line_exit_2(tmp_path, capsys, case):
    source, needle = CASES[case]
    path = tmp_path / "factory.py"
    path.write_text(source)
    out = tmp_path / "out"
    code, _, err = run_cli(["hessian", "--model-factory", f"{path}:make", "--out", str(out), *BUDGET], capsys)
    assert_clean_failure(code, err, needle, out)


def test_weights_that_do_not_fit_the_factory_model(tmp_path, capsys):
    factory = tmp_path / "factory.py"
    factory.write_text(FACTORY)
    wrong = tmp_path / "w.pt"
    torch.save({"model_state": {"0.weight": torch.ones(12, 6), "9.weight": torch.ones(2, 2)}}, wrong)
    out = tmp_path / "out"
    code, _, err = run_cli(
        [
            "hessian",
            "--model-factory",
            f"{factory}:make",
            "--weights",
            str(wrong),
            "--out",
            str(out),
            *BUDGET,
        ],
        capsys,
    )
    assert_clean_failure(code, err, "weights do not match the model", out)
    assert "model tensors missing from the file" in err and "9.weight" in err


def test_wrapped_weights_load_into_the_factory_model(tmp_path):
    """--weights accepts what `spectra weights` reads: a {step, model_state, optimizer_state} DDP checkpoint."""
    import importlib.util

    from hessian_spectra.analyses.workloads import load_factory

    factory = tmp_path / "factory.py"
    factory.write_text(FACTORY)
    spec = importlib.util.spec_from_file_location("f_for_weights", factory)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    model = mod.make()["model"]
    trained = {f"module.{k}": v + 1.0 for k, v in model.state_dict().items()}
    path = tmp_path / "ckpt.pt"
    torch.save(
        {"step": 10, "model_state": trained, "optimizer_state": {"state": {}, "param_groups": []}}, path
    )
    work = load_factory(f"{factory}:make", path)
    for k, v in work.model.state_dict().items():
        assert torch.equal(v, trained[f"module.{k}"]), k


# ------------------------------------------------------------------------------------ broken HF folders


@pytest.fixture()
def gpt2(tmp_path, capsys):
    folder, text = tiny_gpt2_workload(tmp_path)
    capsys.readouterr()
    return folder, text


def _edit_config(folder, **changes):
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))


def _hessian(folder, text, tmp_path, capsys, *extra):
    out = tmp_path / "out"
    args = [
        "hessian",
        str(folder),
        "--data",
        str(text),
        "--batches",
        "1",
        "--batch-size",
        "2",
        "--seq-len",
        "6",
        "--out",
        str(out),
        *BUDGET,
        *extra,
    ]
    return (*run_cli(args, capsys), out)


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"n_head": 0}, "cannot load the model"),
        ({"vocab_size": 5}, "outside the model's vocabulary"),
        ({"n_layer": 3}, "config.json and the weights disagree: 24 model tensors are not in the checkpoint"),
    ],
)
def test_broken_model_folder_is_one_line_exit_2(gpt2, tmp_path, capsys, change, needle):
    folder, text = gpt2
    if "vocab_size" in change:  # a consistent small model, but the tokenizer has 18 ids
        from transformers import GPT2Config, GPT2LMHeadModel

        cfg = GPT2Config(
            n_layer=1, n_embd=16, n_head=2, vocab_size=5, n_positions=32, bos_token_id=0, eos_token_id=0
        )
        GPT2LMHeadModel(cfg).save_pretrained(folder)
        capsys.readouterr()
    else:
        _edit_config(folder, **change)
    code, _, err, out = _hessian(folder, text, tmp_path, capsys)
    assert_clean_failure(code, err, needle, out)


def test_allow_missing_analyses_and_the_report_lists_fresh_tensors(gpt2, tmp_path, capsys):
    folder, text = gpt2
    _edit_config(folder, n_layer=2)
    code, _, err, out = _hessian(folder, text, tmp_path, capsys, "--allow-missing")
    assert code == 0, err
    doc = json.loads((out / "report.json").read_text())
    fresh = doc["loading"]["freshly_initialised"]
    assert len(fresh) == 12 and all(n.startswith("transformer.h.1.") for n in fresh)
    assert doc["inputs"]["task"] == "causal-lm" and doc["loading"]["allow_missing"] is True
    md = (out / "report.md").read_text()
    assert "**12 tensors were freshly initialised**" in md and "`transformer.h.1.attn.c_attn.weight`" in md


def test_missing_head_names_the_ways_forward(gpt2, tmp_path, capsys):
    folder, text = gpt2
    code, _, err, out = _hessian(folder, text, tmp_path, capsys, "--task", "sequence-classification")
    assert_clean_failure(code, err, "has no sequence-classification head", out)
    assert "--task embedding" in err and "--model-factory" in err and "--allow-missing" in err
