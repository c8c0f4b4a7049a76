"""The exported configuration drives a real ``adam_mini.Adam_mini`` (1.1.1) step.

Checks against the package itself: its second-moment state has exactly the partition's block counts
where it can express the partition, its first update equals lr * g / (block RMS of g + eps) computed
from our block views, and our simulation of its name matching predicts its counts and crashes.
"""

from __future__ import annotations

import pytest
import torch
from hessian_spectra.analyses.partitions.adam_mini import (
    ADAM_MINI_DEFAULT_NAME_SETS,
    adam_mini_state_learning_rates,
    make_adam_mini,
    simulate_adam_mini,
)
from hessian_spectra.analyses.partitions.build import partition_model
from hessian_spectra.analyses.partitions.views import block_views
from support.partition_cases import (
    tiny_bert,
    tiny_gpt2,
    tiny_llama,
    tiny_mistral,
    tiny_mixtral,
    tiny_qwen2,
    tiny_qwen3,
    tiny_vit,
)

adam_mini = pytest.importorskip("adam_mini")


LR, EPS = 1e-2, 1e-8


def _loss(model, kind: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    if kind == "vit":
        x = torch.randn(2, 3, 8, 8, generator=g)
        return model(pixel_values=x, labels=torch.tensor([0, 2])).loss
    ids = torch.randint(0, 64, (2, 8), generator=g)
    if kind == "bert":
        return model(input_ids=ids, labels=torch.tensor([0, 2])).loss
    return model(input_ids=ids, labels=ids).loss


def _one_step(model, kind, part):
    opt = make_adam_mini(model.named_parameters(), part, lr=LR, eps=EPS)
    model.zero_grad()
    _loss(model, kind).backward()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    opt.step()
    return opt, before, grads


SUPPORTED = {
    "llama_gqa": (tiny_llama, "lm"),
    "mistral": (tiny_mistral, "lm"),
    "qwen2": (tiny_qwen2, "lm"),
    "qwen3": (tiny_qwen3, "lm"),
    "bert": (tiny_bert, "bert"),
}


@pytest.mark.parametrize("case", list(SUPPORTED))
def test_supported_models_match_partition_exactly(case, capsys):
    build, kind = SUPPORTED[case]
    model = build().eval()
    part = partition_model(model)
    cfg = part.adam_mini_kwargs()
    assert cfg["matches_partition"], cfg["unsupported"]
    opt, before, grads = _one_step(model, kind, part)
    assert capsys.readouterr().out == ""  # verbose=False: adam-mini prints nothing
    counts = adam_mini_state_learning_rates(opt)
    assert counts == {n.lower(): part.entries[n].num_blocks for n in part.entries}
    assert sum(counts.values()) == part.num_learning_rates == cfg["num_learning_rates"]
    # first step of Adam with one v per block: delta = -lr * g / (rms_block(g) + eps)
    gviews = block_views(part, grads.items())
    for name, p in model.named_parameters():
        expected = before[name].clone()
        for ev, gv in zip(block_views(part, [(name, expected)])[name], gviews[name], strict=True):
            dims = tuple(range(1, gv.dim()))
            rms = gv.pow(2).mean(dim=dims, keepdim=True).sqrt()
            ev.sub_(LR * gv / (rms + EPS))
        torch.testing.assert_close(p.detach(), expected, rtol=1e-5, atol=1e-7, msg=name)


def test_qwen3_export_fixes_head_split():
    part = partition_model(tiny_qwen3())
    cfg = part.adam_mini_kwargs()
    c = cfg["constructor"]
    assert c["dim"] * c["dim"] // c["n_heads"] == 16 * 32  # one chunk = one head of head_dim 16
    diffs = {d["name"]: d for d in cfg["default_config_differences"]}
    assert diffs["model.layers.0.self_attn.q_proj.weight"]["default_learning_rates"] == 8


PARTIAL = {
    "gpt2": (
        tiny_gpt2,
        "lm",
        {
            "transformer.h.0.attn.c_attn.weight",
            "transformer.h.0.attn.c_proj.weight",
            "transformer.h.0.mlp.c_fc.weight",
            "transformer.h.0.mlp.c_proj.weight",
        },
    ),
    "vit": (
        tiny_vit,
        "vit",
        {"vit.embeddings.position_embeddings", "vit.embeddings.patch_embeddings.projection.weight"},
    ),
    "mixtral": (
        tiny_mixtral,
        "lm",
        {"model.layers.0.mlp.experts.gate_up_proj", "model.layers.0.mlp.experts.down_proj"},
    ),
}


@pytest.mark.parametrize("case", list(PARTIAL))
def test_unsupported_layouts_are_listed_and_fall_back_to_adam(case):
    build, kind, expected_unsupported = PARTIAL[case]
    model = build().eval()
    part = partition_model(model)
    cfg = part.adam_mini_kwargs()
    assert not cfg["matches_partition"]
    assert {u["name"] for u in cfg["unsupported"]} == expected_unsupported
    assert all(u["reason"] and u["adam_mini_treatment"] == "per_coordinate" for u in cfg["unsupported"])
    opt, _, _ = _one_step(model, kind, part)
    counts = adam_mini_state_learning_rates(opt)
    for name, rule in part.entries.items():
        want = rule.numel if name in expected_unsupported else rule.num_blocks
        assert counts[name.lower()] == want, name
    assert sum(counts.values()) == cfg["num_learning_rates"]


@pytest.mark.parametrize("case", ["llama_gqa", "qwen3", "gpt2"])
def test_simulation_predicts_default_adam_mini(case):
    build, kind = {**SUPPORTED, "gpt2": (tiny_gpt2, "lm")}[case]
    model = build().eval()
    arch = partition_model(model).arch
    opt = adam_mini.Adam_mini(
        model.named_parameters(), lr=LR, dim=arch.hidden_size, n_heads=arch.num_heads, verbose=False
    )
    _loss(model, kind).backward()
    opt.step()
    sim = simulate_adam_mini(
        {n: tuple(p.shape) for n, p in model.named_parameters()},
        ADAM_MINI_DEFAULT_NAME_SETS,
        arch.hidden_size,
        arch.num_heads,
    )
    assert adam_mini_state_learning_rates(opt) == {n.lower(): s["learning_rates"] for n, s in sim.items()}


def test_default_adam_mini_crashes_where_simulation_says():
    model = tiny_bert().eval()
    sim = simulate_adam_mini(
        {n: tuple(p.shape) for n, p in model.named_parameters()}, ADAM_MINI_DEFAULT_NAME_SETS, 32, 4
    )
    assert any(s["problem"] for s in sim.values())
    opt = adam_mini.Adam_mini(model.named_parameters(), lr=LR, dim=32, n_heads=4, verbose=False)
    _loss(model, "bert").backward()
    with pytest.raises((IndexError, RuntimeError)):
        opt.step()
