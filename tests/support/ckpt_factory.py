"""Shared fixtures: tiny state dicts written in every checkpoint format, plus deliberately bad inputs.

Every writer takes an explicit path, so tests control where files land (use pytest's ``tmp_path``).
"""

from __future__ import annotations

import builtins
import json
from pathlib import Path

import torch

TINY_CONFIG = {"model_type": "tiny", "hidden_size": 16, "num_attention_heads": 4}


def tiny_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A small mixed state dict covering every extraction rule (and a natural-sort trap: 2 vs 10)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.randn(*shape, generator=g).to(dtype)

    return {
        "embeddings.word_embeddings.weight": r(50, 16),
        "embeddings.position_embeddings.weight": r(12, 16),
        "embeddings.LayerNorm.weight": r(16),
        "embeddings.LayerNorm.bias": r(16),
        "pos_embed": r(1, 10, 16),
        "cls_token": r(1, 1, 16),
        "patch_embed.proj.weight": r(16, 3, 2, 2),
        "layers.2.self_attn.in_proj_weight": r(48, 16),
        "layers.2.self_attn.in_proj_bias": r(48),
        "layers.2.self_attn.out_proj.weight": r(16, 16),
        "layers.2.linear1.weight": r(32, 16, dtype=torch.bfloat16),
        "layers.2.linear2.weight": r(16, 32, dtype=torch.float16),
        "layers.2.norm1.weight": r(16),
        "layers.10.linear1.weight": r(32, 16),
        "layers.10.linear2.weight": r(16, 32, dtype=torch.float64),
        "conv1d.weight": r(8, 4, 3),
        "moe.experts.w1": r(3, 8, 16),
        "head.weight": r(5, 16),
        "head.bias": r(5),
        "bn.num_batches_tracked": torch.tensor(7, dtype=torch.int64),
        "mask": torch.tensor([True, False, True]),
    }


def _contig(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.contiguous() for k, v in sd.items()}


def write_safetensors(sd: dict[str, torch.Tensor], path: str | Path, metadata: dict | None = None) -> Path:
    """One ``.safetensors`` file."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(_contig(sd), str(path), metadata=metadata)
    return path


def _shard(sd: dict[str, torch.Tensor], max_shard_bytes: int) -> list[dict[str, torch.Tensor]]:
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for k, v in sd.items():
        nbytes = v.numel() * v.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = v
        size += nbytes
    return shards


def _write_index(folder: Path, index_name: str, shard_files: list[str], shards: list[dict]) -> Path:
    weight_map = {k: f for f, sh in zip(shard_files, shards, strict=True) for k in sh}
    total = sum(v.numel() * v.element_size() for sh in shards for v in sh.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    path = folder / index_name
    path.write_text(json.dumps(index, indent=2))
    return path


def write_sharded_safetensors(sd: dict[str, torch.Tensor], folder: str | Path, max_shard_bytes: int) -> Path:
    """HF-style shards ``model-0000i-of-0000n.safetensors`` plus ``model.safetensors.index.json``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shards = _shard(sd, max_shard_bytes)
    n = len(shards)
    files = [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    for f, sh in zip(files, shards, strict=True):
        write_safetensors(sh, folder / f)
    return _write_index(folder, "model.safetensors.index.json", files, shards)


def write_bin(
    sd: dict[str, torch.Tensor], path: str | Path, *, legacy: bool = False, nest: str | None = None
) -> Path:
    """``torch.save`` of the state dict (zip format, or the legacy format); optionally nested under a key."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    obj: dict = {nest: dict(sd), "epoch": 3} if nest else dict(sd)
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return path


def write_sharded_bin(sd: dict[str, torch.Tensor], folder: str | Path, max_shard_bytes: int) -> Path:
    """``pytorch_model-0000i-of-0000n.bin`` shards plus ``pytorch_model.bin.index.json``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shards = _shard(sd, max_shard_bytes)
    n = len(shards)
    files = [f"pytorch_model-{i + 1:05d}-of-{n:05d}.bin" for i in range(n)]
    for f, sh in zip(files, shards, strict=True):
        write_bin(sh, folder / f)
    return _write_index(folder, "pytorch_model.bin.index.json", files, shards)


def write_hf_dir(
    sd: dict[str, torch.Tensor],
    folder: str | Path,
    config: dict | None = None,
    *,
    fmt: str = "safetensors",
    max_shard_bytes: int = 4096,
) -> Path:
    """A HF-style model folder: ``config.json`` + weights as ``safetensors``, ``sharded_safetensors``,
    ``bin`` or ``sharded_bin``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(TINY_CONFIG if config is None else config, indent=2))
    if fmt == "safetensors":
        write_safetensors(sd, folder / "model.safetensors")
    elif fmt == "sharded_safetensors":
        write_sharded_safetensors(sd, folder, max_shard_bytes)
    elif fmt == "bin":
        write_bin(sd, folder / "pytorch_model.bin")
    elif fmt == "sharded_bin":
        write_sharded_bin(sd, folder, max_shard_bytes)
    else:
        raise ValueError(f"unknown fmt {fmt!r}")
    return folder


# ---------------------------------------------------------------------------------------------- bad inputs


class NotAWeight:
    """A custom class: pickling an instance makes the file need code execution to load."""

    def __init__(self) -> None:
        self.payload = [1, 2, 3]


class _OpensAFile:
    """Unpickling this calls ``open(marker, "w")``: proof a loader executed code if the marker exists."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (builtins.open, (self.marker, "w"))


def write_truncated(src: str | Path, dst: str | Path, keep: float | int = 0.5) -> Path:
    """Copy ``src`` keeping its first ``keep`` bytes (int) or fraction (float)."""
    data = Path(src).read_bytes()
    n = keep if isinstance(keep, int) else int(len(data) * keep)
    Path(dst).write_bytes(data[:n])
    return Path(dst)


def write_garbage_safetensors(path: str | Path) -> Path:
    """Plausible header length followed by bytes that are not JSON."""
    Path(path).write_bytes((64).to_bytes(8, "little") + b"\xffnot json at all" * 8)
    return Path(path)


def write_huge_header_safetensors(path: str | Path) -> Path:
    """Declared header length far beyond the file size (typical of random/garbage files)."""
    Path(path).write_bytes(b"garbage!" + b"x" * 100)
    return Path(path)


def write_code_pickle(path: str | Path) -> Path:
    """A state dict holding an instance of a custom class next to a tensor."""
    torch.save({"w": torch.ones(2, 2), "extra": NotAWeight()}, path)
    return Path(path)


def write_pickled_module(path: str | Path) -> Path:
    """``torch.save(model)`` instead of ``torch.save(model.state_dict())``."""
    torch.save(torch.nn.Linear(3, 2), path)
    return Path(path)


def write_malicious_pickle(path: str | Path, marker: str | Path) -> Path:
    """A pickle that would create ``marker`` if it were loaded with weights_only=False."""
    torch.save({"w": torch.ones(2), "x": _OpensAFile(str(marker))}, path)
    return Path(path)


def write_empty_safetensors(path: str | Path) -> Path:
    return write_safetensors({}, path)


def write_empty_bin(path: str | Path) -> Path:
    torch.save({}, path)
    return Path(path)


def write_index_missing_shard(
    sd: dict[str, torch.Tensor], folder: str | Path, max_shard_bytes: int = 4096
) -> Path:
    """A sharded checkpoint whose last shard was deleted; returns the index path."""
    index = write_sharded_safetensors(sd, folder, max_shard_bytes)
    last = sorted(set(json.loads(index.read_text())["weight_map"].values()))[-1]
    (Path(folder) / last).unlink()
    return index
