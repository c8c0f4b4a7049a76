"""Sharded checkpoints: a ``*.index.json`` whose ``weight_map`` names the shard holding each tensor.

The index is untrusted input: every shard name must be a plain file name in the index's folder (checked on
the text, before any file is touched, so the message is the same whether a target exists: no ``..``, no
absolute paths, no separators, at most 255 bytes). Shards may themselves be symlinks (the Hugging Face cache
links ``snapshots/<rev>/model-0001.safetensors`` to ``../../blobs/<hash>``): the name is checked, not the
resolved path. Entry and shard counts are capped (:mod:`hessian_spectra.checkpoints.limits`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hessian_spectra.checkpoints.base import FileInfo, natural_key
from hessian_spectra.checkpoints.limits import (
    MAX_SHARDS,
    MAX_TENSORS,
    check_plain_name,
    read_json_limited,
    show_name,
)
from hessian_spectra.checkpoints.safetensors_file import _SafetensorsFile
from hessian_spectra.checkpoints.torch_file import _TorchFile
from hessian_spectra.errors import InputError

__all__ = ["open_index", "SAFETENSORS_SUFFIXES", "TORCH_SUFFIXES"]

SAFETENSORS_SUFFIXES = (".safetensors",)
TORCH_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


def open_index(index_path: Path, notes: list[str]) -> tuple[list[FileInfo], dict[str, Any]]:
    """Validate the index and open every shard; returns the files and tensor name -> shard backend."""
    index = read_json_limited(index_path, "index")
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict):
        raise InputError(index_path, "not a valid index: missing or malformed 'weight_map'")
    if not weight_map:
        raise InputError(index_path, "empty checkpoint: the index lists no tensors")
    if len(weight_map) > MAX_TENSORS:
        raise InputError(
            index_path, f"the index lists {len(weight_map)} tensors, above the limit of {MAX_TENSORS}"
        )
    shard_names = set()
    for tensor_name, shard_name in weight_map.items():
        if not isinstance(shard_name, str):
            raise InputError(
                index_path, f"not a valid index: the shard of '{show_name(tensor_name)}' is not a file name"
            )
        shard_names.add(shard_name)
    if len(shard_names) > MAX_SHARDS:
        raise InputError(
            index_path, f"the index lists {len(shard_names)} shard files, above the limit of {MAX_SHARDS}"
        )
    for shard_name in shard_names:
        check_plain_name(shard_name, index_path, "shard name")
    shards: dict[str, Any] = {}
    files: list[FileInfo] = []
    for shard_name in sorted(shard_names, key=natural_key):
        shard_path = index_path.parent / shard_name
        if not shard_path.is_file():
            raise InputError(
                index_path, f"shard '{shard_name}' listed in the index is missing (or not a file)"
            )
        if shard_path.suffix in SAFETENSORS_SUFFIXES:
            shards[shard_name] = _SafetensorsFile(shard_path)
            files.append(FileInfo(str(shard_path), shards[shard_name].size, "safetensors"))
        elif shard_path.suffix in TORCH_SUFFIXES:
            shards[shard_name] = _TorchFile(shard_path, notes)
            files.append(FileInfo(str(shard_path), shards[shard_name].size, "torch"))
        else:
            raise InputError(shard_path, f"unsupported shard file type '{shard_path.suffix}'")
    backends: dict[str, Any] = {}
    for tensor_name, shard_name in weight_map.items():
        shard = shards[shard_name]
        if tensor_name not in shard.metas:
            raise InputError(
                shard.path,
                f"tensor '{show_name(tensor_name)}' listed in {index_path.name} is not in this shard",
            )
        backends[tensor_name] = shard
    extra = sum(len(set(s.metas) - set(weight_map)) for s in shards.values())
    if extra:
        notes.append(f"{extra} tensors present in shards but not listed in the index were ignored")
    return files, backends
