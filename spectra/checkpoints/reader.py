"""Lazy, read-only tensor source over every checkpoint form a user is likely to hand us.

Supported sources (``open_checkpoint``):

* a single ``.safetensors`` file;
* sharded safetensors: a ``model.safetensors.index.json`` file, or the folder holding it;
* a Hugging Face model folder: ``model.safetensors`` / its index, else ``pytorch_model.bin`` / its index,
  else a single weight file; ``config.json`` is parsed when present;
* a PyTorch state dict in ``.bin`` / ``.pt`` / ``.pth`` / ``.ckpt``, always read with
  ``torch.load(weights_only=True, map_location="cpu", mmap=True)`` (non-mmap only for the legacy
  non-zip format); ``{"state_dict": {...}}`` / ``{"model": {...}}`` nesting is unwrapped with a note;
* a live ``torch.nn.Module`` (its ``state_dict()``; the module is never modified and ``load`` returns
  copies).

Everything that can be validated without reading tensor data (headers, shard lists, byte ranges) is
checked when the checkpoint is opened, so a command fails before it writes anything. All problems are
reported as :class:`hessian_spectra.errors.InputError` naming the offending file.

This module holds the Checkpoint and the opening logic (folders, shard indexes, format dispatch); each
format's reader is its own module: ``safetensors_file``, ``torch_file``, ``module_source``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from hessian_spectra.checkpoints.base import FileInfo, TensorMeta, _one_line
from hessian_spectra.checkpoints.module_source import _ModuleSource
from hessian_spectra.checkpoints.safetensors_file import _SafetensorsFile
from hessian_spectra.checkpoints.torch_file import _TorchFile
from hessian_spectra.errors import InputError

if TYPE_CHECKING:  # torch is imported lazily: safetensors read as numpy (load_numpy) never need it
    import torch

__all__ = ["Checkpoint", "open_checkpoint", "natural_key"]

SAFETENSORS_SUFFIXES = (".safetensors",)
TORCH_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


def natural_key(name: str) -> tuple:
    """Sort key putting ``layer.2`` before ``layer.10`` (digit runs compare as numbers)."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", name) if p)


# ----------------------------------------------------------------------------------------------------


class Checkpoint:
    """A read-only, lazily loaded collection of named tensors with provenance.

    ``names()``/``meta()`` never read tensor data; ``load(name)`` reads exactly one tensor, so peak
    memory stays near the largest tensor. Use as a context manager or call :meth:`close`.
    """

    def __init__(
        self,
        source: str,
        files: list[FileInfo],
        backends: dict[str, Any],
        *,
        config: dict | None = None,
        module_types: dict[str, str] | None = None,
        notes: list[str] | None = None,
    ):
        self.source = source
        self.files = files
        self.config = config
        self.module_types = dict(module_types or {})
        self.notes = list(notes or [])
        self._backends = backends  # tensor name -> backend object
        self._names = sorted(backends, key=natural_key)
        self._closed = False

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, name: object) -> bool:
        return name in self._backends

    def __repr__(self) -> str:
        return f"Checkpoint({self.source!r}, {len(self._names)} tensors, {len(self.files)} file(s))"

    def names(self) -> list[str]:
        """The checkpoint's own tensor keys, natural-sorted."""
        return list(self._names)

    def meta(self, name: str) -> TensorMeta:
        """Shape/dtype/file of ``name`` without reading its data."""
        return self._backend(name).metas[name]

    def load(self, name: str) -> torch.Tensor:
        """Read one tensor (a fresh CPU tensor for files, a detached copy for live modules)."""
        if self._closed:
            raise ValueError(f"checkpoint {self.source!r} is closed")
        return self._backend(name).load(name)

    def load_numpy(self, name: str) -> np.ndarray:
        """Read one tensor as a numpy array (bf16/f16 as exact float32). Torch-free for safetensors."""
        if self._closed:
            raise ValueError(f"checkpoint {self.source!r} is closed")
        return self._backend(name).load_numpy(name)

    @property
    def torch_free(self) -> bool:
        """True when every tensor comes from safetensors, so :meth:`load_numpy` never imports torch."""
        return all(isinstance(b, _SafetensorsFile) for b in self._backends.values())

    def iter_tensors(self, names: list[str] | None = None):
        """Yield ``(name, tensor)`` one at a time (only one tensor alive per step if the caller drops it)."""
        for n in self._names if names is None else names:
            yield n, self.load(n)

    def close(self) -> None:
        """Release file handles / memory maps. Metadata stays available."""
        for b in {id(b): b for b in self._backends.values()}.values():
            b.close()
        self._closed = True

    def _backend(self, name: str):
        try:
            return self._backends[name]
        except KeyError:
            raise KeyError(f"no tensor named {name!r} in {self.source}") from None

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "files": [f.to_dict() for f in self.files],
            "num_tensors": len(self._names),
            "config": self.config,
            "notes": list(self.notes),
        }


def open_checkpoint(source: str | Path | torch.nn.Module, *, config: dict | None = None) -> Checkpoint:
    """Open a checkpoint file/folder/module; see the module docstring for what is accepted.

    ``config`` overrides any ``config.json`` found next to the weights (used for QKV head layouts and
    GPT-2 Conv1D detection). Raises :class:`InputError` for missing, corrupt, unsafe or empty inputs.
    """
    if not isinstance(source, str | os.PathLike):
        import torch

        if isinstance(source, torch.nn.Module):
            return _open_module(source, config)
        raise InputError(None, f"cannot open a checkpoint from a {type(source).__name__}")
    path = Path(source)
    if not path.exists():
        raise InputError(path, "no such file or directory")
    notes: list[str] = []
    if path.is_dir():
        ckpt = _open_folder(path, notes, config)
    else:
        ckpt = _open_file(path, notes, config, explicit=True)
    ckpt.source = str(source)
    return ckpt


# ----------------------------------------------------------------------------------------------------
# opening


def _open_module(module: torch.nn.Module, config: dict | None) -> Checkpoint:
    src = _ModuleSource(module)
    if not src.tensors:
        raise InputError(src.path, "empty checkpoint: the module has no parameters or buffers")
    module_types: dict[str, str] = {}
    for mod_name, mod in module.named_modules(remove_duplicate=False):
        prefix = f"{mod_name}." if mod_name else ""
        for pname, _ in list(mod.named_parameters(recurse=False)) + list(mod.named_buffers(recurse=False)):
            module_types.setdefault(prefix + pname, type(mod).__name__)
    if config is None:
        cfg = getattr(module, "config", None)
        if cfg is not None and hasattr(cfg, "to_dict"):
            config = cfg.to_dict()
    notes = []
    dropped = len(module.state_dict()) - len(src.tensors)
    if dropped:
        notes.append(f"{dropped} non-tensor state_dict entries ignored")
    return Checkpoint(
        src.path,
        [FileInfo(src.path, 0, "module")],
        dict.fromkeys(src.tensors, src),
        config=config,
        module_types={k: v for k, v in module_types.items() if k in src.tensors},
        notes=notes,
    )


def _open_folder(folder: Path, notes: list[str], config: dict | None) -> Checkpoint:
    cfg_path = folder / "config.json"
    if config is None and cfg_path.is_file():
        config = _read_json(cfg_path, "config.json")
        if not isinstance(config, dict):
            raise InputError(cfg_path, "config.json is not a JSON object")
    for candidate in (
        "model.safetensors",
        "model.safetensors.index.json",
        "pytorch_model.bin",
        "pytorch_model.bin.index.json",
    ):
        if (folder / candidate).is_file():
            return _open_file(folder / candidate, notes, config, explicit=False)
    weights = sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix in SAFETENSORS_SUFFIXES + TORCH_SUFFIXES
    )
    indexes = sorted(folder.glob("*.index.json"))
    if len(indexes) == 1:
        return _open_file(indexes[0], notes, config, explicit=False)
    if len(weights) == 1:
        notes.append(f"using the only weight file in the folder: {weights[0].name}")
        return _open_file(weights[0], notes, config, explicit=False)
    if not weights:
        raise InputError(
            folder,
            "no weight files found (expected model.safetensors, an *.index.json, pytorch_model.bin, "
            "or a .safetensors/.bin/.pt/.pth file)",
        )
    listed = ", ".join(p.name for p in weights[:5]) + (" ..." if len(weights) > 5 else "")
    raise InputError(folder, f"several weight files and no index ({listed}); pass one file explicitly")


def _open_file(path: Path, notes: list[str], config: dict | None, *, explicit: bool) -> Checkpoint:
    name = path.name
    if explicit and config is None and (path.parent / "config.json").is_file():
        try:
            config = json.loads((path.parent / "config.json").read_text())
            notes.append("read config.json next to the weights")
        except (OSError, ValueError):
            notes.append("config.json next to the weights is unreadable; ignored")
        if not isinstance(config, dict):
            config = None
    if name.endswith(".index.json"):
        return _open_index(path, notes, config)
    if path.suffix in SAFETENSORS_SUFFIXES:
        backend = _SafetensorsFile(path)
        _require_tensors(backend.metas, path)
        files = [FileInfo(str(path), backend.size, "safetensors")]
        return Checkpoint(str(path), files, dict.fromkeys(backend.metas, backend), config=config, notes=notes)
    if path.suffix in TORCH_SUFFIXES:
        backend = _TorchFile(path, notes)
        _require_tensors(backend.metas, path)
        files = [FileInfo(str(path), backend.size, "torch")]
        return Checkpoint(str(path), files, dict.fromkeys(backend.metas, backend), config=config, notes=notes)
    raise InputError(
        path,
        f"unsupported file type '{path.suffix or name}' (expected .safetensors, .bin, .pt, .pth, .ckpt, "
        "a *.index.json or a model folder)",
    )


def _open_index(index_path: Path, notes: list[str], config: dict | None) -> Checkpoint:
    index = _read_json(index_path, "index")
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise InputError(index_path, "not a valid index: missing or malformed 'weight_map'")
    if not weight_map:
        raise InputError(index_path, "empty checkpoint: the index lists no tensors")
    shards: dict[str, Any] = {}
    files: list[FileInfo] = []
    for shard_name in sorted(set(weight_map.values()), key=natural_key):
        shard_path = index_path.parent / shard_name
        if not shard_path.is_file():
            raise InputError(index_path, f"shard '{shard_name}' listed in the index is missing")
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
                shard.path, f"tensor '{tensor_name}' listed in {index_path.name} is not in this shard"
            )
        backends[tensor_name] = shard
    extra = sum(len(set(s.metas) - set(weight_map)) for s in shards.values())
    if extra:
        notes.append(f"{extra} tensors present in shards but not listed in the index were ignored")
    return Checkpoint(str(index_path), files, backends, config=config, notes=notes)


# ----------------------------------------------------------------------------------------------------
# helpers


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(path, f"cannot parse {what} JSON: {_one_line(exc)}") from None


def _require_tensors(metas: dict, path: Path) -> None:
    if not metas:
        raise InputError(path, "empty checkpoint: no tensors found")
