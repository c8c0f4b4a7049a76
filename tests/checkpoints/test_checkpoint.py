"""Checkpoint reading: every format gives the same tensors; bad input fails early and clearly."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from hessian_spectra.checkpoints.reader import natural_key, open_checkpoint
from hessian_spectra.errors import InputError
from support import ckpt_factory as cf


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().reshape(-1).view(torch.uint8)


@pytest.fixture(scope="module")
def sd() -> dict[str, torch.Tensor]:
    return cf.tiny_state_dict(seed=1)


def _write(kind: str, sd: dict, tmp: Path) -> tuple[str, str]:
    """Write ``sd`` as ``kind``; return (path to open, expected file format)."""
    if kind == "safetensors":
        return str(cf.write_safetensors(sd, tmp / "w.safetensors")), "safetensors"
    if kind == "sharded_index":
        return str(cf.write_sharded_safetensors(sd, tmp / "sh", 1500)), "safetensors"
    if kind == "sharded_folder":
        cf.write_sharded_safetensors(sd, tmp / "sh", 1500)
        return str(tmp / "sh"), "safetensors"
    if kind == "bin":
        return str(cf.write_bin(sd, tmp / "w.bin")), "torch"
    if kind == "legacy_pt":
        return str(cf.write_bin(sd, tmp / "w.pt", legacy=True)), "torch"
    if kind == "nested_state_dict":
        return str(cf.write_bin(sd, tmp / "w.pth", nest="state_dict")), "torch"
    if kind == "nested_model":
        return str(cf.write_bin(sd, tmp / "w.pt", nest="model")), "torch"
    if kind == "sharded_bin":
        return str(cf.write_sharded_bin(sd, tmp / "shb", 1500)), "torch"
    if kind.startswith("hf_"):
        fmt = kind[3:]
        return str(cf.write_hf_dir(sd, tmp / "hf", fmt=fmt, max_shard_bytes=1500)), (
            "safetensors" if "safetensors" in fmt else "torch"
        )
    raise AssertionError(kind)


FORMATS = [
    "safetensors",
    "sharded_index",
    "sharded_folder",
    "bin",
    "legacy_pt",
    "nested_state_dict",
    "nested_model",
    "sharded_bin",
    "hf_safetensors",
    "hf_sharded_safetensors",
    "hf_bin",
    "hf_sharded_bin",
]


@pytest.mark.parametrize("kind", FORMATS)
def test_every_format_gives_identical_tensors(kind, sd, tmp_path):
    path, fmt = _write(kind, sd, tmp_path)
    with open_checkpoint(path) as ckpt:
        assert ckpt.names() == sorted(sd, key=natural_key)
        assert len(ckpt) == len(sd)
        assert {f.format for f in ckpt.files} == {fmt}
        assert all(f.size_bytes == os.path.getsize(f.path) for f in ckpt.files)
        if "sharded" in kind:
            assert len(ckpt.files) > 1
        for name, ref in sd.items():
            meta = ckpt.meta(name)
            assert meta.shape == tuple(ref.shape)
            assert meta.dtype == str(ref.dtype).removeprefix("torch.")
            assert meta.file in {f.path for f in ckpt.files}
            got = ckpt.load(name)
            assert got.dtype == ref.dtype and got.shape == ref.shape
            assert torch.equal(_bits(got), _bits(ref)), name
        if kind.startswith("hf_"):
            assert ckpt.config == cf.TINY_CONFIG
        if kind.startswith("nested"):
            assert any("nested" in n for n in ckpt.notes)
        if kind == "legacy_pt":
            assert any("legacy" in n for n in ckpt.notes)


def test_natural_sort_and_mapping_api(sd, tmp_path):
    with open_checkpoint(cf.write_safetensors(sd, tmp_path / "w.safetensors")) as ckpt:
        names = ckpt.names()
        assert names.index("layers.2.linear1.weight") < names.index("layers.10.linear1.weight")
        assert "head.weight" in ckpt and "nope" not in ckpt
        with pytest.raises(KeyError, match="nope"):
            ckpt.meta("nope")
        got = dict(ckpt.iter_tensors(["head.weight"]))
        assert torch.equal(got["head.weight"], sd["head.weight"])
        d = ckpt.to_dict()
        json.dumps(d)
        assert d["num_tensors"] == len(sd)
    assert sorted(["layer.10", "layer.2", "layer.1"], key=natural_key) == ["layer.1", "layer.2", "layer.10"]


def test_explicit_config_overrides_and_sibling_config(sd, tmp_path):
    folder = cf.write_hf_dir(sd, tmp_path / "hf")
    with open_checkpoint(folder, config={"model_type": "x"}) as ckpt:
        assert ckpt.config == {"model_type": "x"}
    with open_checkpoint(folder / "model.safetensors") as ckpt:  # file inside a HF folder
        assert ckpt.config == cf.TINY_CONFIG


def test_safetensors_open_reads_no_tensor_data(tmp_path):
    """Tensor bytes are read at load time, not at open: rewrite them after opening and see the change."""
    sd = {"a": torch.zeros(64, 64), "b": torch.zeros(64, 64)}
    path = cf.write_safetensors(sd, tmp_path / "w.safetensors")
    ckpt = open_checkpoint(path)
    assert ckpt.meta("b").shape == (64, 64)
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    begin, end = json.loads(raw[8 : 8 + n])["b"]["data_offsets"]
    st = path.stat()
    with open(path, "r+b") as fh:  # same size, new values for "b" only
        fh.seek(8 + n + begin)
        fh.write(torch.full((64, 64), 7.0).numpy().tobytes())
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert torch.equal(ckpt.load("b"), torch.full((64, 64), 7.0))
    assert torch.equal(ckpt.load("a"), torch.zeros(64, 64))
    ckpt.close()


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="needs Linux /proc/self/io")
@pytest.mark.parametrize("suffix", [".safetensors", ".bin"])
def test_open_reads_only_headers(tmp_path, suffix):
    """Opening a 16 MB checkpoint reads well under 1 MB through read() (data is mmapped/lazy)."""

    def rchar() -> int:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("rchar:"):
                return int(line.split()[1])
        raise AssertionError

    sd = {f"w{i}": torch.randn(256, 2048) for i in range(8)}
    path = tmp_path / f"w{suffix}"
    cf.write_safetensors(sd, path) if suffix == ".safetensors" else cf.write_bin(sd, path)
    before = rchar()
    ckpt = open_checkpoint(path)
    metas = [ckpt.meta(n) for n in ckpt.names()]
    assert rchar() - before < 1_000_000
    assert len(metas) == 8
    assert torch.equal(ckpt.load("w3"), sd["w3"])
    ckpt.close()


@pytest.mark.parametrize("suffix", [".safetensors", ".bin"])
def test_lazy_read_after_file_truncated_is_input_error(tmp_path, suffix):
    sd = {"a": torch.randn(128, 128), "b": torch.randn(128, 128)}
    path = tmp_path / f"w{suffix}"
    cf.write_safetensors(sd, path) if suffix == ".safetensors" else cf.write_bin(sd, path)
    ckpt = open_checkpoint(path)
    os.truncate(path, path.stat().st_size // 2)
    with pytest.raises(InputError, match="changed on disk") as err:
        ckpt.load("b")
    assert str(path) in str(err.value)


# ------------------------------------------------------------------------------------------ bad inputs


def _expect_input_error(source, *fragments: str, names: str | Path | None = None) -> InputError:
    with pytest.raises(InputError) as err:
        open_checkpoint(source)
    msg = str(err.value)
    assert "\n" not in msg
    assert str(names if names is not None else source) in msg
    for frag in fragments:
        assert frag in msg, msg
    return err.value


def test_missing_path(tmp_path):
    _expect_input_error(tmp_path / "nope.safetensors", "no such file")


@pytest.mark.parametrize("keep", [0.5, 0.95, 4, 20])
def test_truncated_safetensors(sd, tmp_path, keep):
    src = cf.write_safetensors(sd, tmp_path / "full.safetensors")
    bad = cf.write_truncated(src, tmp_path / "cut.safetensors", keep)
    _expect_input_error(bad, "truncated")


def test_garbage_safetensors(tmp_path):
    _expect_input_error(cf.write_garbage_safetensors(tmp_path / "g.safetensors"), "not a safetensors file")
    err = _expect_input_error(cf.write_huge_header_safetensors(tmp_path / "h.safetensors"), "header length")
    assert "larger than the file (108 bytes)" in err.problem
    assert (
        str(int.from_bytes(b"garbage!", "little")) not in err.problem
    )  # raw bytes are never shown as a number


def test_safetensors_header_with_bad_offsets(tmp_path):
    header = json.dumps({"a": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 60]}}).encode()
    path = tmp_path / "off.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 64)
    _expect_input_error(path, "does not match its shape")


@pytest.mark.parametrize("writer", [cf.write_code_pickle, cf.write_pickled_module])
def test_pickle_needing_code_is_refused(tmp_path, writer):
    err = _expect_input_error(writer(tmp_path / "x.bin"), "refused", "execute code", "weights_only=True")
    assert "NotAWeight" in err.problem or "Linear" in err.problem


def test_malicious_pickle_never_executes(tmp_path):
    marker = tmp_path / "pwned"
    path = cf.write_malicious_pickle(tmp_path / "evil.pt", marker)
    _expect_input_error(path, "refused")
    assert not marker.exists()


@pytest.mark.parametrize("keep", [0.5, 0.9, 10])
def test_truncated_bin(sd, tmp_path, keep):
    src = cf.write_bin(sd, tmp_path / "full.bin")
    _expect_input_error(cf.write_truncated(src, tmp_path / "cut.bin", keep), "corrupt")


def test_truncated_legacy_and_garbage_bin(sd, tmp_path):
    src = cf.write_bin(sd, tmp_path / "full.pt", legacy=True)
    _expect_input_error(cf.write_truncated(src, tmp_path / "cut.pt", 0.5))
    garbage = tmp_path / "g.bin"
    garbage.write_bytes(b"this is not a checkpoint" * 10)
    _expect_input_error(garbage, "not a PyTorch checkpoint")
    empty = tmp_path / "zero.pth"
    empty.write_bytes(b"")
    _expect_input_error(empty, "empty file")


def test_not_a_state_dict(tmp_path):
    torch.save(torch.ones(3), tmp_path / "t.pt")
    _expect_input_error(tmp_path / "t.pt", "single tensor")
    torch.save([torch.ones(3)], tmp_path / "l.pt")
    _expect_input_error(tmp_path / "l.pt", "not a state dict")


def test_empty_checkpoints(tmp_path):
    _expect_input_error(cf.write_empty_safetensors(tmp_path / "e.safetensors"), "empty checkpoint")
    _expect_input_error(cf.write_empty_bin(tmp_path / "e.bin"), "empty checkpoint")
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "noten.pt")
    _expect_input_error(tmp_path / "noten.pt", "empty checkpoint")
    _expect_input_error(torch.nn.ReLU(), "empty checkpoint", names="ReLU")


def test_folder_without_weights(tmp_path):
    _expect_input_error(tmp_path, "no weight files")
    (tmp_path / "config.json").write_text("{}")
    _expect_input_error(tmp_path, "no weight files")


def test_folder_with_several_files_and_no_index(sd, tmp_path):
    cf.write_safetensors(sd, tmp_path / "a.safetensors")
    cf.write_safetensors(sd, tmp_path / "b.safetensors")
    _expect_input_error(tmp_path, "several weight files")


def test_folder_with_single_odd_file(sd, tmp_path):
    cf.write_bin(sd, tmp_path / "weights.pt")
    with open_checkpoint(tmp_path) as ckpt:
        assert len(ckpt) == len(sd)
        assert any("only weight file" in n for n in ckpt.notes)


def test_index_pointing_to_missing_shard(sd, tmp_path):
    index = cf.write_index_missing_shard(sd, tmp_path / "sh")
    _expect_input_error(index, "missing", names=index)
    _expect_input_error(tmp_path / "sh", "missing", names=index)


def test_index_problems(sd, tmp_path):
    index = cf.write_sharded_safetensors(sd, tmp_path / "sh", 1500)
    data = json.loads(index.read_text())
    shard = next(iter(data["weight_map"].values()))
    data["weight_map"]["ghost.weight"] = shard
    index.write_text(json.dumps(data))
    _expect_input_error(index, "ghost.weight", "not in this shard", names=tmp_path / "sh" / shard)
    index.write_text("{not json")
    _expect_input_error(index, "cannot parse")
    index.write_text(json.dumps({"weight_map": {}}))
    _expect_input_error(index, "empty checkpoint")


def test_unsupported_extension(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\0" * 16)
    _expect_input_error(path, "unsupported file type", ".onnx")


def test_bad_config_json_in_hf_dir(sd, tmp_path):
    folder = cf.write_hf_dir(sd, tmp_path / "hf")
    (folder / "config.json").write_text("{broken")
    _expect_input_error(folder, "cannot parse", names=folder / "config.json")
    (folder / "config.json").write_text("[1, 2]")
    _expect_input_error(folder, "not a JSON object", names=folder / "config.json")


# ------------------------------------------------------------------------------------------ live modules


class _Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(10, 8)
        self.attn = torch.nn.MultiheadAttention(8, 2)
        self.conv = torch.nn.Conv1d(8, 4, 3)
        self.norm = torch.nn.LayerNorm(8)
        self.register_buffer("steps", torch.tensor(3))
        self.scale = torch.nn.Parameter(torch.randn(4, 8))


def _snapshot(m: torch.nn.Module) -> dict:
    return {
        "state": {k: v.detach().clone() for k, v in m.state_dict().items()},
        "grad": {k: p.requires_grad for k, p in m.named_parameters()},
        "training": [x.training for x in m.modules()],
    }


def _same(a: dict, b: dict) -> bool:
    return (
        a["grad"] == b["grad"]
        and a["training"] == b["training"]
        and a["state"].keys() == b["state"].keys()
        and all(torch.equal(a["state"][k], b["state"][k]) for k in a["state"])
    )


def test_live_module_is_not_modified_and_loads_copies():
    torch.manual_seed(0)
    m = _Tiny().train()
    before = _snapshot(m)
    with open_checkpoint(m) as ckpt:
        assert ckpt.names() == sorted(m.state_dict(), key=natural_key)
        assert ckpt.module_types["attn.in_proj_weight"] == "MultiheadAttention"
        assert ckpt.module_types["conv.weight"] == "Conv1d"
        assert ckpt.module_types["steps"] == "_Tiny"
        assert ckpt.files[0].format == "module"
        w = ckpt.load("emb.weight")
        assert torch.equal(w, m.emb.weight) and not w.requires_grad
        w.add_(1.0)  # a caller mutating what it got must not touch the model
        assert ckpt.meta("scale").file is None
    assert _same(before, _snapshot(m))


def test_live_module_matches_its_saved_files(tmp_path):
    torch.manual_seed(0)
    m = _Tiny()
    path = cf.write_safetensors(m.state_dict(), tmp_path / "m.safetensors")
    with open_checkpoint(m) as live, open_checkpoint(path) as disk:
        assert live.names() == disk.names()
        for n in live.names():
            assert live.meta(n).shape == disk.meta(n).shape and live.meta(n).dtype == disk.meta(n).dtype
            assert torch.equal(live.load(n), disk.load(n))


def test_hf_gpt2_module_keeps_config_and_types():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=4, vocab_size=100, n_positions=16)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    before = _snapshot(model)
    with open_checkpoint(model) as ckpt:
        assert ckpt.config["model_type"] == "gpt2"
        assert ckpt.module_types["transformer.h.0.attn.c_attn.weight"] == "Conv1D"
        assert ckpt.module_types["transformer.wte.weight"] == "Embedding"
        for n in ckpt.names():
            ckpt.load(n)
    assert _same(before, _snapshot(model))


def test_overlapping_safetensors_offsets_rejected_at_open(tmp_path):
    spec = {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64]}
    header = json.dumps({"a": spec, "b": spec}).encode()
    path = tmp_path / "overlap.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 64)
    _expect_input_error(path, "corrupt safetensors file")
