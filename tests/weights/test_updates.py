"""Update spectra equal torch.linalg.svdvals(W_after - W_before) in float64, matrix by matrix, with the
weights probe's extraction rules (conv flatten, GPT-2 Conv1D transpose, fused QKV split), across formats."""

import numpy as np
import pytest
import torch
from hessian_spectra.checkpoints.matrices import extract_matrices, plan_tensor
from hessian_spectra.checkpoints.reader import open_checkpoint
from hessian_spectra.weights.plan import WeightsSettings
from hessian_spectra.weights.updates import update_spectra
from support.ckpt_factory import tiny_state_dict, write_bin, write_hf_dir, write_safetensors


def _perturbed(sd, seed=5, scale=1e-2):
    g = torch.Generator().manual_seed(seed)
    return {
        k: (v + scale * torch.randn(v.shape, generator=g).to(v.dtype)) if v.is_floating_point() else v
        for k, v in sd.items()
    }


def _expected(path_a, path_b):
    """name -> fp64 svdvals of the difference of the matrices extracted from the two files."""
    out = {}
    with open_checkpoint(path_a) as a, open_checkpoint(path_b) as b:
        for name in b.names():
            rec = plan_tensor(b.meta(name), config=b.config)
            if not rec.analysed:
                continue
            old = {v.name: v.matrix for v in extract_matrices(rec, a.load(name))}
            for v in extract_matrices(rec, b.load(name)):
                dw = v.matrix.to(torch.float64) - old[v.name].to(torch.float64)
                out[v.name] = (
                    torch.linalg.svdvals(dw).numpy(),
                    torch.linalg.matrix_norm(old[v.name].double(), 2),
                )
    return out


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_update_spectra_equal_svdvals_of_the_difference(tmp_path, fmt):
    sd0 = tiny_state_dict(0)
    sd1 = _perturbed(sd0)
    write = write_safetensors if fmt == "safetensors" else write_bin
    a, b = write(sd0, tmp_path / f"step_0.{fmt}"), write(sd1, tmp_path / f"step_1.{fmt}")
    report = update_spectra(a, b)
    expected = _expected(a, b)
    got = report.by_name()
    assert set(got) == set(expected)
    assert {
        "patch_embed.proj.weight",
        "layers.2.self_attn.in_proj_weight:k",
        "moe.experts.w1[expert=2]",
    } <= set(got)
    for name, (sv, wnorm) in expected.items():
        m = got[name]
        np.testing.assert_allclose(m.singular_values, sv, rtol=0, atol=1e-12 * sv[0])
        assert m.sigma_max == pytest.approx(sv[0], rel=1e-12)
        assert m.stable_rank == pytest.approx(float((sv**2).sum() / sv[0] ** 2), rel=1e-10)
        assert m.update_ratio == pytest.approx(sv[0] / float(wnorm), rel=1e-10)


def test_gpt2_conv1d_and_fused_qkv(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=30, n_positions=8)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(cfg)
    sd0 = {k: v.clone() for k, v in model.state_dict().items()}
    sd1 = _perturbed(sd0)
    a = write_hf_dir(sd0, tmp_path / "checkpoint-1", cfg.to_dict())
    b = write_hf_dir(sd1, tmp_path / "checkpoint-2", cfg.to_dict())
    got = update_spectra(a, b).by_name()
    w0, w1 = sd0["transformer.h.0.attn.c_attn.weight"], sd1["transformer.h.0.attn.c_attn.weight"]
    dq = (w1.T.double() - w0.T.double())[16:32]  # Conv1D (in, out) -> (out, in); K rows 16..31
    np.testing.assert_allclose(got["transformer.h.0.attn.c_attn.weight:k"].singular_values,
                               torch.linalg.svdvals(dq).numpy(), rtol=0, atol=1e-13)  # fmt: skip
    assert got["transformer.h.0.mlp.c_fc.weight"].shape == (64, 16)


def test_bf16_difference_is_exact_and_weight_norms_reused(tmp_path):
    sd0 = {"lin.weight": torch.randn(12, 7).to(torch.bfloat16)}
    sd1 = {"lin.weight": (sd0["lin.weight"].float() + 0.01).to(torch.bfloat16)}
    a, b = (
        write_safetensors(sd0, tmp_path / "a.safetensors"),
        write_safetensors(sd1, tmp_path / "b.safetensors"),
    )
    m = update_spectra(a, b, weight_norms={"lin.weight": 2.0}).matrices[0]
    exact = torch.linalg.svdvals(sd1["lin.weight"].double() - sd0["lin.weight"].double()).numpy()
    np.testing.assert_allclose(m.singular_values, exact, rtol=0, atol=1e-14 * exact[0])
    assert m.weight_sigma_max == 2.0 and m.update_ratio == pytest.approx(exact[0] / 2.0)


def test_decay_correction_and_partial_and_skips(tmp_path):
    w0 = torch.randn(40, 30, dtype=torch.float64)
    u = torch.randn(40, 30, dtype=torch.float64)
    decay = 0.01
    w1 = (1 - decay) * w0 - 0.05 * u  # decoupled decay plus an update
    a = write_safetensors({"a.weight": w0, "gone.weight": w0.clone()}, tmp_path / "a.safetensors")
    b = write_safetensors({"a.weight": w1, "new.weight": w0.clone()}, tmp_path / "b.safetensors")
    rep = update_spectra(a, b, decay=decay)
    m = rep.by_name()["a.weight"]
    assert m.decayed_sigma_max == pytest.approx(float(torch.linalg.matrix_norm(0.05 * u, 2)), rel=1e-12)
    assert rep.skipped == (("new.weight", "not in the earlier checkpoint"),)
    part = update_spectra(a, b, WeightsSettings(full_max_elements=100, topk=3)).by_name()["a.weight"]
    assert part.status == "partial" and part.singular_values.size == 3
    np.testing.assert_allclose(part.singular_values, torch.linalg.svdvals(w1 - w0)[:3].numpy(), rtol=1e-9)
    with pytest.raises(ValueError):
        update_spectra(a, b, decay=-1.0)
