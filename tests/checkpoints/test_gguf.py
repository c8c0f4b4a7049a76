"""GGUF (llama.cpp): files written like the converter writes them read back as the HF tensors; weights
reports of F32/F16 GGUF equal those of the same weights in safetensors; quantized reports equal the spectra of
the dequantized tensors to fp64 accuracy."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hessian_spectra.checkpoints.reader import open_checkpoint
from hessian_spectra.errors import InputError
from hessian_spectra.weights.probe import analyze_weights
from support import ckpt_factory as cf
from support import gguf_factory as gf

gguf = pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def llama():
    return gf.llama_state_dict()


def _hf_folder(sd, config, folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    cf.write_safetensors(sd, folder / "model.safetensors")
    return folder


def _comparable(report) -> dict:
    d = report.to_dict()
    inv = [{k: v for k, v in r.items() if k not in ("key", "storage")} for r in d["inventory"]]
    return {"settings": d["settings"], "summary": d["summary"], "matrices": d["matrices"], "inventory": inv}


def test_f32_gguf_reads_back_the_hf_tensors_bit_for_bit(llama, tmp_path):
    """Names mapped, dims order handled, Q/K row permutation (GQA: K by the KV heads) undone exactly."""
    sd, _ = llama
    path = gf.write_llama_gguf(sd, tmp_path / "m.gguf")
    with open_checkpoint(path) as ckpt:
        assert set(ckpt.names()) == set(sd)
        assert ckpt.torch_free and ckpt.files[0].format == "gguf"
        assert ckpt.config["num_attention_heads"] == 4 and ckpt.config["num_key_value_heads"] == 2
        assert ckpt.meta("model.layers.1.self_attn.k_proj.weight").key == "blk.1.attn_k.weight"
        for name, ref in sd.items():
            got = ckpt.load(name)
            assert got.shape == ref.shape and torch.equal(got, ref), name
            np.testing.assert_array_equal(ckpt.load_numpy(name), ref.numpy())
        assert any("permutation undone on 4 tensors" in n for n in ckpt.notes)


def test_qk_heads_are_the_hf_heads_after_unpermuting(llama, tmp_path):
    """Per-head row blocks (what head splits use) are HF's; without the inverse permutation they are not."""
    sd, _ = llama
    path = gf.write_llama_gguf(sd, tmp_path / "m.gguf")
    d = 64 // 4
    with open_checkpoint(path) as ckpt:
        q = ckpt.load("model.layers.0.self_attn.q_proj.weight")
    ref = sd["model.layers.0.self_attn.q_proj.weight"]
    stored = torch.from_numpy(gf.converter_permute(ref.numpy(), 4, 4))
    for h in range(4):
        assert torch.equal(q[h * d : (h + 1) * d], ref[h * d : (h + 1) * d])
    assert not torch.equal(stored[:d], ref[:d])  # the permutation really moves rows within a head


@pytest.mark.parametrize("qtype", ["F32", "F16"])
def test_unquantized_gguf_weights_report_equals_safetensors(llama, tmp_path, qtype):
    sd, config = llama
    dtype = torch.float32 if qtype == "F32" else torch.float16
    rounded = {k: (v.to(dtype) if v.ndim == 2 else v) for k, v in sd.items()}  # norms stay F32 in GGUF
    folder = _hf_folder(rounded, config, tmp_path / "hf")
    path = gf.write_llama_gguf(sd, tmp_path / f"m-{qtype}.gguf", qtype=qtype)
    a, b = analyze_weights(folder), analyze_weights(path)
    assert _comparable(a) == _comparable(b)
    storage = {r.name: r.storage for r in b.inventory}
    assert storage["model.layers.0.mlp.up_proj.weight"] == qtype and storage["model.norm.weight"] == "F32"


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0"])
def test_quantized_gguf_report_is_the_spectrum_of_the_dequantized_tensors(llama, tmp_path, qtype):
    sd, _ = llama
    path = gf.write_llama_gguf(sd, tmp_path / f"m-{qtype}.gguf", qtype=qtype)
    report = analyze_weights(path)
    reader = gguf.GGUFReader(str(path))
    deq = {t.name: gguf.quants.dequantize(np.asarray(t.data), t.tensor_type) for t in reader.tensors}
    inv = {r.name: r for r in report.inventory}
    assert len(report.matrices) == 2 + 7 * 2
    for m in report.matrices:
        record = inv[m.tensor_name]
        assert record.storage == qtype and record.key == gf.gguf_name(m.tensor_name)
        exact = np.linalg.svd(deq[record.key].astype(np.float64), compute_uv=False)
        np.testing.assert_allclose(m.singular_values, exact, rtol=1e-11, atol=1e-12 * exact[0])
        # quantization really changed the weights (so the check above is not the unquantized spectrum)
        hf = np.linalg.svd(sd[m.tensor_name].double().numpy(), compute_uv=False)
        assert np.abs(exact - hf).max() > 1e-6 * exact[0]


def test_unknown_architecture_keeps_llama_cpp_names(llama, tmp_path):
    sd, _ = llama
    path = gf.write_llama_gguf(sd, tmp_path / "m.gguf", arch="starcoder2")
    with open_checkpoint(path) as ckpt:
        assert "blk.0.attn_q.weight" in ckpt and "token_embd.weight" in ckpt
        assert ckpt.meta("blk.0.attn_q.weight").key is None
        assert any("names kept" in n for n in ckpt.notes)
        assert torch.equal(ckpt.load("blk.0.attn_q.weight"), sd["model.layers.0.self_attn.q_proj.weight"])


def test_gguf_in_a_folder_and_bad_gguf_files(llama, tmp_path):
    sd, _ = llama
    folder = tmp_path / "ollama"
    folder.mkdir()
    good = gf.write_llama_gguf(sd, folder / "model.gguf")
    with open_checkpoint(folder) as ckpt:
        assert len(ckpt) == len(sd)
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all" * 4)
    with pytest.raises(InputError, match="not a GGUF file"):
        open_checkpoint(bad)
    cut = cf.write_truncated(good, tmp_path / "cut.gguf", 0.5)
    with pytest.raises(InputError) as err:
        open_checkpoint(cut)
    assert "\n" not in str(err.value) and str(cut) in str(err.value)
    huge = tmp_path / "huge.gguf"
    huge.write_bytes(
        b"GGUF" + (3).to_bytes(4, "little") + (2**62).to_bytes(8, "little") + (0).to_bytes(8, "little")
    )
    with pytest.raises(InputError, match="more tensors than the file can hold"):
        open_checkpoint(huge)
