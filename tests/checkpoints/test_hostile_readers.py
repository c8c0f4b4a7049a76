"""Hostile checkpoints (#14, the readers): no read outside the folder, no memory bomb, no traceback, the
same one-line error whether a target exists. Each case failed on the readers before this change."""

from __future__ import annotations

import json
import os
import resource
from pathlib import Path

import pytest
import torch
from hessian_spectra.checkpoints import safetensors_file
from hessian_spectra.checkpoints.reader import open_checkpoint
from hessian_spectra.errors import InputError
from hessian_spectra.weights.probe import analyze_weights
from support import ckpt_factory as cf


def _error(source) -> str:
    with pytest.raises(InputError) as err:
        open_checkpoint(source)
    msg = str(err.value)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


def _sharded(tmp_path: Path) -> tuple[Path, dict]:
    sd = {"a.weight": torch.randn(4, 4), "b.weight": torch.randn(4, 4)}
    index = cf.write_sharded_safetensors(sd, tmp_path / "model", 70)
    return index, json.loads(index.read_text())


# --------------------------------------------------------------------------------------- confinement


@pytest.mark.parametrize(
    "target", ["../outside.safetensors", "ABS", "sub/../../outside.safetensors", "..", "a\\..\\b"]
)
def test_index_entries_must_be_plain_names_in_the_folder(tmp_path, target):
    index, data = _sharded(tmp_path)
    outside = cf.write_safetensors({"secret.weight": torch.ones(3, 3)}, tmp_path / "outside.safetensors")
    name = str(outside) if target == "ABS" else target
    data["weight_map"]["a.weight"] = name
    index.write_text(json.dumps(data))
    msg = _error(index)
    assert "not a plain file name" in msg and str(index) in msg
    # the same words whether the target exists or not
    outside.unlink()
    assert _error(index) == msg


def test_symlinked_shards_stay_allowed_like_the_hf_cache(tmp_path):
    """snapshots/<rev>/model-0000i.safetensors -> ../../blobs/<hash>: the name is checked, not the target."""
    sd = {"a.weight": torch.randn(4, 4), "b.weight": torch.randn(4, 4)}
    src = tmp_path / "src"
    index = cf.write_sharded_safetensors(sd, src, 70)
    blobs, snap = tmp_path / "hub" / "blobs", tmp_path / "hub" / "snapshots" / "abc123"
    blobs.mkdir(parents=True)
    snap.mkdir(parents=True)
    for f in src.iterdir():
        (blobs / f"sha-{f.name}").write_bytes(f.read_bytes())
        (snap / f.name).symlink_to(Path("../../blobs") / f"sha-{f.name}")
    with open_checkpoint(snap / index.name) as ckpt:
        assert torch.equal(ckpt.load("b.weight"), sd["b.weight"])


def test_shard_name_over_255_bytes_is_refused_cleanly(tmp_path):
    index, data = _sharded(tmp_path)
    data["weight_map"]["a.weight"] = "x" * 300 + ".safetensors"
    index.write_text(json.dumps(data))
    assert "longer than 255 bytes" in _error(index)


def test_index_with_non_string_shard_and_deep_nesting(tmp_path):
    index, data = _sharded(tmp_path)
    data["weight_map"]["a.weight"] = ["x"]
    index.write_text(json.dumps(data))
    assert "not a file name" in _error(index)
    index.write_text('{"weight_map": ' + "[" * 5000 + "]" * 5000 + "}")
    assert "nested too deeply" in _error(index)


# ------------------------------------------------------------------------------------ header numbers


def _header_file(path: Path, entry: dict, data: bytes = b"\0" * 64) -> Path:
    raw = json.dumps({"w": entry}).encode() if isinstance(entry, dict) else entry
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data)
    return path


@pytest.mark.parametrize(
    "entry",
    [
        b'{"w": {"dtype": "F32", "shape": [4, Infinity], "data_offsets": [0, 64]}}',
        b'{"w": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 1e400]}}',
        b'{"w": {"dtype": "F32", "shape": [4.0, 4], "data_offsets": [0, 64]}}',
        b'{"w": {"dtype": "F32", "shape": [true, 16], "data_offsets": [0, 64]}}',
        b'{"w": {"dtype": "F32", "shape": ["4", 4], "data_offsets": [0, 64]}}',
        b'{"w": {"dtype": "F32", "shape": [-4, -4], "data_offsets": [0, 64]}}',
        b'{"w": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, NaN]}}',
        b'{"w": {"dtype": "F32", "shape": [4, 4], "data_offsets": [-64, 0]}}',
        b'{"w": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64, 128]}}',
        b'{"w": {"dtype": "F32", "shape": [99999999999999999999, 4], "data_offsets": [0, 64]}}',
        b'{"w": {"dtype": "F32", "shape": [4, 4]}}',
        b'{"w": {"dtype": 7, "shape": [4, 4], "data_offsets": [0, 64]}}',
        b'{"w": {"dtype": "F32", "shape": [[[[4]]]], "data_offsets": [0, 64]}}',
        b'{"w": "' + b"x" * 10 + b'"}',
        b'{"__metadata__": [1, 2]}',
    ],
)
def test_header_numbers_must_be_exact_integers_in_the_file(tmp_path, entry):
    msg = _error(_header_file(tmp_path / "bad.safetensors", entry))
    assert "safetensors" in msg


def test_deeply_nested_header_and_config_are_input_errors(tmp_path):
    deep = b'{"w": ' + b"[" * 3000 + b"]" * 3000 + b"}"
    assert "nested too deeply" in _error(_header_file(tmp_path / "deep.safetensors", deep))
    folder = cf.write_hf_dir({"w": torch.randn(3, 3)}, tmp_path / "hf")
    (folder / "config.json").write_text('{"a": ' * 1200 + "1" + "}" * 1200)
    assert "nested too deeply" in _error(folder)


def test_entry_count_is_capped_before_the_header_is_parsed(tmp_path, monkeypatch):
    monkeypatch.setattr(safetensors_file, "MAX_TENSORS_PER_FILE", 100)
    entries = {
        f"t{i}": {"dtype": "F32", "shape": [1], "data_offsets": [4 * i, 4 * i + 4]} for i in range(101)
    }
    raw = json.dumps(entries).encode()
    path = tmp_path / "many.safetensors"
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + b"\0" * 404)
    assert "more than 100 tensors" in _error(path)


# ------------------------------------------------------------------------------------ .pt storage


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_stride0_expand_is_never_materialised(tmp_path):
    """A 1.6 KB file holding zeros(1).expand(40000, 40000) drove RSS past 18 GB; now it is skipped."""
    path = tmp_path / "bomb.pt"
    torch.save({"bomb": torch.zeros(1).expand(40000, 40000), "ok": torch.randn(6, 4)}, path)
    assert path.stat().st_size < 4096
    before = _maxrss_mb()
    report = analyze_weights(path)
    assert _maxrss_mb() - before < 200
    inv = {r.name: r for r in report.inventory}
    assert inv["bomb"].status == "skipped" and "self-overlapping view" in inv["bomb"].reason
    assert [m.name for m in report.matrices] == ["ok"]
    with open_checkpoint(path) as ckpt, pytest.raises(InputError, match="cannot be read: self-overlapping"):
        ckpt.load("bomb")


def test_overlapping_strides_are_skipped_and_harmless_expands_kept(tmp_path):
    base = torch.randn(20)
    overlap = base.as_strided((10, 10), (1, 1))  # rows share 9 of 10 elements
    row = torch.randn(1, 8).expand(1, 8)  # stride 0 on a size-1 dim: one stored element per element
    path = tmp_path / "views.pt"
    torch.save({"overlap": overlap, "row_view": row, "ok": torch.randn(5, 3)}, path)
    with open_checkpoint(path) as ckpt:
        assert "self-overlapping" in ckpt.meta("overlap").skip
        assert ckpt.meta("row_view").skip is None and ckpt.meta("ok").skip is None


@pytest.mark.filterwarnings("ignore")
def test_sparse_meta_quantized_nested_complex_tensors_are_skipped_with_reasons(tmp_path):
    tensors = {
        "sparse": torch.sparse_coo_tensor(torch.tensor([[0, 1], [1, 0]]), torch.tensor([1.0, 2.0]), (3, 3)),
        "csr": torch.randn(3, 3).to_sparse_csr(),
        "meta": torch.empty(4, 4, device="meta"),
        "quantized": torch.quantize_per_tensor(torch.randn(4, 4), 0.1, 0, torch.qint8),
        "nested": torch.nested.nested_tensor([torch.randn(2, 3), torch.randn(4, 3)]),
        "complex": torch.randn(4, 4, dtype=torch.complex64),
        "ok": torch.randn(6, 4),
    }
    path = tmp_path / "odd.pt"
    torch.save(tensors, path)
    report = analyze_weights(path)
    reasons = {r.name: r.reason for r in report.inventory if r.status == "skipped"}
    assert "sparse" in reasons["sparse"] and "sparse" in reasons["csr"]
    assert "meta tensor" in reasons["meta"] and "quantized" in reasons["quantized"]
    assert "nested" in reasons["nested"] and "complex" in reasons["complex"]
    assert [m.name for m in report.matrices] == ["ok"]


def test_per_tensor_memory_cap_is_stated_and_enforced(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECTRA_MAX_TENSOR_BYTES", "1000")
    path = cf.write_safetensors(
        {"big": torch.randn(20, 20), "small": torch.randn(5, 5)}, tmp_path / "w.safetensors"
    )
    report = analyze_weights(path)
    big = next(r for r in report.inventory if r.name == "big")
    assert (
        big.status == "skipped" and "1.6 KiB" in big.reason and "per-tensor cap of 1000 bytes" in big.reason
    )
    assert [m.name for m in report.matrices] == ["small"]
    with open_checkpoint(path) as ckpt, pytest.raises(InputError, match="above the per-tensor cap"):
        ckpt.load_numpy("big")


def test_malicious_pickle_message_never_advises_weights_only_false(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"w": torch.ones(2), "x": Evil()}, path)
    msg = _error(path)
    assert "refused" in msg and "posix.system" in msg
    for advice in ("weights_only=False", "weights_only` set to `False", "Re-running", "trusted source"):
        assert advice not in msg
